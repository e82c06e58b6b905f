/* CPU AdamW / SGD updates, sum of squares and finiteness check over flat arrays (see optim_kernels.h).
 * Invariants: scalar coefficients are formed in double and rounded once to float, as torch does with
 * its Python-float hyper-parameters; reductions split [0, count) into blocks that depend on count
 * only and combine the block results in block order (thread-count independent bits). */
#include "cpu/optim_kernels.h"

#include <math.h>
#include <string.h>

#include "core/error.h"

/* Elements per block of a flat update loop. */
#define MOEI_OPT_BLOCK 16384
/* Reductions: at most this many blocks (partials on the stack), each of at least MIN elements. */
#define MOEI_RED_MAX_BLOCKS 1024
#define MOEI_RED_MIN_BLOCK 4096

static int64_t red_blocks(int64_t count)
{
    int64_t nb = (count + MOEI_RED_MIN_BLOCK - 1) / MOEI_RED_MIN_BLOCK;
    if (nb > MOEI_RED_MAX_BLOCKS) nb = MOEI_RED_MAX_BLOCKS;
    return nb < 1 ? 1 : nb;
}

static moe_status check_flat(moe_ctx *ctx, const char *fn, int64_t count)
{
    if (count < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: count = %lld is negative", fn, (long long)count);
    return MOE_OK;
}

#define CHECK_PTR(fn, p, need)                                                                                      \
    do {                                                                                                            \
        if ((need) && !(p)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '" #p "' is NULL", fn);      \
    } while (0)

/* `!(x >= lo)` also rejects NaN. */
#define CHECK_RANGE(fn, name, x, ok)                                                                                \
    do {                                                                                                            \
        if (!(ok)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: %s = %g is out of range", fn, name, (double)(x)); \
    } while (0)

/* ---- AdamW ----------------------------------------------------------------------------------------- */

static inline float lerp_torch(float self, float end, float w)
{
    return fabsf(w) < 0.5f ? self + w * (end - self) : end - (end - self) * (1.0f - w);
}

moe_status moei_cpu_adamw_step(moe_ctx *ctx, int64_t count, float *params, const float *grads, float *m, float *v,
                               const uint8_t *decay_mask, const moei_adamw_hparams *hp)
{
    const char *fn = "adamw_step";
    moe_status st = check_flat(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, hp, 1);
    CHECK_RANGE(fn, "lr", hp->lr, hp->lr >= 0.0 && isfinite(hp->lr));
    CHECK_RANGE(fn, "beta1", hp->beta1, hp->beta1 >= 0.0 && hp->beta1 < 1.0);
    CHECK_RANGE(fn, "beta2", hp->beta2, hp->beta2 >= 0.0 && hp->beta2 < 1.0);
    CHECK_RANGE(fn, "eps", hp->eps, hp->eps >= 0.0 && isfinite(hp->eps));
    CHECK_RANGE(fn, "weight_decay", hp->weight_decay, hp->weight_decay >= 0.0 && isfinite(hp->weight_decay));
    CHECK_RANGE(fn, "grad_scale", hp->grad_scale, isfinite(hp->grad_scale));
    if (hp->step < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: step = %lld must be >= 1", fn, (long long)hp->step);
    CHECK_PTR(fn, params, count > 0);
    CHECK_PTR(fn, grads, count > 0);
    CHECK_PTR(fn, m, count > 0);
    CHECK_PTR(fn, v, count > 0);

    double bc1 = 1.0 - pow(hp->beta1, (double)hp->step);
    double bc2 = 1.0 - pow(hp->beta2, (double)hp->step);
    const float decay = (float)(1.0 - hp->lr * hp->weight_decay);
    const int do_decay = hp->weight_decay != 0.0;
    const float w1 = (float)(1.0 - hp->beta1);
    const float b2 = (float)hp->beta2, omb2 = (float)(1.0 - hp->beta2);
    const float neg_step_size = (float)(-(hp->lr / bc1));
    const float bc2_sqrt = (float)sqrt(bc2);
    const float eps = (float)hp->eps, gs = hp->grad_scale;

    int64_t nb = (count + MOEI_OPT_BLOCK - 1) / MOEI_OPT_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * MOEI_OPT_BLOCK < count ? (b + 1) * MOEI_OPT_BLOCK : count;
        for (int64_t i = b * MOEI_OPT_BLOCK; i < e; i++) {
            float g = grads[i] * gs;
            float p = params[i];
            if (do_decay && (!decay_mask || decay_mask[i])) p *= decay;
            float mi = lerp_torch(m[i], g, w1);
            float vi = v[i] * b2;
            vi = vi + omb2 * g * g;
            float denom = sqrtf(vi) / bc2_sqrt + eps;
            params[i] = p + neg_step_size * mi / denom;
            m[i] = mi;
            v[i] = vi;
        }
    }
    return MOE_OK;
}

/* ---- SGD ------------------------------------------------------------------------------------------- */

moe_status moei_cpu_sgd_step(moe_ctx *ctx, int64_t count, float *params, const float *grads, float *momentum_buf,
                             const uint8_t *decay_mask, const moei_sgd_hparams *hp)
{
    const char *fn = "sgd_step";
    moe_status st = check_flat(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, hp, 1);
    CHECK_RANGE(fn, "lr", hp->lr, hp->lr >= 0.0 && isfinite(hp->lr));
    CHECK_RANGE(fn, "momentum", hp->momentum, hp->momentum >= 0.0 && isfinite(hp->momentum));
    CHECK_RANGE(fn, "dampening", hp->dampening, hp->dampening >= 0.0 && isfinite(hp->dampening));
    CHECK_RANGE(fn, "weight_decay", hp->weight_decay, hp->weight_decay >= 0.0 && isfinite(hp->weight_decay));
    CHECK_RANGE(fn, "grad_scale", hp->grad_scale, isfinite(hp->grad_scale));
    if (hp->nesterov != 0 && hp->nesterov != 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: nesterov = %d must be 0 or 1", fn, (int)hp->nesterov);
    if (hp->nesterov && (hp->momentum <= 0.0 || hp->dampening != 0.0))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: nesterov needs momentum > 0 and dampening = 0", fn);
    if (hp->step < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: step = %lld must be >= 1", fn, (long long)hp->step);
    const int use_mom = hp->momentum != 0.0;
    CHECK_PTR(fn, params, count > 0);
    CHECK_PTR(fn, grads, count > 0);
    CHECK_PTR(fn, momentum_buf, count > 0 && use_mom);

    const float wd = (float)hp->weight_decay, mom = (float)hp->momentum;
    const float omd = (float)(1.0 - hp->dampening), neg_lr = (float)(-hp->lr), gs = hp->grad_scale;
    const int do_decay = hp->weight_decay != 0.0, first = hp->step == 1, nest = hp->nesterov;

    int64_t nb = (count + MOEI_OPT_BLOCK - 1) / MOEI_OPT_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * MOEI_OPT_BLOCK < count ? (b + 1) * MOEI_OPT_BLOCK : count;
        for (int64_t i = b * MOEI_OPT_BLOCK; i < e; i++) {
            float p = params[i];
            float g = grads[i] * gs;
            if (do_decay && (!decay_mask || decay_mask[i])) g = g + wd * p;
            if (use_mom) {
                float buf = first ? g : momentum_buf[i] * mom + omd * g;
                momentum_buf[i] = buf;
                g = nest ? g + mom * buf : buf;
            }
            params[i] = p + neg_lr * g;
        }
    }
    return MOE_OK;
}

/* ---- reductions ------------------------------------------------------------------------------------ */

moe_status moei_cpu_sum_squares(moe_ctx *ctx, int64_t count, const float *x, double *out)
{
    const char *fn = "sum_squares";
    moe_status st = check_flat(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, x, count > 0);
    CHECK_PTR(fn, out, 1);
    double partial[MOEI_RED_MAX_BLOCKS];
    int64_t nb = red_blocks(count);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t i = count * b / nb, e = count * (b + 1) / nb;
        /* eight independent chains hide the add latency; their order is fixed by the code */
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (; i + 8 <= e; i += 8)
            for (int k = 0; k < 8; k++) {
                double t = (double)x[i + k];
                a[k] += t * t;
            }
        for (int k = 0; i < e; i++, k++) {
            double t = (double)x[i];
            a[k] += t * t;
        }
        partial[b] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    }
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += partial[b];
    *out = total;
    return MOE_OK;
}

moe_status moei_cpu_all_finite(moe_ctx *ctx, int64_t count, const float *x, int32_t *all_finite,
                               int64_t *first_bad)
{
    const char *fn = "all_finite";
    moe_status st = check_flat(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, x, count > 0);
    CHECK_PTR(fn, all_finite, 1);
    int64_t bad[MOEI_RED_MAX_BLOCKS];
    int64_t nb = red_blocks(count);
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = count * b / nb, e = count * (b + 1) / nb;
        /* an exponent of all ones is NaN or an infinity; the OR over a block vectorises */
        uint32_t any = 0;
        for (int64_t i = s; i < e; i++) {
            uint32_t u;
            memcpy(&u, &x[i], sizeof u);
            any |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
        }
        bad[b] = -1;
        if (any)
            for (int64_t i = s; i < e; i++)
                if (!isfinite(x[i])) {
                    bad[b] = i;
                    break;
                }
    }
    int64_t first = -1;
    for (int64_t b = 0; b < nb && first < 0; b++) first = bad[b];
    *all_finite = first < 0;
    if (first_bad) *first_bad = first;
    return MOE_OK;
}
