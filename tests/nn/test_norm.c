/* RMSNorm and LayerNorm: forward against the fp64 reference, backward against central finite
 * differences of that reference (dx, and dw/db accumulated onto what was there), in-place use,
 * bitwise equality across 1 and 2 threads, and bad arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/norm.h"
#include "moe/ctx.h"
#include "nn/ref_attn.h"

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

/* The fp64 loss sum(proj .* norm(x)) whose finite differences are the reference gradients. */
typedef struct norm_case {
    int layer; /* 0 = RMSNorm, 1 = LayerNorm */
    int64_t n, d;
    double eps;
    double *x, *w, *b, *proj, *y;
} norm_case;

static double norm_loss(void *user)
{
    norm_case *c = user;
    if (c->layer)
        ref_layernorm(c->n, c->d, c->eps, c->x, c->w, c->b, c->y);
    else
        ref_rmsnorm(c->n, c->d, c->eps, c->x, c->w, c->y);
    double l = 0.0;
    for (int64_t i = 0; i < c->n * c->d; i++) l += c->proj[i] * c->y[i];
    return l;
}

/* Forward always; backward too when check_bwd (degenerate rows of one or two elements have
 * gradients that are pure rounding noise in fp32, so they are checked forward-only). */
static void run_case(int layer, int64_t n, int64_t d, int check_bwd, uint64_t seed)
{
    size_t nd = (size_t)(n * d);
    const float eps = 1e-5f;
    ref_rng r;
    ref_rng_seed(&r, seed);
    float *x = malloc(nd * 4), *w = malloc((size_t)d * 4), *b = malloc((size_t)d * 4), *y = malloc(nd * 4);
    float *proj = malloc(nd * 4), *dx = malloc(nd * 4), *dw = malloc((size_t)d * 4), *db = malloc((size_t)d * 4);
    float *mean = malloc((size_t)n * 4), *rstd = malloc((size_t)n * 4);
    ref_fill(&r, x, nd, 2.0f);
    for (int64_t j = 0; j < d; j++) {
        w[j] = 1.0f + 0.5f * (float)ref_uniform(&r);
        b[j] = 0.3f * (float)ref_uniform(&r);
    }
    /* An offset row mean exercises LayerNorm's centring. */
    if (layer)
        for (size_t i = 0; i < nd; i++) x[i] += 3.0f;
    ref_fill(&r, proj, nd, 1.0f);

    norm_case c = {layer, n, d, eps, ref_to_double(x, nd), ref_to_double(w, (size_t)d), ref_to_double(b, (size_t)d),
                   ref_to_double(proj, nd), malloc(nd * sizeof(double))};
    double *yref = malloc(nd * sizeof(double));
    if (layer) {
        assert_int_equal(moei_layernorm_fwd(g_ctx, n, d, eps, x, w, b, y, mean, rstd), MOE_OK);
        ref_layernorm(n, d, eps, c.x, c.w, c.b, yref);
    } else {
        assert_int_equal(moei_rmsnorm_fwd(g_ctx, n, d, eps, x, w, y, rstd), MOE_OK);
        ref_rmsnorm(n, d, eps, c.x, c.w, yref);
    }
    double e = ref_rel_err(y, yref, nd);
    if (e > 1e-5) fail_msg("forward layer=%d n=%lld d=%lld: rel err %g", layer, (long long)n, (long long)d, e);
    /* The saved statistics are what the formulas say. */
    for (int64_t i = 0; i < n; i++) {
        double mu = 0.0, ss = 0.0;
        for (int64_t j = 0; j < d; j++) mu += c.x[i * d + j];
        mu = layer ? mu / (double)d : 0.0;
        for (int64_t j = 0; j < d; j++) ss += (c.x[i * d + j] - mu) * (c.x[i * d + j] - mu);
        double rs = 1.0 / sqrt(ss / (double)d + eps);
        assert_true(fabs(rstd[i] - rs) <= 1e-6 * rs);
        if (layer) assert_true(fabs(mean[i] - mu) <= 1e-6 * (fabs(mu) + 1.0));
    }

    if (check_bwd) {
        /* dw/db accumulate: start them from known values and subtract those afterwards. */
        for (int64_t j = 0; j < d; j++) {
            dw[j] = 0.25f;
            db[j] = -0.5f;
        }
        if (layer)
            assert_int_equal(moei_layernorm_bwd(g_ctx, n, d, x, w, mean, rstd, proj, dx, dw, db), MOE_OK);
        else
            assert_int_equal(moei_rmsnorm_bwd(g_ctx, n, d, x, w, rstd, proj, dx, dw), MOE_OK);
        double *g = malloc(nd * sizeof(double));
        ref_fd_grad(norm_loss, &c, c.x, nd, 1e-6, g);
        e = ref_rel_err(dx, g, nd);
        if (e > 1e-4) fail_msg("dx layer=%d n=%lld d=%lld: rel err %g", layer, (long long)n, (long long)d, e);
        for (int64_t j = 0; j < d; j++) dw[j] -= 0.25f;
        ref_fd_grad(norm_loss, &c, c.w, (size_t)d, 1e-6, g);
        e = ref_rel_err(dw, g, (size_t)d);
        if (e > 1e-4) fail_msg("dw layer=%d n=%lld d=%lld: rel err %g", layer, (long long)n, (long long)d, e);
        if (layer) {
            for (int64_t j = 0; j < d; j++) db[j] += 0.5f;
            ref_fd_grad(norm_loss, &c, c.b, (size_t)d, 1e-6, g);
            e = ref_rel_err(db, g, (size_t)d);
            if (e > 1e-4) fail_msg("db n=%lld d=%lld: rel err %g", (long long)n, (long long)d, e);
        }
        free(g);
    }
    free(c.x), free(c.w), free(c.b), free(c.proj), free(c.y), free(yref);
    free(x), free(w), free(b), free(y), free(proj), free(dx), free(dw), free(db), free(mean), free(rstd);
}

