/* Causal self-attention sub-layer: y = Wo · attn(rope(Wq x), rope(Wk x), Wv x), for MHA, GQA and
 * MQA, with RoPE, ALiBi or no position term (learned positions are added at the embedding).
 * The caller applies the norm and the residual. Weights use the HF [out, in] layout.
 * Tensor parallelism (a->tp set before moei_attn_register): each tp rank holds heads/tp query heads
 * and kv_heads/tp key/value heads — the matching rows of wq, wk, wv (column-parallel) and columns
 * of wo (row-parallel) — and its share of the output is summed over tp on the way out. */
#ifndef MOEI_NN_ATTENTION_LAYER_H
#define MOEI_NN_ATTENTION_LAYER_H

#include "nn/buffers.h"
#include "nn/params.h"
#include "nn/tp.h"

typedef struct moei_attn {
    moei_tp tp;                                     /* zeroed = no tensor parallelism */
    int32_t d, heads, kv_heads, head_dim, position; /* heads, kv_heads: this rank's share; position: a moe_position_type */
    int32_t wq, wk, wv, wo;                         /* parameter indices */
    const float *rope_cos, *rope_sin;               /* [max_seq, head_dim/2], owned by the model */
    int32_t max_seq;
    float alibi[4096];  /* slopes per head when position == ALIBI (heads <= 4096 by config) */
    /* saved forward */
    int64_t batch, seq;
    const float *x;
    moei_buf q, k, v, o, lse, pos, ws;
    /* backward scratch */
    moei_buf dq, dk, dv, dout;
    /* tensor parallelism: the gathered input (sequence parallel, kept for the backward), the
     * partial output / input gradient before its reduction, the gathered output gradient */
    moei_buf xg, part, dyg;
} moei_attn;

/* heads and kv_heads are the model's totals; with a->tp set they must divide over tp. */
moe_status moei_attn_register(moei_attn *a, moei_params *p, const char *prefix, int32_t d, int32_t heads,
                              int32_t kv_heads, int32_t head_dim, int32_t position);
/* y = attention(x) over a micro-batch of batch x seq tokens; x and y hold the rows this rank keeps
 * of the residual stream (all batch*seq rows, or batch*seq/tp with sequence parallelism). x must
 * stay unchanged until the backward. */
moe_status moei_attn_forward(moe_ctx *ctx, moei_attn *a, const moei_params *p, const float *x, int64_t batch,
                             int64_t seq, float *y);
/* dx = (overwritten, or accumulated when accumulate != 0); weight gradients accumulated. dy and dx
 * hold this rank's rows, as x and y in the forward. */
moe_status moei_attn_backward(moe_ctx *ctx, moei_attn *a, const moei_params *p, const float *dy, float *dx,
                              int accumulate);
void moei_attn_free(moe_ctx *ctx, moei_attn *a);

#endif
