/* RMSNorm and LayerNorm on the CPU, fp32 with per-row sums in double. Rows are independent, so the
 * forward and the dx pass thread over rows; the weight/bias gradients thread over column chunks and
 * sum the rows of each chunk in row order, so every bit is independent of the thread count. */
#include <math.h>
#include <omp.h>

#include "core/error.h"
#include "cpu/norm.h"

/* Below this many elements a parallel region costs more than it saves. */
#define MOEI_NORM_PAR_MIN 16384
/* Columns per task of the weight-gradient pass: whole cache lines per row, few enough to keep the
 * double accumulators in L1. */
#define MOEI_NORM_COL_CHUNK 64

static moe_status check_sizes(moe_ctx *ctx, const char *fn, int64_t n, int64_t d)
{
    if (n < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n' is negative (%lld)", fn, (long long)n);
    if (d < 1) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'd' must be >= 1 (got %lld)", fn, (long long)d);
    if (n > 0 && d > INT64_MAX / n)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: arguments 'n' x 'd' overflow", fn);
    return MOE_OK;
}

static moe_status check_eps(moe_ctx *ctx, const char *fn, float eps)
{
    if (!(eps >= 0.0f) || isinf(eps))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'eps' must be finite and >= 0 (got %g)", fn,
                         (double)eps);
    return MOE_OK;
}

#define CHECK_PTR(p)                                                                                                  \
    do {                                                                                                              \
        if (!(p)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '" #p "' is NULL", fn);                    \
    } while (0)

/* ---- RMSNorm --------------------------------------------------------------------------------- */

moe_status moei_rmsnorm_fwd(moe_ctx *ctx, int64_t n, int64_t d, float eps, const float *x, const float *w, float *y,
                            float *rstd)
{
    const char *fn = "moei_rmsnorm_fwd";
    moe_status st = check_sizes(ctx, fn, n, d);
    if (st == MOE_OK) st = check_eps(ctx, fn, eps);
    if (st != MOE_OK) return st;
    if (n == 0) return MOE_OK;
    CHECK_PTR(x);
    CHECK_PTR(w);
    CHECK_PTR(y);

#pragma omp parallel for schedule(static) if (n * d >= MOEI_NORM_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * d;
        float *yr = y + i * d;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < d; j++) ss += (double)xr[j] * (double)xr[j];
        float r = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        /* HF order: normalise first, then scale by the weight. */
        for (int64_t j = 0; j < d; j++) yr[j] = w[j] * (xr[j] * r);
        if (rstd) rstd[i] = r;
    }
    return MOE_OK;
}

moe_status moei_rmsnorm_bwd(moe_ctx *ctx, int64_t n, int64_t d, const float *x, const float *w, const float *rstd,
                            const float *dy, float *dx, float *dw)
{
    const char *fn = "moei_rmsnorm_bwd";
    moe_status st = check_sizes(ctx, fn, n, d);
    if (st != MOE_OK) return st;
    if (n == 0) return MOE_OK;
    CHECK_PTR(x);
    CHECK_PTR(w);
    CHECK_PTR(rstd);
    CHECK_PTR(dy);
    CHECK_PTR(dx);
    CHECK_PTR(dw);

    /* dw first: it reads dy, which the dx pass may overwrite when dx == dy. */
    int64_t nchunks = (d + MOEI_NORM_COL_CHUNK - 1) / MOEI_NORM_COL_CHUNK;
#pragma omp parallel for schedule(static) if (n * d >= MOEI_NORM_PAR_MIN && nchunks > 1)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t c0 = c * MOEI_NORM_COL_CHUNK;
        int64_t cw = d - c0 < MOEI_NORM_COL_CHUNK ? d - c0 : MOEI_NORM_COL_CHUNK;
        double acc[MOEI_NORM_COL_CHUNK] = {0};
        for (int64_t i = 0; i < n; i++) {
            const float *xr = x + i * d + c0, *gr = dy + i * d + c0;
            float r = rstd[i];
            for (int64_t j = 0; j < cw; j++) acc[j] += (double)gr[j] * (double)(xr[j] * r);
        }
        for (int64_t j = 0; j < cw; j++) dw[c0 + j] = (float)((double)dw[c0 + j] + acc[j]);
    }

    /* dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w. */
#pragma omp parallel for schedule(static) if (n * d >= MOEI_NORM_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * d, *gr = dy + i * d;
        float *dxr = dx + i * d;
        float r = rstd[i];
        double dot = 0.0;
