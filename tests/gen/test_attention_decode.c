/* The decode attention kernel against a naive fp64 reference: new queries at positions
 * past .. past + n_new - 1 against a cache, MHA/GQA/MQA, ALiBi, explicit scales, several sequences,
 * cache rows beyond the keys in use filled with NaN (never read); thread-count independence; bad
 * arguments. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <moe/ctx.h>

#include "cpu/attention_decode.h"

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

static void reference(int64_t B, int64_t n, int64_t past, int64_t H, int64_t Hkv, int64_t D, double scale,
                      const float *alibi, const float *q, const float *k, const float *v, int64_t rows, double *out)
{
    const int64_t rep = H / Hkv;
    double *s = malloc((size_t)(past + n) * sizeof(double));
    for (int64_t b = 0; b < B; b++)
        for (int64_t r = 0; r < n; r++)
            for (int64_t h = 0; h < H; h++) {
                const int64_t i = past + r, g = h / rep;
                const float *qv = q + ((b * n + r) * H + h) * D;
                double mx = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    const float *kv = k + ((b * rows + j) * Hkv + g) * D;
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; d++) dot += (double)qv[d] * kv[d];
                    s[j] = scale * dot - (alibi ? (double)alibi[h] * (double)(i - j) : 0.0);
                    mx = s[j] > mx ? s[j] : mx;
                }
                for (int64_t j = 0; j <= i; j++) sum += (s[j] = exp(s[j] - mx));
                double *o = out + ((b * n + r) * H + h) * D;
                for (int64_t d = 0; d < D; d++) {
                    double acc = 0.0;
                    for (int64_t j = 0; j <= i; j++) acc += s[j] * v[((b * rows + j) * Hkv + g) * D + d];
                    o[d] = acc / sum;
                }
            }
    free(s);
}

typedef struct dcase {
    int64_t B, n, past, H, Hkv, D, rows;
    float scale;
    int alibi;
} dcase;

static void run_case(moe_ctx *ctx, const dcase *c)
{
    const int64_t qn = c->B * c->n * c->H * c->D, kn = c->B * c->rows * c->Hkv * c->D;
    float *q = malloc((size_t)qn * sizeof(float)), *k = malloc((size_t)kn * sizeof(float)),
          *v = malloc((size_t)kn * sizeof(float)), *out = malloc((size_t)qn * sizeof(float)),
          *out1 = malloc((size_t)qn * sizeof(float)), alibi[16];
    double *ref = malloc((size_t)qn * sizeof(double));
    for (int64_t i = 0; i < qn; i++) q[i] = (float)(2.0 * urand() - 1.0);
    for (int64_t i = 0; i < kn; i++) {
        int64_t row = i / (c->Hkv * c->D) % c->rows;
        int used = row < c->past + c->n;
        k[i] = used ? (float)(2.0 * urand() - 1.0) : NAN;
        v[i] = used ? (float)(2.0 * urand() - 1.0) : NAN;
    }
    for (int h = 0; h < 16; h++) alibi[h] = (float)(0.05 + 0.3 * urand());
    const float *al = c->alibi ? alibi : NULL;
    size_t ws_bytes = 0;
    assert_int_equal(moei_attention_decode_workspace_size(ctx, c->H, c->Hkv, c->past + c->n, 0, &ws_bytes), MOE_OK);
    void *ws = malloc(ws_bytes);
    assert_int_equal(moei_attention_decode(ctx, c->B, c->n, c->past, c->H, c->Hkv, c->D, c->scale, al, q, k, v, c->rows,
                                           out, ws, ws_bytes),
                     MOE_OK);
    double scale = c->scale > 0.0f ? (double)c->scale : 1.0 / sqrt((double)c->D);
    reference(c->B, c->n, c->past, c->H, c->Hkv, c->D, scale, al, q, k, v, c->rows, ref);
    double diff = 0.0, norm = 0.0;
    for (int64_t i = 0; i < qn; i++) {
        diff += (out[i] - ref[i]) * (out[i] - ref[i]);
        norm += ref[i] * ref[i];
    }
    double rel = sqrt(diff / norm);
    if (!(rel <= 1e-5)) {
        print_error("B=%d n=%d past=%d H=%d Hkv=%d D=%d: relative error %.3g\n", (int)c->B, (int)c->n, (int)c->past,
                    (int)c->H, (int)c->Hkv, (int)c->D, rel);
        fail();
    }
    /* one thread gives the same bits */
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    assert_int_equal(moei_attention_decode(ctx, c->B, c->n, c->past, c->H, c->Hkv, c->D, c->scale, al, q, k, v, c->rows,
                                           out1, ws, ws_bytes),
                     MOE_OK);
    omp_set_num_threads(saved);
    assert_memory_equal(out, out1, (size_t)qn * sizeof(float));
    free(ws);
    free(q);
    free(k);
    free(v);
    free(out);
    free(out1);
    free(ref);
}

