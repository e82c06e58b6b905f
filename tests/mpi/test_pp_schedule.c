/* Pipeline schedules: every (kind, stages, micro-batches, chunks) in a grid produces lists that the
 * validator accepts, with the bubble of the closed-form formulas and the expected peak of in-flight
 * micro-batches; hand-written lists for small cases; the validator rejects broken lists (each rule
 * with its message); bad arguments; the layer partition against an independent count. */
#include <stdio.h>
#include <stdlib.h>

#include "core/test_util.h"
#include "parallel/schedule.h"

typedef struct lists {
    int32_t p;
    moei_pp_action **a;
    int64_t *n;
} lists;

static void build(moe_ctx *ctx, int32_t kind, int32_t p, int32_t m, int32_t v, lists *L)
{
    L->p = p;
    L->a = calloc((size_t)p, sizeof *L->a);
    L->n = calloc((size_t)p, sizeof *L->n);
    assert_non_null(L->a);
    assert_non_null(L->n);
    for (int32_t r = 0; r < p; r++) {
        int64_t n = -1;
        ASSERT_OK(moei_pp_schedule(ctx, kind, p, m, v, r, NULL, 0, &n));
        L->a[r] = calloc((size_t)n + 1, sizeof *L->a[r]);
        assert_non_null(L->a[r]);
        int64_t n2 = -1;
        ASSERT_OK(moei_pp_schedule(ctx, kind, p, m, v, r, L->a[r], n, &n2));
        assert_int_equal(n, n2);
        L->n[r] = n;
    }
}

static void release(lists *L)
{
    for (int32_t r = 0; r < L->p; r++) free(L->a[r]);
    free(L->a);
    free(L->n);
}

static moe_status validate(moe_ctx *ctx, const lists *L, int32_t m, int32_t v, int64_t f, int64_t b, int32_t *peak,
                           moei_pp_report *rep)
{
    return moei_pp_validate(ctx, L->p, m, v, (const moei_pp_action *const *)L->a, L->n, f, b, peak, rep);
}

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

/* Counts independent of the generator: per rank, m*v forwards and backwards, and one send and one
 * receive per item per neighbouring virtual stage on another rank. */
static void check_counts(const lists *L, int32_t m, int32_t v)
{
    int32_t p = L->p;
    for (int32_t r = 0; r < p; r++) {
        int64_t ops[6] = {0};
        for (int64_t i = 0; i < L->n[r]; i++) ops[L->a[r][i].op]++;
        assert_int_equal(ops[MOEI_PP_FORWARD], (int64_t)m * v);
        assert_int_equal(ops[MOEI_PP_BACKWARD], (int64_t)m * v);
        int64_t links_in = 0, links_out = 0; /* virtual stages of this rank with a remote neighbour */
        for (int32_t c = 0; c < v; c++) {
            int64_t vs = (int64_t)c * p + r;
            if (p > 1 && vs > 0) links_in++;
            if (p > 1 && vs < (int64_t)p * v - 1) links_out++;
        }
        assert_int_equal(ops[MOEI_PP_RECV_ACT], links_in * m);
        assert_int_equal(ops[MOEI_PP_SEND_GRAD], links_in * m);
        assert_int_equal(ops[MOEI_PP_SEND_ACT], links_out * m);
        assert_int_equal(ops[MOEI_PP_RECV_GRAD], links_out * m);
    }
}

/* ---- validity and bubble over a grid ---------------------------------------------------------- */

static void test_gpipe_1f1b_grid(void **state)
{
    moe_ctx *ctx = *state;
    const int64_t costs[][2] = {{1, 1}, {1, 2}, {2, 3}};
    int n = 0;
    for (int32_t kind = MOEI_PP_GPIPE; kind <= MOEI_PP_1F1B; kind++)
        for (int32_t p = 1; p <= 8; p++)
            for (int32_t m = 1; m <= 13; m++) {
                lists L;
                build(ctx, kind, p, m, 1, &L);
                check_counts(&L, m, 1);
                for (size_t c = 0; c < sizeof costs / sizeof costs[0]; c++) {
                    int64_t f = costs[c][0], b = costs[c][1];
                    int32_t peak[8];
                    moei_pp_report rep;
                    moe_status st = validate(ctx, &L, m, 1, f, b, peak, &rep);
                    if (st != MOE_OK) fail_msg("kind %d p %d m %d: %s", kind, p, m, moe_last_error());
                    /* bubble (p-1)/(m+p-1): the makespan is (m+p-1)(f+b) */
                    assert_int_equal(rep.makespan, (int64_t)(m + p - 1) * (f + b));
                    assert_int_equal(rep.busy, (int64_t)p * m * (f + b));
                    double want = (double)(p - 1) / (double)(m + p - 1);
                    if (fabs(rep.bubble - want) > 1e-12)
                        fail_msg("kind %d p %d m %d: bubble %.15f, want %.15f", kind, p, m, rep.bubble, want);
                    for (int32_t r = 0; r < p; r++) {
                        int32_t want_peak = kind == MOEI_PP_GPIPE ? m : (p - r < m ? p - r : m);
                        if (peak[r] != want_peak)
                            fail_msg("kind %d p %d m %d rank %d: peak in flight %d, want %d", kind, p, m, r, peak[r],
                                     want_peak);
                    }
                    if (kind == MOEI_PP_1F1B) assert_true(rep.peak_inflight <= p);
                    n++;
                }
                release(&L);
            }
    assert_true(n > 300);
}

