/* Causal attention (MHA, GQA, MQA; with and without ALiBi): forward and log-sum-exp against the
 * fp64 reference with explicit T x T scores, dq/dk/dv against central finite differences of that
 * reference (every element on small shapes, random directions on shapes of several blocks), bitwise
 * equality across 1 and 2 threads, and bad arguments. Outputs and workspace start as NaN so that a
 * read of stale memory or an accumulation where an overwrite is promised shows up. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/attention.h"
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

static float *nan_buf(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    memset(p, 0xff, (n ? n : 1) * sizeof *p); /* all-ones bits: a NaN */
    return p;
}

static void *make_ws(int64_t B, int64_t T, int64_t H, int32_t threads, size_t *bytes)
{
    assert_int_equal(moei_attention_workspace_size(g_ctx, B, T, H, threads, bytes), MOE_OK);
    void *ws = malloc(*bytes);
    memset(ws, 0xff, *bytes);
    return ws;
}

typedef struct attn_case {
    int64_t B, T, H, Hkv, D;
    double scale;
    const double *slopes;
    double *q, *k, *v, *proj, *out;
} attn_case;

static double attn_loss(void *user)
{
    attn_case *c = user;
    ref_attention(c->B, c->T, c->H, c->Hkv, c->D, c->scale, c->slopes, c->q, c->k, c->v, c->out, NULL);
    double l = 0.0;
    for (int64_t i = 0; i < c->B * c->T * c->H * c->D; i++) l += c->proj[i] * c->out[i];
    return l;
}

/* Gradient of one input against finite differences: every element (full) or `dirs` directions. */
static void check_grad(attn_case *c, double *param, const float *grad, size_t n, int full, const char *name,
                       ref_rng *r)
{
    if (full) {
        double *g = malloc(n * sizeof *g);
        ref_fd_grad(attn_loss, c, param, n, 1e-6, g);
        double e = ref_rel_err(grad, g, n);
        if (e > 1e-4)
            fail_msg("%s B=%lld T=%lld H=%lld Hkv=%lld D=%lld alibi=%d: rel err %g", name, (long long)c->B,
                     (long long)c->T, (long long)c->H, (long long)c->Hkv, (long long)c->D, c->slopes != NULL, e);
        free(g);
        return;
    }
    double *dir = malloc(n * sizeof *dir);
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < n; i++) dir[i] = ref_uniform(r);
        double fd = ref_fd_dir(attn_loss, c, param, dir, n, 1e-6), an = 0.0;
        for (size_t i = 0; i < n; i++) an += (double)grad[i] * dir[i];
        if (fabs(an - fd) > 1e-4 * fabs(fd))
            fail_msg("%s B=%lld T=%lld H=%lld Hkv=%lld D=%lld alibi=%d: directional %g vs %g", name, (long long)c->B,
                     (long long)c->T, (long long)c->H, (long long)c->Hkv, (long long)c->D, c->slopes != NULL, an,
                     fd);
    }
    free(dir);
}

static void run_case(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, int alibi, float scale, int full,
                     uint64_t seed)
{
    size_t nq = (size_t)(B * T * H * D), nk = (size_t)(B * T * Hkv * D), nl = (size_t)(B * H * T);
    ref_rng r;
    ref_rng_seed(&r, seed);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *proj = malloc(nq * 4);
    ref_fill(&r, q, nq, 1.5f);
    ref_fill(&r, k, nk, 1.5f);
    ref_fill(&r, v, nk, 1.0f);
    ref_fill(&r, proj, nq, 1.0f);
    float slopes[16];
    double dslopes[16];
    if (alibi) {
        assert_int_equal(moei_alibi_slopes(g_ctx, H, slopes), MOE_OK);
        for (int64_t h = 0; h < H; h++) dslopes[h] = slopes[h];
    }
    size_t ws_bytes;
    void *ws = make_ws(B, T, H, 0, &ws_bytes);
    float *out = nan_buf(nq), *lse = nan_buf(nl), *dq = nan_buf(nq), *dk = nan_buf(nk), *dv = nan_buf(nk);
    assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, scale, alibi ? slopes : NULL, q, k, v, out, lse, ws,
                                        ws_bytes),
                     MOE_OK);

    attn_case c = {B, T, H, Hkv, D, scale > 0.0f ? (double)scale : 1.0 / sqrt((double)D), alibi ? dslopes : NULL,
                   ref_to_double(q, nq), ref_to_double(k, nk), ref_to_double(v, nk), ref_to_double(proj, nq),
                   malloc(nq * 8)};
    double *lref = malloc(nl * 8);
    ref_attention(B, T, H, Hkv, D, c.scale, c.slopes, c.q, c.k, c.v, c.out, lref);
    double e = ref_rel_err(out, c.out, nq);
    if (e > 1e-5)
        fail_msg("out B=%lld T=%lld H=%lld Hkv=%lld D=%lld alibi=%d: rel err %g", (long long)B, (long long)T,
                 (long long)H, (long long)Hkv, (long long)D, alibi, e);
    e = ref_rel_err(lse, lref, nl);
    if (e > 1e-5) fail_msg("lse T=%lld: rel err %g", (long long)T, e);

    assert_int_equal(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, scale, alibi ? slopes : NULL, q, k, v, out, lse, proj,
                                        dq, dk, dv, ws, ws_bytes),
                     MOE_OK);
    check_grad(&c, c.q, dq, nq, full, "dq", &r);
    check_grad(&c, c.k, dk, nk, full, "dk", &r);
    check_grad(&c, c.v, dv, nk, full, "dv", &r);

    free(c.q), free(c.k), free(c.v), free(c.proj), free(c.out), free(lref);
    free(q), free(k), free(v), free(proj), free(out), free(lse), free(dq), free(dk), free(dv), free(ws);
}

