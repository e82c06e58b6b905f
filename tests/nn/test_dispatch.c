/* Dispatch plan, permute and unpermute-combine against independent oracles: a naive plan built from
 * the definition (expert-major, token order, first `capacity` kept) and a dense MoE
 * y = sum_e gate[n, e] * (W_e x[n] + b_e) in fp64, with finite differences of it for d_x and for the
 * combine weights. Edges: empty experts, one expert taking everything, drops, capacity equal to the
 * load, N = 0 / 1, k = 1 / E, E = 1, odd N, expert choice; thread-count determinism; bad arguments. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <omp.h>

#include "cpu/dispatch.h"
#include "cpu/router.h"
#include "moe/moe.h"
#include "nn/ref_moe.h"

static moe_ctx *g_ctx;

#define FWD_TOL 1e-5
#define GRAD_TOL 1e-4
#define FD_EPS 1e-6
#define DIN 5
#define DOUT 3

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

static void *xmalloc(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    assert_non_null(p);
    return p;
}

static void assert_close(const float *a, const double *b, int64_t count, double tol, const char *what)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < count; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    num = sqrt(num);
    den = sqrt(den);
    if (!(num <= tol * den + 1e-7)) fail_msg("%s: ||a-b|| = %g, ||b|| = %g (tol %g)", what, num, den, tol);
}

/* A bound plan with its own buffer. */
typedef struct plan_box {
    moei_dispatch_plan plan;
    void *buf;
} plan_box;

static void plan_open(plan_box *b, int64_t max_tokens, int32_t e, int64_t max_slots)
{
    size_t bytes = moei_dispatch_plan_bytes(max_tokens, e, max_slots);
    assert_true(bytes > 0);
    b->buf = xmalloc(bytes + 3);
    /* an odd start address: bind aligns inside the buffer */
    assert_int_equal(moei_dispatch_plan_bind(g_ctx, &b->plan, max_tokens, e, max_slots, (char *)b->buf + 3, bytes),
                     MOE_OK);
}

static void plan_close(plan_box *b) { free(b->buf); }

/* Random token-choice routing: k distinct experts per token. */
static void random_topk(refmoe_rng *rng, int64_t n, int e, int k, int *idx)
{
    int *perm = xmalloc(sizeof(int) * (size_t)e);
    for (int64_t t = 0; t < n; t++) {
        for (int i = 0; i < e; i++) perm[i] = i;
        for (int i = 0; i < k; i++) {
            int j = i + (int)(refmoe_rng_next(rng) % (uint64_t)(e - i));
            int tmp = perm[i];
            perm[i] = perm[j];
            perm[j] = tmp;
            idx[t * k + i] = perm[i];
        }
    }
    free(perm);
}

/* The plan from its definition: for each expert, for each token, for each slot. */
static void check_plan_token_choice(const moei_dispatch_plan *p, int64_t n, int e, int k, const int *idx,
                                    int64_t capacity)
{
    assert_int_equal(p->mode, MOEI_PLAN_TOKEN_CHOICE);
    assert_int_equal(p->n_tokens, n);
    assert_int_equal(p->n_slots, n * k);
    assert_int_equal(p->capacity, capacity);
    int32_t *seen = xmalloc(sizeof(int32_t) * (size_t)(n * k + 1));
    for (int64_t s = 0; s < n * k; s++) seen[s] = -2;
    int64_t r = 0, dropped = 0;
    assert_int_equal(p->offsets[0], 0);
    for (int i = 0; i < e; i++) {
        int64_t pre = 0, kept = 0;
        for (int64_t t = 0; t < n; t++)
            for (int j = 0; j < k; j++) {
                if (idx[t * k + j] != i) continue;
                pre++;
                int64_t s = t * k + j;
                if (capacity == 0 || kept < capacity) {
                    assert_int_equal(p->row_token[r], t);
                    assert_int_equal(p->row_slot[r], s);
                    seen[s] = (int32_t)r;
                    kept++;
                    r++;
                } else {
                    seen[s] = -1;
                    dropped++;
                }
            }
        assert_int_equal(p->counts_pre_drop[i], pre);
        assert_int_equal(p->counts[i], kept);
        assert_int_equal(p->offsets[i + 1], r);
    }
    assert_int_equal(p->n_rows, r);
    assert_int_equal(p->n_dropped, dropped);
    for (int64_t s = 0; s < n * k; s++) assert_int_equal(p->slot_row[s], seen[s]);
    for (int64_t t = 0; t <= n; t++) assert_int_equal(p->token_offsets[t], t * k);
    for (int64_t s = 0; s < n * k; s++) assert_int_equal(p->token_slots[s], s);
    moei_dispatch_stats st;
    assert_int_equal(moei_dispatch_plan_stats(g_ctx, p, &st), MOE_OK);
    assert_int_equal(st.n_slots, n * k);
    assert_int_equal(st.n_rows, r);
    assert_int_equal(st.n_dropped, dropped);
    int32_t mx = 0, mn = INT32_MAX, mk = 0, idle = 0;
    for (int i = 0; i < e; i++) {
        mx = p->counts_pre_drop[i] > mx ? p->counts_pre_drop[i] : mx;
        mn = p->counts_pre_drop[i] < mn ? p->counts_pre_drop[i] : mn;
        mk = p->counts[i] > mk ? p->counts[i] : mk;
        idle += p->counts_pre_drop[i] == 0;
    }
    assert_int_equal(st.max_load, mx);
    assert_int_equal(st.min_load, mn);
    assert_int_equal(st.max_kept, mk);
    assert_int_equal(st.n_idle, idle);
    assert_true(fabs(st.mean_load - (double)(n * k) / e) < 1e-12);
    free(seen);
}