static void test_interleaved_grid(void **state)
{
    moe_ctx *ctx = *state;
    const int64_t costs[][2] = {{1, 1}, {1, 2}};
    int n = 0;
    for (int32_t p = 1; p <= 6; p++)
        for (int32_t v = 1; v <= 4; v++)
            for (int32_t g = 1; g <= 4; g++) {
                int32_t m = g * p;
                lists L;
                build(ctx, MOEI_PP_INTERLEAVED, p, m, v, &L);
                check_counts(&L, m, v);
                for (size_t c = 0; c < sizeof costs / sizeof costs[0]; c++) {
                    int64_t f = costs[c][0], b = costs[c][1];
                    int32_t peak[6];
                    moei_pp_report rep;
                    moe_status st = validate(ctx, &L, m, v, f, b, peak, &rep);
                    if (st != MOE_OK) fail_msg("p %d v %d m %d: %s", p, v, m, moe_last_error());
                    /* per-chunk costs: ideal v*m*(f+b), bubble (p-1)(f+b), so (p-1)/(v*m+p-1) */
                    int64_t want_t = ((int64_t)v * m + p - 1) * (f + b);
                    if (rep.makespan != want_t)
                        fail_msg("p %d v %d m %d f %d b %d: makespan %lld, want %lld", p, v, m, (int)f, (int)b,
                                 (long long)rep.makespan, (long long)want_t);
                    double want = (double)(p - 1) / (double)((int64_t)v * m + p - 1);
                    if (fabs(rep.bubble - want) > 1e-12)
                        fail_msg("p %d v %d m %d: bubble %.15f, want %.15f", p, v, m, rep.bubble, want);
                    for (int32_t r = 0; r < p; r++) {
                        /* Megatron's warm-up: 2(p-r-1) + (v-1)p forwards, then one more in steady state */
                        int64_t w = v == 1 ? p - r - 1 : 2 * (int64_t)(p - r - 1) + (int64_t)(v - 1) * p;
                        int64_t cap = w + 1 < (int64_t)m * v ? w + 1 : (int64_t)m * v;
                        if (peak[r] != cap)
                            fail_msg("p %d v %d m %d rank %d: peak %d, want %lld", p, v, m, r, peak[r], (long long)cap);
                    }
                    n++;
                }
                release(&L);
            }
    assert_true(n > 150);
}

/* Interleaving divides the bubble by v against 1F1B on the same stages and micro-batches. */
static void test_interleaved_shrinks_bubble(void **state)
{
    moe_ctx *ctx = *state;
    const int32_t p = 4, m = 8;
    lists a, b;
    build(ctx, MOEI_PP_1F1B, p, m, 1, &a);
    build(ctx, MOEI_PP_INTERLEAVED, p, m, 2, &b);
    moei_pp_report ra, rb;
    ASSERT_OK(validate(ctx, &a, m, 1, 2, 4, NULL, &ra)); /* a whole stage: f = 2, b = 4 */
    ASSERT_OK(validate(ctx, &b, m, 2, 1, 2, NULL, &rb)); /* half a stage per chunk */
    /* same work, idle time (p-1)(f+b) per rank shrinks from 3*6 to 3*3 */
    assert_int_equal(ra.busy, rb.busy);
    assert_int_equal(ra.makespan - m * 6, 18);
    assert_int_equal(rb.makespan - m * 6, 9);
    release(&a);
    release(&b);
}

/* ---- hand-written lists ----------------------------------------------------------------------- */