static void test_small_shapes_full_fd(void **state)
{
    (void)state;
    run_case(1, 1, 2, 2, 8, 0, 0.0f, 1, 1);    /* one token */
    run_case(2, 1, 4, 1, 16, 1, 0.0f, 1, 2);   /* one token per sequence, MQA, ALiBi */
    run_case(2, 13, 4, 2, 8, 1, 0.0f, 1, 3);   /* GQA, odd T */
    run_case(2, 13, 4, 4, 16, 0, 0.0f, 1, 4);  /* MHA */
    run_case(2, 13, 4, 4, 16, 1, 0.0f, 1, 14); /* MHA with ALiBi */
    run_case(1, 37, 4, 1, 8, 1, 0.0f, 1, 5);   /* MQA */
    run_case(1, 37, 3, 1, 16, 0, 0.0f, 1, 6);  /* MQA, odd head count */
    run_case(2, 37, 2, 2, 8, 0, 0.3f, 1, 7);   /* explicit scale */
    run_case(1, 70, 2, 1, 8, 1, 0.0f, 1, 8);   /* past one block, partial last block */
    run_case(1, 70, 2, 2, 8, 0, 0.0f, 1, 9);
}

static void test_multi_block_shapes(void **state)
{
    (void)state;
    /* Forward checked element-wise, gradients along random directions. */
    run_case(2, 70, 4, 2, 16, 1, 0.0f, 0, 21);
    run_case(2, 70, 4, 1, 16, 0, 0.0f, 0, 22);
    run_case(1, 2 * MOEI_ATTN_BLOCK_Q + 22, 4, 2, 16, 0, 0.0f, 0, 23);
    run_case(2, 2 * MOEI_ATTN_BLOCK_K + 2, 2, 1, 8, 1, 0.0f, 0, 24);
    run_case(1, 2 * MOEI_ATTN_BLOCK_K, 4, 4, 8, 1, 0.5f, 0, 25); /* an exact multiple of the block */
}

/* With a strong ALiBi and large scores the online softmax must rescale across key blocks. */
static void test_peaked_scores(void **state)
{
    (void)state;
    const int64_t B = 1, T = 150, H = 2, Hkv = 1, D = 8;
    size_t nq = (size_t)(B * T * H * D), nk = (size_t)(B * T * Hkv * D), nl = (size_t)(B * H * T);
    ref_rng r;
    ref_rng_seed(&r, 31);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *out = nan_buf(nq), *lse = nan_buf(nl);
    ref_fill(&r, q, nq, 6.0f);
    ref_fill(&r, k, nk, 6.0f);
    ref_fill(&r, v, nk, 1.0f);
    float slopes[2] = {-0.5f, 2.0f}; /* a negative slope favours far keys: maxima move between blocks */
    double ds[2] = {-0.5, 2.0};
    size_t ws_bytes;
    void *ws = make_ws(B, T, H, 0, &ws_bytes);
    assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, slopes, q, k, v, out, lse, ws, ws_bytes),
                     MOE_OK);
    double *dq = ref_to_double(q, nq), *dk = ref_to_double(k, nk), *dv = ref_to_double(v, nk);
    double *oref = malloc(nq * 8), *lref = malloc(nl * 8);
    ref_attention(B, T, H, Hkv, D, 1.0 / sqrt((double)D), ds, dq, dk, dv, oref, lref);
    assert_true(ref_rel_err(out, oref, nq) < 1e-5);
    assert_true(ref_rel_err(lse, lref, nl) < 1e-5);
    free(q), free(k), free(v), free(out), free(lse), free(ws), free(dq), free(dk), free(dv), free(oref), free(lref);
}