/* ---- the library path: permute -> per-expert affine map -> combine, and back ------------------- */

static void experts_forward(const moei_dispatch_plan *p, const float *W, const float *b, const float *xp, float *yp)
{
    for (int i = 0; i < p->n_experts; i++)
        for (int32_t r = p->offsets[i]; r < p->offsets[i + 1]; r++)
            for (int o = 0; o < DOUT; o++) {
                double acc = b[i * DOUT + o];
                for (int q = 0; q < DIN; q++) acc += (double)W[(i * DOUT + o) * DIN + q] * xp[r * DIN + q];
                yp[r * DOUT + o] = (float)acc;
            }
}

static void experts_backward(const moei_dispatch_plan *p, const float *W, const float *d_yp, float *d_xp)
{
    for (int i = 0; i < p->n_experts; i++)
        for (int32_t r = p->offsets[i]; r < p->offsets[i + 1]; r++)
            for (int q = 0; q < DIN; q++) {
                double acc = 0.0;
                for (int o = 0; o < DOUT; o++) acc += (double)W[(i * DOUT + o) * DIN + q] * d_yp[r * DOUT + o];
                d_xp[r * DIN + q] = (float)acc;
            }
}

/* Closure of the dense oracle L(x, w) = <R, y(x, w)>. */
typedef struct dense_closure {
    int64_t n, c; /* c: capacity (token choice) or C (expert choice) */
    int e, k, expert_choice;
    const int *idx;
    const double *W, *b, *R;
    double *x, *w; /* the variables; finite_diff perturbs one of them */
} dense_closure;

static double dense_loss(const dense_closure *d)
{
    double *g = xmalloc(sizeof(double) * (size_t)(d->n * d->e)), *y = xmalloc(sizeof(double) * (size_t)(d->n * DOUT));
    if (d->expert_choice) refmoe_gates_expert_choice(d->n, d->e, d->c, d->idx, d->w, g);
    else refmoe_gates_token_choice(d->n, d->e, d->k, d->idx, d->w, d->c, g, NULL);
    refmoe_dense_moe(d->n, d->e, DIN, DOUT, d->x, g, d->W, d->b, y);
    double l = 0.0;
    for (int64_t i = 0; i < d->n * DOUT; i++) l += d->R[i] * y[i];
    free(g), free(y);
    return l;
}

static void dense_fd(dense_closure *d, double *v, int64_t count, double *grad)
{
    for (int64_t i = 0; i < count; i++) {
        double keep = v[i];
        v[i] = keep + FD_EPS;
        double fp = dense_loss(d);
        v[i] = keep - FD_EPS;
        double fm = dense_loss(d);
        v[i] = keep;
        grad[i] = (fp - fm) / (2.0 * FD_EPS);
    }
}