#define A(op, mb, ch, peer) {MOEI_PP_##op, mb, ch, peer}

static void expect_list(moe_ctx *ctx, int32_t kind, int32_t p, int32_t m, int32_t v, int32_t r,
                        const moei_pp_action *want, int64_t n_want)
{
    moei_pp_action got[64];
    int64_t n = 0;
    ASSERT_OK(moei_pp_schedule(ctx, kind, p, m, v, r, got, 64, &n));
    if (n != n_want) fail_msg("kind %d rank %d: %lld actions, want %lld", kind, r, (long long)n, (long long)n_want);
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof got[i]) != 0)
            fail_msg("kind %d rank %d action %lld: %s mb %d chunk %d peer %d, want %s mb %d chunk %d peer %d", kind, r,
                     (long long)i, moei_pp_op_name(got[i].op), got[i].microbatch, got[i].chunk, got[i].peer,
                     moei_pp_op_name(want[i].op), want[i].microbatch, want[i].chunk, want[i].peer);
}

static void test_known_lists(void **state)
{
    moe_ctx *ctx = *state;
    /* 1F1B, 2 stages, 3 micro-batches: stage 0 warms up with one forward */
    const moei_pp_action f1b_r0[] = {A(FORWARD, 0, 0, -1),   A(SEND_ACT, 0, 0, 1),  A(FORWARD, 1, 0, -1),
                                     A(SEND_ACT, 1, 0, 1),   A(RECV_GRAD, 0, 0, 1), A(BACKWARD, 0, 0, -1),
                                     A(FORWARD, 2, 0, -1),   A(SEND_ACT, 2, 0, 1),  A(RECV_GRAD, 1, 0, 1),
                                     A(BACKWARD, 1, 0, -1),  A(RECV_GRAD, 2, 0, 1), A(BACKWARD, 2, 0, -1)};
    const moei_pp_action f1b_r1[] = {A(RECV_ACT, 0, 0, 0),  A(FORWARD, 0, 0, -1), A(BACKWARD, 0, 0, -1),
                                     A(SEND_GRAD, 0, 0, 0), A(RECV_ACT, 1, 0, 0), A(FORWARD, 1, 0, -1),
                                     A(BACKWARD, 1, 0, -1), A(SEND_GRAD, 1, 0, 0), A(RECV_ACT, 2, 0, 0),
                                     A(FORWARD, 2, 0, -1),  A(BACKWARD, 2, 0, -1), A(SEND_GRAD, 2, 0, 0)};
    expect_list(ctx, MOEI_PP_1F1B, 2, 3, 1, 0, f1b_r0, 12);
    expect_list(ctx, MOEI_PP_1F1B, 2, 3, 1, 1, f1b_r1, 12);
    /* GPipe, 2 stages, 2 micro-batches: all forwards, then backwards in micro-batch order */
    const moei_pp_action gp_r0[] = {A(FORWARD, 0, 0, -1),  A(SEND_ACT, 0, 0, 1),   A(FORWARD, 1, 0, -1),
                                    A(SEND_ACT, 1, 0, 1),  A(RECV_GRAD, 0, 0, 1),  A(BACKWARD, 0, 0, -1),
                                    A(RECV_GRAD, 1, 0, 1), A(BACKWARD, 1, 0, -1)};
    expect_list(ctx, MOEI_PP_GPIPE, 2, 2, 1, 0, gp_r0, 8);
    /* interleaved, 2 stages x 2 chunks, 2 micro-batches: virtual stages 0,1,2,3 on ranks 0,1,0,1;
     * rank 1 warms up with (v-1)p = 2 forwards of chunk 0, then alternates */
    const moei_pp_action il_r1[] = {
        A(RECV_ACT, 0, 0, 0),  A(FORWARD, 0, 0, -1),  A(SEND_ACT, 0, 0, 0),  A(RECV_ACT, 1, 0, 0),
        A(FORWARD, 1, 0, -1),  A(SEND_ACT, 1, 0, 0),  A(RECV_ACT, 0, 1, 0),  A(FORWARD, 0, 1, -1),
        A(BACKWARD, 0, 1, -1), A(SEND_GRAD, 0, 1, 0), A(RECV_ACT, 1, 1, 0),  A(FORWARD, 1, 1, -1),
        A(BACKWARD, 1, 1, -1), A(SEND_GRAD, 1, 1, 0), A(RECV_GRAD, 0, 0, 0), A(BACKWARD, 0, 0, -1),
        A(SEND_GRAD, 0, 0, 0), A(RECV_GRAD, 1, 0, 0), A(BACKWARD, 1, 0, -1), A(SEND_GRAD, 1, 0, 0)};
    expect_list(ctx, MOEI_PP_INTERLEAVED, 2, 2, 2, 1, il_r1, 20);
    /* one stage, two chunks: the chunks hand over in memory, no communication */
    const moei_pp_action one[] = {A(FORWARD, 0, 0, -1), A(FORWARD, 0, 1, -1), A(BACKWARD, 0, 1, -1),
                                  A(BACKWARD, 0, 0, -1)};
    expect_list(ctx, MOEI_PP_INTERLEAVED, 1, 1, 2, 0, one, 4);
}

