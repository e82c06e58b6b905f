/* RoPE and ALiBi: the table against HF's fp32 recipe (values produced offline with NumPy float32
 * following transformers' default rotary embedding) and against double angles, the rotation against
 * the fp64 rotate_half reference with positions that restart per sequence, the backward against
 * finite differences, ALiBi slopes against the paper's definition, and bad arguments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/rope.h"
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

static void expect_invalid(moe_status st, const char *needle)
{
    if (st != MOE_ERR_INVALID_ARG) fail_msg("status %d where MOE_ERR_INVALID_ARG naming %s was due", (int)st, needle);
    const char *msg = moe_ctx_last_error(g_ctx);
    if (!strstr(msg, needle)) fail_msg("message \"%s\" does not name %s", msg, needle);
}

/* inv_freq = 1 / (theta ** (arange(0, D, 2).float() / D)); freqs = pos.float() * inv_freq;
 * cos/sin in float32. Columns: theta, D, position, pair index i, cos, sin. */
static const struct {
    double theta;
    int d, p, i;
    float c, s;
} hf_values[] = {
    {1000000.0, 128, 1, 0, 5.403023e-01f, 8.41471e-01f},
    {1000000.0, 128, 1, 1, 6.9250387e-01f, 7.2141415e-01f},
    {1000000.0, 128, 1, 17, 9.9967533e-01f, 2.5480209e-02f},
    {1000000.0, 128, 1, 63, 1.e+00f, 1.2409378e-06f},
    {1000000.0, 128, 7, 0, 7.5390226e-01f, 6.569866e-01f},
    {1000000.0, 128, 7, 1, 8.007261e-01f, -5.990306e-01f},
    {1000000.0, 128, 7, 17, 9.841323e-01f, 1.7743628e-01f},
    {1000000.0, 128, 7, 63, 1.e+00f, 8.686564e-06f},
    {1000000.0, 128, 100, 0, 8.623189e-01f, -5.0636566e-01f},
    {1000000.0, 128, 100, 1, 4.561003e-01f, -8.8992834e-01f},
    {1000000.0, 128, 100, 17, -8.291024e-01f, 5.5909675e-01f},
    {1000000.0, 128, 100, 63, 1.e+00f, 1.2409377e-04f},
    {1000000.0, 128, 4095, 0, -6.5975994e-02f, -9.978212e-01f},
    {1000000.0, 128, 4095, 1, 3.1385878e-01f, 9.494697e-01f},
    {1000000.0, 128, 4095, 17, -7.7745e-01f, -6.289447e-01f},
    {1000000.0, 128, 4095, 63, 9.9998707e-01f, 5.081618e-03f},
    {1000000.0, 128, 32767, 0, 9.822633e-01f, 1.8750656e-01f},
    {1000000.0, 128, 32767, 1, -9.984877e-01f, 5.4975692e-02f},
    {1000000.0, 128, 32767, 17, 7.8797716e-01f, -6.157045e-01f},
    {1000000.0, 128, 32767, 63, 9.991734e-01f, 4.0650602e-02f},
    {10000.0, 64, 1, 0, 5.403023e-01f, 8.41471e-01f},
    {10000.0, 64, 1, 1, 7.31761e-01f, 6.8156135e-01f},
    {10000.0, 64, 1, 17, 9.9997187e-01f, 7.498872e-03f},
    {10000.0, 64, 1, 31, 1.e+00f, 1.3335215e-04f},
    {10000.0, 64, 7, 0, 7.5390226e-01f, 6.569866e-01f},
    {10000.0, 64, 7, 1, 5.114493e-01f, -8.593135e-01f},
    {10000.0, 64, 7, 17, 9.986226e-01f, 5.2468494e-02f},
    {10000.0, 64, 7, 31, 9.999996e-01f, 9.3346497e-04f},
    {10000.0, 64, 100, 0, 8.623189e-01f, -5.0636566e-01f},
    {10000.0, 64, 100, 1, 9.175962e-01f, -3.975137e-01f},
    {10000.0, 64, 100, 17, 7.317609e-01f, 6.815614e-01f},
    {10000.0, 64, 100, 31, 9.9991107e-01f, 1.333482e-02f},
    {10000.0, 64, 4095, 0, -6.5975994e-02f, -9.978212e-01f},
    {10000.0, 64, 4095, 1, -9.004635e-02f, -9.959376e-01f},
    {10000.0, 64, 4095, 17, 7.5982106e-01f, -6.5013224e-01f},
    {10000.0, 64, 4095, 31, 8.545684e-01f, 5.1933885e-01f},
    {10000.0, 64, 32767, 0, 9.822633e-01f, 1.8750656e-01f},
    {10000.0, 64, 32767, 1, -1.8270487e-01f, -9.831678e-01f},
    {10000.0, 64, 32767, 17, 7.8156686e-01f, 6.238215e-01f},
    {10000.0, 64, 32767, 31, -3.3616245e-01f, -9.41804e-01f},
};