/* Runs forward and backward of the library path on a built plan and checks them against the dense
 * oracle: y, d_x, d_w (and d_w == 0 exactly on dropped slots). */
static void check_dataflow(refmoe_rng *rng, const moei_dispatch_plan *p, int e, int k, const int *idx, int64_t cap_or_c,
                           int expert_choice, const double *w_in)
{
    const int64_t n = p->n_tokens, S = p->n_slots, R = p->n_rows;
    double *x = xmalloc(sizeof(double) * (size_t)(n * DIN)), *w = xmalloc(sizeof(double) * (size_t)S);
    double *W = xmalloc(sizeof(double) * (size_t)(e * DOUT * DIN)), *b = xmalloc(sizeof(double) * (size_t)(e * DOUT));
    double *Rw = xmalloc(sizeof(double) * (size_t)(n * DOUT)), *g = xmalloc(sizeof(double) * (size_t)(n * e));
    double *y_ref = xmalloc(sizeof(double) * (size_t)(n * DOUT));
    double *gx = xmalloc(sizeof(double) * (size_t)(n * DIN)), *gw = xmalloc(sizeof(double) * (size_t)S);
    float *xf = xmalloc(sizeof(float) * (size_t)(n * DIN)), *wf = xmalloc(sizeof(float) * (size_t)S);
    float *Wf = xmalloc(sizeof(float) * (size_t)(e * DOUT * DIN)), *bf = xmalloc(sizeof(float) * (size_t)(e * DOUT));
    float *Rf = xmalloc(sizeof(float) * (size_t)(n * DOUT)), *yf = xmalloc(sizeof(float) * (size_t)(n * DOUT));
    float *xp = xmalloc(sizeof(float) * (size_t)(R * DIN)), *yp = xmalloc(sizeof(float) * (size_t)(R * DOUT));
    float *d_yp = xmalloc(sizeof(float) * (size_t)(R * DOUT)), *d_xp = xmalloc(sizeof(float) * (size_t)(R * DIN));
    float *d_w = xmalloc(sizeof(float) * (size_t)S), *d_x = xmalloc(sizeof(float) * (size_t)(n * DIN));
#define ROUND(dv, fv, cnt) (refmoe_to_float((dv), (fv), (cnt)), refmoe_to_double((fv), (dv), (cnt)))
    refmoe_fill_uniform(rng, x, n * DIN, -1.0, 1.0);
    if (w_in) memcpy(w, w_in, sizeof(double) * (size_t)S);
    else refmoe_fill_uniform(rng, w, S, 0.05, 1.0);
    refmoe_fill_uniform(rng, W, e * DOUT * DIN, -1.0, 1.0);
    refmoe_fill_uniform(rng, b, e * DOUT, -1.0, 1.0);
    refmoe_fill_uniform(rng, Rw, n * DOUT, -1.0, 1.0);
    ROUND(x, xf, n * DIN);
    ROUND(w, wf, S);
    ROUND(W, Wf, e * DOUT * DIN);
    ROUND(b, bf, e * DOUT);
    ROUND(Rw, Rf, n * DOUT);
#undef ROUND
    dense_closure dc = {n, cap_or_c, e, k, expert_choice, idx, W, b, Rw, x, w};
    if (expert_choice) refmoe_gates_expert_choice(n, e, cap_or_c, idx, w, g);
    else refmoe_gates_token_choice(n, e, k, idx, w, cap_or_c, g, NULL);
    refmoe_dense_moe(n, e, DIN, DOUT, x, g, W, b, y_ref);
    dense_fd(&dc, x, n * DIN, gx);
    dense_fd(&dc, w, S, gw);

    for (int64_t i = 0; i < n * DOUT; i++) yf[i] = NAN; /* every row must be overwritten */
    for (int64_t i = 0; i < S; i++) d_w[i] = NAN;
    for (int64_t i = 0; i < n * DIN; i++) d_x[i] = NAN;
    assert_int_equal(moei_permute(g_ctx, p, DIN, xf, xp), MOE_OK);
    experts_forward(p, Wf, bf, xp, yp);
    assert_int_equal(moei_unpermute_combine(g_ctx, p, DOUT, yp, wf, yf), MOE_OK);
    assert_close(yf, y_ref, n * DOUT, FWD_TOL, "y");
    assert_int_equal(moei_unpermute_combine_backward(g_ctx, p, DOUT, Rf, yp, wf, d_yp, d_w), MOE_OK);
    experts_backward(p, Wf, d_yp, d_xp);
    assert_int_equal(moei_permute_backward(g_ctx, p, DIN, d_xp, 0, d_x), MOE_OK);
    assert_close(d_x, gx, n * DIN, GRAD_TOL, "d_x");
    assert_close(d_w, gw, S, GRAD_TOL, "d_w");
    for (int64_t s = 0; s < S; s++)
        if (p->slot_row[s] < 0) assert_true(d_w[s] == 0.0f); /* dropped: exactly no gradient */
    /* tokens whose every slot dropped: zero output and zero input gradient, exactly */
    for (int64_t t = 0; t < n; t++) {
        int any = 0;
        for (int32_t q = p->token_offsets[t]; q < p->token_offsets[t + 1]; q++) any |= p->slot_row[p->token_slots[q]] >= 0;
        if (any) continue;
        for (int o = 0; o < DOUT; o++) assert_true(yf[t * DOUT + o] == 0.0f);
        for (int q = 0; q < DIN; q++) assert_true(d_x[t * DIN + q] == 0.0f);
    }
    /* accumulate = 1 adds onto what d_x holds */
    float *acc = xmalloc(sizeof(float) * (size_t)(n * DIN));
    for (int64_t i = 0; i < n * DIN; i++) acc[i] = 1.0f;
    assert_int_equal(moei_permute_backward(g_ctx, p, DIN, d_xp, 1, acc), MOE_OK);
    for (int64_t i = 0; i < n * DIN; i++) assert_true(fabsf(acc[i] - 1.0f - d_x[i]) <= 1e-6f * (1.0f + fabsf(d_x[i])));
    free(acc);
    free(x), free(w), free(W), free(b), free(Rw), free(g), free(y_ref), free(gx), free(gw), free(xf), free(wf);
    free(Wf), free(bf), free(Rf), free(yf), free(xp), free(yp), free(d_yp), free(d_xp), free(d_w), free(d_x);
}

