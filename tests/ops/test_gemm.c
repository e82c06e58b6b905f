/* The CPU op table's gemm and grouped_gemm against a naive fp64 reference: every transpose setting,
 * alpha/beta variants, zero and odd sizes, padded leading dimensions (padding never read or
 * written), beta = 0 over NaN, the MoE case of many experts with variable (often zero) rows, bitwise
 * agreement of grouped and per-problem calls at 1 and 2 threads, and every bad argument. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/ops.h"
#include "core/test_util.h"

/* A padding value that a correct GEMM never reads (it would poison results) nor writes. */
#define PAD_BITS 0x7fc0dead

/* A row-major matrix of `rows` x `cols` with row stride `ld` >= cols; padding filled with PAD_BITS. */
typedef struct mat {
    int64_t rows, cols, ld;
    float *p;
} mat;

static mat mat_new(int64_t rows, int64_t cols, int64_t pad, test_rng *rng)
{
    mat m = {rows, cols, (cols > 1 ? cols : 1) + pad, NULL};
    size_t n = (size_t)(rows * m.ld);
    m.p = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(m.p);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < m.ld; j++)
            m.p[i * m.ld + j] = j < cols ? test_rng_sym(rng) : test_bits_f32(PAD_BITS);
    return m;
}

static void mat_free(mat *m)
{
    free(m->p);
    m->p = NULL;
}

static float *dup_floats(const float *p, size_t n)
{
    float *q = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(q);
    if (n) memcpy(q, p, n * sizeof(float));
    return q;
}

/* Element (i, p) of op(A), i.e. A[i][p] or A[p][i]. */
static double op_at(const float *a, int64_t ld, int32_t trans, int64_t i, int64_t p)
{
    return trans ? (double)a[p * ld + i] : (double)a[i * ld + p];
}

/* Check C (m x n, stride ldc) against alpha*op(A)op(B) + beta*C0 in fp64. C0 may hold NaN when
 * beta == 0 (it must then not be read). Padding bits must be untouched. */
static void check_result(const char *label, int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, float alpha,
                         const float *a, int64_t lda, const float *b, int64_t ldb, float beta, const float *c0,
                         const float *c, int64_t ldc)
{
    const double tol = 1e-5 * sqrt((double)(k > 1 ? k : 1));
    for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
            double acc = 0.0, mag = 0.0;
            for (int64_t p = 0; p < k; p++) {
                double x = op_at(a, lda, ta, i, p) * op_at(b, ldb, tb, p, j);
                acc += x;
                mag += fabs(x);
            }
            double ref = (double)alpha * acc;
            mag *= fabs((double)alpha);
            if (beta != 0.0f) {
                ref += (double)beta * (double)c0[i * ldc + j];
                mag += fabs((double)beta * (double)c0[i * ldc + j]);
            }
            double got = (double)c[i * ldc + j];
            if (!isfinite(got) || fabs(got - ref) > tol * mag + 1e-30)
                fail_msg("%s: ta=%d tb=%d m=%lld n=%lld k=%lld alpha=%g beta=%g: C[%lld][%lld] = %.9g, ref %.9g "
                         "(tol %.3g)",
                         label, ta, tb, (long long)m, (long long)n, (long long)k, (double)alpha, (double)beta,
                         (long long)i, (long long)j, got, ref, tol * mag);
        }
        for (int64_t j = n; j < ldc; j++)
            if (test_f32_bits(c[i * ldc + j]) != test_f32_bits(c0[i * ldc + j]))
                fail_msg("%s: padding C[%lld][%lld] was written", label, (long long)i, (long long)j);
    }
}

static moe_ctx *g_ctx;

static int setup(void **state)
{
    (void)state;
    return moe_ctx_create(NULL, &g_ctx) == MOE_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    moe_ctx_destroy(g_ctx);
    return 0;
}

/* One gemm case with fresh random data; padding on A, B and C as given. */
static void run_gemm_case(int32_t ta, int32_t tb, int64_t m, int64_t n, int64_t k, float alpha, float beta,
                          int64_t pad_a, int64_t pad_b, int64_t pad_c, test_rng *rng)
{
    mat a = ta ? mat_new(k, m, pad_a, rng) : mat_new(m, k, pad_a, rng);
    mat b = tb ? mat_new(n, k, pad_b, rng) : mat_new(k, n, pad_b, rng);
    mat c = mat_new(m, n, pad_c, rng);
    if (beta == 0.0f) /* C must not be read: NaN would otherwise poison the result */
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c.p[i * c.ld + j] = NAN;
    float *c0 = dup_floats(c.p, (size_t)(m * c.ld));
    moe_status st = moei_cpu_ops.gemm(g_ctx, ta, tb, m, n, k, alpha, a.p, a.ld, b.p, b.ld, beta, c.p, c.ld);
    if (st != MOE_OK) fail_msg("gemm failed: %s", moe_last_error());
    check_result("gemm", ta, tb, m, n, k, alpha, a.p, a.ld, b.p, b.ld, beta, c0, c.p, c.ld);
    free(c0);
    mat_free(&a);
    mat_free(&b);
    mat_free(&c);
}

