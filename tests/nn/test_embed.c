/* Token / position embedding ops against the fp64 reference: forward values, backward against
 * central differences of the reference (repeated ids included), thread-count independence of the
 * scatter-add, the vocabulary-shard form, and argument checking (id and position named). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/embed.h"
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

/* ---- forward ---- */

static void test_forward_values(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {1};
    const int64_t n = 37, vocab = 11, dim = 19;
    float *table = xcalloc(vocab * dim, sizeof(float)), *out = xcalloc(n * dim, sizeof(float));
    double *t64 = xcalloc(vocab * dim, sizeof(double)), *o64 = xcalloc(n * dim, sizeof(double));
    int32_t *ids = xcalloc(n, sizeof(int32_t));
    ref_fill(&r, table, vocab * dim, -1, 1);
    for (int64_t i = 0; i < n; i++) ids[i] = ref_randint(&r, 0, (int32_t)vocab);
    ids[0] = 0;
    ids[n - 1] = (int32_t)vocab - 1;
    ids[5] = ids[6] = 3; /* repeats */
    for (int64_t i = 0; i < n * dim; i++) out[i] = 123.0f; /* must be overwritten */
    assert_int_equal(moei_cpu_embedding_forward(ctx, n, vocab, dim, table, ids, out), MOE_OK);
    ref_to_f64(table, t64, vocab * dim);
    ref_embedding(n, dim, t64, ids, o64);
    for (int64_t i = 0; i < n * dim; i++) assert_true((double)out[i] == o64[i]);
    free(table), free(out), free(t64), free(o64), free(ids);
    moe_ctx_destroy(ctx);
}

/* ---- backward by finite differences of the reference ---- */

typedef struct emb_fd {
    int64_t n, dim;
    const int32_t *ids;
    const double *w;  /* projection weights [n, dim] */
    const double *x;  /* only for the position test: the input the positions add to */
    double *scratch;  /* [n, dim] */
} emb_fd;

static double emb_loss(const double *table, void *user)
{
    emb_fd *u = user;
    ref_embedding(u->n, u->dim, table, u->ids, u->scratch);
    double l = 0.0;
    for (int64_t i = 0; i < u->n * u->dim; i++) l += u->w[i] * u->scratch[i];
    return l;
}

static double pos_loss(const double *table, void *user)
{
    emb_fd *u = user;
    memcpy(u->scratch, u->x, (size_t)(u->n * u->dim) * sizeof(double));
    ref_pos_add(u->n, u->dim, table, u->ids, u->scratch);
    double l = 0.0;
    for (int64_t i = 0; i < u->n * u->dim; i++) l += u->w[i] * u->scratch[i];
    return l;
}

static void test_backward_fd(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {2};
    const int64_t n = 29, vocab = 7, dim = 13;
    float *table = xcalloc(vocab * dim, sizeof(float)), *w = xcalloc(n * dim, sizeof(float));
    float *d_table = xcalloc(vocab * dim, sizeof(float));
    double *t64 = xcalloc(vocab * dim, sizeof(double)), *w64 = xcalloc(n * dim, sizeof(double));
    double *grad = xcalloc(vocab * dim, sizeof(double)), *scratch = xcalloc(n * dim, sizeof(double));
    int32_t *ids = xcalloc(n, sizeof(int32_t));
    ref_fill(&r, table, vocab * dim, -1, 1);
    ref_fill(&r, w, n * dim, -1, 1);
    for (int64_t i = 0; i < n; i++) ids[i] = ref_randint(&r, 0, (int32_t)vocab - 1); /* last row never used */
    ids[3] = ids[4] = ids[20] = 2;
    ref_to_f64(table, t64, vocab * dim);
    ref_to_f64(w, w64, n * dim);
    emb_fd u = {n, dim, ids, w64, NULL, scratch};
    ref_fd_grad(emb_loss, t64, vocab * dim, &u, 1e-6, grad);

    /* accumulate semantics: start from a known value and subtract it afterwards */
    for (int64_t i = 0; i < vocab * dim; i++) d_table[i] = 0.5f;
    assert_int_equal(moei_cpu_embedding_backward(ctx, n, vocab, dim, w, ids, d_table), MOE_OK);
    for (int64_t i = 0; i < vocab * dim; i++) d_table[i] -= 0.5f;
    assert_true(ref_rel_err(d_table, grad, vocab * dim) <= 1e-4);
    for (int64_t c = 0; c < dim; c++) assert_true(d_table[(vocab - 1) * dim + c] == 0.0f); /* untouched row */
    free(table), free(w), free(d_table), free(t64), free(w64), free(grad), free(scratch), free(ids);
    moe_ctx_destroy(ctx);
}