static void run_token_choice(refmoe_rng *rng, int64_t n, int e, int k, const int *idx_in, int64_t capacity,
                             int64_t expect_dropped)
{
    int *idx = xmalloc(sizeof(int) * (size_t)(n * k));
    int32_t *idx32 = xmalloc(sizeof(int32_t) * (size_t)(n * k));
    if (idx_in) memcpy(idx, idx_in, sizeof(int) * (size_t)(n * k));
    else random_topk(rng, n, e, k, idx);
    for (int64_t i = 0; i < n * k; i++) idx32[i] = idx[i];
    plan_box b;
    plan_open(&b, n + 3, e, (n + 3) * k); /* bound for more than it holds: a reused buffer */
    assert_int_equal(moei_dispatch_plan_token_choice(g_ctx, &b.plan, n, k, idx32, capacity), MOE_OK);
    check_plan_token_choice(&b.plan, n, e, k, idx, capacity);
    if (expect_dropped >= 0) assert_int_equal(b.plan.n_dropped, expect_dropped);
    check_dataflow(rng, &b.plan, e, k, idx, capacity, 0, NULL);
    plan_close(&b);
    free(idx), free(idx32);
}

static void test_token_choice_random(void **state)
{
    (void)state;
    refmoe_rng rng = {3};
    const int64_t cfg[][4] = {{7, 4, 2, 0}, {7, 4, 2, 2}, {1, 3, 1, 0}, {1, 3, 2, 1}, {5, 1, 1, 0}, {5, 1, 1, 2},
                              {6, 4, 4, 0}, {6, 4, 4, 3}, {9, 5, 1, 3}, {13, 8, 3, 0}, {13, 8, 3, 4}, {11, 6, 2, 1}};
    for (size_t s = 0; s < sizeof cfg / sizeof cfg[0]; s++)
        run_token_choice(&rng, cfg[s][0], (int)cfg[s][1], (int)cfg[s][2], NULL, cfg[s][3], -1);
}