/* Same bits whatever the thread count, and whatever the number of thread slots the workspace has. */
static void test_thread_determinism(void **state)
{
    (void)state;
    const int64_t B = 2, T = 150, H = 4, Hkv = 2, D = 16;
    size_t nq = (size_t)(B * T * H * D), nk = (size_t)(B * T * Hkv * D), nl = (size_t)(B * H * T);
    ref_rng r;
    ref_rng_seed(&r, 77);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *dout = malloc(nq * 4), slopes[4];
    ref_fill(&r, q, nq, 1.5f);
    ref_fill(&r, k, nk, 1.5f);
    ref_fill(&r, v, nk, 1.0f);
    ref_fill(&r, dout, nq, 1.0f);
    assert_int_equal(moei_alibi_slopes(g_ctx, H, slopes), MOE_OK);
    int saved = omp_get_max_threads();
    float *res[3][5];
    size_t sizes[5] = {nq, nl, nq, nk, nk};
    for (int run = 0; run < 3; run++) {
        int threads = run == 0 ? 1 : 2;
        omp_set_num_threads(threads);
        size_t ws_bytes;
        /* run 2: two threads available, a workspace for one */
        void *ws = make_ws(B, T, H, run == 2 ? 1 : threads, &ws_bytes);
        for (int i = 0; i < 5; i++) res[run][i] = nan_buf(sizes[i]);
        assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, slopes, q, k, v, res[run][0], res[run][1],
                                            ws, ws_bytes),
                         MOE_OK);
        assert_int_equal(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, slopes, q, k, v, res[run][0], res[run][1],
                                            dout, res[run][2], res[run][3], res[run][4], ws, ws_bytes),
                         MOE_OK);
        assert_int_equal(omp_get_max_threads(), threads); /* the caller's setting survives */
        free(ws);
    }
    omp_set_num_threads(saved);
    for (int run = 1; run < 3; run++)
        for (int i = 0; i < 5; i++) assert_memory_equal(res[0][i], res[run][i], sizes[i] * 4);
    for (int run = 0; run < 3; run++)
        for (int i = 0; i < 5; i++) free(res[run][i]);
    /* Forward without lse gives the same output. */
    size_t ws_bytes;
    void *ws = make_ws(B, T, H, 0, &ws_bytes);
    float *out = nan_buf(nq), *ref_out = nan_buf(nq), *lse = nan_buf(nl);
    assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, ref_out, lse, ws, ws_bytes),
                     MOE_OK);
    assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, NULL, ws, ws_bytes), MOE_OK);
    assert_memory_equal(out, ref_out, nq * 4);
    free(out), free(ref_out), free(lse), free(ws), free(q), free(k), free(v), free(dout);
}

/* The backward has two forms: one pass that stores the dS blocks (when the workspace holds that
 * store) and the two-pass form without it. They do the same products in the same order, so a
 * workspace just too small for the store must give the same bits as a full one. */
