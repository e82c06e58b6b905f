/* SwiGLU (packed and split), GELU (erf and tanh) and the elementwise utilities against the fp64
 * reference: forward values, backward against central differences of the reference, in-place
 * variants, thread-count independence, and argument checking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/activation.h"
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

/* ---- SwiGLU ---- */

typedef struct swiglu_fd {
    int64_t rows, f;
    const double *w;
    double *scratch;
} swiglu_fd;

static double swiglu_loss(const double *h, void *user)
{
    swiglu_fd *u = user;
    ref_swiglu_packed(u->rows, u->f, h, u->scratch);
    double l = 0.0;
    for (int64_t i = 0; i < u->rows * u->f; i++) l += u->w[i] * u->scratch[i];
    return l;
}

static void test_swiglu(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {21};
    const int64_t rows = 7, f = 13, nh = rows * 2 * f, no = rows * f;
    float *h = xcalloc(nh, sizeof(float)), *out = xcalloc(no, sizeof(float)), *w = xcalloc(no, sizeof(float));
    float *dh = xcalloc(nh, sizeof(float));
    double *h64 = xcalloc(nh, sizeof(double)), *o64 = xcalloc(no, sizeof(double)), *w64 = xcalloc(no, sizeof(double));
    double *grad = xcalloc(nh, sizeof(double)), *scratch = xcalloc(no, sizeof(double));
    ref_fill(&r, h, nh, -4, 4);
    h[0] = 30.0f;  /* saturated sigmoid, both ends */
    h[1] = -30.0f;
    h[2] = 0.0f;
    ref_fill(&r, w, no, -1, 1);
    ref_to_f64(h, h64, nh);
    ref_to_f64(w, w64, no);

    assert_int_equal(moei_cpu_swiglu_forward(ctx, rows, f, h, out), MOE_OK);
    ref_swiglu_packed(rows, f, h64, o64);
    assert_true(ref_rel_err(out, o64, no) <= 1e-6);
    for (int64_t i = 0; i < no; i++) assert_true(fabs(out[i] - o64[i]) <= 1e-6 * fabs(o64[i]) + 1e-7);

    swiglu_fd u = {rows, f, w64, scratch};
    ref_fd_grad(swiglu_loss, h64, nh, &u, 1e-6, grad);
    assert_int_equal(moei_cpu_swiglu_backward(ctx, rows, f, h, w, dh), MOE_OK);
    assert_true(ref_rel_err(dh, grad, nh) <= 1e-4);

    /* packed in place: d_h over h, same bits */
    float *hin = xcalloc(nh, sizeof(float));
    memcpy(hin, h, (size_t)nh * sizeof(float));
    assert_int_equal(moei_cpu_swiglu_backward(ctx, rows, f, hin, w, hin), MOE_OK);
    assert_memory_equal(hin, dh, (size_t)nh * sizeof(float));

    /* split form over the same data: gate/up copied out of the packed rows */
    float *g = xcalloc(no, sizeof(float)), *up = xcalloc(no, sizeof(float)), *o2 = xcalloc(no, sizeof(float));
    float *dg = xcalloc(no, sizeof(float)), *du = xcalloc(no, sizeof(float));
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < f; j++) {
            g[i * f + j] = h[i * 2 * f + j];
            up[i * f + j] = h[i * 2 * f + f + j];
        }
    assert_int_equal(moei_cpu_swiglu_forward_split(ctx, no, g, up, o2), MOE_OK);
    assert_memory_equal(o2, out, (size_t)no * sizeof(float));
    assert_int_equal(moei_cpu_swiglu_backward_split(ctx, no, g, up, w, dg, du), MOE_OK);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < f; j++) {
            assert_true(dg[i * f + j] == dh[i * 2 * f + j]);
            assert_true(du[i * f + j] == dh[i * 2 * f + f + j]);
        }
    /* split in place: d_gate over gate, d_up over up; out over up */
    assert_int_equal(moei_cpu_swiglu_backward_split(ctx, no, g, up, w, g, up), MOE_OK);
    assert_memory_equal(g, dg, (size_t)no * sizeof(float));
    assert_memory_equal(up, du, (size_t)no * sizeof(float));

    free(h), free(out), free(w), free(dh), free(h64), free(o64), free(w64), free(grad), free(scratch), free(hin);
    free(g), free(up), free(o2), free(dg), free(du);
    moe_ctx_destroy(ctx);
}

/* ---- GELU ---- */

typedef struct gelu_fd {
    int64_t n;
    int approx;
    const double *w;
} gelu_fd;

static double gelu_loss(const double *x, void *user)
{
    gelu_fd *u = user;
    double l = 0.0;
    for (int64_t i = 0; i < u->n; i++) l += u->w[i] * ref_gelu(x[i], u->approx);
    return l;
}