static void test_token_choice_edges(void **state)
{
    (void)state;
    refmoe_rng rng = {17};
    /* expert 2 of 4 gets no token */
    const int none2[5 * 2] = {0, 1, 3, 0, 1, 3, 0, 3, 1, 0};
    run_token_choice(&rng, 5, 4, 2, none2, 0, 0);
    /* every token to expert 3 (k = 1): dropless, then capacity 3 drops the 4 later tokens, then a
     * capacity equal to the load drops nothing */
    const int all3[7] = {3, 3, 3, 3, 3, 3, 3};
    run_token_choice(&rng, 7, 4, 1, all3, 0, 0);
    run_token_choice(&rng, 7, 4, 1, all3, 3, 4);
    run_token_choice(&rng, 7, 4, 1, all3, 7, 0);
    /* overflow on two experts at once, k = 2, capacity 2: expert 0 drops tokens 2, 3, 4 and expert 1
     * drops tokens 3, 4, so token 2 keeps one slot and tokens 3 and 4 lose both */
    const int over[5 * 2] = {0, 1, 1, 0, 0, 2, 1, 0, 0, 1};
    run_token_choice(&rng, 5, 3, 2, over, 2, 5);
    /* capacity larger than any load */
    run_token_choice(&rng, 5, 3, 2, over, 100, 0);
}

static void test_zero_tokens(void **state)
{
    (void)state;
    plan_box b;
    plan_open(&b, 0, 3, 0);
    assert_int_equal(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 0, 2, NULL, 0), MOE_OK);
    assert_int_equal(b.plan.n_rows, 0);
    assert_int_equal(b.plan.token_offsets[0], 0);
    for (int i = 0; i < 3; i++) assert_int_equal(b.plan.counts[i], 0);
    for (int i = 0; i < 4; i++) assert_int_equal(b.plan.offsets[i], 0);
    assert_int_equal(moei_permute(g_ctx, &b.plan, 8, NULL, NULL), MOE_OK);
    assert_int_equal(moei_unpermute_combine(g_ctx, &b.plan, 8, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_unpermute_combine_backward(g_ctx, &b.plan, 8, NULL, NULL, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_permute_backward(g_ctx, &b.plan, 8, NULL, 0, NULL), MOE_OK);
    moei_dispatch_stats st;
    assert_int_equal(moei_dispatch_plan_stats(g_ctx, &b.plan, &st), MOE_OK);
    assert_int_equal(st.n_idle, 3);
    plan_close(&b);
}

/* ---- expert choice ----------------------------------------------------------------------------- */

static void run_expert_choice(refmoe_rng *rng, int64_t n, int e, int64_t c)
{
    const int64_t ne = n * e, S = e * c;
    float *lf = xmalloc(sizeof(float) * (size_t)ne), *pf = xmalloc(sizeof(float) * (size_t)ne);
    float *wf = xmalloc(sizeof(float) * (size_t)S);
    int32_t *idx32 = xmalloc(sizeof(int32_t) * (size_t)S);
    int *idx = xmalloc(sizeof(int) * (size_t)S);
    double *w = xmalloc(sizeof(double) * (size_t)S);
    for (int64_t i = 0; i < ne; i++) lf[i] = (float)refmoe_rng_uniform(rng, -2.0, 2.0);
    size_t wsb = moei_router_expert_choice_workspace_size(n, e);
    void *ws = xmalloc(wsb);
    assert_int_equal(moei_router_expert_choice_forward(g_ctx, n, e, c, lf, pf, idx32, wf, ws, wsb), MOE_OK);
    for (int64_t i = 0; i < S; i++) idx[i] = idx32[i];
    refmoe_to_double(wf, w, S);
    plan_box b;
    plan_open(&b, n, e, S);
    assert_int_equal(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, n, c, idx32), MOE_OK);
    const moei_dispatch_plan *p = &b.plan;
    assert_int_equal(p->mode, MOEI_PLAN_EXPERT_CHOICE);
    assert_int_equal(p->n_rows, S);
    assert_int_equal(p->n_dropped, 0);
    for (int i = 0; i <= e; i++) assert_int_equal(p->offsets[i], i * c);
    for (int i = 0; i < e; i++) assert_int_equal(p->counts[i], c);
    /* rows: expert-major, ascending tokens; token lists: the slots naming that token, ascending */
    for (int64_t s = 0; s < S; s++) {
        assert_int_equal(p->row_token[p->slot_row[s]], idx[s]);
        assert_int_equal(p->row_slot[p->slot_row[s]], s);
    }
    int64_t q = 0;
    for (int64_t t = 0; t < n; t++) {
        assert_int_equal(p->token_offsets[t], q);
        for (int64_t s = 0; s < S; s++)
            if (idx[s] == t) assert_int_equal(p->token_slots[q++], s);
    }
    assert_int_equal(p->token_offsets[n], S);
    check_dataflow(rng, p, e, 0, idx, c, 1, w);
    plan_close(&b);
    free(lf), free(pf), free(wf), free(idx32), free(idx), free(w), free(ws);
}