static void test_backward_without_ds_store(void **state)
{
    (void)state;
    const int64_t B = 1, T = 140, H = 4, Hkv = 2, D = 8;
    size_t nq = (size_t)(B * T * H * D), nk = (size_t)(B * T * Hkv * D), nl = (size_t)(B * H * T);
    ref_rng r;
    ref_rng_seed(&r, 91);
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *dout = malloc(nq * 4);
    ref_fill(&r, q, nq, 1.5f);
    ref_fill(&r, k, nk, 1.5f);
    ref_fill(&r, v, nk, 1.0f);
    ref_fill(&r, dout, nq, 1.0f);
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    size_t full = 0;
    void *ws = make_ws(B, T, H, 1, &full);
    float *out = nan_buf(nq), *lse = nan_buf(nl), *g[2][3];
    assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, ws, full), MOE_OK);
    /* the smallest workspace the backward accepts on one thread cannot hold the dS store */
    size_t lo = 0, hi = full;
    while (lo + 1 < hi) {
        size_t mid = lo + (hi - lo) / 2;
        float *a = nan_buf(nq), *b2 = nan_buf(nk), *c = nan_buf(nk);
        moe_status st = moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, dout, a, b2, c, ws, mid);
        free(a), free(b2), free(c);
        if (st == MOE_OK)
            hi = mid;
        else
            lo = mid;
    }
    assert_true(hi < full); /* the store needs room: a smaller workspace exists that still works */
    const size_t sizes[2] = {hi, full};
    for (int run = 0; run < 2; run++) {
        g[run][0] = nan_buf(nq), g[run][1] = nan_buf(nk), g[run][2] = nan_buf(nk);
        assert_int_equal(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, dout, g[run][0],
                                            g[run][1], g[run][2], ws, sizes[run]),
                         MOE_OK);
    }
    assert_memory_equal(g[0][0], g[1][0], nq * 4);
    assert_memory_equal(g[0][1], g[1][1], nk * 4);
    assert_memory_equal(g[0][2], g[1][2], nk * 4);
    omp_set_num_threads(saved);
    for (int run = 0; run < 2; run++) free(g[run][0]), free(g[run][1]), free(g[run][2]);
    free(out), free(lse), free(ws), free(q), free(k), free(v), free(dout);
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
    enum { B = 1, T = 9, H = 4, Hkv = 2, D = 8 }; /* B*H*T floats outgrow the alignment slack */
    float q[B * T * H * D] = {0}, k[B * T * Hkv * D] = {0}, v[B * T * Hkv * D] = {0}, out[B * T * H * D];
    float lse[B * H * T], dq[B * T * H * D], dk[B * T * Hkv * D], dv[B * T * Hkv * D];
    float keep[B * T * H * D];
    memset(out, 0x7f, sizeof out);
    memcpy(keep, out, sizeof out);
    size_t ws_bytes;
    void *ws = make_ws(B, T, H, 0, &ws_bytes);
    size_t fwd_bytes;
    assert_int_equal(moei_attention_workspace_size(g_ctx, 0, 0, H, 1, &fwd_bytes), MOE_OK);

    expect_invalid(moei_attention_fwd(g_ctx, B, T, 6, 4, D, 0.0f, NULL, q, k, v, out, lse, ws, ws_bytes), "'kv_heads'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, 0, 1, D, 0.0f, NULL, q, k, v, out, lse, ws, ws_bytes), "'heads'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, 0, D, 0.0f, NULL, q, k, v, out, lse, ws, ws_bytes), "'kv_heads'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, 0, 0.0f, NULL, q, k, v, out, lse, ws, ws_bytes),
                   "'head_dim'");
    expect_invalid(moei_attention_fwd(g_ctx, -1, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, ws, ws_bytes),
                   "'batch'");
    expect_invalid(moei_attention_fwd(g_ctx, B, -3, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, ws, ws_bytes), "'seq'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, NAN, NULL, q, k, v, out, lse, ws, ws_bytes), "'scale'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, -1.0f, NULL, q, k, v, out, lse, ws, ws_bytes), "'scale'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, NULL, k, v, out, lse, ws, ws_bytes), "'q'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, NULL, v, out, lse, ws, ws_bytes), "'k'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, NULL, out, lse, ws, ws_bytes), "'v'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, NULL, lse, ws, ws_bytes), "'out'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, NULL, ws_bytes), "'ws'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, ws, 100), "'ws_bytes'");
    expect_invalid(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, (char *)ws + 1,
                                      ws_bytes - 1),
                   "'ws'");
    assert_memory_equal(out, keep, sizeof out); /* failures wrote nothing */
    /* The forward needs no [B, H, T] part; the backward does. */
    assert_int_equal(moei_attention_fwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, ws, fwd_bytes), MOE_OK);
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, out, dq, dk, dv, ws,
                                      fwd_bytes),
                   "'ws_bytes'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, NULL, out, dq, dk, dv, ws,
                                      ws_bytes),
                   "'lse'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, NULL, dq, dk, dv, ws,
                                      ws_bytes),
                   "'dout'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, NULL, lse, out, dq, dk, dv, ws,
                                      ws_bytes),
                   "'out'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, out, NULL, dk, dv, ws,
                                      ws_bytes),
                   "'dq'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, out, dq, NULL, dv, ws,
                                      ws_bytes),
                   "'dk'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, H, Hkv, D, 0.0f, NULL, q, k, v, out, lse, out, dq, dk, NULL, ws,
                                      ws_bytes),
                   "'dv'");
    expect_invalid(moei_attention_bwd(g_ctx, B, T, 6, 4, D, 0.0f, NULL, q, k, v, out, lse, out, dq, dk, dv, ws,
                                      ws_bytes),
                   "moei_attention_bwd");
    expect_invalid(moei_attention_workspace_size(g_ctx, B, T, 0, 1, &ws_bytes), "'heads'");
    expect_invalid(moei_attention_workspace_size(g_ctx, B, T, H, 1, NULL), "'bytes'");
    /* Empty batches and sequences are valid and touch nothing. */
    assert_int_equal(moei_attention_fwd(g_ctx, 0, T, H, Hkv, D, 0.0f, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0),
                     MOE_OK);
    assert_int_equal(moei_attention_fwd(g_ctx, B, 0, H, Hkv, D, 0.0f, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0),
                     MOE_OK);
    assert_int_equal(moei_attention_bwd(g_ctx, B, 0, H, Hkv, D, 0.0f, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                        NULL, NULL, NULL, 0),
                     MOE_OK);
    free(ws);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_shapes_full_fd), cmocka_unit_test(test_multi_block_shapes),
        cmocka_unit_test(test_peaked_scores),        cmocka_unit_test(test_thread_determinism),
        cmocka_unit_test(test_bad_arguments),        cmocka_unit_test(test_backward_without_ds_store),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
