/* Cross-entropy against the fp64 reference: loss sum, count and per-row loss; gradient against
 * central differences of the reference (ignored targets, V = 1, n = 1 included); in-place and
 * forward-only agree bit for bit; extreme logits stay finite; results independent of the thread
 * count; bad targets and arguments fail with the position / argument named and nothing written. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/loss.h"
#include "moe/ctx.h"
#include "ref_elem.h"

static moe_ctx *new_ctx(void)
{
    moe_ctx *ctx = NULL;
    assert_int_equal(moe_ctx_create(NULL, &ctx), MOE_OK);
    return ctx;
}

static void *xcalloc(int64_t n, size_t sz)
{
    void *p = calloc((size_t)(n > 0 ? n : 1), sz);
    assert_non_null(p);
    return p;
}

typedef struct ce_fd {
    int64_t n, vocab;
    const int32_t *targets;
    double scale;
} ce_fd;

static double ce_loss(const double *logits, void *user)
{
    ce_fd *u = user;
    return u->scale * ref_cross_entropy(u->n, u->vocab, logits, u->targets, NULL, NULL);
}

/* Runs one case: forward values, gradient by finite differences, in-place and forward-only
 * variants. `spread` sets the logit range. */
static void check_case(int64_t n, int64_t vocab, const int32_t *targets, double spread, uint64_t seed)
{
    moe_ctx *ctx = new_ctx();
    ref_rng r = {seed};
    float *logits = xcalloc(n * vocab, sizeof(float)), *d = xcalloc(n * vocab, sizeof(float));
    float *inplace = xcalloc(n * vocab, sizeof(float)), *row = xcalloc(n, sizeof(float));
    double *l64 = xcalloc(n * vocab, sizeof(double)), *grad = xcalloc(n * vocab, sizeof(double));
    double *row64 = xcalloc(n, sizeof(double));
    ref_fill(&r, logits, n * vocab, -spread, spread);
    ref_to_f64(logits, l64, n * vocab);
    int64_t cnt_ref = 0;
    double sum_ref = ref_cross_entropy(n, vocab, l64, targets, row64, &cnt_ref);
    const float scale = cnt_ref > 0 ? 1.0f / (float)cnt_ref : 1.0f;

    double sum = -1.0;
    int64_t cnt = -1;
    for (int64_t i = 0; i < n * vocab; i++) d[i] = NAN; /* every element must be written */
    assert_int_equal(moei_cpu_cross_entropy(ctx, n, vocab, logits, targets, scale, d, row, &sum, &cnt), MOE_OK);
    assert_int_equal(cnt, cnt_ref);
    assert_true(fabs(sum - sum_ref) <= 1e-5 * fabs(sum_ref) + 1e-6);
    for (int64_t i = 0; i < n; i++) assert_true(fabs(row[i] - row64[i]) <= 1e-5 * fabs(row64[i]) + 1e-6);

    ce_fd u = {n, vocab, targets, (double)scale};
    ref_fd_grad(ce_loss, l64, n * vocab, &u, 1e-6, grad);
    double gnorm = 0.0;
    for (int64_t i = 0; i < n * vocab; i++) gnorm += grad[i] * grad[i];
    if (gnorm > 0.0)
        assert_true(ref_rel_err(d, grad, n * vocab) <= 1e-4);
    else
        for (int64_t i = 0; i < n * vocab; i++) assert_true(fabs(d[i]) <= 1e-7);
    for (int64_t i = 0; i < n; i++)
        if (targets[i] == MOEI_IGNORE_INDEX)
            for (int64_t j = 0; j < vocab; j++) assert_true(d[i * vocab + j] == 0.0f);

    /* in place over the logits: the same bits */
    memcpy(inplace, logits, (size_t)(n * vocab) * sizeof(float));
    double sum2 = -1.0;
    assert_int_equal(moei_cpu_cross_entropy(ctx, n, vocab, inplace, targets, scale, inplace, NULL, &sum2, NULL),
                     MOE_OK);
    assert_memory_equal(inplace, d, (size_t)(n * vocab) * sizeof(float));
    assert_memory_equal(&sum2, &sum, sizeof sum);

    /* forward only: the same loss bits */
    double sum3 = -1.0;
    int64_t cnt3 = -1;
    assert_int_equal(moei_cpu_cross_entropy(ctx, n, vocab, logits, targets, scale, NULL, NULL, &sum3, &cnt3), MOE_OK);
    assert_memory_equal(&sum3, &sum, sizeof sum);
    assert_int_equal(cnt3, cnt_ref);

    free(logits), free(d), free(inplace), free(row), free(l64), free(grad), free(row64);
    moe_ctx_destroy(ctx);
}