static void test_expert_choice_plan(void **state)
{
    (void)state;
    refmoe_rng rng = {23};
    const int64_t cfg[][3] = {{9, 4, 3}, {5, 3, 5}, {1, 4, 1}, {7, 1, 2}, {13, 6, 2}, {4, 8, 1}};
    for (size_t s = 0; s < sizeof cfg / sizeof cfg[0]; s++) run_expert_choice(&rng, cfg[s][0], (int)cfg[s][1], cfg[s][2]);
}

/* ---- determinism -------------------------------------------------------------------------------- */

typedef struct det_out {
    plan_box b;
    float *xp, *y, *d_yp, *d_w, *d_x;
} det_out;

static void det_run(int threads, int64_t n, int e, int k, int64_t d, int64_t cap, const int32_t *idx, const float *x,
                    const float *w, const float *dy, det_out *o)
{
    omp_set_num_threads(threads);
    plan_open(&o->b, n, e, n * k);
    assert_int_equal(moei_dispatch_plan_token_choice(g_ctx, &o->b.plan, n, k, idx, cap), MOE_OK);
    const int64_t R = o->b.plan.n_rows;
    o->xp = xmalloc(sizeof(float) * (size_t)(R * d));
    o->y = xmalloc(sizeof(float) * (size_t)(n * d));
    o->d_yp = xmalloc(sizeof(float) * (size_t)(R * d));
    o->d_w = xmalloc(sizeof(float) * (size_t)(n * k));
    o->d_x = xmalloc(sizeof(float) * (size_t)(n * d));
    assert_int_equal(moei_permute(g_ctx, &o->b.plan, d, x, o->xp), MOE_OK);
    /* the permuted input stands in for the expert output: same shapes (d in = d out) */
    assert_int_equal(moei_unpermute_combine(g_ctx, &o->b.plan, d, o->xp, w, o->y), MOE_OK);
    assert_int_equal(moei_unpermute_combine_backward(g_ctx, &o->b.plan, d, dy, o->xp, w, o->d_yp, o->d_w), MOE_OK);
    assert_int_equal(moei_permute_backward(g_ctx, &o->b.plan, d, o->d_yp, 0, o->d_x), MOE_OK);
}

