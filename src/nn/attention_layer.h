/* Causal self-attention sub-layer: y = Wo · attn(rope(Wq x), rope(Wk x), Wv x), for MHA, GQA and
 * MQA, with RoPE, ALiBi or no position term (learned positions are added at the embedding).
 * The caller applies the norm and the residual. Weights use the HF [out, in] layout. */
#ifndef MOEI_NN_ATTENTION_LAYER_H
#define MOEI_NN_ATTENTION_LAYER_H

#include "nn/buffers.h"
#include "nn/params.h"

typedef struct moei_attn {
    int32_t d, heads, kv_heads, head_dim, position; /* position: a moe_position_type */
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
} moei_attn;

moe_status moei_attn_register(moei_attn *a, moei_params *p, const char *prefix, int32_t d, int32_t heads,
                              int32_t kv_heads, int32_t head_dim, int32_t position);
/* y [batch*seq, d] = attention(x); x must stay unchanged until the backward. */
moe_status moei_attn_forward(moe_ctx *ctx, moei_attn *a, const moei_params *p, const float *x, int64_t batch,
                             int64_t seq, float *y);
/* dx = (overwritten, or accumulated when accumulate != 0); weight gradients accumulated. */
moe_status moei_attn_backward(moe_ctx *ctx, moei_attn *a, const moei_params *p, const float *dy, float *dx,
                              int accumulate);
void moei_attn_free(moe_ctx *ctx, moei_attn *a);

#endif