static void test_rmsnorm_vs_reference(void **state)
{
    (void)state;
    run_case(0, 1, 1, 0, 1);   /* one element */
    run_case(0, 3, 2, 0, 2);
    run_case(0, 1, 13, 1, 3);  /* one row */
    run_case(0, 5, 13, 1, 4);  /* odd width */
    run_case(0, 9, 70, 1, 5);  /* one full column chunk plus a partial one */
    run_case(0, 4, 130, 1, 6); /* three column chunks */
    run_case(0, 12, 300, 1, 7); /* five column chunks */
}

static void test_layernorm_vs_reference(void **state)
{
    (void)state;
    run_case(1, 1, 1, 0, 11);
    run_case(1, 3, 2, 0, 12);
    run_case(1, 1, 13, 1, 13);
    run_case(1, 5, 13, 1, 14);
    run_case(1, 9, 70, 1, 15);
    run_case(1, 4, 130, 1, 16);
    run_case(1, 12, 300, 1, 17);
}

/* MixtralRMSNorm: x = x * rsqrt(mean(x^2) + eps); return weight * x. A hand-checked row. */
static void test_rmsnorm_known_values(void **state)
{
    (void)state;
    float x[4] = {1.0f, -2.0f, 3.0f, -4.0f}, w[4] = {1.0f, 0.5f, 2.0f, -1.0f}, y[4], rstd[1];
    assert_int_equal(moei_rmsnorm_fwd(g_ctx, 1, 4, 0.0f, x, w, y, rstd), MOE_OK);
    /* mean(x^2) = 30 / 4 = 7.5 */
    double r = 1.0 / sqrt(7.5);
    assert_float_equal(rstd[0], r, 1e-7);
    double expect[4] = {1.0 * r, -1.0 * r, 6.0 * r, 4.0 * r};
    for (int j = 0; j < 4; j++) assert_float_equal(y[j], expect[j], 2e-7);
}