static void test_against_reference(void **state)
{
    moe_ctx *ctx = *state;
    const dcase cases[] = {
        {1, 1, 0, 1, 1, 1, 1, 0.0f, 0},      /* one key, one element */
        {2, 1, 5, 4, 2, 8, 9, 0.0f, 0},      /* GQA, one new token */
        {1, 3, 0, 3, 1, 5, 3, 0.0f, 1},      /* MQA, prefill through the decode kernel, ALiBi */
        {3, 4, 70, 2, 2, 16, 80, 0.3f, 0},   /* MHA, chunk of 4 after 70, explicit scale */
        {2, 2, 130, 6, 3, 7, 140, 0.0f, 1},  /* GQA 6/3, odd head_dim, ALiBi, long cache */
        {1, 1, 200, 8, 1, 32, 256, 0.0f, 0}, /* MQA, 8 query heads share one kv head */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(ctx, &cases[i]);
}

static void expect_error(moe_ctx *ctx, moe_status st, const char *needle)
{
    assert_int_equal(st, MOE_ERR_INVALID_ARG);
    if (!strstr(moe_ctx_last_error(ctx), needle)) {
        print_error("message '%s' does not name '%s'\n", moe_ctx_last_error(ctx), needle);
        fail();
    }
}

static void test_bad_arguments(void **state)
{
    moe_ctx *ctx = *state;
    float q[64] = {0}, k[64] = {0}, v[64] = {0}, o[64];
    size_t ws_bytes = 0;
    assert_int_equal(moei_attention_decode_workspace_size(ctx, 2, 1, 4, 1, &ws_bytes), MOE_OK);
    float *ws = malloc(ws_bytes);
    expect_error(ctx, moei_attention_decode_workspace_size(ctx, 3, 2, 4, 1, &ws_bytes), "kv_heads");
    expect_error(ctx, moei_attention_decode_workspace_size(ctx, 0, 1, 4, 1, &ws_bytes), "heads");
    expect_error(ctx, moei_attention_decode_workspace_size(ctx, 2, 1, 4, 1, NULL), "bytes");
    expect_error(ctx, moei_attention_decode(ctx, -1, 1, 0, 2, 1, 4, 0, NULL, q, k, v, 4, o, ws, ws_bytes), "batch");
    expect_error(ctx, moei_attention_decode(ctx, 1, -1, 0, 2, 1, 4, 0, NULL, q, k, v, 4, o, ws, ws_bytes), "n_new");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, -1, 2, 1, 4, 0, NULL, q, k, v, 4, o, ws, ws_bytes), "past");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 0, 0, NULL, q, k, v, 4, o, ws, ws_bytes), "head_dim");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 3, 2, 1, 4, 0, NULL, q, k, v, 3, o, ws, ws_bytes), "cache_rows");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, -1.0f, NULL, q, k, v, 4, o, ws, ws_bytes), "scale");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, 0, NULL, NULL, k, v, 4, o, ws, ws_bytes), "'q'");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, 0, NULL, q, NULL, v, 4, o, ws, ws_bytes), "k_cache");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, 0, NULL, q, k, NULL, 4, o, ws, ws_bytes), "v_cache");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, 0, NULL, q, k, v, 4, NULL, ws, ws_bytes), "out");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, 0, NULL, q, k, v, 4, o, NULL, ws_bytes), "'ws'");
    expect_error(ctx, moei_attention_decode(ctx, 1, 1, 0, 2, 1, 4, 0, NULL, q, k, v, 4, o, ws, 8), "ws_bytes");
    /* nothing to do */
    assert_int_equal(moei_attention_decode(ctx, 0, 1, 0, 2, 1, 4, 0, NULL, NULL, NULL, NULL, 4, NULL, NULL, 0), MOE_OK);
    assert_int_equal(moei_attention_decode(ctx, 1, 0, 0, 2, 1, 4, 0, NULL, NULL, NULL, NULL, 4, NULL, NULL, 0), MOE_OK);
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
        cmocka_unit_test(test_against_reference),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