/* Large enough to take the parallel path; the sum for each element must not depend on threads. */
static void test_backward_threads(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {3};
    const int64_t n = 700, vocab = 23, dim = 203;
    float *d_out = xcalloc(n * dim, sizeof(float));
    float *d1 = xcalloc(vocab * dim, sizeof(float)), *d2 = xcalloc(vocab * dim, sizeof(float));
    float *d3 = xcalloc(vocab * dim, sizeof(float));
    double *ref = xcalloc(vocab * dim, sizeof(double));
    int32_t *ids = xcalloc(n, sizeof(int32_t));
    ref_fill(&r, d_out, n * dim, -1, 1);
    for (int64_t i = 0; i < n; i++) ids[i] = ref_randint(&r, 0, (int32_t)vocab);
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < dim; c++) ref[ids[i] * dim + c] += d_out[i * dim + c];
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    assert_int_equal(moei_cpu_embedding_backward(ctx, n, vocab, dim, d_out, ids, d1), MOE_OK);
    omp_set_num_threads(2);
    assert_int_equal(moei_cpu_embedding_backward(ctx, n, vocab, dim, d_out, ids, d2), MOE_OK);
    omp_set_num_threads(3);
    assert_int_equal(moei_cpu_embedding_backward(ctx, n, vocab, dim, d_out, ids, d3), MOE_OK);
    omp_set_num_threads(saved);
    assert_memory_equal(d1, d2, (size_t)(vocab * dim) * sizeof(float));
    assert_memory_equal(d1, d3, (size_t)(vocab * dim) * sizeof(float));
    assert_true(ref_rel_err(d1, ref, vocab * dim) <= 1e-6);
    free(d_out), free(d1), free(d2), free(d3), free(ref), free(ids);
    moe_ctx_destroy(ctx);
}

/* ---- vocabulary shard ---- */

static void test_shard(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {4};
    const int64_t n = 41, vocab = 20, dim = 9, begin = 5, rows = 7;
    float *table = xcalloc(vocab * dim, sizeof(float)), *out = xcalloc(n * dim, sizeof(float));
    float *d_out = xcalloc(n * dim, sizeof(float)), *d_full = xcalloc(vocab * dim, sizeof(float));
    float *d_shard = xcalloc(rows * dim, sizeof(float));
    int32_t *ids = xcalloc(n, sizeof(int32_t));
    ref_fill(&r, table, vocab * dim, -1, 1);
    ref_fill(&r, d_out, n * dim, -1, 1);
    for (int64_t i = 0; i < n; i++) ids[i] = ref_randint(&r, 0, (int32_t)vocab);
    ids[0] = (int32_t)begin;
    ids[1] = (int32_t)(begin + rows - 1);
    ids[2] = (int32_t)(begin + rows);
    ids[3] = (int32_t)(begin - 1);
    for (int64_t i = 0; i < n * dim; i++) out[i] = 7.0f;
    assert_int_equal(
        moei_cpu_embedding_forward_shard(ctx, n, vocab, begin, rows, dim, table + begin * dim, ids, out), MOE_OK);
    for (int64_t i = 0; i < n; i++) {
        int inside = ids[i] >= begin && ids[i] < begin + rows;
        for (int64_t c = 0; c < dim; c++)
            assert_true(out[i * dim + c] == (inside ? table[ids[i] * dim + c] : 0.0f));
    }
    assert_int_equal(moei_cpu_embedding_backward(ctx, n, vocab, dim, d_out, ids, d_full), MOE_OK);
    assert_int_equal(moei_cpu_embedding_backward_shard(ctx, n, vocab, begin, rows, dim, d_out, ids, d_shard), MOE_OK);
    assert_memory_equal(d_shard, d_full + begin * dim, (size_t)(rows * dim) * sizeof(float));
    free(table), free(out), free(d_out), free(d_full), free(d_shard), free(ids);
    moe_ctx_destroy(ctx);
}

/* ---- positions ---- */

static void test_pos_add(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    ref_rng r = {5};
    const int64_t n = 24, max_pos = 8, dim = 11;
    float *pt = xcalloc(max_pos * dim, sizeof(float)), *x = xcalloc(n * dim, sizeof(float));
    float *w = xcalloc(n * dim, sizeof(float)), *d_pt = xcalloc(max_pos * dim, sizeof(float));
    double *pt64 = xcalloc(max_pos * dim, sizeof(double)), *x64 = xcalloc(n * dim, sizeof(double));
    double *w64 = xcalloc(n * dim, sizeof(double)), *grad = xcalloc(max_pos * dim, sizeof(double));
    double *scratch = xcalloc(n * dim, sizeof(double));
    int32_t *pos = xcalloc(n, sizeof(int32_t));
    ref_fill(&r, pt, max_pos * dim, -1, 1);
    ref_fill(&r, x, n * dim, -1, 1);
    ref_fill(&r, w, n * dim, -1, 1);
    for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(i % 6); /* three sequences of length 6 and a partial one */
    ref_to_f64(pt, pt64, max_pos * dim);
    ref_to_f64(x, x64, n * dim);
    ref_to_f64(w, w64, n * dim);

    double *y64 = xcalloc(n * dim, sizeof(double));
    memcpy(y64, x64, (size_t)(n * dim) * sizeof(double));
    ref_pos_add(n, dim, pt64, pos, y64);
    assert_int_equal(moei_cpu_pos_embed_add(ctx, n, max_pos, dim, pt, pos, x), MOE_OK);
    assert_true(ref_rel_err(x, y64, n * dim) <= 1e-7);

    emb_fd u = {n, dim, pos, w64, x64, scratch};
    ref_fd_grad(pos_loss, pt64, max_pos * dim, &u, 1e-6, grad);
    assert_int_equal(moei_cpu_pos_embed_backward(ctx, n, max_pos, dim, w, pos, d_pt), MOE_OK);
    assert_true(ref_rel_err(d_pt, grad, max_pos * dim) <= 1e-4);
    for (int64_t c = 0; c < 2 * dim; c++) assert_true(d_pt[6 * dim + c] == 0.0f); /* positions 6, 7 unused */
    free(pt), free(x), free(w), free(d_pt), free(pt64), free(x64), free(w64), free(grad), free(scratch), free(pos);
    free(y64);
    moe_ctx_destroy(ctx);
}