static void test_in_place(void **state)
{
    (void)state;
    const int64_t n = 6, d = 37;
    size_t nd = (size_t)(n * d);
    ref_rng r;
    ref_rng_seed(&r, 99);
    float *x = malloc(nd * 4), *y = malloc(nd * 4), *z = malloc(nd * 4), *dy = malloc(nd * 4), *dx = malloc(nd * 4);
    float w[37], b[37], dw1[37] = {0}, dw2[37] = {0}, db1[37] = {0}, db2[37] = {0}, mean[6], rstd[6];
    ref_fill(&r, x, nd, 1.0f);
    ref_fill(&r, dy, nd, 1.0f);
    ref_fill(&r, w, 37, 1.0f);
    ref_fill(&r, b, 37, 1.0f);
    for (int layer = 0; layer < 2; layer++) {
        memcpy(z, x, nd * 4);
        if (layer) {
            assert_int_equal(moei_layernorm_fwd(g_ctx, n, d, 1e-5f, x, w, b, y, mean, rstd), MOE_OK);
            assert_int_equal(moei_layernorm_fwd(g_ctx, n, d, 1e-5f, z, w, b, z, NULL, NULL), MOE_OK);
        } else {
            assert_int_equal(moei_rmsnorm_fwd(g_ctx, n, d, 1e-5f, x, w, y, rstd), MOE_OK);
            assert_int_equal(moei_rmsnorm_fwd(g_ctx, n, d, 1e-5f, z, w, z, NULL), MOE_OK);
        }
        assert_memory_equal(y, z, nd * 4);
        memcpy(z, dy, nd * 4);
        if (layer) {
            assert_int_equal(moei_layernorm_bwd(g_ctx, n, d, x, w, mean, rstd, dy, dx, dw1, db1), MOE_OK);
            assert_int_equal(moei_layernorm_bwd(g_ctx, n, d, x, w, mean, rstd, z, z, dw2, db2), MOE_OK);
            assert_memory_equal(db1, db2, sizeof db1);
        } else {
            assert_int_equal(moei_rmsnorm_bwd(g_ctx, n, d, x, w, rstd, dy, dx, dw1), MOE_OK);
            assert_int_equal(moei_rmsnorm_bwd(g_ctx, n, d, x, w, rstd, z, z, dw2), MOE_OK);
        }
        assert_memory_equal(dx, z, nd * 4);
        assert_memory_equal(dw1, dw2, sizeof dw1);
    }
    free(x), free(y), free(z), free(dy), free(dx);
}

/* Same bits with 1 and 2 threads, on a size that runs threaded. */
static void test_thread_determinism(void **state)
{
    (void)state;
    const int64_t n = 300, d = 200;
    size_t nd = (size_t)(n * d);
    ref_rng r;
    ref_rng_seed(&r, 7);
    float *x = malloc(nd * 4), *dy = malloc(nd * 4), *w = malloc((size_t)d * 4), *b = malloc((size_t)d * 4);
    ref_fill(&r, x, nd, 1.0f);
    ref_fill(&r, dy, nd, 1.0f);
    ref_fill(&r, w, (size_t)d, 1.0f);
    ref_fill(&r, b, (size_t)d, 1.0f);
    float *out[2][6];
    int saved = omp_get_max_threads();
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        float *y = malloc(nd * 4), *dx = malloc(nd * 4), *dw = calloc((size_t)d, 4), *db = calloc((size_t)d, 4);
        float *mean = malloc((size_t)n * 4), *rstd = malloc((size_t)n * 4);
        float *y2 = malloc(nd * 4), *dx2 = malloc(nd * 4), *dw2 = calloc((size_t)d, 4);
        assert_int_equal(moei_layernorm_fwd(g_ctx, n, d, 1e-5f, x, w, b, y, mean, rstd), MOE_OK);
        assert_int_equal(moei_layernorm_bwd(g_ctx, n, d, x, w, mean, rstd, dy, dx, dw, db), MOE_OK);
        float *rs2 = malloc((size_t)n * 4);
        assert_int_equal(moei_rmsnorm_fwd(g_ctx, n, d, 1e-5f, x, w, y2, rs2), MOE_OK);
        assert_int_equal(moei_rmsnorm_bwd(g_ctx, n, d, x, w, rs2, dy, dx2, dw2), MOE_OK);
        free(mean), free(rstd), free(rs2);
        out[t][0] = y, out[t][1] = dx, out[t][2] = dw, out[t][3] = db, out[t][4] = dx2, out[t][5] = dw2;
        free(y2);
    }
    omp_set_num_threads(saved);
    size_t sizes[6] = {nd, nd, (size_t)d, (size_t)d, nd, (size_t)d};
    for (int i = 0; i < 6; i++) {
        assert_memory_equal(out[0][i], out[1][i], sizes[i] * 4);
        free(out[0][i]), free(out[1][i]);
    }
    free(x), free(dy), free(w), free(b);
}