static void test_general(void **state)
{
    (void)state;
    int32_t t[13] = {3, -100, 0, 16, 7, 7, -100, 1, 2, 16, 5, 9, 11};
    check_case(13, 17, t, 3.0, 11);
}

static void test_single_row(void **state)
{
    (void)state;
    int32_t t[1] = {4};
    check_case(1, 9, t, 2.0, 12);
    int32_t t0[1] = {0};
    check_case(1, 2, t0, 2.0, 13);
}

static void test_vocab_one(void **state)
{
    (void)state;
    int32_t t[3] = {0, -100, 0};
    check_case(3, 1, t, 5.0, 14);
    /* V = 1: loss exactly 0, gradient exactly 0 */
    moe_ctx *ctx = new_ctx();
    float x[3] = {4.0f, -2.0f, 1e30f}, d[3] = {1, 1, 1};
    double sum = -1;
    int64_t cnt = -1;
    assert_int_equal(moei_cpu_cross_entropy(ctx, 3, 1, x, t, 0.5f, d, NULL, &sum, &cnt), MOE_OK);
    assert_true(sum == 0.0);
    assert_int_equal(cnt, 2);
    for (int i = 0; i < 3; i++) assert_true(d[i] == 0.0f);
    moe_ctx_destroy(ctx);
}

static void test_all_ignored(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    int32_t t[4] = {-100, -100, -100, -100};
    check_case(4, 5, t, 1.0, 15);
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, d[8];
    double sum = -1;
    int64_t cnt = -1;
    for (int i = 0; i < 8; i++) d[i] = 1.0f;
    assert_int_equal(moei_cpu_cross_entropy(ctx, 2, 4, x, t, 1.0f, d, NULL, &sum, &cnt), MOE_OK);
    assert_true(sum == 0.0);
    assert_int_equal(cnt, 0);
    for (int i = 0; i < 8; i++) assert_true(d[i] == 0.0f);
    /* vocab = 0 is fine when nothing is counted */
    assert_int_equal(moei_cpu_cross_entropy(ctx, 2, 0, NULL, t, 1.0f, NULL, NULL, &sum, &cnt), MOE_OK);
    assert_int_equal(cnt, 0);
    /* n = 0 */
    assert_int_equal(moei_cpu_cross_entropy(ctx, 0, 5, NULL, NULL, 1.0f, NULL, NULL, &sum, &cnt), MOE_OK);
    assert_true(sum == 0.0);
    moe_ctx_destroy(ctx);
}

/* Logits far apart must not overflow: max subtraction. */
static void test_extreme_logits(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    const int64_t n = 3, V = 4;
    float x[12] = {1000.0f, -1000.0f, 0.0f, 999.0f,  /* target 3: loss = log(1 + e^-1 + ...) + 1 */
                   -500.0f, -500.0f, -500.0f, -500.0f, /* uniform: log 4 */
                   88.0f,   -88.0f,  3e38f,  -3e38f};  /* target 0: loss ~ 3e38 (finite in double) */
    int32_t t[3] = {3, 1, 0};
    double x64[12], row64[3], row_d[3];
    float d[12], row[3];
    ref_to_f64(x, x64, 12);
    double ref = ref_cross_entropy(n, V, x64, t, row64, NULL);
    double sum;
    assert_int_equal(moei_cpu_cross_entropy(ctx, n, V, x, t, 1.0f, d, row, &sum, NULL), MOE_OK);
    assert_true(isfinite(sum));
    assert_true(fabs(sum - ref) <= 1e-6 * fabs(ref));
    for (int i = 0; i < 3; i++) row_d[i] = row[i];
    assert_true(fabs(row_d[1] - log(4.0)) <= 1e-6);
    for (int i = 0; i < 12; i++) assert_true(isfinite(d[i]));
    /* row 0: softmax ~ (e/(1+e), 0, 0, 1/(1+e)); grad(target 3) = p3 - 1 */
    double p0 = 1.0 / (1.0 + exp(-1.0));
    assert_true(fabs(d[0] - p0) <= 1e-6);
    assert_true(fabs(d[3] - (1.0 - p0 - 1.0)) <= 1e-6);
    /* row 2: all mass on element 2 -> grad (-1, 0, 1, 0) */
    assert_true(d[8] == -1.0f && d[10] == 1.0f && d[9] == 0.0f && d[11] == 0.0f);
    moe_ctx_destroy(ctx);
}

