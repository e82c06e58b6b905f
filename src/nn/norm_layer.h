/* A norm sub-layer (RMSNorm or LayerNorm) with its parameters and saved row statistics. Norms are
 * row-wise: under tensor parallelism a norm runs on the rows this rank holds (all of them, or its
 * sequence-parallel share), so forward and backward take that row count and never communicate.
 * With sequence parallelism each tp rank's weight gradient covers its rows only, so the tensors
 * are registered as MOEI_TP_PARTIAL (summed over tp with the other gradients, once per step). */
#ifndef MOEI_NN_NORM_LAYER_H
#define MOEI_NN_NORM_LAYER_H

#include "nn/buffers.h"
#include "nn/params.h"
#include "nn/tp.h"

typedef struct moei_norm {
    moei_tp tp;      /* set before moei_norm_register; zeroed = no tensor parallelism */
    int32_t type, d; /* type: a moe_norm_type */
    float eps;
    int32_t w, b;    /* parameter indices; b = -1 for RMSNorm */
    moei_buf mean, rstd;
} moei_norm;

moe_status moei_norm_register(moei_norm *nm, moei_params *p, const char *prefix, int32_t type, int32_t d, float eps);
moe_status moei_norm_forward(moe_ctx *ctx, moei_norm *nm, const moei_params *p, const float *x, int64_t n, float *y);
/* dx = norm'ᵀ dy, added into dx when accumulate != 0 (through `scratch` [n, d]); weight grads accumulated. */
moe_status moei_norm_backward(moe_ctx *ctx, moei_norm *nm, const moei_params *p, const float *x, int64_t n,
                              const float *dy, float *dx, int accumulate, float *scratch);
void moei_norm_free(moe_ctx *ctx, moei_norm *nm);

#endif