/* ---- edges and bad arguments ---- */

static void test_zero_sizes(void **state)
{
    (void)state;
    moe_ctx *ctx = new_ctx();
    float table[4] = {1, 2, 3, 4};
    int32_t ids[2] = {0, 1};
    assert_int_equal(moei_cpu_embedding_forward(ctx, 0, 2, 2, table, NULL, NULL), MOE_OK);
    assert_int_equal(moei_cpu_embedding_backward(ctx, 0, 0, 2, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_cpu_embedding_forward(ctx, 2, 2, 0, NULL, ids, NULL), MOE_OK);
    assert_int_equal(moei_cpu_pos_embed_add(ctx, 0, 0, 4, NULL, NULL, NULL), MOE_OK);
    float out[2];
    /* one element */
    assert_int_equal(moei_cpu_embedding_forward(ctx, 1, 4, 1, table, ids + 1, out), MOE_OK);
    assert_true(out[0] == 2.0f);
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
    float table[12] = {0}, out[12], d[12] = {0};
    for (int i = 0; i < 12; i++) out[i] = 9.0f;
    int32_t ids[4] = {0, 1, 2, -1};
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, 4, 3, table, ids, out), "ids[3] = -1");
    for (int i = 0; i < 12; i++) assert_true(out[i] == 9.0f); /* nothing written */
    ids[3] = 0;
    ids[1] = 4;
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, 4, 3, table, ids, out), "ids[1] = 4");
    expect_fail(ctx, moei_cpu_embedding_backward(ctx, 4, 4, 3, out, ids, d), "ids[1] = 4");
    for (int i = 0; i < 12; i++) assert_true(d[i] == 0.0f);
    ids[1] = 1;
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, 4, 3, NULL, ids, out), "'table'");
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, 4, 3, table, NULL, out), "'ids'");
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, 4, 3, table, ids, NULL), "'out'");
    expect_fail(ctx, moei_cpu_embedding_backward(ctx, 4, 4, 3, NULL, ids, d), "'d_out'");
    expect_fail(ctx, moei_cpu_embedding_backward(ctx, 4, 4, 3, out, ids, NULL), "'d_table'");
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, -1, 4, 3, table, ids, out), "n = -1");
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, -4, 3, table, ids, out), "vocab = -4");
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, 4, 4, -3, table, ids, out), "dim = -3");
    expect_fail(ctx, moei_cpu_embedding_forward(ctx, INT64_MAX / 2, 4, 3, table, ids, out), "overflows");
    expect_fail(ctx, moei_cpu_embedding_forward_shard(ctx, 4, 4, 2, 3, 3, table, ids, out), "shard rows");
    expect_fail(ctx, moei_cpu_embedding_forward_shard(ctx, 4, 4, -1, 3, 3, table, ids, out), "shard rows");
    int32_t pos[3] = {0, 1, 9};
    expect_fail(ctx, moei_cpu_pos_embed_add(ctx, 3, 4, 3, table, pos, out), "pos[2] = 9");
    expect_fail(ctx, moei_cpu_pos_embed_backward(ctx, 3, 4, 3, out, pos, d), "pos[2] = 9");
    pos[2] = 0;
    expect_fail(ctx, moei_cpu_pos_embed_add(ctx, 3, 4, 3, NULL, pos, out), "'pos_table'");
    expect_fail(ctx, moei_cpu_pos_embed_add(ctx, 3, 4, 3, table, NULL, out), "'pos'");
    expect_fail(ctx, moei_cpu_pos_embed_backward(ctx, 3, 4, 3, out, pos, NULL), "'d_pos_table'");
    expect_fail(ctx, moei_cpu_pos_embed_add(ctx, 3, -4, 3, table, pos, out), "max_pos = -4");
    /* NULL ctx still reports through the thread's last error */
    assert_int_equal(moei_cpu_embedding_forward(NULL, 4, 4, 3, table, ids, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'out'"));
    moe_ctx_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_values), cmocka_unit_test(test_backward_fd),
        cmocka_unit_test(test_backward_threads), cmocka_unit_test(test_shard),
        cmocka_unit_test(test_pos_add), cmocka_unit_test(test_zero_sizes),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