static const float alphas[] = {1.0f, 1.0f, -0.5f, 0.75f, 0.0f, 2.0f};
static const float betas[] = {0.0f, 1.0f, 2.0f, -1.25f, 0.5f, 0.0f};
#define N_AB (sizeof alphas / sizeof alphas[0])

static void gemm_shapes(int threads)
{
    omp_set_num_threads(threads);
    test_rng rng = {0x5EED0001ULL + (uint64_t)threads};
    const int64_t shapes[][3] = {{0, 5, 7},   {5, 0, 7},   {5, 7, 0},    {0, 0, 0},    {1, 1, 1},    {1, 9, 4},
                                 {9, 1, 4},   {3, 4, 1},   {17, 33, 5},  {33, 17, 5},  {5, 17, 33},  {64, 64, 64},
                                 {31, 1, 63}, {2, 3, 129}, {200, 150, 96}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int32_t ta = 0; ta <= 1; ta++)
            for (int32_t tb = 0; tb <= 1; tb++)
                for (size_t v = 0; v < N_AB; v++) {
                    int big = shapes[s][0] * shapes[s][1] * shapes[s][2] > 100000;
                    if (big && v > 1) continue; /* the big shape with two alpha/beta pairs is enough */
                    int64_t pad = (int64_t)((s + v + (size_t)ta) % 3); /* 0, 1 or 2 extra columns */
                    run_gemm_case(ta, tb, shapes[s][0], shapes[s][1], shapes[s][2], alphas[v], betas[v], pad,
                                  (pad + 1) % 3, 2 - pad, &rng);
                }
    /* random small shapes */
    for (int i = 0; i < 60; i++) {
        int64_t m = test_rng_range(&rng, 0, 40), n = test_rng_range(&rng, 0, 40), k = test_rng_range(&rng, 0, 40);
        size_t v = (size_t)test_rng_range(&rng, 0, (int64_t)N_AB - 1);
        int64_t pa = test_rng_range(&rng, 0, 5), pb = test_rng_range(&rng, 0, 5), pc = test_rng_range(&rng, 0, 5);
        run_gemm_case((int32_t)(i & 1), (int32_t)((i >> 1) & 1), m, n, k, alphas[v], betas[v], pa, pb, pc, &rng);
    }
}

static void test_gemm_1_thread(void **state)
{
    (void)state;
    int saved = omp_get_max_threads();
    gemm_shapes(1);
    omp_set_num_threads(saved);
}

static void test_gemm_2_threads(void **state)
{
    (void)state;
    int saved = omp_get_max_threads();
    gemm_shapes(2);
    omp_set_num_threads(saved);
}

/* k = 0: C = beta * C, exactly; with beta = 0 even over NaN. */
static void test_gemm_k_zero(void **state)
{
    (void)state;
    float c[6] = {1.0f, -2.0f, 3.5f, NAN, INFINITY, 0.25f};
    float a[1] = {0}, b[1] = {0};
    ASSERT_OK(moei_cpu_ops.gemm(g_ctx, 0, 0, 2, 2, 0, 1.0f, a, 1, b, 2, 0.5f, c, 3));
    assert_true(c[0] == 0.5f && c[1] == -1.0f && c[3] != c[3] && c[4] == INFINITY);
    assert_true(c[2] == 3.5f && c[5] == 0.25f); /* padding column untouched */
    float d[4] = {NAN, NAN, NAN, NAN};
    ASSERT_OK(moei_cpu_ops.gemm(g_ctx, 1, 1, 2, 2, 0, 3.0f, NULL, 2, NULL, 1, 0.0f, d, 2));
    for (int i = 0; i < 4; i++) assert_true(d[i] == 0.0f);
    /* m or n = 0 with NULL pointers everywhere is a no-op */
    ASSERT_OK(moei_cpu_ops.gemm(g_ctx, 0, 0, 0, 5, 3, 1.0f, NULL, 3, NULL, 5, 0.0f, NULL, 5));
    ASSERT_OK(moei_cpu_ops.gemm(g_ctx, 0, 0, 4, 0, 3, 1.0f, NULL, 3, NULL, 1, 0.0f, NULL, 1));
}