/* ---- the validator rejects broken lists ------------------------------------------------------- */

static void expect_rejected(moe_ctx *ctx, const lists *L, int32_t m, int32_t v, const char *rule)
{
    moei_pp_report rep;
    moe_status st = validate(ctx, L, m, v, 1, 1, NULL, &rep);
    if (st != MOE_ERR_INVALID_ARG) fail_msg("broken list accepted (%s expected)", rule);
    if (!strstr(moe_ctx_last_error(ctx), rule)) fail_msg("message '%s' lacks '%s'", moe_ctx_last_error(ctx), rule);
}

static int64_t find(const lists *L, int32_t r, int32_t op, int32_t mb, int32_t chunk)
{
    for (int64_t i = 0; i < L->n[r]; i++)
        if (L->a[r][i].op == op && L->a[r][i].microbatch == mb && L->a[r][i].chunk == chunk) return i;
    fail_msg("action %s mb %d chunk %d not on rank %d", moei_pp_op_name(op), mb, chunk, r);
    return -1;
}

static void swap_actions(lists *L, int32_t r, int64_t i, int64_t j)
{
    moei_pp_action t = L->a[r][i];
    L->a[r][i] = L->a[r][j];
    L->a[r][j] = t;
}

static void remove_action(lists *L, int32_t r, int64_t i)
{
    memmove(&L->a[r][i], &L->a[r][i + 1], (size_t)(L->n[r] - i - 1) * sizeof L->a[r][0]);
    L->n[r]--;
}

static void test_validator_rejects(void **state)
{
    moe_ctx *ctx = *state;
    const int32_t p = 3, m = 4;
    lists L;
    moei_pp_report rep;
    /* forward before its input arrives */
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    ASSERT_OK(validate(ctx, &L, m, 1, 1, 1, NULL, &rep));
    swap_actions(&L, 1, find(&L, 1, MOEI_PP_RECV_ACT, 2, 0), find(&L, 1, MOEI_PP_FORWARD, 2, 0));
    expect_rejected(ctx, &L, m, 1, "input activation has not arrived");
    release(&L);
    /* backward before its gradient arrives */
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    swap_actions(&L, 0, find(&L, 0, MOEI_PP_RECV_GRAD, 1, 0), find(&L, 0, MOEI_PP_BACKWARD, 1, 0));
    expect_rejected(ctx, &L, m, 1, "output gradient has not arrived");
    release(&L);
    /* receives in another order than the sends */
    build(ctx, MOEI_PP_GPIPE, p, m, 1, &L);
    {
        int64_t i = find(&L, 2, MOEI_PP_RECV_ACT, 1, 0), j = find(&L, 2, MOEI_PP_RECV_ACT, 2, 0);
        L.a[2][i].microbatch = 2;
        L.a[2][j].microbatch = 1;
        expect_rejected(ctx, &L, m, 1, "out of order");
    }
    release(&L);
    /* a missing send: the receiver waits forever */
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    remove_action(&L, 1, find(&L, 1, MOEI_PP_SEND_GRAD, 3, 0));
    expect_rejected(ctx, &L, m, 1, "deadlock");
    release(&L);
    /* a cycle: stage 0 waits for a gradient before sending anything */
    build(ctx, MOEI_PP_1F1B, 2, 1, 1, &L);
    {
        moei_pp_action first = L.a[0][2]; /* RECV_GRAD 0 */
        assert_int_equal(first.op, MOEI_PP_RECV_GRAD);
        memmove(&L.a[0][1], &L.a[0][0], 2 * sizeof first);
        L.a[0][0] = first;
        expect_rejected(ctx, &L, 1, 1, "deadlock");
    }
    release(&L);
    /* twice, wrong peer, backward first, never run, bad op, out of range, data not computed */
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[1][find(&L, 1, MOEI_PP_FORWARD, 2, 0)].microbatch = 1;
    expect_rejected(ctx, &L, m, 1, "forward runs twice");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[1][find(&L, 1, MOEI_PP_SEND_ACT, 0, 0)].peer = 0;
    expect_rejected(ctx, &L, m, 1, "peer is not the consuming neighbour");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[2][find(&L, 2, MOEI_PP_RECV_ACT, 0, 0)].peer = 0;
    expect_rejected(ctx, &L, m, 1, "peer is not the producing neighbour");
    release(&L);
    build(ctx, MOEI_PP_1F1B, 1, 2, 1, &L);
    swap_actions(&L, 0, 0, 1); /* F0 F1 B0 B1 -> F1 F0 ... is fine; make B0 come first instead */
    swap_actions(&L, 0, 0, 1);
    swap_actions(&L, 0, 0, find(&L, 0, MOEI_PP_BACKWARD, 0, 0));
    expect_rejected(ctx, &L, 2, 1, "backward before its forward");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.n[0]--; /* the last backward of stage 0 is dropped */
    expect_rejected(ctx, &L, m, 1, "never runs the backward");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[1][0].op = 9;
    expect_rejected(ctx, &L, m, 1, "unknown op");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[1][3].microbatch = m;
    expect_rejected(ctx, &L, m, 1, "out of range");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    swap_actions(&L, 0, find(&L, 0, MOEI_PP_FORWARD, 0, 0), find(&L, 0, MOEI_PP_SEND_ACT, 0, 0));
    expect_rejected(ctx, &L, m, 1, "sends data not yet computed");
    release(&L);
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[0][find(&L, 0, MOEI_PP_FORWARD, 1, 0)].peer = 2;
    expect_rejected(ctx, &L, m, 1, "compute with a peer");
    release(&L);
    /* the message names the rank and the action */
    build(ctx, MOEI_PP_1F1B, p, m, 1, &L);
    L.a[2][0].op = 9;
    expect_rejected(ctx, &L, m, 1, "rank 2 action 0");
    release(&L);
}

