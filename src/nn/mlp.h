/* Dense MLP sub-layer (also the shared expert of an MoE layer): y = w2 · act(w1 · x [, w3 · x]).
 * SwiGLU computes gate = x·w1ᵀ and up = x·w3ᵀ into the two halves of one [n, 2f] buffer so the
 * activation runs as one packed pass; GELU uses w1 and w2 only. Weights use the HF [out, in] layout.
 * Tensor parallelism (m->tp set before moei_mlp_register): each tp rank holds f/tp hidden units —
 * rows of w1 and w3 (column-parallel) and the matching columns of w2 (row-parallel) — and its
 * partial output is summed over tp. */
#ifndef MOEI_NN_MLP_H
#define MOEI_NN_MLP_H

#include "nn/buffers.h"
#include "nn/params.h"
#include "nn/tp.h"

typedef struct moei_mlp {
    moei_tp tp;               /* zeroed = no tensor parallelism */
    int32_t d, f, activation; /* f: this rank's hidden units; activation: a moe_activation */
    int32_t w1, w3, w2;       /* parameter indices (w3 = -1 for GELU) */
    int64_t n;                /* tokens of the saved forward */
    const float *x;           /* input of the saved forward (owned by the caller, kept alive until backward) */
    moei_buf pre;             /* [n, 2f] gate|up (SwiGLU) or [n, f] pre-activation (GELU) */
    moei_buf act;             /* [n, f] activation output */
    moei_buf xg, part, dyg;   /* tensor parallelism: gathered input (SP), partial sums, gathered dy (SP) */
} moei_mlp;

/* Register w1 [f, d], (w3 [f, d]), w2 [d, f] under `prefix` ("layers.3.mlp"); f is the whole
 * hidden size, which must divide over m->tp. */
moe_status moei_mlp_register(moei_mlp *m, moei_params *p, const char *prefix, int32_t d, int32_t f, int32_t activation);
/* y [n, d] = mlp(x); x must stay unchanged until the backward. n counts the rows this rank holds
 * (with sequence parallelism n·tp rows run through the weights). */
moe_status moei_mlp_forward(moe_ctx *ctx, moei_mlp *m, const moei_params *p, const float *x, int64_t n, float *y);
/* dx [n, d] = (overwritten, or accumulated when accumulate != 0); weight gradients accumulated. */
moe_status moei_mlp_backward(moe_ctx *ctx, moei_mlp *m, const moei_params *p, const float *dy, float *dx,
                             int accumulate);
void moei_mlp_free(moe_ctx *ctx, moei_mlp *m);

/* The activation and its backward on [n, f] rows, shared with the experts' grouped path. */
moe_status moei_mlp_activate(moe_ctx *ctx, int32_t activation, int64_t n, int64_t f, const float *pre, float *act);
moe_status moei_mlp_activate_backward(moe_ctx *ctx, int32_t activation, int64_t n, int64_t f, const float *pre,
                                      const float *d_act, float *d_pre);

#endif