static void check_gelu(int approx)
{
    moe_ctx *ctx = new_ctx();
    ref_rng r = {(uint64_t)(31 + approx)};
    const int64_t n = 101;
    float *x = xcalloc(n, sizeof(float)), *y = xcalloc(n, sizeof(float)), *w = xcalloc(n, sizeof(float));
    float *dx = xcalloc(n, sizeof(float));
    double *x64 = xcalloc(n, sizeof(double)), *y64 = xcalloc(n, sizeof(double)), *w64 = xcalloc(n, sizeof(double));
    double *grad = xcalloc(n, sizeof(double));
    ref_fill(&r, x, n, -6, 6);
    x[0] = 0.0f;
    x[1] = -12.0f;
    x[2] = 12.0f;
    ref_fill(&r, w, n, -1, 1);
    ref_to_f64(x, x64, n);
    ref_to_f64(w, w64, n);
    for (int64_t i = 0; i < n; i++) y64[i] = ref_gelu(x64[i], approx);

    assert_int_equal(moei_cpu_gelu_forward(ctx, n, approx, x, y), MOE_OK);
    assert_true(ref_rel_err(y, y64, n) <= 1e-6);
    for (int64_t i = 0; i < n; i++) assert_true(fabs(y[i] - y64[i]) <= 1e-6 * fabs(y64[i]) + 1e-7);

    gelu_fd u = {n, approx, w64};
    ref_fd_grad(gelu_loss, x64, n, &u, 1e-6, grad);
    assert_int_equal(moei_cpu_gelu_backward(ctx, n, approx, x, w, dx), MOE_OK);
    assert_true(ref_rel_err(dx, grad, n) <= 1e-4);

    /* in place: dx over dy, and y over x */
    float *buf = xcalloc(n, sizeof(float));
    memcpy(buf, w, (size_t)n * sizeof(float));
    assert_int_equal(moei_cpu_gelu_backward(ctx, n, approx, x, buf, buf), MOE_OK);
    assert_memory_equal(buf, dx, (size_t)n * sizeof(float));
    memcpy(buf, x, (size_t)n * sizeof(float));
    assert_int_equal(moei_cpu_gelu_forward(ctx, n, approx, buf, buf), MOE_OK);
    assert_memory_equal(buf, y, (size_t)n * sizeof(float));

    free(x), free(y), free(w), free(dx), free(x64), free(y64), free(w64), free(grad), free(buf);
    moe_ctx_destroy(ctx);
}

static void test_gelu_exact(void **state)
{
    (void)state;
    check_gelu(MOEI_GELU_EXACT);
}

static void test_gelu_tanh(void **state)
{
    (void)state;
    check_gelu(MOEI_GELU_TANH);
    /* the two forms differ measurably, so the flag is honoured */
    moe_ctx *ctx = new_ctx();
    float x = 1.5f, ye, yt;
    assert_int_equal(moei_cpu_gelu_forward(ctx, 1, MOEI_GELU_EXACT, &x, &ye), MOE_OK);
    assert_int_equal(moei_cpu_gelu_forward(ctx, 1, MOEI_GELU_TANH, &x, &yt), MOE_OK);
    assert_true(fabs(ye - ref_gelu(1.5, 0)) < 1e-6 && fabs(yt - ref_gelu(1.5, 1)) < 1e-6);
    assert_true(fabs(ye - yt) > 1e-5);
    moe_ctx_destroy(ctx);
}

/* ---- elementwise utilities ---- */