static int within_ulps(float a, float b, int ulps)
{
    float mag = fabsf(b);
    float ulp = nextafterf(mag, INFINITY) - mag;
    return fabsf(a - b) <= (float)ulps * ulp;
}

static void test_table_matches_hf_fp32(void **state)
{
    (void)state;
    const int64_t max_seq = 32768;
    int dims[2] = {128, 64};
    double thetas[2] = {1000000.0, 10000.0};
    for (int cfg = 0; cfg < 2; cfg++) {
        int64_t half = dims[cfg] / 2;
        float *c = malloc((size_t)(max_seq * half) * 4), *s = malloc((size_t)(max_seq * half) * 4);
        assert_int_equal(moei_rope_table(g_ctx, max_seq, dims[cfg], (float)thetas[cfg], c, s), MOE_OK);
        for (size_t k = 0; k < sizeof hf_values / sizeof hf_values[0]; k++) {
            if (hf_values[k].d != dims[cfg]) continue;
            int64_t at = (int64_t)hf_values[k].p * half + hf_values[k].i;
            if (!within_ulps(c[at], hf_values[k].c, 1) || !within_ulps(s[at], hf_values[k].s, 1))
                fail_msg("theta %g D %d pos %d i %d: got (%.9g, %.9g), HF fp32 gives (%.9g, %.9g)", hf_values[k].theta,
                         hf_values[k].d, hf_values[k].p, hf_values[k].i, (double)c[at], (double)s[at],
                         (double)hf_values[k].c, (double)hf_values[k].s);
        }
        /* Small positions: close to the exact angles too (fp32 angles drift as pos grows). */
        for (int64_t p = 0; p < 64; p++)
            for (int64_t i = 0; i < half; i++) {
                double ang = (double)p * pow(thetas[cfg], -2.0 * (double)i / (double)dims[cfg]);
                double tol = 3e-7 * (ang > 1.0 ? ang : 1.0);
                assert_true(fabs(c[p * half + i] - cos(ang)) <= tol);
                assert_true(fabs(s[p * half + i] - sin(ang)) <= tol);
            }
        /* Position 0 is the identity. */
        for (int64_t i = 0; i < half; i++) {
            assert_true(c[i] == 1.0f);
            assert_true(s[i] == 0.0f);
        }
        free(c), free(s);
    }
}

typedef struct rope_case {
    int64_t tokens, heads, kv_heads, D;
    const int32_t *pos;
    double theta;
    double *q, *k, *wq, *wk, *yq, *yk;
} rope_case;

static double rope_loss(void *user)
{
    rope_case *c = user;
    ref_rope(c->tokens, c->heads, c->D, c->pos, c->theta, c->q, c->yq);
    ref_rope(c->tokens, c->kv_heads, c->D, c->pos, c->theta, c->k, c->yk);
    double l = 0.0;
    for (int64_t i = 0; i < c->tokens * c->heads * c->D; i++) l += c->wq[i] * c->yq[i];
    for (int64_t i = 0; i < c->tokens * c->kv_heads * c->D; i++) l += c->wk[i] * c->yk[i];
    return l;
}