static void test_determinism_threads(void **state)
{
    (void)state;
    enum { N = 5001, E = 16, K = 2, D = 64 };
    const int64_t cap = moei_router_capacity(N, E, K, 1.0); /* skewed routing below overflows it */
    refmoe_rng rng = {31};
    int *idx = xmalloc(sizeof(int) * N * K);
    int32_t *idx32 = xmalloc(sizeof(int32_t) * N * K);
    random_topk(&rng, N, E, K, idx);
    for (int i = 0; i < N * K; i++) idx32[i] = (i % 7 == 0) ? (idx[i] == 0 ? idx[i] : 0) : idx[i];
    for (int t = 0; t < N; t++) /* keep the experts of a token distinct after the skew */
        if (idx32[t * K] == idx32[t * K + 1]) idx32[t * K + 1] = (idx32[t * K] + 1) % E;
    for (int i = 0; i < N * K; i++) idx[i] = idx32[i];
    float *x = xmalloc(sizeof(float) * N * D), *w = xmalloc(sizeof(float) * N * K), *dy = xmalloc(sizeof(float) * N * D);
    for (int i = 0; i < N * D; i++) x[i] = (float)refmoe_rng_uniform(&rng, -1, 1), dy[i] = (float)refmoe_rng_uniform(&rng, -1, 1);
    for (int i = 0; i < N * K; i++) w[i] = (float)refmoe_rng_uniform(&rng, 0, 1);
    int saved = omp_get_max_threads();
    det_out a, b;
    det_run(1, N, E, K, D, cap, idx32, x, w, dy, &a);
    det_run(2, N, E, K, D, cap, idx32, x, w, dy, &b);
    omp_set_num_threads(saved);
    assert_true(a.b.plan.n_dropped > 0);
    check_plan_token_choice(&a.b.plan, N, E, K, idx, cap);
    const moei_dispatch_plan *pa = &a.b.plan, *pb = &b.b.plan;
    assert_int_equal(pa->n_rows, pb->n_rows);
    const size_t R = (size_t)pa->n_rows;
    assert_memory_equal(pa->counts, pb->counts, 4 * E);
    assert_memory_equal(pa->counts_pre_drop, pb->counts_pre_drop, 4 * E);
    assert_memory_equal(pa->offsets, pb->offsets, 4 * (E + 1));
    assert_memory_equal(pa->row_token, pb->row_token, 4 * R);
    assert_memory_equal(pa->row_slot, pb->row_slot, 4 * R);
    assert_memory_equal(pa->slot_row, pb->slot_row, 4 * N * K);
    assert_memory_equal(a.xp, b.xp, 4 * R * D);
    assert_memory_equal(a.y, b.y, 4 * (size_t)N * D);
    assert_memory_equal(a.d_yp, b.d_yp, 4 * R * D);
    assert_memory_equal(a.d_w, b.d_w, 4 * N * K);
    assert_memory_equal(a.d_x, b.d_x, 4 * (size_t)N * D);
    /* spot-check the large case against the definition: xp rows are x rows of their token */
    for (size_t r = 0; r < R; r += 97) assert_memory_equal(a.xp + r * D, x + (size_t)pa->row_token[r] * D, 4 * D);
    det_out *outs[2] = {&a, &b};
    for (int i = 0; i < 2; i++) {
        plan_close(&outs[i]->b);
        free(outs[i]->xp), free(outs[i]->y), free(outs[i]->d_yp), free(outs[i]->d_w), free(outs[i]->d_x);
    }
    free(idx), free(idx32), free(x), free(w), free(dy);
}

/* ---- errors ------------------------------------------------------------------------------------- */

#define EXPECT_FAIL(call, status, needle)                                                                  \
    do {                                                                                                   \
        assert_int_equal((call), (status));                                                                \
        const char *msg_ = moe_ctx_last_error(g_ctx);                                                      \
        if (!strstr(msg_, (needle))) fail_msg("message '%s' lacks '%s'", msg_, (needle));                 \
    } while (0)