#pragma omp simd reduction(+ : dot)
        for (int64_t j = 0; j < d; j++) dot += (double)(gr[j] * w[j]) * (double)(xr[j] * r);
        float c = (float)(dot / (double)d);
        for (int64_t j = 0; j < d; j++) dxr[j] = r * (gr[j] * w[j] - (xr[j] * r) * c);
    }
    return MOE_OK;
}

/* ---- LayerNorm ------------------------------------------------------------------------------- */

moe_status moei_layernorm_fwd(moe_ctx *ctx, int64_t n, int64_t d, float eps, const float *x, const float *w,
                              const float *b, float *y, float *mean, float *rstd)
{
    const char *fn = "moei_layernorm_fwd";
    moe_status st = check_sizes(ctx, fn, n, d);
    if (st == MOE_OK) st = check_eps(ctx, fn, eps);
    if (st != MOE_OK) return st;
    if (n == 0) return MOE_OK;
    CHECK_PTR(x);
    CHECK_PTR(w);
    CHECK_PTR(b);
    CHECK_PTR(y);

#pragma omp parallel for schedule(static) if (n * d >= MOEI_NORM_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * d;
        float *yr = y + i * d;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < d; j++) s += (double)xr[j];
        double mu = s / (double)d;
        /* Two passes: the variance of values far from zero stays exact. */
        double v = 0.0;
#pragma omp simd reduction(+ : v)
        for (int64_t j = 0; j < d; j++) v += ((double)xr[j] - mu) * ((double)xr[j] - mu);
        float r = (float)(1.0 / sqrt(v / (double)d + (double)eps));
        float m = (float)mu;
        for (int64_t j = 0; j < d; j++) yr[j] = ((xr[j] - m) * r) * w[j] + b[j];
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
    }
    return MOE_OK;
}

moe_status moei_layernorm_bwd(moe_ctx *ctx, int64_t n, int64_t d, const float *x, const float *w, const float *mean,
                              const float *rstd, const float *dy, float *dx, float *dw, float *db)
{
    const char *fn = "moei_layernorm_bwd";
    moe_status st = check_sizes(ctx, fn, n, d);
    if (st != MOE_OK) return st;
    if (n == 0) return MOE_OK;
    CHECK_PTR(x);
    CHECK_PTR(w);
    CHECK_PTR(mean);
    CHECK_PTR(rstd);
    CHECK_PTR(dy);
    CHECK_PTR(dx);
    CHECK_PTR(dw);
    CHECK_PTR(db);

    int64_t nchunks = (d + MOEI_NORM_COL_CHUNK - 1) / MOEI_NORM_COL_CHUNK;
#pragma omp parallel for schedule(static) if (n * d >= MOEI_NORM_PAR_MIN && nchunks > 1)
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t c0 = c * MOEI_NORM_COL_CHUNK;
        int64_t cw = d - c0 < MOEI_NORM_COL_CHUNK ? d - c0 : MOEI_NORM_COL_CHUNK;
        double accw[MOEI_NORM_COL_CHUNK] = {0}, accb[MOEI_NORM_COL_CHUNK] = {0};
        for (int64_t i = 0; i < n; i++) {
            const float *xr = x + i * d + c0, *gr = dy + i * d + c0;
            float m = mean[i], r = rstd[i];
            for (int64_t j = 0; j < cw; j++) {
                accw[j] += (double)gr[j] * (double)((xr[j] - m) * r);
                accb[j] += (double)gr[j];
            }
        }
        for (int64_t j = 0; j < cw; j++) {
            dw[c0 + j] = (float)((double)dw[c0 + j] + accw[j]);
            db[c0 + j] = (float)((double)db[c0 + j] + accb[j]);
        }
    }

    /* dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w. */
#pragma omp parallel for schedule(static) if (n * d >= MOEI_NORM_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * d, *gr = dy + i * d;
        float *dxr = dx + i * d;
        float m = mean[i], r = rstd[i];
        double sg = 0.0, sgx = 0.0;
#pragma omp simd reduction(+ : sg, sgx)
        for (int64_t j = 0; j < d; j++) {
            double g = (double)(gr[j] * w[j]);
            sg += g;
            sgx += g * (double)((xr[j] - m) * r);
        }
        float cg = (float)(sg / (double)d), cx = (float)(sgx / (double)d);
        for (int64_t j = 0; j < d; j++) dxr[j] = r * (gr[j] * w[j] - cg - ((xr[j] - m) * r) * cx);
    }
    return MOE_OK;
}