/* ---- arguments --------------------------------------------------------------------------------- */

static void test_schedule_args(void **state)
{
    moe_ctx *ctx = *state;
    int64_t n = 0;
    moei_pp_action buf[4];
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, 3, 2, 2, 1, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG, "kind");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, -1, 2, 2, 1, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG, "kind");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 0, 2, 1, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG, "stages");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 0, 1, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG,
                     "microbatches");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 2, 0, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG, "chunks");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 2, 2, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG,
                     "chunks = 2 needs the interleaved");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_GPIPE, 2, 2, 3, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG,
                     "interleaved");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_INTERLEAVED, 4, 6, 2, 0, NULL, 0, &n), MOE_ERR_INVALID_ARG,
                     "multiple of stages");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 2, 1, 2, NULL, 0, &n), MOE_ERR_INVALID_ARG, "rank 2");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 2, 1, -1, NULL, 0, &n), MOE_ERR_INVALID_ARG, "rank");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 2, 1, 0, NULL, 0, NULL), MOE_ERR_INVALID_ARG, "count");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 2, 1, 0, buf, 3, &n), MOE_ERR_INVALID_ARG,
                     "capacity 3");
    ASSERT_FAILS_CTX(ctx, moei_pp_schedule(ctx, MOEI_PP_INTERLEAVED, 2, 1 << 24, 8, 0, NULL, 0, &n),
                     MOE_ERR_INVALID_ARG, "microbatches * chunks");
    /* a capacity that fits writes nothing past the list */
    moei_pp_action big[16];
    memset(big, 0x5A, sizeof big);
    ASSERT_OK(moei_pp_schedule(ctx, MOEI_PP_1F1B, 2, 1, 1, 0, big, 16, &n));
    assert_int_equal(n, 4);
    for (size_t i = (size_t)n * sizeof big[0]; i < sizeof big; i++) assert_int_equal(((uint8_t *)big)[i], 0x5A);
    /* validator arguments */
    moei_pp_report rep;
    const moei_pp_action *lp[1] = {big};
    int64_t cnt[1] = {0};
    ASSERT_FAILS_CTX(ctx, moei_pp_validate(ctx, 1, 1, 1, NULL, cnt, 1, 1, NULL, &rep), MOE_ERR_INVALID_ARG, "lists");
    ASSERT_FAILS_CTX(ctx, moei_pp_validate(ctx, 1, 1, 1, lp, NULL, 1, 1, NULL, &rep), MOE_ERR_INVALID_ARG, "counts");
    ASSERT_FAILS_CTX(ctx, moei_pp_validate(ctx, 1, 1, 1, lp, cnt, 1, 1, NULL, NULL), MOE_ERR_INVALID_ARG, "report");
    ASSERT_FAILS_CTX(ctx, moei_pp_validate(ctx, 1, 1, 1, lp, cnt, -1, 1, NULL, &rep), MOE_ERR_INVALID_ARG, "costs");
    cnt[0] = -1;
    ASSERT_FAILS_CTX(ctx, moei_pp_validate(ctx, 1, 1, 1, lp, cnt, 1, 1, NULL, &rep), MOE_ERR_INVALID_ARG, "rank 0");
    cnt[0] = 0; /* an empty list never runs anything */
    ASSERT_FAILS_CTX(ctx, moei_pp_validate(ctx, 1, 1, 1, lp, cnt, 1, 1, NULL, &rep), MOE_ERR_INVALID_ARG,
                     "never runs the forward");
    assert_string_equal(moei_pp_op_name(MOEI_PP_RECV_GRAD), "RECV_GRAD");
    assert_string_equal(moei_pp_op_name(42), "?");
}

