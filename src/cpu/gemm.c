/* CPU GEMM through CBLAS (OpenBLAS, OpenMP build). A single GEMM lets BLAS thread itself. A grouped
 * GEMM of many small problems threads over the problems instead (each BLAS call then runs on one
 * thread, because OpenBLAS-OpenMP goes single-threaded inside a parallel region); when the
 * problems are big, BLAS threads each one in turn. */
#include <cblas.h>
#include <omp.h>

#include "core/error.h"
#include "core/ops.h"

/* Below this many flops per problem, parallelism inside one problem does not pay for itself. */
#define MOEI_SMALL_GEMM_FLOPS (2.0 * 256 * 256 * 256)

static moe_status check_gemm(moe_ctx *ctx, const char *fn, int32_t trans_a, int32_t trans_b, int64_t m, int64_t n,
                             int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, const float *c,
                             int64_t ldc)
{
    if ((trans_a != 0 && trans_a != 1) || (trans_b != 0 && trans_b != 1))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: trans flags must be 0 or 1", fn);
    if (m < 0 || n < 0 || k < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: negative size m=%lld n=%lld k=%lld", fn, (long long)m,
                         (long long)n, (long long)k);
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: a size exceeds the BLAS integer range", fn);
    /* Row-major: A is (trans_a ? k x m : m x k), so its row length is the second of those. */
    int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
    if (lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (n > 1 ? n : 1))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: leading dimension too small (lda=%lld ldb=%lld ldc=%lld)", fn,
                         (long long)lda, (long long)ldb, (long long)ldc);
    if (m > 0 && n > 0) {
        if (!c) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: C is NULL", fn);
        if (k > 0 && (!a || !b)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: A or B is NULL", fn);
    }
    return MOE_OK;
}

/* The one place that calls BLAS. Handles the edge cases BLAS implementations disagree on. */
static void gemm_kernel(int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                        const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    if (m == 0 || n == 0) return;
    if (k == 0 || alpha == 0.0f) {
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
        return;
    }
    if (beta == 0.0f) /* BLAS may compute 0 * NaN; we promise C is not read */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] = 0.0f;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m,
                (int)n, (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

static moe_status cpu_gemm(moe_ctx *ctx, int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k,
                           float alpha, const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                           int64_t ldc)
{
    moe_status st = check_gemm(ctx, "gemm", trans_a, trans_b, m, n, k, a, lda, b, ldb, c, ldc);
    if (st != MOE_OK) return st;
    gemm_kernel(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return MOE_OK;
}

static moe_status cpu_grouped_gemm(moe_ctx *ctx, int32_t trans_a, int32_t trans_b, float alpha, float beta,
                                   const moei_gemm_problem *p, int64_t count)
{
    if (count < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "grouped_gemm: count = %lld", (long long)count);
    if (count > 0 && !p) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "grouped_gemm: problems is NULL");
    double max_flops = 0.0;
    for (int64_t g = 0; g < count; g++) {
        moe_status st = check_gemm(ctx, "grouped_gemm", trans_a, trans_b, p[g].m, p[g].n, p[g].k, p[g].a, p[g].lda,
                                   p[g].b, p[g].ldb, p[g].c, p[g].ldc);
        if (st != MOE_OK) return st;
        double f = 2.0 * (double)p[g].m * (double)p[g].n * (double)p[g].k;
        if (f > max_flops) max_flops = f;
    }
    if (count > 1 && max_flops < MOEI_SMALL_GEMM_FLOPS && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t g = 0; g < count; g++)
            gemm_kernel(trans_a, trans_b, p[g].m, p[g].n, p[g].k, alpha, p[g].a, p[g].lda, p[g].b, p[g].ldb, beta,
                        p[g].c, p[g].ldc);
    } else {
        for (int64_t g = 0; g < count; g++)
            gemm_kernel(trans_a, trans_b, p[g].m, p[g].n, p[g].k, alpha, p[g].a, p[g].lda, p[g].b, p[g].ldb, beta,
                        p[g].c, p[g].ldc);
    }
    return MOE_OK;
}

const moei_ops moei_cpu_ops = {"cpu", cpu_gemm, cpu_grouped_gemm};
