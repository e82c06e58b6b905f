/* The single-process pieces of tensor parallelism, against independent references: the
 * vocabulary-parallel cross-entropy over every split of the vocabulary (fp64 softmax reference for
 * the loss and its gradient), parameter slices along any dimension drawing exactly the logical
 * elements of the whole tensor, the partial-gradient placement of the parameter store, and the
 * near-even chunking. Bad arguments fail with the argument named. */
#include <stdlib.h>

#include "core/test_util.h"
#include "cpu/loss.h"
#include "cpu/loss_parallel.h"
#include "nn/params.h"
#include "nn/tp.h"

static int setup_ctx(void **state)
{
    moe_ctx *ctx = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK) return -1;
    *state = ctx;
    return 0;
}

static int teardown_ctx(void **state)
{
    moe_ctx_destroy(*state);
    return 0;
}

enum { N = 9, V = 11 };

/* fp64 reference: per-row loss logsumexp - x_t and gradient scale * (softmax - onehot). */
static double ref_ce(const float *x, const int32_t *t, double scale, double *grad, int64_t *count)
{
    double total = 0.0;
    *count = 0;
    for (int i = 0; i < N; i++) {
        const float *r = x + i * V;
        if (t[i] == -100) {
            for (int j = 0; j < V; j++) grad[i * V + j] = 0.0;
            continue;
        }
        double mx = r[0], s = 0.0;
        for (int j = 1; j < V; j++) mx = r[j] > mx ? r[j] : mx;
        for (int j = 0; j < V; j++) s += exp((double)r[j] - mx);
        for (int j = 0; j < V; j++) grad[i * V + j] = scale * (exp((double)r[j] - mx) / s - (j == t[i]));
        total += log(s) + mx - r[t[i]];
        (*count)++;
    }
    return total;
}

static void test_ce_every_split(void **state)
{
    moe_ctx *ctx = *state;
    test_rng rng = {77};
    float x[N * V];
    int32_t t[N];
    for (int i = 0; i < N * V; i++) x[i] = 12.0f * test_rng_sym(&rng);
    for (int i = 0; i < N; i++) t[i] = (int32_t)test_rng_range(&rng, 0, V - 1);
    t[2] = -100;
    t[5] = 0;
    t[6] = V - 1;
    x[4 * V + 3] = 80.0f; /* a row where one logit dominates: p_t close to 1 or 0 */
    t[4] = 3;
    const float scale = 0.37f;
    double gref[N * V];
    int64_t cref = 0;
    const double lref = ref_ce(x, t, scale, gref, &cref);
    const int32_t splits[] = {1, 2, 3, 4, 5, 11};
    for (size_t si = 0; si < sizeof splits / sizeof splits[0]; si++) {
        const int32_t p = splits[si];
        float *shard[11], stats[11][N * 3], all[11 * N * 3], grad[N * V];
        double rows[N * 2];
        int64_t starts[11], widths[11];
        for (int32_t r = 0; r < p; r++) {
            moei_tp_chunk(V, p, r, &starts[r], &widths[r]);
            shard[r] = malloc((size_t)(N * widths[r]) * sizeof(float));
            for (int i = 0; i < N; i++)
                memcpy(shard[r] + i * widths[r], x + i * V + starts[r], (size_t)widths[r] * sizeof(float));
            ASSERT_OK(moei_cpu_ce_shard_stats(ctx, N, V, starts[r], widths[r], shard[r], t, stats[r]));
            memcpy(all + (size_t)r * N * 3, stats[r], sizeof stats[r]);
        }
        double loss = 0.0;
        int64_t count = 0;
        ASSERT_OK(moei_cpu_ce_shard_combine(ctx, N, p, all, t, rows, &loss, &count));
        assert_int_equal(count, cref);
        assert_true(fabs(loss - lref) <= 1e-6 * fabs(lref));
        for (int32_t r = 0; r < p; r++) {
            /* in place, as the LM head uses it */
            ASSERT_OK(moei_cpu_ce_shard_backward(ctx, N, starts[r], widths[r], shard[r], t, rows, scale, shard[r]));
            for (int i = 0; i < N; i++)
                memcpy(grad + i * V + starts[r], shard[r] + i * widths[r], (size_t)widths[r] * sizeof(float));
            free(shard[r]);
        }
        double d2 = 0.0, r2 = 0.0;
        for (int i = 0; i < N * V; i++) {
            d2 += (grad[i] - gref[i]) * (grad[i] - gref[i]);
            r2 += gref[i] * gref[i];
        }
        assert_true(sqrt(d2 / r2) <= 1e-6);
        for (int j = 0; j < V; j++) assert_true(grad[2 * V + j] == 0.0f); /* ignored row */
        /* and the whole-vocabulary kernel gives the same loss */
        double whole = 0.0;
        ASSERT_OK(moei_cpu_cross_entropy(ctx, N, V, x, t, scale, NULL, NULL, &whole, NULL));
        assert_true(fabs(loss - whole) <= 1e-6 * fabs(whole));
    }
}