/* ---- grouped --------------------------------------------------------------------------------------- */

typedef struct group_case {
    int64_t count;
    moei_gemm_problem *p;
    mat *a, *b, *c;
    float **c0;
} group_case;

/* `count` problems with row counts rows[g], shared n and k, per-problem padding. */
static group_case group_new(int32_t ta, int32_t tb, int64_t count, const int64_t *rows, int64_t n, int64_t k,
                            int nan_c, test_rng *rng)
{
    group_case g;
    g.count = count;
    g.p = calloc((size_t)(count ? count : 1), sizeof *g.p);
    g.a = calloc((size_t)(count ? count : 1), sizeof *g.a);
    g.b = calloc((size_t)(count ? count : 1), sizeof *g.b);
    g.c = calloc((size_t)(count ? count : 1), sizeof *g.c);
    g.c0 = calloc((size_t)(count ? count : 1), sizeof *g.c0);
    assert_true(g.p && g.a && g.b && g.c && g.c0);
    for (int64_t i = 0; i < count; i++) {
        int64_t m = rows[i];
        int64_t pad = i % 3;
        g.a[i] = ta ? mat_new(k, m, pad, rng) : mat_new(m, k, pad, rng);
        g.b[i] = tb ? mat_new(n, k, (pad + 2) % 3, rng) : mat_new(k, n, (pad + 2) % 3, rng);
        g.c[i] = mat_new(m, n, (pad + 1) % 3, rng);
        if (nan_c)
            for (int64_t r = 0; r < m; r++)
                for (int64_t j = 0; j < n; j++) g.c[i].p[r * g.c[i].ld + j] = NAN;
        g.c0[i] = dup_floats(g.c[i].p, (size_t)(m * g.c[i].ld));
        g.p[i] = (moei_gemm_problem){m, n, k, g.a[i].p, g.a[i].ld, g.b[i].p, g.b[i].ld, g.c[i].p, g.c[i].ld};
    }
    return g;
}

static void group_free(group_case *g)
{
    for (int64_t i = 0; i < g->count; i++) {
        mat_free(&g->a[i]);
        mat_free(&g->b[i]);
        mat_free(&g->c[i]);
        free(g->c0[i]);
    }
    free(g->p);
    free(g->a);
    free(g->b);
    free(g->c);
    free(g->c0);
}

/* Run grouped_gemm, check every problem against fp64, then rerun each problem through gemm on a
 * fresh copy of its C and require the same bits as gemm on the current or on one thread. */
static void run_grouped(const char *label, int32_t ta, int32_t tb, float alpha, float beta, group_case *g)
{
    moe_status st = moei_cpu_ops.grouped_gemm(g_ctx, ta, tb, alpha, beta, g->p, g->count);
    if (st != MOE_OK) fail_msg("%s: grouped_gemm failed: %s", label, moe_last_error());
    for (int64_t i = 0; i < g->count; i++) {
        const moei_gemm_problem *p = &g->p[i];
        check_result(label, ta, tb, p->m, p->n, p->k, alpha, p->a, p->lda, p->b, p->ldb, beta, g->c0[i], p->c, p->ldc);
        size_t n = (size_t)(p->m * p->ldc);
        float *single = dup_floats(g->c0[i], n);
        st = moei_cpu_ops.gemm(g_ctx, ta, tb, p->m, p->n, p->k, alpha, p->a, p->lda, p->b, p->ldb, beta, single,
                               p->ldc);
        if (st != MOE_OK) fail_msg("%s: gemm failed: %s", label, moe_last_error());
        if (n && memcmp(single, p->c, n * sizeof(float)) != 0) {
            /* The grouped call runs small problems in parallel over the group, each on one BLAS
             * thread; threaded BLAS may split a problem's sums differently. Either way the result
             * must be exactly what BLAS gives for that problem on one thread or on all of them. */
            int saved = omp_get_max_threads();
            memcpy(single, g->c0[i], n * sizeof(float));
            omp_set_num_threads(1);
            st = moei_cpu_ops.gemm(g_ctx, ta, tb, p->m, p->n, p->k, alpha, p->a, p->lda, p->b, p->ldb, beta, single,
                                   p->ldc);
            omp_set_num_threads(saved);
            if (st != MOE_OK || memcmp(single, p->c, n * sizeof(float)) != 0)
                fail_msg("%s: problem %lld (m=%lld n=%lld k=%lld ta=%d tb=%d) differs bitwise from a single gemm", label,
                         (long long)i, (long long)p->m, (long long)p->n, (long long)p->k, ta, tb);
        }
        free(single);
    }
}

