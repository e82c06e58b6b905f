/* Row normalisations of the CPU backend: RMSNorm (Mixtral's MixtralRMSNorm) and LayerNorm, forward
 * and backward, fp32, row-major [n, d]. Weight gradients are accumulated (+=), input gradients are
 * overwritten; results are bitwise independent of the OpenMP thread count. */
#ifndef MOEI_CPU_NORM_H
#define MOEI_CPU_NORM_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* y = w * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps), per row of x [n, d], as MixtralRMSNorm
 * computes it in fp32 (the row mean is accumulated in double, then rounded to fp32).
 * rstd [n] receives the per-row factor for the backward; may be NULL when no backward follows.
 * y may be x (in place). n may be 0; d >= 1; eps >= 0. */
moe_status moei_rmsnorm_fwd(moe_ctx *ctx, int64_t n, int64_t d, float eps, const float *x, const float *w, float *y,
                            float *rstd);

/* Backward of moei_rmsnorm_fwd given dy [n, d] and the saved rstd [n]:
 * dx [n, d] is overwritten, dw [d] is accumulated (dw += sum over rows of dy * x * rstd).
 * dx may be dy (in place). */
moe_status moei_rmsnorm_bwd(moe_ctx *ctx, int64_t n, int64_t d, const float *x, const float *w, const float *rstd,
                            const float *dy, float *dx, float *dw);

/* y = (x - mean) * rstd * w + b, rstd = 1 / sqrt(var + eps) with the biased variance, per row of
 * x [n, d] (torch.nn.LayerNorm). mean [n] and rstd [n] receive the row statistics for the
 * backward; both may be NULL when no backward follows. y may be x. */
moe_status moei_layernorm_fwd(moe_ctx *ctx, int64_t n, int64_t d, float eps, const float *x, const float *w,
                              const float *b, float *y, float *mean, float *rstd);

/* Backward of moei_layernorm_fwd: dx [n, d] overwritten; dw [d] += sum dy * xhat; db [d] += sum dy.
 * dx may be dy. */
moe_status moei_layernorm_bwd(moe_ctx *ctx, int64_t n, int64_t d, const float *x, const float *w, const float *mean,
                              const float *rstd, const float *dy, float *dx, float *dw, float *db);

#ifdef __cplusplus
}
#endif

#endif