/* B sequences of T tokens each, positions 0 .. T-1 in every sequence. */
static void run_rope(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, uint64_t seed)
{
    const double theta = 10000.0;
    const int64_t tokens = B * T, max_seq = T + 3;
    size_t nq = (size_t)(tokens * H * D), nk = (size_t)(tokens * Hkv * D);
    int32_t *pos = malloc((size_t)tokens * sizeof *pos);
    for (int64_t t = 0; t < tokens; t++) pos[t] = (int32_t)(t % T);
    float *ct = malloc((size_t)(max_seq * D / 2) * 4), *st = malloc((size_t)(max_seq * D / 2) * 4);
    assert_int_equal(moei_rope_table(g_ctx, max_seq, D, (float)theta, ct, st), MOE_OK);

    ref_rng r;
    ref_rng_seed(&r, seed);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *q0 = malloc(nq * 4), *k0 = malloc(nk * 4);
    float *gq = malloc(nq * 4), *gk = malloc(nk * 4);
    ref_fill(&r, q0, nq, 1.5f);
    ref_fill(&r, k0, nk, 1.5f);
    /* Every sequence gets the same content, so its rotated rows must match across sequences. */
    for (int64_t t = T; t < tokens; t++) {
        memcpy(q0 + t * H * D, q0 + (t % T) * H * D, (size_t)(H * D) * 4);
        memcpy(k0 + t * Hkv * D, k0 + (t % T) * Hkv * D, (size_t)(Hkv * D) * 4);
    }
    ref_fill(&r, gq, nq, 1.0f);
    ref_fill(&r, gk, nk, 1.0f);
    memcpy(q, q0, nq * 4);
    memcpy(k, k0, nk * 4);
    assert_int_equal(moei_rope_fwd(g_ctx, tokens, H, Hkv, D, pos, max_seq, ct, st, q, k), MOE_OK);

    rope_case c = {tokens, H, Hkv, D, pos, theta, ref_to_double(q0, nq), ref_to_double(k0, nk),
                   ref_to_double(gq, nq), ref_to_double(gk, nk), malloc(nq * 8), malloc(nk * 8)};
    rope_loss(&c);
    double e = ref_rel_err(q, c.yq, nq);
    if (e > 1e-5) fail_msg("rope q T=%lld D=%lld: rel err %g", (long long)T, (long long)D, e);
    e = ref_rel_err(k, c.yk, nk);
    if (e > 1e-5) fail_msg("rope k T=%lld D=%lld: rel err %g", (long long)T, (long long)D, e);
    for (int64_t t = T; t < tokens; t++) {
        assert_memory_equal(q + t * H * D, q + (t % T) * H * D, (size_t)(H * D) * 4);
        assert_memory_equal(k + t * Hkv * D, k + (t % T) * Hkv * D, (size_t)(Hkv * D) * 4);
    }
    /* Position 0 (each sequence's first token) is left exactly as it was. */
    for (int64_t b = 0; b < B; b++) assert_memory_equal(q + b * T * H * D, q0 + b * T * H * D, (size_t)(H * D) * 4);

    /* Backward: the library's dq, dk against finite differences of the fp64 loss. */
    assert_int_equal(moei_rope_bwd(g_ctx, tokens, H, Hkv, D, pos, max_seq, ct, st, gq, gk), MOE_OK);
    double *g = malloc(nq * 8);
    ref_fd_grad(rope_loss, &c, c.q, nq, 1e-6, g);
    e = ref_rel_err(gq, g, nq);
    if (e > 1e-4) fail_msg("rope dq T=%lld D=%lld: rel err %g", (long long)T, (long long)D, e);
    ref_fd_grad(rope_loss, &c, c.k, nk, 1e-6, g);
    e = ref_rel_err(gk, g, nk);
    if (e > 1e-4) fail_msg("rope dk T=%lld D=%lld: rel err %g", (long long)T, (long long)D, e);

    /* The backward of the forward is the identity (the rotation is orthogonal). */
    assert_int_equal(moei_rope_bwd(g_ctx, tokens, H, Hkv, D, pos, max_seq, ct, st, q, k), MOE_OK);
    double *q0d = ref_to_double(q0, nq);
    assert_true(ref_rel_err(q, q0d, nq) < 1e-6);

    free(g), free(q0d), free(c.q), free(c.k), free(c.wq), free(c.wk), free(c.yq), free(c.yk);
    free(pos), free(ct), free(st), free(q), free(k), free(q0), free(k0), free(gq), free(gk);
}

static void test_rope_vs_reference(void **state)
{
    (void)state;
    run_rope(1, 1, 2, 1, 8, 1);  /* one token */
    run_rope(2, 13, 4, 2, 8, 2); /* two sequences, GQA */
    run_rope(2, 13, 4, 4, 16, 3);
    run_rope(2, 37, 3, 1, 16, 4);
    run_rope(1, 5, 1, 1, 2, 5); /* a single pair per head */
}

static void test_rope_one_side(void **state)
{
    (void)state;
    int32_t pos[2] = {3, 1};
    float ct[4 * 2], st[4 * 2];
    assert_int_equal(moei_rope_table(g_ctx, 4, 4, 10000.0f, ct, st), MOE_OK);
    float q[2 * 4] = {1, 2, 3, 4, 5, 6, 7, 8}, k[2 * 4], q2[2 * 4];
    memcpy(k, q, sizeof q);
    memcpy(q2, q, sizeof q);
    assert_int_equal(moei_rope_fwd(g_ctx, 2, 1, 0, 4, pos, 4, ct, st, q, NULL), MOE_OK);
    assert_int_equal(moei_rope_fwd(g_ctx, 2, 0, 1, 4, pos, 4, ct, st, NULL, k), MOE_OK);
    assert_memory_equal(q, k, sizeof q);
    assert_memory_not_equal(q, q2, sizeof q);
    /* tokens == 0: nothing to check, nothing to do */
    assert_int_equal(moei_rope_fwd(g_ctx, 0, 1, 1, 4, NULL, 4, NULL, NULL, NULL, NULL), MOE_OK);
}