static void grouped_moe_cases(int threads)
{
    omp_set_num_threads(threads);
    test_rng rng = {0xE7E7ULL + (uint64_t)threads};
    for (int rep = 0; rep < 8; rep++) {
        int64_t experts = test_rng_range(&rng, 8, 64);
        int64_t n = test_rng_range(&rng, 1, 48), k = test_rng_range(&rng, 1, 48);
        if (rep == 0) {
            n = 33;
            k = 17;
        }
        int64_t rows[64];
        for (int64_t e = 0; e < experts; e++)
            rows[e] = (test_rng_u32(&rng) % 4 == 0) ? 0 : test_rng_range(&rng, 0, 40); /* many empty experts */
        rows[0] = 0;
        rows[experts - 1] = 40;
        int32_t ta = (int32_t)(rep & 1), tb = (int32_t)((rep >> 1) & 1);
        size_t v = (size_t)rep % N_AB;
        group_case g = group_new(ta, tb, experts, rows, n, k, betas[v] == 0.0f, &rng);
        char label[64];
        snprintf(label, sizeof label, "moe grouped rep %d, %d thread(s)", rep, threads);
        run_grouped(label, ta, tb, alphas[v], betas[v], &g);
        group_free(&g);
    }
    /* a few large problems (BLAS threads each in turn), and large mixed with small and empty ones */
    const int64_t big_rows[3] = {150, 160, 170};
    group_case g = group_new(0, 1, 3, big_rows, 130, 140, 0, &rng);
    run_grouped("large groups", 0, 1, 1.0f, 1.0f, &g);
    group_free(&g);
    const int64_t mixed[5] = {0, 200, 3, 0, 130};
    g = group_new(1, 0, 5, mixed, 128, 129, 1, &rng);
    run_grouped("mixed groups", 1, 0, -1.0f, 0.0f, &g);
    group_free(&g);
    /* zero and one problem */
    g = group_new(0, 0, 0, NULL, 4, 4, 0, &rng);
    run_grouped("no problems", 0, 0, 1.0f, 0.0f, &g);
    group_free(&g);
    ASSERT_OK(moei_cpu_ops.grouped_gemm(g_ctx, 0, 0, 1.0f, 0.0f, NULL, 0));
    const int64_t one[1] = {7};
    g = group_new(1, 1, 1, one, 5, 3, 0, &rng);
    run_grouped("one problem", 1, 1, 0.5f, 2.0f, &g);
    group_free(&g);
    /* every problem k = 0 (C = beta C) */
    const int64_t kz[4] = {3, 0, 5, 2};
    g = group_new(0, 0, 4, kz, 6, 0, 0, &rng);
    run_grouped("k = 0 groups", 0, 0, 1.0f, -2.0f, &g);
    group_free(&g);
}

static void test_grouped_1_thread(void **state)
{
    (void)state;
    int saved = omp_get_max_threads();
    grouped_moe_cases(1);
    omp_set_num_threads(saved);
}

static void test_grouped_2_threads(void **state)
{
    (void)state;
    int saved = omp_get_max_threads();
    grouped_moe_cases(2);
    omp_set_num_threads(saved);
}

/* ---- bad arguments ----------------------------------------------------------------------------- */

