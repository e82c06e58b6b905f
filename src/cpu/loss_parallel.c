/* Vocabulary-parallel cross-entropy (see loss_parallel.h). The arithmetic follows
 * moei_cpu_cross_entropy row for row (float exponentials of max-subtracted logits, their sum in
 * double, the target's gradient as (e_t - S) / S), so a split vocabulary differs from the whole one
 * only by the rounding of the per-shard sums. Rows are independent; sums run in row order. */
#include "cpu/loss_parallel.h"

#include <math.h>
#include <string.h>

#include "core/error.h"
#include "cpu/loss.h"

static moe_status check_targets(moe_ctx *ctx, const char *fn, int64_t n, int64_t vocab, const int32_t *targets)
{
    if (n < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n = %lld is negative", fn, (long long)n);
    if (n > 0 && !targets) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'targets' is NULL", fn);
    for (int64_t i = 0; i < n; i++) {
        int32_t t = targets[i];
        if (t != MOEI_IGNORE_INDEX && (t < 0 || (int64_t)t >= vocab))
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: targets[%lld] = %d is outside [0, %lld) and not %d", fn,
                             (long long)i, (int)t, (long long)vocab, MOEI_IGNORE_INDEX);
    }
    return MOE_OK;
}

moe_status moei_cpu_ce_shard_stats(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t v0, int64_t v_local,
                                   const float *logits, const int32_t *targets, float *stats)
{
    const char *fn = "ce_shard_stats";
    if (v_local < 1 || v0 < 0 || v0 + v_local > vocab)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: shard [%lld, %lld) is not a non-empty part of [0, %lld)", fn,
                         (long long)v0, (long long)(v0 + v_local), (long long)vocab);
    moe_status st = check_targets(ctx, fn, n, vocab, targets);
    if (st != MOE_OK) return st;
    if (n > 0 && (!logits || !stats)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: logits or stats is NULL", fn);
#pragma omp parallel for schedule(static) if (n * v_local >= (1 << 15))
    for (int64_t i = 0; i < n; i++) {
        const float *x = logits + i * v_local;
        float *o = stats + 3 * i;
        const int32_t t = targets[i];
        if (t == MOEI_IGNORE_INDEX) {
            o[0] = o[1] = o[2] = 0.0f;
            continue;
        }
        float mx = x[0];
        for (int64_t j = 1; j < v_local; j++)
            if (x[j] > mx) mx = x[j];
        double s = 0.0;
        for (int64_t j = 0; j < v_local; j++) s += (double)expf(x[j] - mx);
        o[0] = mx;
        o[1] = (float)s;
        o[2] = (int64_t)t >= v0 && (int64_t)t < v0 + v_local ? x[t - v0] : 0.0f;
    }
    return MOE_OK;
}

moe_status moei_cpu_ce_shard_combine(moe_ctx *ctx, int64_t n, int32_t p, const float *all_stats,
                                     const int32_t *targets, double *row_ms, double *loss_sum, int64_t *count)
{
    const char *fn = "ce_shard_combine";
    if (p < 1) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: p = %d (must be >= 1)", fn, (int)p);
    if (!loss_sum) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'loss_sum' is NULL", fn);
    if (n < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n = %lld is negative", fn, (long long)n);
    if (n > 0 && (!all_stats || !targets || !row_ms))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: all_stats, targets or row_ms is NULL", fn);
    double total = 0.0;
    int64_t counted = 0;
    for (int64_t i = 0; i < n; i++) {
        double *o = row_ms + 2 * i;
        if (targets[i] == MOEI_IGNORE_INDEX) {
            o[0] = o[1] = 0.0;
            continue;
        }
        float mx = all_stats[3 * i];
        for (int32_t r = 1; r < p; r++) {
            float m = all_stats[((int64_t)r * n + i) * 3];
            if (m > mx) mx = m;
        }
        double s = 0.0, xt = 0.0;
        for (int32_t r = 0; r < p; r++) {
            const float *st = all_stats + ((int64_t)r * n + i) * 3;
            s += (double)st[1] * exp((double)st[0] - (double)mx);
            xt += (double)st[2]; /* one shard holds the target; the others add 0 */
        }
        o[0] = mx;
        o[1] = s;
        total += log(s) + (double)mx - xt;
        counted++;
    }
    *loss_sum = total;
    if (count) *count = counted;
    return MOE_OK;
}

moe_status moei_cpu_ce_shard_backward(moe_ctx *ctx, int64_t n, int64_t v0, int64_t v_local, const float *logits,
                                      const int32_t *targets, const double *row_ms, float scale, float *d_logits)
{
    const char *fn = "ce_shard_backward";
    if (n < 0 || v_local < 0 || v0 < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n = %lld, v0 = %lld, v_local = %lld (none may be negative)", fn,
                         (long long)n, (long long)v0, (long long)v_local);
    if (!isfinite(scale)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: scale = %g is not finite", fn, (double)scale);
    if (n > 0 && v_local > 0 && (!logits || !targets || !row_ms || !d_logits))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: a buffer argument is NULL", fn);
#pragma omp parallel for schedule(static) if (n * v_local >= (1 << 15))
    for (int64_t i = 0; i < n; i++) {
        const float *x = logits + i * v_local;
        float *d = d_logits + i * v_local;
        const int32_t t = targets[i];
        if (t == MOEI_IGNORE_INDEX) {
            memset(d, 0, (size_t)v_local * sizeof(float));
            continue;
        }
        const float mx = (float)row_ms[2 * i];
        const double s = row_ms[2 * i + 1];
        const float f = (float)((double)scale / s);
        const int64_t tl = (int64_t)t - v0;
        double et = 0.0;
        for (int64_t j = 0; j < v_local; j++) {
            float e = expf(x[j] - mx);
            if (j == tl) et = (double)e;
            d[j] = e * f;
        }
        /* (e_t - S) / S in double keeps p_t - 1 accurate when p_t is close to 1 */
        if (tl >= 0 && tl < v_local) d[tl] = (float)((double)scale * ((et - s) / s));
    }
    return MOE_OK;
}
