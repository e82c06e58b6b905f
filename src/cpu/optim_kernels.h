/* CPU optimizer kernels over flat fp32 arrays (parameters, gradients and moments are contiguous
 * buffers, so one call covers a whole range): AdamW and SGD steps with torch.optim semantics, the
 * sum of squares for global-norm clipping, and a finiteness check. Updates are elementwise; the
 * reductions use a partition fixed by the array length, so every result is the same bits for any
 * thread count. Scaling in place for clipping is moei_cpu_scale() in cpu/activation.h. */
#ifndef MOEI_CPU_OPTIM_KERNELS_H
#define MOEI_CPU_OPTIM_KERNELS_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hyper-parameters of one AdamW step (torch.optim.AdamW, amsgrad=False, maximize=False). */
typedef struct moei_adamw_hparams {
    double lr;           /* >= 0 */
    double beta1;        /* in [0, 1) */
    double beta2;        /* in [0, 1) */
    double eps;          /* >= 0 */
    double weight_decay; /* >= 0; decoupled: p *= 1 - lr * weight_decay */
    int64_t step;        /* 1-based count of this step (torch's state['step'] after its increment) */
    float grad_scale;    /* each gradient element is multiplied by this first (1 = none); the same bits
                            as scaling the gradients in place beforehand, so clipping can fold in here */
} moei_adamw_hparams;

/* One AdamW step over `count` elements, in torch's order of operations (scalars in double, then
 * rounded to float like torch's Python-float arguments):
 *   g = grad_scale * grads[i]
 *   if decayed(i): p *= (float)(1 - lr*wd)
 *   m = lerp(m, g, 1 - beta1)              (torch's Tensor.lerp_: m + w*(g - m) for w < 0.5,
 *                                           g - (g - m)*(1 - w) otherwise; = beta1*m + (1-beta1)*g)
 *   v = v*beta2 + (1 - beta2)*g*g
 *   step_size = lr / (1 - beta1^step);  bc2_sqrt = sqrt(1 - beta2^step)
 *   denom = sqrt(v) / bc2_sqrt + eps;   p += -step_size * m / denom
 * params, m (exp_avg) and v (exp_avg_sq) are updated in place; grads is only read. Start m and v at 0.
 * decay_mask: NULL decays every element; otherwise element i decays iff decay_mask[i] != 0 (norm
 * gains, biases, embeddings excluded). Per-range exclusion also works by calling once per range
 * with weight_decay = 0 for the excluded ranges. */
moe_status moei_cpu_adamw_step(moe_ctx *ctx, int64_t count, float *params, const float *grads, float *m, float *v,
                               const uint8_t *decay_mask, const moei_adamw_hparams *hp);

/* Hyper-parameters of one SGD step (torch.optim.SGD, maximize=False). */
typedef struct moei_sgd_hparams {
    double lr;           /* >= 0 */
    double momentum;     /* >= 0; 0 = plain SGD (no buffer needed) */
    double dampening;    /* >= 0; torch's default is 0 */
    double weight_decay; /* >= 0; coupled, as torch SGD: g += wd * p */
    int32_t nesterov;    /* 0 or 1; 1 needs momentum > 0 and dampening == 0 (as torch requires) */
    int64_t step;        /* 1-based; on step 1 the momentum buffer is set to g, as torch does */
    float grad_scale;    /* gradients are multiplied by this first (1 = none) */
} moei_sgd_hparams;

/* One SGD step over `count` elements, torch order:
 *   g = grad_scale * grads[i];  if decayed(i): g = g + wd*p
 *   if momentum != 0: buf = (step == 1) ? g : buf*momentum + (1 - dampening)*g
 *                     g = nesterov ? g + momentum*buf : buf
 *   p = p + (-lr)*g
 * params and momentum_buf are updated in place (momentum_buf may be NULL when momentum == 0; its
 * contents before step 1 are ignored). decay_mask as in moei_cpu_adamw_step(). */
moe_status moei_cpu_sgd_step(moe_ctx *ctx, int64_t count, float *params, const float *grads, float *momentum_buf,
                             const uint8_t *decay_mask, const moei_sgd_hparams *hp);

/* *out = sum of x[i]^2 in double (OVERWRITTEN). Blocks of a fixed partition of [0, count) are
 * summed in parallel, then the block partials in order: the same bits for any thread count. A NaN
 * or infinity in x propagates into *out. */
moe_status moei_cpu_sum_squares(moe_ctx *ctx, int64_t count, const float *x, double *out);

/* *all_finite = 1 if no element of x is NaN or +-Inf, else 0. first_bad (may be NULL) receives the
 * lowest index of a non-finite element, or -1. count = 0 gives 1 and -1. */
moe_status moei_cpu_all_finite(moe_ctx *ctx, int64_t count, const float *x, int32_t *all_finite,
                               int64_t *first_bad);

#ifdef __cplusplus
}
#endif

#endif