static void test_ce_bad_arguments(void **state)
{
    moe_ctx *ctx = *state;
    float x[2 * 3] = {0}, st[6];
    double rows[4], loss;
    int32_t t[2] = {1, 7};
    ASSERT_FAILS_CTX(ctx, moei_cpu_ce_shard_stats(ctx, 2, 5, 0, 3, x, t, st), MOE_ERR_INVALID_ARG, "targets[1] = 7");
    t[1] = 2;
    ASSERT_FAILS(moei_cpu_ce_shard_stats(ctx, 2, 5, 3, 3, x, t, st), MOE_ERR_INVALID_ARG, "shard [3, 6)");
    ASSERT_FAILS(moei_cpu_ce_shard_stats(ctx, 2, 5, 0, 0, x, t, st), MOE_ERR_INVALID_ARG, "shard [0, 0)");
    ASSERT_FAILS(moei_cpu_ce_shard_combine(ctx, 2, 0, st, t, rows, &loss, NULL), MOE_ERR_INVALID_ARG, "p = 0");
    ASSERT_FAILS(moei_cpu_ce_shard_combine(ctx, 2, 1, st, t, rows, NULL, NULL), MOE_ERR_INVALID_ARG, "loss_sum");
    ASSERT_FAILS(moei_cpu_ce_shard_backward(ctx, 2, 0, 3, x, t, rows, NAN, x), MOE_ERR_INVALID_ARG, "scale");
    /* n = 0: nothing to do, a zero loss */
    ASSERT_OK(moei_cpu_ce_shard_combine(ctx, 0, 2, NULL, NULL, NULL, &loss, NULL));
    assert_true(loss == 0.0);
}

