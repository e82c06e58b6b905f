/* The token sampler directly: empirical frequencies of many draws (uniforms from the Philox stream,
 * as generation uses them) against the softmax of fixed logits computed here in fp64, with
 * temperature, top-k and top-p; greedy and its degenerate equivalents with ties; the draw's
 * mapping from u; non-finite logits; bad arguments. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <moe/ctx.h>

#include "nn/generate.h"

#define NDRAW 200000

static const float LOGITS[7] = {0.3f, -1.2f, 2.0f, 1.1f, 2.0f, -0.4f, 0.9f};

/* Expected distribution in fp64: softmax(logits / T), restricted to the top_k largest (ties toward
 * the lower id), then to the shortest prefix by probability reaching top_p, renormalised. */
static void expected(const float *lg, int32_t V, double T, int32_t top_k, double top_p, double *p)
{
    int32_t order[64];
    double q[64], mx = -INFINITY;
    for (int32_t i = 0; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
    for (int32_t i = 0; i < V; i++) {
        q[i] = exp(((double)lg[i] - mx) / T);
        order[i] = i;
    }
    for (int32_t i = 1; i < V; i++) /* insertion sort: larger first, lower id among equals */
        for (int32_t j = i; j > 0 && (q[order[j]] > q[order[j - 1]] ||
                                      (q[order[j]] == q[order[j - 1]] && order[j] < order[j - 1]));
             j--) {
            int32_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    int32_t kept = top_k > 0 && top_k < V ? top_k : V;
    double total = 0.0;
    for (int32_t i = 0; i < kept; i++) total += q[order[i]];
    if (top_p < 1.0) {
        double cum = 0.0;
        int32_t m = 0;
        while (m < kept && (m == 0 || cum < top_p * total)) cum += q[order[m++]];
        kept = m;
        total = cum;
    }
    for (int32_t i = 0; i < V; i++) p[i] = 0.0;
    for (int32_t i = 0; i < kept; i++) p[order[i]] = q[order[i]] / total;
}

static void check_frequencies(moe_ctx *ctx, float T, int32_t top_k, float top_p, uint64_t seed)
{
    const int32_t V = 7;
    size_t ws_bytes = moei_sample_workspace_size(V);
    void *ws = malloc(ws_bytes);
    long counts[7] = {0};
    for (int64_t s = 0; s < NDRAW; s++) {
        int32_t tok = -1;
        assert_int_equal(moei_sample(ctx, LOGITS, V, T, top_k, top_p, moei_sample_uniform(seed, (uint64_t)s), ws,
                                     ws_bytes, &tok),
                         MOE_OK);
        assert_true(tok >= 0 && tok < V);
        counts[tok]++;
    }
    double p[7];
    expected(LOGITS, V, T, top_k, top_p, p);
    double chi2 = 0.0;
    int dof = -1;
    for (int32_t i = 0; i < V; i++) {
        double f = (double)counts[i] / NDRAW;
        if (p[i] == 0.0) {
            assert_int_equal(counts[i], 0); /* filtered tokens never appear */
            continue;
        }
        double sd = sqrt(p[i] * (1.0 - p[i]) / NDRAW);
        if (fabs(f - p[i]) > 5.0 * sd + 1e-12) {
            print_error("T=%g k=%d p=%g: token %d frequency %.5f, expected %.5f\n", (double)T, (int)top_k,
                        (double)top_p, (int)i, f, p[i]);
            fail();
        }
        chi2 += (counts[i] - NDRAW * p[i]) * (counts[i] - NDRAW * p[i]) / (NDRAW * p[i]);
        dof++;
    }
    /* chi-square far in the tail (p < 1e-6 for dof <= 6) would mean a biased draw */
    if (dof > 0) assert_true(chi2 < 40.0);
    free(ws);
}

static void test_frequencies(void **state)
{
    moe_ctx *ctx = *state;
    check_frequencies(ctx, 1.0f, 0, 1.0f, 1);
    check_frequencies(ctx, 0.5f, 0, 1.0f, 2);
    check_frequencies(ctx, 2.5f, 0, 1.0f, 3);
    check_frequencies(ctx, 1.0f, 3, 1.0f, 4);  /* tie between ids 2 and 4 inside the top 3 */
    check_frequencies(ctx, 1.0f, 2, 1.0f, 5);   /* top 2 = the tied pair */
    check_frequencies(ctx, 1.0f, 0, 0.7f, 6);
    check_frequencies(ctx, 1.3f, 4, 0.8f, 7);
}

static void test_uniform_stream(void **state)
{
    (void)state;
    double mean = 0.0;
    for (uint64_t s = 0; s < 100000; s++) {
        double u = moei_sample_uniform(17, s);
        assert_true(u >= 0.0 && u < 1.0);
        mean += u;
    }
    mean /= 100000.0;
    assert_true(fabs(mean - 0.5) < 0.005);
    /* a pure function of (seed, step) */
    assert_true(moei_sample_uniform(17, 5) == moei_sample_uniform(17, 5));
    assert_true(moei_sample_uniform(17, 5) != moei_sample_uniform(18, 5));
    assert_true(moei_sample_uniform(17, 5) != moei_sample_uniform(17, 6));
}

static void test_greedy_and_ties(void **state)
{
    moe_ctx *ctx = *state;
    const float tied[5] = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f};
    size_t ws_bytes = moei_sample_workspace_size(5);
    void *ws = malloc(ws_bytes);
    for (int i = 0; i < 50; i++) {
        double u = (double)i / 50.0;
        int32_t a = -1, b = -1, c = -1;
        assert_int_equal(moei_sample(ctx, tied, 5, 0.0f, 0, 1.0f, u, ws, ws_bytes, &a), MOE_OK);
        assert_int_equal(moei_sample(ctx, tied, 5, 2.0f, 1, 1.0f, u, ws, ws_bytes, &b), MOE_OK);
        assert_int_equal(moei_sample(ctx, tied, 5, 2.0f, 0, 1e-7f, u, ws, ws_bytes, &c), MOE_OK);
        assert_int_equal(a, 1);
        assert_int_equal(b, 1);
        assert_int_equal(c, 1);
    }
    /* greedy needs no workspace */
    int32_t t = -1;
    assert_int_equal(moei_sample(ctx, tied, 5, 0.0f, 0, 1.0f, 0.3, NULL, 0, &t), MOE_OK);
    assert_int_equal(t, 1);
    /* the draw: two equal logits split [0, 1) in half, in id order (unfiltered) and in sorted order */
    const float two[2] = {0.25f, 0.25f};
    for (int f = 0; f < 2; f++) {
        float top_p = f ? 0.999f : 1.0f;
        assert_int_equal(moei_sample(ctx, two, 2, 1.0f, 0, top_p, 0.0, ws, ws_bytes, &t), MOE_OK);
        assert_int_equal(t, 0);
        assert_int_equal(moei_sample(ctx, two, 2, 1.0f, 0, top_p, 0.4999, ws, ws_bytes, &t), MOE_OK);
        assert_int_equal(t, 0);
        assert_int_equal(moei_sample(ctx, two, 2, 1.0f, 0, top_p, 0.5, ws, ws_bytes, &t), MOE_OK);
        assert_int_equal(t, 1);
        assert_int_equal(moei_sample(ctx, two, 2, 1.0f, 0, top_p, 0.9999999, ws, ws_bytes, &t), MOE_OK);
        assert_int_equal(t, 1);
    }
    /* top_p exactly on a prefix's mass: four equal tokens, top_p = 0.5 keeps exactly the first two */
    const float flat[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    int seen[4] = {0};
    for (int i = 0; i < 40; i++) {
        assert_int_equal(moei_sample(ctx, flat, 4, 1.0f, 0, 0.5f, i / 40.0, ws, ws_bytes, &t), MOE_OK);
        seen[t]++;
    }
    assert_int_equal(seen[0], 20);
    assert_int_equal(seen[1], 20);
    /* -inf logits are never drawn; one token is trivially drawn */
    const float masked[4] = {-INFINITY, 0.0f, -INFINITY, 0.0f};
    for (int i = 0; i < 20; i++) {
        assert_int_equal(moei_sample(ctx, masked, 4, 1.0f, 0, 1.0f, i / 20.0, ws, ws_bytes, &t), MOE_OK);
        assert_true(t == 1 || t == 3);
    }
    assert_int_equal(moei_sample(ctx, masked + 1, 1, 1.0f, 0, 1.0f, 0.7, ws, ws_bytes, &t), MOE_OK);
    assert_int_equal(t, 0);
    free(ws);
}

static void expect_error(moe_ctx *ctx, moe_status got, moe_status want, const char *needle)
{
    assert_int_equal(got, want);
    if (!strstr(moe_ctx_last_error(ctx), needle)) {
        print_error("message '%s' does not name '%s'\n", moe_ctx_last_error(ctx), needle);
        fail();
    }
}

static void test_bad_input(void **state)
{
    moe_ctx *ctx = *state;
    size_t ws_bytes = moei_sample_workspace_size(4);
    void *ws = malloc(ws_bytes);
    float lg[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    int32_t t = -5;
    const moe_status A = MOE_ERR_INVALID_ARG;
    expect_error(ctx, moei_sample(ctx, NULL, 4, 1.0f, 0, 1.0f, 0.5, ws, ws_bytes, &t), A, "logits");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.0f, 0.5, ws, ws_bytes, NULL), A, "token");
    expect_error(ctx, moei_sample(ctx, lg, 0, 1.0f, 0, 1.0f, 0.5, ws, ws_bytes, &t), A, "vocab");
    expect_error(ctx, moei_sample(ctx, lg, 4, -1.0f, 0, 1.0f, 0.5, ws, ws_bytes, &t), A, "temperature");
    expect_error(ctx, moei_sample(ctx, lg, 4, INFINITY, 0, 1.0f, 0.5, ws, ws_bytes, &t), A, "temperature");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, -1, 1.0f, 0.5, ws, ws_bytes, &t), A, "top_k");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 0.0f, 0.5, ws, ws_bytes, &t), A, "top_p");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.01f, 0.5, ws, ws_bytes, &t), A, "top_p");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.0f, 1.0, ws, ws_bytes, &t), A, "'u'");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.0f, -0.1, ws, ws_bytes, &t), A, "'u'");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.0f, 0.5, NULL, ws_bytes, &t), A, "'ws'");
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.0f, 0.5, ws, 8, &t), A, "ws_bytes");
    lg[2] = NAN;
    expect_error(ctx, moei_sample(ctx, lg, 4, 1.0f, 0, 1.0f, 0.5, ws, ws_bytes, &t), MOE_ERR_NUMERIC, "logits[2]");
    lg[2] = INFINITY;
    expect_error(ctx, moei_sample(ctx, lg, 4, 0.0f, 0, 1.0f, 0.5, ws, ws_bytes, &t), MOE_ERR_NUMERIC, "logits[2]");
    const float all_masked[2] = {-INFINITY, -INFINITY};
    expect_error(ctx, moei_sample(ctx, all_masked, 2, 1.0f, 0, 1.0f, 0.5, ws, ws_bytes, &t), MOE_ERR_NUMERIC, "-inf");
    assert_int_equal(t, -5);
    free(ws);
}

static int setup(void **state)
{
    moe_ctx *ctx = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK) return -1;
    *state = ctx;
    return 0;
}

static int teardown(void **state)
{
    moe_ctx_destroy(*state);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frequencies),
        cmocka_unit_test(test_uniform_stream),
        cmocka_unit_test(test_greedy_and_ties),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
