/* Optimizer kernels against fp64 references written from torch's documented algorithms: AdamW over
 * several steps (decay on, masked off, per-range), a hand-computed AdamW step, SGD with and without
 * momentum / dampening / nesterov / weight decay; sum of squares against an fp64 sum and bit-equal
 * for 1, 2, 3 threads; non-finite detection at the first, middle and last element; bad arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/optim_kernels.h"
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

static moei_adamw_hparams adamw_hp(double lr, double wd, int64_t step)
{
    moei_adamw_hparams hp = {lr, 0.9, 0.999, 1e-8, wd, step, 1.0f};
    return hp;
}

/* ---- AdamW ---- */

static void test_adamw_known_value(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    /* step 1, p = 1, g = 0.5, lr = 0.1, wd = 0.01: p = 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) */
    float p = 1.0f, g = 0.5f, m = 0.0f, v = 0.0f;
    moei_adamw_hparams hp = adamw_hp(0.1, 0.01, 1);
    assert_int_equal(moei_cpu_adamw_step(ctx, 1, &p, &g, &m, &v, NULL, &hp), MOE_OK);
    assert_true(fabs(p - (0.999 - 0.05 / (0.5 + 1e-8))) <= 3e-7);
    assert_true(fabs(m - 0.05) <= 1e-8 && fabs(v - 0.00025) <= 1e-10);
    moe_ctx_destroy(ctx);
}

/* Runs `steps` AdamW steps on the library and the reference with the same fp32 gradients. */
static void run_adamw(int64_t n, int steps, double lr, double wd, const uint8_t *mask, uint64_t seed, float *p,
                      float *m, float *v, double *p64, double *m64, double *v64)
{
    moe_ctx *ctx = new_ctx();
    ref_rng r = {seed};
    float *g = xcalloc(n, sizeof(float));
    double *g64 = xcalloc(n, sizeof(double));
    ref_fill(&r, p, n, -1, 1);
    ref_to_f64(p, p64, n);
    memset(m, 0, (size_t)n * sizeof(float));
    memset(v, 0, (size_t)n * sizeof(float));
    memset(m64, 0, (size_t)n * sizeof(double));
    memset(v64, 0, (size_t)n * sizeof(double));
    for (int s = 1; s <= steps; s++) {
        /* gradients of varied scale per element, including tiny ones */
        for (int64_t i = 0; i < n; i++) g[i] = (float)(ref_uniform(&r, -1, 1) * pow(10.0, -(double)(i % 5)));
        ref_to_f64(g, g64, n);
        moei_adamw_hparams hp = adamw_hp(lr, wd, s);
        assert_int_equal(moei_cpu_adamw_step(ctx, n, p, g, m, v, mask, &hp), MOE_OK);
        ref_adamw_step(n, p64, g64, m64, v64, mask, lr, 0.9, 0.999, 1e-8, wd, s);
    }
    free(g), free(g64);
    moe_ctx_destroy(ctx);
}

static void test_adamw_steps(void **state)
{
    (void)state;
    const int64_t n = 1003;
    float *p = xcalloc(n, sizeof(float)), *m = xcalloc(n, sizeof(float)), *v = xcalloc(n, sizeof(float));
    double *p64 = xcalloc(n, sizeof(double)), *m64 = xcalloc(n, sizeof(double)), *v64 = xcalloc(n, sizeof(double));
    double *pall = xcalloc(n, sizeof(double)), *mt = xcalloc(n, sizeof(double)), *vt = xcalloc(n, sizeof(double));
    uint8_t *mask = xcalloc(n, 1);
    ref_rng r = {61};
    for (int64_t i = 0; i < n; i++) mask[i] = ref_uniform(&r, 0, 1) < 0.6;

    /* weight decay on every element */
    run_adamw(n, 10, 1e-2, 0.1, NULL, 62, p, m, v, p64, m64, v64);
    assert_true(ref_rel_err(p, p64, n) <= 1e-6);
    assert_true(ref_rel_err(m, m64, n) <= 1e-6);
    assert_true(ref_rel_err(v, v64, n) <= 1e-6);
    for (int64_t i = 0; i < n; i++) assert_true(fabs(p[i] - p64[i]) <= 1e-6 * (fabs(p64[i]) + 1.0));
    memcpy(pall, p64, (size_t)n * sizeof(double));

    /* masked: the reference honours the mask independently */
    run_adamw(n, 10, 1e-2, 0.1, mask, 62, p, m, v, p64, m64, v64);
    assert_true(ref_rel_err(p, p64, n) <= 1e-6);
    for (int64_t i = 0; i < n; i++) assert_true(fabs(p[i] - p64[i]) <= 1e-6 * (fabs(p64[i]) + 1.0));
    /* the mask matters far above the tolerance, so the comparison above has power */
    double diff = 0.0;
    for (int64_t i = 0; i < n; i++) diff = fmax(diff, fabs(p[i] - pall[i]));
    assert_true(diff > 1e-4);

    /* masked off entirely == no weight decay */
    memset(mask, 0, (size_t)n);
    run_adamw(n, 10, 1e-2, 0.1, mask, 63, p, m, v, p64, m64, v64);
    run_adamw(n, 10, 1e-2, 0.0, NULL, 63, p, m, v, pall, mt, vt);
    assert_true(ref_rel_err(p, p64, n) <= 1e-6);
    assert_true(ref_rel_err(p, pall, n) <= 1e-6);
    free(p), free(m), free(v), free(p64), free(m64), free(v64), free(pall), free(mt), free(vt), free(mask);
}