static void test_bad_args(void **state)
{
    (void)state;
    const int I = MOE_ERR_INVALID_ARG;
    moei_dispatch_plan plan;
    char small[16];
    EXPECT_FAIL(moei_dispatch_plan_bind(g_ctx, NULL, 4, 2, 8, small, sizeof small), I, "'plan'");
    EXPECT_FAIL(moei_dispatch_plan_bind(g_ctx, &plan, 4, 2, 8, NULL, 1000), I, "'buffer'");
    EXPECT_FAIL(moei_dispatch_plan_bind(g_ctx, &plan, 4, 0, 8, small, sizeof small), I, "'n_experts'");
    EXPECT_FAIL(moei_dispatch_plan_bind(g_ctx, &plan, -1, 2, 8, small, sizeof small), I, "'max_tokens'");
    EXPECT_FAIL(moei_dispatch_plan_bind(g_ctx, &plan, 4, 2, -8, small, sizeof small), I, "'max_slots'");
    EXPECT_FAIL(moei_dispatch_plan_bind(g_ctx, &plan, 4, 2, 8, small, sizeof small), I, "'buffer_bytes'");
    assert_int_equal(moei_dispatch_plan_bytes(4, 0, 8), 0);

    plan_box b;
    plan_open(&b, 4, 3, 8);
    const int32_t idx[8] = {0, 1, 2, 0, 1, 2, 0, 1};
    float x[4 * 2] = {0}, xp[8 * 2], y[4 * 2], w[8] = {0};
    /* an unbuilt plan is refused by the data ops */
    EXPECT_FAIL(moei_permute(g_ctx, &b.plan, 2, x, xp), I, "'plan'");
    EXPECT_FAIL(moei_permute(g_ctx, NULL, 2, x, xp), I, "'plan'");
    EXPECT_FAIL(moei_dispatch_plan_stats(g_ctx, &b.plan, &(moei_dispatch_stats){0}), I, "'plan'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 4, 4, idx, 0), I, "'top_k'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 4, 0, idx, 0), I, "'top_k'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 4, 2, idx, -1), I, "'capacity'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 4, 2, NULL, 0), I, "'topk_idx'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 5, 1, idx, 0), I, "'n_tokens'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, -1, 1, idx, 0), I, "'n_tokens'");
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 3, 3, idx, 0), I, "max_slots");
    const int32_t bad[8] = {0, 1, 2, 3, 1, 2, 0, 1};
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 4, 2, bad, 0), I, "'topk_idx'[3]");
    moei_dispatch_plan unbound;
    memset(&unbound, 0, sizeof unbound);
    EXPECT_FAIL(moei_dispatch_plan_token_choice(g_ctx, &unbound, 4, 2, idx, 0), I, "'plan'");

    assert_int_equal(moei_dispatch_plan_token_choice(g_ctx, &b.plan, 4, 2, idx, 0), MOE_OK);
    EXPECT_FAIL(moei_permute(g_ctx, &b.plan, -1, x, xp), I, "'d'");
    EXPECT_FAIL(moei_permute(g_ctx, &b.plan, 2, NULL, xp), I, "'x'");
    EXPECT_FAIL(moei_permute(g_ctx, &b.plan, 2, x, NULL), I, "'xp'");
    EXPECT_FAIL(moei_unpermute_combine(g_ctx, &b.plan, 2, NULL, w, y), I, "'yp'");
    EXPECT_FAIL(moei_unpermute_combine(g_ctx, &b.plan, 2, xp, NULL, y), I, "'w'");
    EXPECT_FAIL(moei_unpermute_combine(g_ctx, &b.plan, 2, xp, w, NULL), I, "'y'");
    EXPECT_FAIL(moei_unpermute_combine_backward(g_ctx, &b.plan, 2, NULL, xp, w, xp, w), I, "'dy'");
    EXPECT_FAIL(moei_unpermute_combine_backward(g_ctx, &b.plan, 2, y, NULL, w, NULL, w), I, "'yp'");
    EXPECT_FAIL(moei_unpermute_combine_backward(g_ctx, &b.plan, 2, y, xp, NULL, xp, NULL), I, "'w'");
    EXPECT_FAIL(moei_permute_backward(g_ctx, &b.plan, 2, NULL, 0, x), I, "'d_xp'");
    EXPECT_FAIL(moei_permute_backward(g_ctx, &b.plan, 2, xp, 0, NULL), I, "'d_x'");
    EXPECT_FAIL(moei_dispatch_plan_stats(g_ctx, &b.plan, NULL), I, "'stats'");

    /* expert choice: capacity range, ascending tokens, slot budget */
    const int32_t ec_ok[3 * 2] = {0, 2, 1, 3, 0, 1};
    const int32_t ec_dup[3 * 2] = {0, 2, 3, 1, 0, 1};
    EXPECT_FAIL(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 4, 0, ec_ok), I, "'capacity'");
    EXPECT_FAIL(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 4, 5, ec_ok), I, "'capacity'");
    EXPECT_FAIL(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 4, 3, ec_ok), I, "max_slots");
    EXPECT_FAIL(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 4, 2, ec_dup), I, "'ec_idx'[1, 1]");
    EXPECT_FAIL(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 4, 2, NULL), I, "'ec_idx'");
    EXPECT_FAIL(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 3, 2, ec_ok), I, "'ec_idx'[1, 1]");
    assert_int_equal(moei_dispatch_plan_expert_choice(g_ctx, &b.plan, 4, 2, ec_ok), MOE_OK);
    plan_close(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_choice_random),
        cmocka_unit_test(test_token_choice_edges),
        cmocka_unit_test(test_zero_tokens),
        cmocka_unit_test(test_expert_choice_plan),
        cmocka_unit_test(test_determinism_threads),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