static void expect_invalid(moe_status st, const char *needle)
{
    if (st != MOE_ERR_INVALID_ARG) fail_msg("status %d where MOE_ERR_INVALID_ARG naming %s was due", (int)st, needle);
    const char *msg = moe_ctx_last_error(g_ctx);
    if (!strstr(msg, needle)) fail_msg("message \"%s\" does not name %s", msg, needle);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8}, w[4] = {1, 1, 1, 1}, b[4] = {0}, y[8], m[2], rs[2] = {1, 1}, dw[4], db[4];
    float keep[8];
    memcpy(y, x, sizeof y);
    memcpy(keep, y, sizeof y);
    expect_invalid(moei_rmsnorm_fwd(g_ctx, 2, 0, 1e-5f, x, w, y, rs), "'d'");
    expect_invalid(moei_rmsnorm_fwd(g_ctx, -1, 4, 1e-5f, x, w, y, rs), "'n'");
    expect_invalid(moei_rmsnorm_fwd(g_ctx, 2, 4, -1.0f, x, w, y, rs), "'eps'");
    expect_invalid(moei_rmsnorm_fwd(g_ctx, 2, 4, NAN, x, w, y, rs), "'eps'");
    expect_invalid(moei_rmsnorm_fwd(g_ctx, 2, 4, 1e-5f, NULL, w, y, rs), "'x'");
    expect_invalid(moei_rmsnorm_fwd(g_ctx, 2, 4, 1e-5f, x, NULL, y, rs), "'w'");
    expect_invalid(moei_rmsnorm_fwd(g_ctx, 2, 4, 1e-5f, x, w, NULL, rs), "'y'");
    expect_invalid(moei_rmsnorm_bwd(g_ctx, 2, 4, x, w, NULL, x, y, dw), "'rstd'");
    expect_invalid(moei_rmsnorm_bwd(g_ctx, 2, 4, x, w, rs, NULL, y, dw), "'dy'");
    expect_invalid(moei_rmsnorm_bwd(g_ctx, 2, 4, x, w, rs, x, NULL, dw), "'dx'");
    expect_invalid(moei_rmsnorm_bwd(g_ctx, 2, 4, x, w, rs, x, y, NULL), "'dw'");
    expect_invalid(moei_layernorm_fwd(g_ctx, 2, 4, 1e-5f, x, w, NULL, y, m, rs), "'b'");
    expect_invalid(moei_layernorm_fwd(g_ctx, 2, 0, 1e-5f, x, w, b, y, m, rs), "'d'");
    expect_invalid(moei_layernorm_bwd(g_ctx, 2, 4, x, w, NULL, rs, x, y, dw, db), "'mean'");
    expect_invalid(moei_layernorm_bwd(g_ctx, 2, 4, x, w, m, rs, x, y, dw, NULL), "'db'");
    assert_memory_equal(y, keep, sizeof y); /* failures wrote nothing */
    assert_non_null(strstr(moe_ctx_last_error(g_ctx), "moei_layernorm_bwd"));
    /* n == 0 is a valid empty batch, pointers unused */
    assert_int_equal(moei_rmsnorm_fwd(g_ctx, 0, 4, 1e-5f, NULL, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_rmsnorm_bwd(g_ctx, 0, 4, NULL, NULL, NULL, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_layernorm_fwd(g_ctx, 0, 4, 1e-5f, NULL, NULL, NULL, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_layernorm_bwd(g_ctx, 0, 4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL), MOE_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_vs_reference), cmocka_unit_test(test_layernorm_vs_reference),
        cmocka_unit_test(test_rmsnorm_known_values), cmocka_unit_test(test_in_place),
        cmocka_unit_test(test_thread_determinism),   cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