/* Per-range exclusion and grad_scale folding agree bit for bit with their spelled-out forms;
 * 1 and 2 threads agree bit for bit on a size that runs in parallel. */
static void test_adamw_equivalences(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {64};
    const int64_t n = 100003, k = 40001;
    float *p0 = xcalloc(n, sizeof(float)), *g = xcalloc(n, sizeof(float)), *g2 = xcalloc(n, sizeof(float));
    float *pa = xcalloc(n, sizeof(float)), *ma = xcalloc(n, sizeof(float)), *va = xcalloc(n, sizeof(float));
    float *pb = xcalloc(n, sizeof(float)), *mb = xcalloc(n, sizeof(float)), *vb = xcalloc(n, sizeof(float));
    uint8_t *mask = xcalloc(n, 1);
    ref_fill(&r, p0, n, -1, 1);
    ref_fill(&r, g, n, -1, 1);
    for (int64_t i = 0; i < n; i++) mask[i] = i < k;
    for (int64_t i = 0; i < n; i++) g2[i] = g[i] * 0.37f;
    memcpy(pa, p0, (size_t)n * sizeof(float));
    memcpy(pb, p0, (size_t)n * sizeof(float));
    int saved = omp_get_max_threads();
    for (int s = 1; s <= 3; s++) {
        moei_adamw_hparams hp = adamw_hp(1e-3, 0.05, s);
        omp_set_num_threads(1);
        assert_int_equal(moei_cpu_adamw_step(ctx, n, pa, g2, ma, va, mask, &hp), MOE_OK);
        /* the same with 2 threads, per range, and with the scale folded in */
        omp_set_num_threads(2);
        hp.grad_scale = 0.37f;
        assert_int_equal(moei_cpu_adamw_step(ctx, k, pb, g, mb, vb, NULL, &hp), MOE_OK);
        hp.weight_decay = 0.0;
        assert_int_equal(moei_cpu_adamw_step(ctx, n - k, pb + k, g + k, mb + k, vb + k, NULL, &hp), MOE_OK);
    }
    omp_set_num_threads(saved);
    assert_memory_equal(pa, pb, (size_t)n * sizeof(float));
    assert_memory_equal(ma, mb, (size_t)n * sizeof(float));
    assert_memory_equal(va, vb, (size_t)n * sizeof(float));
    free(p0), free(g), free(g2), free(pa), free(ma), free(va), free(pb), free(mb), free(vb), free(mask);
    moe_ctx_destroy(ctx);
}

/* ---- SGD ---- */

static void check_sgd(double momentum, double dampening, double wd, int nesterov, int use_mask)
{
    moe_ctx *ctx = new_ctx();
    ref_rng r = {71};
    const int64_t n = 517;
    float *p = xcalloc(n, sizeof(float)), *g = xcalloc(n, sizeof(float)), *buf = xcalloc(n, sizeof(float));
    double *p64 = xcalloc(n, sizeof(double)), *g64 = xcalloc(n, sizeof(double)), *b64 = xcalloc(n, sizeof(double));
    uint8_t *mask = xcalloc(n, 1);
    for (int64_t i = 0; i < n; i++) mask[i] = (i % 3) != 0;
    ref_fill(&r, p, n, -1, 1);
    ref_to_f64(p, p64, n);
    for (int64_t i = 0; i < n; i++) buf[i] = NAN; /* ignored on step 1 */
    for (int s = 1; s <= 6; s++) {
        ref_fill(&r, g, n, -1, 1);
        ref_to_f64(g, g64, n);
        moei_sgd_hparams hp = {0.05, momentum, dampening, wd, nesterov, s, 1.0f};
        assert_int_equal(moei_cpu_sgd_step(ctx, n, p, g, momentum != 0.0 ? buf : NULL, use_mask ? mask : NULL, &hp),
                         MOE_OK);
        ref_sgd_step(n, p64, g64, b64, use_mask ? mask : NULL, 0.05, momentum, dampening, wd, nesterov, s);
    }
    assert_true(ref_rel_err(p, p64, n) <= 1e-6);
    if (momentum != 0.0) assert_true(ref_rel_err(buf, b64, n) <= 1e-6);
    free(p), free(g), free(buf), free(p64), free(g64), free(b64), free(mask);
    moe_ctx_destroy(ctx);
}