static void test_gemm_bad_args(void **state)
{
    (void)state;
    float a[64], b[64], c[64];
    for (int i = 0; i < 64; i++) a[i] = b[i] = c[i] = 1.0f;
    const moei_ops *ops = &moei_cpu_ops;
    assert_non_null(ops->name);
    moe_ctx *x = g_ctx;
    /* m = 4, n = 5, k = 3 untransposed: lda >= 3, ldb >= 5, ldc >= 5 */
    ASSERT_OK(ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 5));
    ASSERT_FAILS_CTX(x, ops->gemm(x, 2, 0, 4, 5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "trans");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, -1, 4, 5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "trans");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, -1, 5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "negative", "m=-1");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, -5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "negative", "n=-5");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, -3, 1.0f, a, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "negative", "k=-3");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, 2, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "lda=2");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 1, 0, 4, 5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "lda=3"); /* transposed A is k x m: lda >= 4 */
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, 3, b, 4, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "ldb=4");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 1, 4, 5, 3, 1.0f, a, 3, b, 2, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "ldb=2"); /* transposed B is n x k: ldb >= 3 */
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, 3, b, 5, 0.0f, c, 4), MOE_ERR_INVALID_ARG, "gemm",
                     "ldc=4");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 0, 0, 0, 1.0f, a, 0, b, 1, 0.0f, c, 1), MOE_ERR_INVALID_ARG, "gemm",
                     "lda=0");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, -3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "leading dimension");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, NULL, 3, b, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "NULL");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, 3, NULL, 5, 0.0f, c, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "NULL");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 4, 5, 3, 1.0f, a, 3, b, 5, 0.0f, NULL, 5), MOE_ERR_INVALID_ARG, "gemm",
                     "C is NULL");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, (int64_t)INT32_MAX + 1, 1, 1, 1.0f, a, 1, b, 1, 0.0f, c, 1),
                     MOE_ERR_INVALID_ARG, "gemm", "range");
    ASSERT_FAILS_CTX(x, ops->gemm(x, 0, 0, 1, 1, 1, 1.0f, a, (int64_t)INT32_MAX + 1, b, 1, 0.0f, c, 1),
                     MOE_ERR_INVALID_ARG, "gemm", "range");
    /* none of the failures wrote C (set to 1 above and by the one successful call: 3 for k = 3) */
    for (int i = 0; i < 20; i++) assert_true(c[i] == 3.0f);
    for (int i = 20; i < 64; i++) assert_true(c[i] == 1.0f);
}

static void test_grouped_bad_args(void **state)
{
    (void)state;
    moe_ctx *x = g_ctx;
    const moei_ops *ops = &moei_cpu_ops;
    float a[64], b[64], c[3][64];
    for (int i = 0; i < 64; i++) a[i] = b[i] = c[0][i] = c[1][i] = c[2][i] = 1.0f;
    moei_gemm_problem p[3] = {
        {2, 3, 4, a, 4, b, 3, c[0], 3},
        {0, 3, 4, a, 4, b, 3, c[1], 3},
        {5, 3, 4, a, 4, b, 3, c[2], 3},
    };
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, p, -1), MOE_ERR_INVALID_ARG, "grouped_gemm", "count");
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, NULL, 2), MOE_ERR_INVALID_ARG, "grouped_gemm",
                     "problems");
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 3, 0, 1.0f, 0.0f, p, 3), MOE_ERR_INVALID_ARG, "grouped_gemm", "trans");
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 1, 1.0f, 0.0f, p, 3), MOE_ERR_INVALID_ARG, "grouped_gemm",
                     "leading dimension"); /* transposed B (3 x 4) needs ldb >= 4 */
    /* one bad problem in the middle: nothing is computed for any problem */
    moei_gemm_problem q[3];
    memcpy(q, p, sizeof q);
    q[2].m = -5;
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, q, 3), MOE_ERR_INVALID_ARG, "grouped_gemm", "negative");
    memcpy(q, p, sizeof q);
    q[2].ldc = 2;
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, q, 3), MOE_ERR_INVALID_ARG, "grouped_gemm", "ldc=2");
    memcpy(q, p, sizeof q);
    q[2].b = NULL;
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, q, 3), MOE_ERR_INVALID_ARG, "grouped_gemm", "NULL");
    memcpy(q, p, sizeof q);
    q[2].c = NULL;
    ASSERT_FAILS_CTX(x, ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, q, 3), MOE_ERR_INVALID_ARG, "grouped_gemm", "NULL");
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < 64; i++) assert_true(c[g][i] == 1.0f);
    /* an empty problem may have NULL pointers */
    memcpy(q, p, sizeof q);
    q[1].a = NULL;
    q[1].b = NULL;
    q[1].c = NULL;
    ASSERT_OK(ops->grouped_gemm(x, 0, 0, 1.0f, 0.0f, q, 3));
    assert_true(c[0][0] == 4.0f && c[2][14] == 4.0f && c[2][15] == 1.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemm_1_thread),
        cmocka_unit_test(test_gemm_2_threads),
        cmocka_unit_test(test_gemm_k_zero),
        cmocka_unit_test(test_grouped_1_thread),
        cmocka_unit_test(test_grouped_2_threads),
        cmocka_unit_test(test_gemm_bad_args),
        cmocka_unit_test(test_grouped_bad_args),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