static void test_elementwise(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {41};
    const int64_t n = 1001;
    float *a = xcalloc(n, sizeof(float)), *b = xcalloc(n, sizeof(float)), *y = xcalloc(n, sizeof(float));
    double *ref = xcalloc(n, sizeof(double));
    ref_fill(&r, a, n, -3, 3);
    ref_fill(&r, b, n, -3, 3);
    assert_int_equal(moei_cpu_add(ctx, n, a, b, y), MOE_OK);
    for (int64_t i = 0; i < n; i++) ref[i] = (double)a[i] + (double)b[i];
    assert_true(ref_rel_err(y, ref, n) <= 1e-7);
    assert_int_equal(moei_cpu_add(ctx, n, a, b, a), MOE_OK); /* in place */
    assert_memory_equal(a, y, (size_t)n * sizeof(float));

    for (int64_t i = 0; i < n; i++) ref[i] = (double)y[i] + 0.25 * (double)b[i];
    assert_int_equal(moei_cpu_axpy(ctx, n, 0.25f, b, y), MOE_OK);
    assert_true(ref_rel_err(y, ref, n) <= 1e-7);

    for (int64_t i = 0; i < n; i++) ref[i] = -1.5 * (double)y[i];
    assert_int_equal(moei_cpu_scale(ctx, n, -1.5f, y), MOE_OK);
    assert_true(ref_rel_err(y, ref, n) <= 1e-7);
    /* count 0 with NULL */
    assert_int_equal(moei_cpu_add(ctx, 0, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_cpu_scale(ctx, 0, 2.0f, NULL), MOE_OK);
    free(a), free(b), free(y), free(ref);
    moe_ctx_destroy(ctx);
}

/* Sizes over a block run in parallel; 1 and 2 threads must agree bit for bit. */
static void test_threads(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {51};
    const int64_t rows = 97, f = 1031, n = rows * f;
    float *h = xcalloc(2 * n, sizeof(float)), *dy = xcalloc(n, sizeof(float));
    float *o[2], *dh[2], *gx[2];
    for (int k = 0; k < 2; k++) {
        o[k] = xcalloc(n, sizeof(float));
        dh[k] = xcalloc(2 * n, sizeof(float));
        gx[k] = xcalloc(n, sizeof(float));
    }
    ref_fill(&r, h, 2 * n, -5, 5);
    ref_fill(&r, dy, n, -1, 1);
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(k + 1);
        assert_int_equal(moei_cpu_swiglu_forward(ctx, rows, f, h, o[k]), MOE_OK);
        assert_int_equal(moei_cpu_swiglu_backward(ctx, rows, f, h, dy, dh[k]), MOE_OK);
        assert_int_equal(moei_cpu_gelu_backward(ctx, n, MOEI_GELU_EXACT, h, dy, gx[k]), MOE_OK);
    }
    omp_set_num_threads(saved);
    assert_memory_equal(o[0], o[1], (size_t)n * sizeof(float));
    assert_memory_equal(dh[0], dh[1], (size_t)(2 * n) * sizeof(float));
    assert_memory_equal(gx[0], gx[1], (size_t)n * sizeof(float));
    free(h), free(dy);
    for (int k = 0; k < 2; k++) free(o[k]), free(dh[k]), free(gx[k]);
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
    float a[8] = {0}, b[8] = {0}, c[8] = {0};
    expect_fail(ctx, moei_cpu_swiglu_forward(ctx, -1, 2, a, b), "rows = -1");
    expect_fail(ctx, moei_cpu_swiglu_forward(ctx, 2, -2, a, b), "f = -2");
    expect_fail(ctx, moei_cpu_swiglu_forward(ctx, 2, 2, NULL, b), "'h'");
    expect_fail(ctx, moei_cpu_swiglu_forward(ctx, 2, 2, a, NULL), "'out'");
    expect_fail(ctx, moei_cpu_swiglu_forward(ctx, INT64_MAX / 2, 2, a, b), "overflows");
    expect_fail(ctx, moei_cpu_swiglu_backward(ctx, 2, 2, a, NULL, c), "'d_out'");
    expect_fail(ctx, moei_cpu_swiglu_backward(ctx, 2, 2, a, b, NULL), "'d_h'");
    expect_fail(ctx, moei_cpu_swiglu_forward_split(ctx, 4, a, NULL, c), "'up'");
    expect_fail(ctx, moei_cpu_swiglu_forward_split(ctx, -4, a, b, c), "count = -4");
    expect_fail(ctx, moei_cpu_swiglu_backward_split(ctx, 4, a, b, c, NULL, a), "'d_gate'");
    expect_fail(ctx, moei_cpu_swiglu_backward_split(ctx, 4, a, b, c, a, NULL), "'d_up'");
    expect_fail(ctx, moei_cpu_gelu_forward(ctx, 4, 2, a, b), "approx = 2");
    expect_fail(ctx, moei_cpu_gelu_backward(ctx, 4, -1, a, b, c), "approx = -1");
    expect_fail(ctx, moei_cpu_gelu_forward(ctx, 4, 0, NULL, b), "'x'");
    expect_fail(ctx, moei_cpu_gelu_backward(ctx, 4, 0, a, NULL, c), "'dy'");
    expect_fail(ctx, moei_cpu_gelu_backward(ctx, 4, 0, a, b, NULL), "'dx'");
    expect_fail(ctx, moei_cpu_add(ctx, 4, a, NULL, c), "'b'");
    expect_fail(ctx, moei_cpu_add(ctx, -1, a, b, c), "count = -1");
    expect_fail(ctx, moei_cpu_axpy(ctx, 4, 1.0f, NULL, c), "'x'");
    expect_fail(ctx, moei_cpu_axpy(ctx, 4, 1.0f, a, NULL), "'y'");
    expect_fail(ctx, moei_cpu_scale(ctx, 4, 1.0f, NULL), "'x'");
    moe_ctx_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_swiglu),      cmocka_unit_test(test_gelu_exact), cmocka_unit_test(test_gelu_tanh),
        cmocka_unit_test(test_elementwise), cmocka_unit_test(test_threads),    cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