static void test_sgd(void **state)
{
    (void)state;
    check_sgd(0.0, 0.0, 0.0, 0, 0);  /* plain */
    check_sgd(0.0, 0.0, 0.05, 0, 0); /* weight decay */
    check_sgd(0.9, 0.0, 0.0, 0, 0);  /* momentum */
    check_sgd(0.9, 0.3, 0.05, 0, 1); /* dampening (step-1 rule matters), masked decay */
    check_sgd(0.9, 0.0, 0.05, 1, 0); /* nesterov */
    check_sgd(0.5, 0.0, 0.1, 1, 1);
}

/* ---- reductions ---- */

static void test_sum_squares(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {81};
    const int64_t n = 1000000;
    float *x = xcalloc(n, sizeof(float));
    ref_fill(&r, x, n, -1, 1);
    for (int64_t i = 0; i < n; i += 1000) x[i] *= 1000.0f; /* some large values */
    double ref = 0.0;
    for (int64_t i = 0; i < n; i++) ref += (double)x[i] * (double)x[i];
    double s[3];
    int saved = omp_get_max_threads();
    for (int k = 0; k < 3; k++) {
        omp_set_num_threads(k + 1);
        assert_int_equal(moei_cpu_sum_squares(ctx, n, x, &s[k]), MOE_OK);
    }
    omp_set_num_threads(saved);
    assert_true(fabs(s[0] - ref) <= 1e-10 * ref);
    assert_memory_equal(&s[1], &s[0], sizeof(double));
    assert_memory_equal(&s[2], &s[0], sizeof(double));

    /* small and odd sizes, exact in double */
    float small[13];
    for (int i = 0; i < 13; i++) small[i] = (float)(i - 6);
    double out = -1.0;
    assert_int_equal(moei_cpu_sum_squares(ctx, 13, small, &out), MOE_OK);
    assert_true(out == 182.0);
    assert_int_equal(moei_cpu_sum_squares(ctx, 1, small, &out), MOE_OK);
    assert_true(out == 36.0);
    assert_int_equal(moei_cpu_sum_squares(ctx, 0, NULL, &out), MOE_OK);
    assert_true(out == 0.0);
    /* float overflow of x^2 does not happen in double */
    float big[2] = {FLT_MAX, -FLT_MAX};
    assert_int_equal(moei_cpu_sum_squares(ctx, 2, big, &out), MOE_OK);
    assert_true(isfinite(out) && fabs(out - 2.0 * (double)FLT_MAX * (double)FLT_MAX) <= 1e-15 * out);
    small[5] = NAN;
    assert_int_equal(moei_cpu_sum_squares(ctx, 13, small, &out), MOE_OK);
    assert_true(isnan(out));
    free(x);
    moe_ctx_destroy(ctx);
}