/* ---- layer partition --------------------------------------------------------------------------- */

static void test_partition(void **state)
{
    moe_ctx *ctx = *state;
    int32_t first[17];
    for (int32_t S = 1; S <= 16; S++)
        for (int32_t Lr = S; Lr <= 40; Lr++) {
            ASSERT_OK(moei_pp_partition(ctx, Lr, S, NULL, first));
            /* independent: hand the layers out one at a time, round-robin from stage 0, then
             * check the sizes; contiguity: first[] ascends from 0 to Lr */
            int32_t size[16] = {0};
            for (int32_t l = 0; l < Lr; l++) size[l % S]++;
            assert_int_equal(first[0], 0);
            for (int32_t s = 0; s < S; s++) assert_int_equal(first[s + 1] - first[s], size[s]);
            assert_int_equal(first[S], Lr);
        }
    /* 10 layers on 4 stages: the first two stages take the two extra layers */
    ASSERT_OK(moei_pp_partition(ctx, 10, 4, NULL, first));
    const int32_t want[5] = {0, 3, 6, 8, 10};
    for (int i = 0; i < 5; i++) assert_int_equal(first[i], want[i]);
    /* explicit counts, empty stages allowed */
    const int32_t counts[4] = {0, 5, 5, 0};
    ASSERT_OK(moei_pp_partition(ctx, 10, 4, counts, first));
    const int32_t want2[5] = {0, 0, 5, 10, 10};
    for (int i = 0; i < 5; i++) assert_int_equal(first[i], want2[i]);
    const int32_t neg[3] = {3, -1, 8};
    memset(first, 0x33, sizeof first);
    ASSERT_FAILS_CTX(ctx, moei_pp_partition(ctx, 10, 3, neg, first), MOE_ERR_INVALID_ARG, "counts[1]");
    assert_int_equal(first[0], 0x33333333);
    const int32_t short_sum[3] = {3, 3, 3};
    ASSERT_FAILS_CTX(ctx, moei_pp_partition(ctx, 10, 3, short_sum, first), MOE_ERR_INVALID_ARG, "sum to 9",
                     "num_layers = 10");
    ASSERT_FAILS_CTX(ctx, moei_pp_partition(ctx, 3, 4, NULL, first), MOE_ERR_INVALID_ARG, "num_layers = 3",
                     "num_stages = 4");
    ASSERT_FAILS_CTX(ctx, moei_pp_partition(ctx, -1, 4, NULL, first), MOE_ERR_INVALID_ARG, "num_layers");
    ASSERT_FAILS_CTX(ctx, moei_pp_partition(ctx, 4, 0, NULL, first), MOE_ERR_INVALID_ARG, "num_stages");
    ASSERT_FAILS_CTX(ctx, moei_pp_partition(ctx, 4, 2, NULL, NULL), MOE_ERR_INVALID_ARG, "first");
    ASSERT_OK(moei_pp_partition(ctx, 0, 2, (const int32_t[2]){0, 0}, first));
    assert_int_equal(first[2], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_gpipe_1f1b_grid, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_interleaved_grid, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_interleaved_shrinks_bubble, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_known_lists, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_validator_rejects, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_schedule_args, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_partition, setup_ctx, teardown_ctx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