/* A slice along any dimension holds exactly the logical elements of the whole tensor. */
static void test_slice_init(void **state)
{
    moe_ctx *ctx = *state;
    moei_params whole, part;
    moei_params_init(&whole, ctx);
    moei_params_init(&part, ctx);
    const int64_t s2[2] = {6, 10}, s3[3] = {3, 5, 4};
    ASSERT_OK(moei_params_add(&whole, "m", 2, s2, 0, NULL));
    ASSERT_OK(moei_params_add(&whole, "t", 3, s3, 0, NULL));
    /* columns [4, 7) of m (a row-parallel slice), rows [2, 5) of m via moei_params_slice, and the
     * middle of t in dimensions 1 and 2 at once */
    const int64_t cshape[2] = {6, 3}, cstart[2] = {0, 4};
    int32_t ic, ir, it;
    ASSERT_OK(moei_params_add_slice(&part, "m", 2, cshape, s2, cstart, 0, MOEI_GROUP_DENSE, &ic));
    ASSERT_OK(moei_params_add(&part, "t", 3, s3, 0, &it));
    ASSERT_OK(moei_params_slice(&part, it, 1, 2, 2));
    ASSERT_OK(moei_params_slice(&part, it, 2, 1, 3));
    moei_params rows;
    moei_params_init(&rows, ctx);
    ASSERT_OK(moei_params_add(&rows, "m", 2, s2, 0, &ir));
    ASSERT_OK(moei_params_slice(&rows, ir, 0, 2, 3));
    assert_int_equal(part.entries[it].numel, 3 * 2 * 3);
    assert_int_equal(part.entries[it].start[1], 2);
    assert_int_equal(part.entries[it].start[2], 1);
    assert_int_equal(rows.entries[ir].shard_start, 2);
    ASSERT_OK(moei_params_alloc(&whole));
    ASSERT_OK(moei_params_alloc(&part));
    ASSERT_OK(moei_params_alloc(&rows));
    moei_params_init_values(&whole, 5, 0.5f);
    moei_params_init_values(&part, 5, 0.5f);
    moei_params_init_values(&rows, 5, 0.5f);
    const float *wm = moei_param_data(&whole, 0), *wt = moei_param_data(&whole, 1);
    const float *pc = moei_param_data(&part, ic), *pt = moei_param_data(&part, it), *pr = moei_param_data(&rows, ir);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 3; j++) assert_true(pc[i * 3 + j] == wm[i * 10 + 4 + j]);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 10; j++) assert_true(pr[i * 10 + j] == wm[(2 + i) * 10 + j]);
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 3; c++) assert_true(pt[(a * 2 + b) * 3 + c] == wt[(a * 5 + 2 + b) * 4 + 1 + c]);
    /* out of range */
    ASSERT_FAILS(moei_params_slice(&rows, ir, 0, 2, 2), MOE_ERR_INVALID_ARG, "'m'", "[2, 4)");
    const int64_t bad[2] = {0, 8};
    ASSERT_FAILS(moei_params_add_slice(&rows, "q", 2, cshape, s2, bad, 0, MOEI_GROUP_DENSE, NULL), MOE_ERR_INVALID_ARG,
                 "'q'", "dimension 1");
    moei_params_free(&whole);
    moei_params_free(&part);
    moei_params_free(&rows);
}

/* PARTIAL tensors (summed over tp) sit together at the end of the dense region. */
static void test_partial_placement(void **state)
{
    moe_ctx *ctx = *state;
    moei_params p;
    moei_params_init(&p, ctx);
    const int64_t a[1] = {5}, b[1] = {3}, c[1] = {4}, e[2] = {2, 2};
    int32_t ia, ib, ic, ie;
    ASSERT_OK(moei_params_add(&p, "a", 1, a, 0, &ia));
    ASSERT_OK(moei_params_add(&p, "b", 1, b, 0, &ib));
    ASSERT_OK(moei_params_add_shard(&p, "e", 2, e, 0, MOEI_GROUP_EXPERT, 4, 2, &ie));
    ASSERT_OK(moei_params_add(&p, "c", 1, c, 0, &ic));
    moei_params_set_tp(&p, ib, MOEI_TP_PARTIAL);
    moei_params_set_tp(&p, ia, MOEI_TP_SHARDED);
    p.region_align[MOEI_GROUP_DENSE] = 4;
    ASSERT_OK(moei_params_alloc(&p));
    assert_int_equal(p.entries[ia].offset, 0);
    assert_int_equal(p.entries[ic].offset, 5);
    assert_int_equal(p.entries[ib].offset, 9);
    assert_int_equal(p.tp_partial_offset, 9);
    assert_int_equal(p.tp_partial_size, 3);
    assert_int_equal(p.region_size[MOEI_GROUP_DENSE], 12);
    assert_int_equal(p.entries[ie].offset, 12);
    assert_int_equal(p.entries[ie].shard_start, 2);
    assert_int_equal(p.entries[ie].full_shape[0], 4);
    moei_params_free(&p);
}

static void test_chunks(void **state)
{
    (void)state;
    for (int64_t total = 0; total < 20; total++)
        for (int32_t size = 1; size <= 6; size++) {
            int64_t next = 0;
            for (int32_t r = 0; r < size; r++) {
                int64_t s, c;
                moei_tp_chunk(total, size, r, &s, &c);
                assert_int_equal(s, next);
                assert_true(c == total / size || c == total / size + 1);
                assert_true(r == 0 || c <= (total / size + (r - 1 < total % size ? 1 : 0)));
                next += c;
            }
            assert_int_equal(next, total);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ce_every_split, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_ce_bad_arguments, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_slice_init, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_partial_placement, setup_ctx, teardown_ctx),
        cmocka_unit_test(test_chunks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