static void test_all_finite(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    const int64_t sizes[3] = {1, 5, 100000};
    const float bad[3] = {NAN, INFINITY, -INFINITY};
    for (int si = 0; si < 3; si++) {
        int64_t n = sizes[si];
        float *x = xcalloc(n, sizeof(float));
        ref_rng r = {91};
        ref_fill(&r, x, n, -1, 1);
        x[0] = FLT_MAX;                   /* extremes that are finite */
        if (n > 2) x[1] = -FLT_MAX, x[2] = FLT_TRUE_MIN;
        int32_t ok = -1;
        int64_t first = 7;
        assert_int_equal(moei_cpu_all_finite(ctx, n, x, &ok, &first), MOE_OK);
        assert_int_equal(ok, 1);
        assert_int_equal(first, -1);
        const int64_t where[3] = {0, n / 2, n - 1};
        for (int b = 0; b < 3; b++)
            for (int w = 0; w < 3; w++) {
                float keep = x[where[w]];
                x[where[w]] = bad[b];
                ok = -1;
                first = -7;
                assert_int_equal(moei_cpu_all_finite(ctx, n, x, &ok, &first), MOE_OK);
                assert_int_equal(ok, 0);
                assert_int_equal(first, where[w]);
                assert_int_equal(moei_cpu_all_finite(ctx, n, x, &ok, NULL), MOE_OK); /* first_bad optional */
                assert_int_equal(ok, 0);
                x[where[w]] = keep;
            }
        if (n > 4) { /* two bad values: the lower index is reported */
            x[n - 1] = NAN;
            x[n / 2] = INFINITY;
            assert_int_equal(moei_cpu_all_finite(ctx, n, x, &ok, &first), MOE_OK);
            assert_int_equal(first, n / 2);
        }
        free(x);
    }
    int32_t ok = -1;
    int64_t first = 3;
    assert_int_equal(moei_cpu_all_finite(ctx, 0, NULL, &ok, &first), MOE_OK);
    assert_int_equal(ok, 1);
    assert_int_equal(first, -1);
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
    float p[4] = {1, 2, 3, 4}, g[4] = {0}, m[4] = {0}, v[4] = {0};
    moei_adamw_hparams hp = adamw_hp(1e-3, 0.0, 1);
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, NULL), "'hp'");
    expect_fail(ctx, moei_cpu_adamw_step(ctx, -4, p, g, m, v, NULL, &hp), "count = -4");
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, NULL, g, m, v, NULL, &hp), "'params'");
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, NULL, m, v, NULL, &hp), "'grads'");
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, NULL, v, NULL, &hp), "'m'");
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, NULL, NULL, &hp), "'v'");
    moei_adamw_hparams b = hp;
    b.beta1 = 1.0;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "beta1");
    b = hp, b.beta2 = -0.1;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "beta2");
    b = hp, b.lr = NAN;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "lr");
    b = hp, b.eps = -1.0;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "eps");
    b = hp, b.weight_decay = -0.1;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "weight_decay");
    b = hp, b.step = 0;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "step = 0");
    b = hp, b.grad_scale = INFINITY;
    expect_fail(ctx, moei_cpu_adamw_step(ctx, 4, p, g, m, v, NULL, &b), "grad_scale");
    assert_true(p[0] == 1.0f && p[3] == 4.0f); /* nothing written by a failed call */

    moei_sgd_hparams s = {0.1, 0.9, 0.0, 0.0, 0, 1, 1.0f}, t;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, NULL, NULL, &s), "'momentum_buf'");
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, NULL), "'hp'");
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, NULL, m, NULL, &s), "'grads'");
    t = s, t.momentum = 0.0, t.nesterov = 1;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, &t), "nesterov");
    t = s, t.dampening = 0.1, t.nesterov = 1;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, &t), "nesterov");
    t = s, t.nesterov = 2;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, &t), "nesterov = 2");
    t = s, t.momentum = -0.5;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, &t), "momentum");
    t = s, t.lr = -1.0;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, &t), "lr");
    t = s, t.step = -2;
    expect_fail(ctx, moei_cpu_sgd_step(ctx, 4, p, g, m, NULL, &t), "step = -2");
    /* momentum 0 needs no buffer */
    t = s, t.momentum = 0.0;
    assert_int_equal(moei_cpu_sgd_step(ctx, 4, p, g, NULL, NULL, &t), MOE_OK);

    double out;
    int32_t ok;
    expect_fail(ctx, moei_cpu_sum_squares(ctx, 4, p, NULL), "'out'");
    expect_fail(ctx, moei_cpu_sum_squares(ctx, 4, NULL, &out), "'x'");
    expect_fail(ctx, moei_cpu_sum_squares(ctx, -1, p, &out), "count = -1");
    expect_fail(ctx, moei_cpu_all_finite(ctx, 4, NULL, &ok, NULL), "'x'");
    expect_fail(ctx, moei_cpu_all_finite(ctx, 4, p, NULL, NULL), "'all_finite'");
    expect_fail(ctx, moei_cpu_all_finite(ctx, -2, p, &ok, NULL), "count = -2");
    moe_ctx_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_known_value), cmocka_unit_test(test_adamw_steps),
        cmocka_unit_test(test_adamw_equivalences), cmocka_unit_test(test_sgd),
        cmocka_unit_test(test_sum_squares),       cmocka_unit_test(test_all_finite),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
