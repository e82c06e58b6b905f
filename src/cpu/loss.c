/* CPU softmax cross-entropy with ignored targets (see loss.h).
 * Invariants: targets are validated before any write (so an in-place call that fails leaves the
 * logits intact); per-row sums of exp are in double; the loss sum adds per-block partials over a
 * partition of the rows that depends on n only, in block order, so it is thread-count independent. */
#include "cpu/loss.h"

#include <math.h>
#include <string.h>

#include "core/error.h"

/* Fixed number of row blocks for the loss reduction; the partials live on the stack. */
#define MOEI_CE_MAX_BLOCKS 256

/* One row: returns its loss (double) and, if d is given, writes scale * (softmax - onehot) into d.
 * d may equal x: x[j] is read before d[j] is written, and x[t] is saved first. */
static double ce_row(int64_t vocab, const float *x, int32_t t, float scale, float *d)
{
    float mx = x[0];
    for (int64_t j = 1; j < vocab; j++)
        if (x[j] > mx) mx = x[j];
    float xt = x[t];
    double s = 0.0;
    if (d) {
        for (int64_t j = 0; j < vocab; j++) {
            float e = expf(x[j] - mx);
            d[j] = e;
            s += (double)e;
        }
    } else {
        for (int64_t j = 0; j < vocab; j++) s += (double)expf(x[j] - mx);
    }
    if (d) {
        double et = (double)d[t];
        float f = (float)((double)scale / s);
        for (int64_t j = 0; j < vocab; j++) d[j] *= f;
        /* (e_t - s) / s in double keeps p_t - 1 accurate when p_t is close to 1 */
        d[t] = (float)((double)scale * ((et - s) / s));
    }
    return log(s) + (double)mx - (double)xt;
}

moe_status moei_cpu_cross_entropy(moe_ctx *ctx, int64_t n, int64_t vocab, const float *logits,
                                  const int32_t *targets, float grad_scale, float *d_logits, float *row_loss,
                                  double *loss_sum, int64_t *count)
{
    const char *fn = "cross_entropy";
    if (n < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n = %lld is negative", fn, (long long)n);
    if (vocab < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: vocab = %lld is negative", fn, (long long)vocab);
    if (vocab > 0 && n > INT64_MAX / vocab)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n * vocab overflows int64", fn);
    if (!loss_sum) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'loss_sum' is NULL", fn);
    if (n > 0 && !targets) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'targets' is NULL", fn);
    if (n > 0 && vocab > 0 && !logits)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'logits' is NULL", fn);
    if (d_logits && !isfinite(grad_scale))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: grad_scale = %g is not finite", fn, (double)grad_scale);
    for (int64_t i = 0; i < n; i++) {
        int32_t t = targets[i];
        if (t != MOEI_IGNORE_INDEX && (t < 0 || (int64_t)t >= vocab))
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: targets[%lld] = %d is outside [0, %lld) and not %d", fn,
                             (long long)i, (int)t, (long long)vocab, MOEI_IGNORE_INDEX);
    }

    double partial[MOEI_CE_MAX_BLOCKS];
    int64_t nblocks = n < MOEI_CE_MAX_BLOCKS ? n : MOEI_CE_MAX_BLOCKS;
    int64_t counted = 0;
#pragma omp parallel for schedule(static) reduction(+ : counted) if (n * (vocab + 1) >= (1 << 15) && nblocks > 1)
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t r0 = n * b / nblocks, r1 = n * (b + 1) / nblocks;
        double acc = 0.0;
        for (int64_t i = r0; i < r1; i++) {
            int32_t t = targets[i];
            float *d = d_logits ? d_logits + i * vocab : NULL;
            if (t == MOEI_IGNORE_INDEX) {
                if (d && vocab > 0) memset(d, 0, (size_t)vocab * sizeof(float));
                if (row_loss) row_loss[i] = 0.0f;
                continue;
            }
            double l = ce_row(vocab, logits + i * vocab, t, grad_scale, d);
            if (row_loss) row_loss[i] = (float)l;
            acc += l;
            counted++;
        }
        partial[b] = acc;
    }
    double total = 0.0;
    for (int64_t b = 0; b < nblocks; b++) total += partial[b];
    *loss_sum = total;
    if (count) *count = counted;
    return MOE_OK;
}