/* The same bits for 1, 2 and 3 threads on a size that runs the parallel path. */
static void test_threads(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {16};
    const int64_t n = 301, V = 257;
    float *x = xcalloc(n * V, sizeof(float));
    float *d[3] = {xcalloc(n * V, sizeof(float)), xcalloc(n * V, sizeof(float)), xcalloc(n * V, sizeof(float))};
    int32_t *t = xcalloc(n, sizeof(int32_t));
    ref_fill(&r, x, n * V, -4, 4);
    for (int64_t i = 0; i < n; i++) t[i] = (i % 7 == 3) ? -100 : ref_randint(&r, 0, (int32_t)V);
    double sums[3];
    int64_t cnts[3];
    int saved = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(k + 1);
        assert_int_equal(moei_cpu_cross_entropy(ctx, n, V, x, t, 0.01f, d[k], NULL, &sums[k], &cnts[k]), MOE_OK);
    }
    omp_set_num_threads(saved);
    for (int k = 1; k < 3; k++) {
        assert_memory_equal(&sums[k], &sums[0], sizeof(double));
        assert_int_equal(cnts[k], cnts[0]);
        assert_memory_equal(d[k], d[0], (size_t)(n * V) * sizeof(float));
    }
    double *x64 = xcalloc(n * V, sizeof(double));
    ref_to_f64(x, x64, n * V);
    double ref = ref_cross_entropy(n, V, x64, t, NULL, NULL);
    assert_true(fabs(sums[0] - ref) <= 1e-6 * fabs(ref));
    free(x), free(d[0]), free(d[1]), free(d[2]), free(t), free(x64);
    moe_ctx_destroy(ctx);
}

static void expect_fail(moe_ctx *ctx, moe_status st, const char *needle)
{
    assert_int_equal(st, MOE_ERR_INVALID_ARG);
    const char *msg = moe_ctx_last_error(ctx);
    if (!strstr(msg, needle)) fail_msg("message '%s' lacks '%s'", msg, needle);
}

static void test_bad_args(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    float x[15], keep[15];
    for (int i = 0; i < 15; i++) keep[i] = x[i] = (float)i;
    int32_t t[5] = {0, 1, -100, 2, 5};
    double sum = 42.0;
    int64_t cnt = 42;
    /* target == V, in place: the logits must survive the failure, outputs untouched */
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, x, t, 1.0f, x, NULL, &sum, &cnt), "targets[4] = 5");
    assert_memory_equal(x, keep, sizeof x);
    assert_true(sum == 42.0 && cnt == 42);
    t[4] = -1;
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, x, t, 1.0f, NULL, NULL, &sum, &cnt), "targets[4] = -1");
    t[4] = -101;
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, x, t, 1.0f, NULL, NULL, &sum, &cnt), "targets[4] = -101");
    t[4] = 0;
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, x, t, 1.0f, NULL, NULL, NULL, &cnt), "'loss_sum'");
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, NULL, t, 1.0f, NULL, NULL, &sum, &cnt), "'logits'");
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, x, NULL, 1.0f, NULL, NULL, &sum, &cnt), "'targets'");
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, -5, 3, x, t, 1.0f, NULL, NULL, &sum, &cnt), "n = -5");
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, -3, x, t, 1.0f, NULL, NULL, &sum, &cnt), "vocab = -3");
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, INT64_MAX / 2, 3, x, t, 1.0f, NULL, NULL, &sum, &cnt), "overflows");
    float d[15];
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 5, 3, x, t, NAN, d, NULL, &sum, &cnt), "grad_scale");
    expect_fail(ctx, moei_cpu_cross_entropy(ctx, 1, 0, x, t, 1.0f, NULL, NULL, &sum, &cnt), "targets[0] = 0");
    moe_ctx_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_general),        cmocka_unit_test(test_single_row), cmocka_unit_test(test_vocab_one),
        cmocka_unit_test(test_all_ignored),    cmocka_unit_test(test_extreme_logits),
        cmocka_unit_test(test_threads),        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