static void test_alibi_slopes(void **state)
{
    (void)state;
    float s[64];
    double ref[64];
    /* Known values: 8 heads -> 1/2 .. 1/256; 6 heads -> the 4-head slopes, then 2^-1 and 2^-3 */
    assert_int_equal(moei_alibi_slopes(g_ctx, 8, s), MOE_OK);
    for (int h = 0; h < 8; h++) assert_true(s[h] == ldexpf(1.0f, -(h + 1)));
    assert_int_equal(moei_alibi_slopes(g_ctx, 6, s), MOE_OK);
    const float six[6] = {0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f};
    assert_memory_equal(s, six, sizeof six);
    assert_int_equal(moei_alibi_slopes(g_ctx, 1, s), MOE_OK);
    assert_true(s[0] == 0.00390625f);
    for (int64_t n = 1; n <= 64; n++) {
        assert_int_equal(moei_alibi_slopes(g_ctx, n, s), MOE_OK);
        ref_alibi_slopes(n, ref);
        for (int64_t h = 0; h < n; h++)
            if (fabs(s[h] - ref[h]) > 1e-7 * ref[h])
                fail_msg("alibi n=%lld h=%lld: %.9g vs %.9g", (long long)n, (long long)h, (double)s[h], ref[h]);
    }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    float ct[8 * 4], st[8 * 4], q[2 * 2 * 8] = {0}, k[2 * 8] = {0}, slopes[4];
    int32_t pos[2] = {0, 1}, bad_pos[2] = {0, 8}, neg_pos[2] = {-1, 0};
    float keep[2 * 2 * 8];
    assert_int_equal(moei_rope_table(g_ctx, 8, 8, 10000.0f, ct, st), MOE_OK);
    for (int i = 0; i < 32; i++) q[i] = (float)i;
    memcpy(keep, q, sizeof q);
    expect_invalid(moei_rope_table(g_ctx, 8, 7, 10000.0f, ct, st), "'head_dim'");
    expect_invalid(moei_rope_table(g_ctx, 8, 0, 10000.0f, ct, st), "'head_dim'");
    expect_invalid(moei_rope_table(g_ctx, 0, 8, 10000.0f, ct, st), "'max_seq'");
    expect_invalid(moei_rope_table(g_ctx, 8, 8, 1.0f, ct, st), "'theta'");
    expect_invalid(moei_rope_table(g_ctx, 8, 8, NAN, ct, st), "'theta'");
    expect_invalid(moei_rope_table(g_ctx, 8, 8, 10000.0f, NULL, st), "'cos_tab'");
    expect_invalid(moei_rope_table(g_ctx, 8, 8, 10000.0f, ct, NULL), "'sin_tab'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 7, pos, 8, ct, st, q, k), "'head_dim'");
    expect_invalid(moei_rope_fwd(g_ctx, -1, 2, 1, 8, pos, 8, ct, st, q, k), "'tokens'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, -2, 1, 8, pos, 8, ct, st, q, k), "'heads'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, -1, 8, pos, 8, ct, st, q, k), "'kv_heads'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, pos, 0, ct, st, q, k), "'max_seq'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, NULL, 8, ct, st, q, k), "'pos'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, bad_pos, 8, ct, st, q, k), "'pos'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, neg_pos, 8, ct, st, q, k), "'pos'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, pos, 8, NULL, st, q, k), "'cos_tab'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, pos, 8, ct, NULL, q, k), "'sin_tab'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, pos, 8, ct, st, NULL, k), "'q'");
    expect_invalid(moei_rope_fwd(g_ctx, 2, 2, 1, 8, pos, 8, ct, st, q, NULL), "'k'");
    expect_invalid(moei_rope_bwd(g_ctx, 2, 2, 1, 8, pos, 8, ct, st, NULL, k), "'dq'");
    expect_invalid(moei_rope_bwd(g_ctx, 2, 2, 1, 8, pos, 8, ct, st, q, NULL), "'dk'");
    expect_invalid(moei_rope_bwd(g_ctx, 2, 2, 1, 5, pos, 8, ct, st, q, k), "moei_rope_bwd");
    assert_memory_equal(q, keep, sizeof q); /* a rejected call rotates nothing, even partly */
    expect_invalid(moei_alibi_slopes(g_ctx, 0, slopes), "'heads'");
    expect_invalid(moei_alibi_slopes(g_ctx, 4, NULL), "'slopes'");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches_hf_fp32), cmocka_unit_test(test_rope_vs_reference),
        cmocka_unit_test(test_rope_one_side),         cmocka_unit_test(test_alibi_slopes),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
