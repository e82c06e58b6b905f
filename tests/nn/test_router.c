/* Router ops against the fp64 references in refmoe_moe.c: token-choice scores/top-k (softmax, sigmoid,
 * renormalisation, selection bias, scale), aux / z losses, HF balance pieces, bias update, expert
 * choice; backwards against central finite differences of the references, away from top-k ties;
 * exact-tie behaviour, thread-count determinism and argument checking. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <omp.h>

#include "cpu/router.h"
#include "moe/moe.h"
#include "nn/ref_moe.h"

static moe_ctx *g_ctx;

#define FWD_TOL 1e-5
#define GRAD_TOL 1e-4
#define FD_EPS 1e-6
#define MARGIN 1e-3

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

/* ||a - b|| <= tol * ||b|| + 1e-7: relative, with a floor for references that are exactly zero. */
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

static void assert_scalar_close(double a, double b, double tol, const char *what)
{
    if (!(fabs(a - b) <= tol * fabs(b) + 1e-9)) fail_msg("%s: %.9g vs reference %.9g", what, a, b);
}

static void *xmalloc(size_t bytes)
{
    void *p = calloc(bytes ? bytes : 1, 1);
    assert_non_null(p);
    return p;
}

/* Central finite differences of f over x[0..count), in place (x is restored). */
typedef double (*fd_fn)(const void *closure, const double *x);
static void finite_diff(fd_fn f, const void *closure, double *x, int64_t count, double *grad)
{
    for (int64_t i = 0; i < count; i++) {
        double keep = x[i];
        x[i] = keep + FD_EPS;
        double fp = f(closure, x);
        x[i] = keep - FD_EPS;
        double fm = f(closure, x);
        x[i] = keep;
        grad[i] = (fp - fm) / (2.0 * FD_EPS);
    }
}

/* ---- token choice ----------------------------------------------------------------------------- */

typedef struct topk_case {
    int64_t n;
    int e, k, score_fn, renorm, use_bias;
    double scale;
} topk_case;

static const int64_t shapes[][3] = {{7, 8, 2}, {1, 4, 1}, {5, 4, 4}, {3, 1, 1}, {9, 6, 1}, {11, 16, 4}, {4, 5, 5}};

/* Random logits (and bias) whose selection keys have a margin above MARGIN. */
static void draw_router_inputs(refmoe_rng *rng, const topk_case *c, double *logits, double *bias)
{
    double *p = xmalloc(sizeof(double) * (size_t)(c->n * c->e));
    for (int tries = 0;; tries++) {
        assert_true(tries < 1000);
        refmoe_fill_uniform(rng, logits, c->n * c->e, -2.0, 2.0);
        if (c->use_bias) refmoe_fill_uniform(rng, bias, c->e, -0.2, 0.2);
        refmoe_scores(c->n, c->e, c->score_fn, logits, p);
        for (int64_t i = 0; i < c->n * c->e; i++) p[i] += c->use_bias ? bias[i % c->e] : 0.0;
        if (refmoe_topk_margin(c->n, c->e, c->k, p) > MARGIN) break;
    }
    free(p);
}

typedef struct router_closure {
    const topk_case *c;
    const double *bias, *r_w, *r_p; /* projection weights for w and (optionally) probs */
} router_closure;

static double router_loss(const void *cl, const double *logits)
{
    const router_closure *rc = cl;
    const topk_case *c = rc->c;
    double *p = xmalloc(sizeof(double) * (size_t)(c->n * c->e));
    double *w = xmalloc(sizeof(double) * (size_t)(c->n * c->k));
    int *idx = xmalloc(sizeof(int) * (size_t)(c->n * c->k));
    refmoe_router_topk(c->n, c->e, c->k, c->score_fn, c->renorm, c->scale, logits, c->use_bias ? rc->bias : NULL, p,
                    idx, w);
    double l = 0.0;
    for (int64_t i = 0; i < c->n * c->k; i++) l += rc->r_w[i] * w[i];
    if (rc->r_p)
        for (int64_t i = 0; i < c->n * c->e; i++) l += rc->r_p[i] * p[i];
    free(p);
    free(w);
    free(idx);
    return l;
}

static void run_topk_case(refmoe_rng *rng, const topk_case *c, int with_extra)
{
    const int64_t ne = c->n * c->e, nk = c->n * c->k;
    double *logits = xmalloc(sizeof(double) * (size_t)ne), *bias = xmalloc(sizeof(double) * (size_t)c->e);
    double *p_ref = xmalloc(sizeof(double) * (size_t)ne), *w_ref = xmalloc(sizeof(double) * (size_t)nk);
    int *idx_ref = xmalloc(sizeof(int) * (size_t)nk);
    float *lf = xmalloc(sizeof(float) * (size_t)ne), *bf = xmalloc(sizeof(float) * (size_t)c->e);
    float *pf = xmalloc(sizeof(float) * (size_t)ne), *wf = xmalloc(sizeof(float) * (size_t)nk);
    int32_t *idxf = xmalloc(sizeof(int32_t) * (size_t)nk);
    draw_router_inputs(rng, c, logits, bias);
    /* The reference sees the same values the library sees (the fp32 roundings). */
    refmoe_to_float(logits, lf, ne);
    refmoe_to_double(lf, logits, ne);
    refmoe_to_float(bias, bf, c->e);
    refmoe_to_double(bf, bias, c->e);
    refmoe_router_topk(c->n, c->e, c->k, c->score_fn, c->renorm, c->scale, logits, c->use_bias ? bias : NULL, p_ref,
                    idx_ref, w_ref);
    assert_int_equal(moei_router_topk_forward(g_ctx, c->n, c->e, c->k, c->score_fn, c->renorm, (float)c->scale, lf,
                                              c->use_bias ? bf : NULL, pf, idxf, wf),
                     MOE_OK);
    for (int64_t i = 0; i < nk; i++) assert_int_equal(idxf[i], idx_ref[i]);
    assert_close(pf, p_ref, ne, FWD_TOL, "probs");
    assert_close(wf, w_ref, nk, FWD_TOL, "topk_w");

    /* backward vs finite differences of L = <r_w, w> (+ <r_p, probs>) */
    double *r_w = xmalloc(sizeof(double) * (size_t)nk), *r_p = xmalloc(sizeof(double) * (size_t)ne);
    double *g_ref = xmalloc(sizeof(double) * (size_t)ne);
    float *r_wf = xmalloc(sizeof(float) * (size_t)nk), *r_pf = xmalloc(sizeof(float) * (size_t)ne);
    float *dl = xmalloc(sizeof(float) * (size_t)ne);
    refmoe_fill_uniform(rng, r_w, nk, -1.0, 1.0);
    refmoe_fill_uniform(rng, r_p, ne, -1.0, 1.0);
    refmoe_to_float(r_w, r_wf, nk);
    refmoe_to_double(r_wf, r_w, nk);
    refmoe_to_float(r_p, r_pf, ne);
    refmoe_to_double(r_pf, r_p, ne);
    router_closure rc = {c, bias, r_w, with_extra ? r_p : NULL};
    finite_diff(router_loss, &rc, logits, ne, g_ref);
    for (int64_t i = 0; i < ne; i++) dl[i] = 12345.0f; /* must be overwritten */
    assert_int_equal(moei_router_topk_backward(g_ctx, c->n, c->e, c->k, c->score_fn, c->renorm, (float)c->scale, pf,
                                               idxf, r_wf, with_extra ? r_pf : NULL, dl),
                     MOE_OK);
    assert_close(dl, g_ref, ne, GRAD_TOL, "d_logits");

    free(logits), free(bias), free(p_ref), free(w_ref), free(idx_ref), free(lf), free(bf), free(pf), free(wf);
    free(idxf), free(r_w), free(r_p), free(g_ref), free(r_wf), free(r_pf), free(dl);
}

static void test_topk_forward_backward(void **state)
{
    (void)state;
    refmoe_rng rng = {42};
    int cases = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int score_fn = 0; score_fn < 2; score_fn++)
            for (int renorm = 0; renorm < 2; renorm++)
                for (int use_bias = 0; use_bias < 2; use_bias++) {
                    topk_case c = {shapes[s][0], (int)shapes[s][1], (int)shapes[s][2], score_fn, renorm, use_bias,
                                   (s % 2) ? 2.5 : 1.0};
                    run_topk_case(&rng, &c, (int)((s + (size_t)renorm) % 2));
                    cases++;
                }
    assert_int_equal(cases, 56);
}

/* Mixtral: softmax over all experts, top-2, renormalise — spelled out with known numbers. */
static void test_topk_known_values(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 3.0f, 2.0f, 0.0f};
    float p[4], w[2];
    int32_t idx[2];
    assert_int_equal(moei_router_topk_forward(g_ctx, 1, 4, 2, MOEI_SCORE_SOFTMAX, 1, 1.0f, logits, NULL, p, idx, w),
                     MOE_OK);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 2);
    /* renormalised: e^3 / (e^3 + e^2) = 1 / (1 + e^-1) */
    double w0 = 1.0 / (1.0 + exp(-1.0));
    assert_scalar_close(w[0], w0, 1e-6, "w0");
    assert_scalar_close(w[1], 1.0 - w0, 1e-6, "w1");
    /* a bias can flip the choice, but the weights stay the unbiased probabilities */
    const float bias[4] = {0.0f, 0.0f, 0.0f, 1.0f};
    assert_int_equal(moei_router_topk_forward(g_ctx, 1, 4, 2, MOEI_SCORE_SOFTMAX, 0, 1.0f, logits, bias, p, idx, w),
                     MOE_OK);
    assert_int_equal(idx[0], 3); /* p3 + 1 > p1 */
    assert_int_equal(idx[1], 1);
    double z = exp(1.0) + exp(3.0) + exp(2.0) + 1.0;
    assert_scalar_close(w[0], 1.0 / z, 1e-6, "biased-selection w0");
    assert_scalar_close(w[1], exp(3.0) / z, 1e-6, "biased-selection w1");
}

static void test_topk_ties(void **state)
{
    (void)state;
    /* row 0: all equal; row 1: three-way tie at the top; row 2: tie at the k boundary */
    const float logits[3 * 5] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 1.0f, 3.0f, 3.0f, 0.0f, 3.0f,
                                 4.0f, 1.0f, 2.0f, 2.0f, -1.0f};
    const int32_t want[3 * 3] = {0, 1, 2, 1, 2, 4, 0, 2, 3};
    for (int score_fn = 0; score_fn < 2; score_fn++) {
        float p[15], w[9], w2[9];
        int32_t idx[9], idx2[9];
        assert_int_equal(moei_router_topk_forward(g_ctx, 3, 5, 3, score_fn, 1, 1.0f, logits, NULL, p, idx, w), MOE_OK);
        for (int i = 0; i < 9; i++) assert_int_equal(idx[i], want[i]);
        assert_int_equal(moei_router_topk_forward(g_ctx, 3, 5, 3, score_fn, 1, 1.0f, logits, NULL, p, idx2, w2), MOE_OK);
        assert_memory_equal(idx, idx2, sizeof idx);
        assert_memory_equal(w, w2, sizeof w);
        /* k = 2 with a tie at the boundary of row 2: the lower index (2) wins over 3 */
        int32_t i2[6];
        float w3[6];
        assert_int_equal(moei_router_topk_forward(g_ctx, 3, 5, 2, score_fn, 0, 1.0f, logits, NULL, p, i2, w3), MOE_OK);
        assert_int_equal(i2[4], 0);
        assert_int_equal(i2[5], 2);
        assert_int_equal(i2[0], 0);
        assert_int_equal(i2[1], 1);
    }
    /* a huge uniform row: every expert ties; the first k win */
    enum { E = 64 };
    float l[E], p[E], w[8];
    int32_t idx[8];
    for (int i = 0; i < E; i++) l[i] = -7.25f;
    assert_int_equal(moei_router_topk_forward(g_ctx, 1, E, 8, MOEI_SCORE_SIGMOID, 0, 1.0f, l, NULL, p, idx, w), MOE_OK);
    for (int j = 0; j < 8; j++) assert_int_equal(idx[j], j);
}

/* ---- losses ------------------------------------------------------------------------------------ */

typedef struct aux_closure {
    int64_t n;
    int e, k, score_fn;
    double coef;
    const int *counts;
} aux_closure;

static double aux_loss_fd(const void *cl, const double *logits)
{
    const aux_closure *a = cl;
    return refmoe_aux_loss(a->n, a->e, a->k, a->score_fn, a->coef, logits, a->counts);
}

static void test_aux_loss(void **state)
{
    (void)state;
    refmoe_rng rng = {7};
    const int64_t cfg[][3] = {{9, 6, 2}, {1, 3, 1}, {13, 8, 1}, {6, 4, 4}, {5, 1, 1}};
    for (size_t s = 0; s < sizeof cfg / sizeof cfg[0]; s++)
        for (int score_fn = 0; score_fn < 2; score_fn++) {
            const int64_t n = cfg[s][0], ne = n * cfg[s][1];
            const int e = (int)cfg[s][1], k = (int)cfg[s][2];
            double *logits = xmalloc(sizeof(double) * (size_t)ne), *g_ref = xmalloc(sizeof(double) * (size_t)ne);
            float *lf = xmalloc(sizeof(float) * (size_t)ne), *pf = xmalloc(sizeof(float) * (size_t)ne);
            float *wf = xmalloc(sizeof(float) * (size_t)(n * k)), *dl = xmalloc(sizeof(float) * (size_t)ne);
            float *base = xmalloc(sizeof(float) * (size_t)ne);
            int32_t *idx = xmalloc(sizeof(int32_t) * (size_t)(n * k)), counts[16];
            int counts_i[16];
            refmoe_fill_uniform(&rng, logits, ne, -2.0, 2.0);
            refmoe_to_float(logits, lf, ne);
            refmoe_to_double(lf, logits, ne);
            assert_int_equal(moei_router_topk_forward(g_ctx, n, e, k, score_fn, 0, 1.0f, lf, NULL, pf, idx, wf), MOE_OK);
            assert_int_equal(moei_router_count_experts(g_ctx, n, e, k, idx, counts), MOE_OK);
            int total = 0;
            for (int i = 0; i < e; i++) {
                counts_i[i] = counts[i];
                total += counts[i];
                int c = 0;
                for (int64_t j = 0; j < n * k; j++) c += idx[j] == i;
                assert_int_equal(counts[i], c);
            }
            assert_int_equal(total, n * k);
            const double coef = 0.01;
            aux_closure ac = {n, e, k, score_fn, coef, counts_i};
            double want = aux_loss_fd(&ac, logits);
            finite_diff(aux_loss_fd, &ac, logits, ne, g_ref);
            /* the gradient is added to what d_logits holds */
            for (int64_t i = 0; i < ne; i++) base[i] = dl[i] = (float)refmoe_rng_uniform(&rng, -1.0, 1.0);
            float loss = -1.0f;
            assert_int_equal(moei_router_aux_loss(g_ctx, n, e, k, score_fn, (float)coef, pf, counts, &loss, dl), MOE_OK);
            assert_scalar_close(loss, want, FWD_TOL, "aux loss");
            for (int64_t i = 0; i < ne; i++) dl[i] -= base[i];
            assert_close(dl, g_ref, ne, GRAD_TOL, "aux d_logits");
            /* without d_logits: loss only */
            float loss2 = -1.0f;
            assert_int_equal(moei_router_aux_loss(g_ctx, n, e, k, score_fn, (float)coef, pf, counts, &loss2, NULL),
                             MOE_OK);
            assert_true(loss2 == loss);
            free(logits), free(g_ref), free(lf), free(pf), free(wf), free(dl), free(base), free(idx);
        }
    /* perfectly balanced uniform routing gives exactly coef (the Switch normalisation) */
    float p[4 * 4], loss;
    int32_t counts[4] = {2, 2, 2, 2};
    for (int i = 0; i < 16; i++) p[i] = 0.25f;
    assert_int_equal(moei_router_aux_loss(g_ctx, 4, 4, 2, MOEI_SCORE_SOFTMAX, 0.5f, p, counts, &loss, NULL), MOE_OK);
    assert_scalar_close(loss, 0.5, 1e-6, "balanced aux loss");
    /* no tokens: zero */
    assert_int_equal(moei_router_aux_loss(g_ctx, 0, 4, 2, MOEI_SCORE_SOFTMAX, 0.5f, NULL, counts, &loss, NULL), MOE_OK);
    assert_true(loss == 0.0f);
}

typedef struct z_closure {
    int64_t n;
    int e;
    double coef;
} z_closure;

static double z_loss_fd(const void *cl, const double *logits)
{
    const z_closure *z = cl;
    return refmoe_z_loss(z->n, z->e, z->coef, logits);
}

static void test_z_loss(void **state)
{
    (void)state;
    refmoe_rng rng = {11};
    const int64_t cfg[][2] = {{7, 5}, {1, 1}, {1, 8}, {12, 3}};
    for (size_t s = 0; s < sizeof cfg / sizeof cfg[0]; s++) {
        const int64_t n = cfg[s][0], ne = n * cfg[s][1];
        const int e = (int)cfg[s][1];
        double *logits = xmalloc(sizeof(double) * (size_t)ne), *g_ref = xmalloc(sizeof(double) * (size_t)ne);
        float *lf = xmalloc(sizeof(float) * (size_t)ne), *dl = xmalloc(sizeof(float) * (size_t)ne);
        refmoe_fill_uniform(&rng, logits, ne, -3.0, 3.0);
        refmoe_to_float(logits, lf, ne);
        refmoe_to_double(lf, logits, ne);
        z_closure zc = {n, e, 1e-3};
        double want = z_loss_fd(&zc, logits);
        finite_diff(z_loss_fd, &zc, logits, ne, g_ref);
        float loss;
        assert_int_equal(moei_router_z_loss(g_ctx, n, e, 1e-3f, lf, &loss, dl), MOE_OK);
        assert_scalar_close(loss, want, FWD_TOL, "z loss");
        assert_close(dl, g_ref, ne, GRAD_TOL, "z d_logits");
        free(logits), free(g_ref), free(lf), free(dl);
    }
    /* known value: one token, logits {0, 0}: lse = log 2 */
    const float l2[2] = {0.0f, 0.0f};
    float loss, dl2[2] = {0};
    assert_int_equal(moei_router_z_loss(g_ctx, 1, 2, 1.0f, l2, &loss, dl2), MOE_OK);
    assert_scalar_close(loss, log(2.0) * log(2.0), 1e-6, "z known");
    assert_scalar_close(dl2[0], log(2.0), 1e-6, "z grad known"); /* 2 lse * 1/2 */
    /* large logits stay finite (max-shifted) */
    const float big[2] = {80.0f, 79.0f};
    assert_int_equal(moei_router_z_loss(g_ctx, 1, 2, 1.0f, big, &loss, NULL), MOE_OK);
    double lse = 80.0 + log(1.0 + exp(-1.0));
    assert_scalar_close(loss, lse * lse, 1e-6, "z large");
}

typedef struct pm_closure {
    int64_t n;
    int e, score_fn;
    const double *r;
} pm_closure;

static double prob_mean_fd(const void *cl, const double *logits)
{
    const pm_closure *c = cl;
    double *p = xmalloc(sizeof(double) * (size_t)(c->n * c->e));
    refmoe_scores(c->n, c->e, c->score_fn, logits, p);
    double l = 0.0;
    for (int i = 0; i < c->e; i++) {
        double s = 0.0;
        for (int64_t t = 0; t < c->n; t++) s += p[t * c->e + i];
        l += c->r[i] * s / (double)c->n;
    }
    free(p);
    return l;
}

static void test_balance_stats(void **state)
{
    (void)state;
    refmoe_rng rng = {5};
    enum { N = 10, E = 6, K = 2 };
    for (int score_fn = 0; score_fn < 2; score_fn++) {
        double logits[N * E], p_ref[N * E], tf_ref[E], pm_ref[E], r[E], g_ref[N * E];
        float lf[N * E], pf[N * E], wf[N * K], tf[E], pm[E], rf[E], dl[N * E], base[N * E];
        int32_t idx[N * K];
        int idx_i[N * K];
        refmoe_fill_uniform(&rng, logits, N * E, -2.0, 2.0);
        refmoe_to_float(logits, lf, N * E);
        refmoe_to_double(lf, logits, N * E);
        assert_int_equal(moei_router_topk_forward(g_ctx, N, E, K, score_fn, 1, 1.0f, lf, NULL, pf, idx, wf), MOE_OK);
        for (int i = 0; i < N * K; i++) idx_i[i] = idx[i];
        refmoe_scores(N, E, score_fn, logits, p_ref);
        refmoe_balance_stats(N, E, K, p_ref, idx_i, tf_ref, pm_ref);
        assert_int_equal(moei_router_balance_stats(g_ctx, N, E, K, pf, idx, tf, pm), MOE_OK);
        assert_close(tf, tf_ref, E, FWD_TOL, "tokens_fraction");
        assert_close(pm, pm_ref, E, FWD_TOL, "prob_mean");
        refmoe_fill_uniform(&rng, r, E, -1.0, 1.0);
        refmoe_to_float(r, rf, E);
        refmoe_to_double(rf, r, E);
        pm_closure pc = {N, E, score_fn, r};
        finite_diff(prob_mean_fd, &pc, logits, N * E, g_ref);
        for (int i = 0; i < N * E; i++) base[i] = dl[i] = (float)i * 0.01f;
        assert_int_equal(moei_router_prob_mean_backward(g_ctx, N, E, score_fn, pf, rf, dl), MOE_OK);
        for (int i = 0; i < N * E; i++) dl[i] -= base[i];
        assert_close(dl, g_ref, N * E, GRAD_TOL, "prob_mean backward");
    }
}

static void test_capacity_and_bias_update(void **state)
{
    (void)state;
    assert_int_equal(moei_router_capacity(100, 8, 2, 1.0), 25);
    assert_int_equal(moei_router_capacity(100, 8, 2, 1.25), 32); /* ceil(31.25) */
    assert_int_equal(moei_router_capacity(3, 64, 1, 1.0), 1);    /* at least 1 */
    assert_int_equal(moei_router_capacity(100, 8, 2, 0.0), 0);   /* dropless */
    assert_int_equal(moei_router_capacity(100, 0, 2, 1.0), 0);

    const int64_t counts[4] = {10, 2, 6, 6};
    float bias[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    assert_int_equal(moei_router_bias_update(g_ctx, 4, counts, 0.25f, bias), MOE_OK);
    assert_true(bias[0] == 0.25f); /* overloaded: lowered */
    assert_true(bias[1] == 0.75f); /* underloaded: raised */
    assert_true(bias[2] == 0.5f && bias[3] == 0.5f);
    const int64_t odd[3] = {1, 1, 2}; /* mean 4/3: no expert sits exactly on it */
    float b3[3] = {0};
    assert_int_equal(moei_router_bias_update(g_ctx, 3, odd, 1.0f, b3), MOE_OK);
    assert_true(b3[0] == 1.0f && b3[1] == 1.0f && b3[2] == -1.0f);
    const int64_t neg[2] = {1, -1};
    assert_int_equal(moei_router_bias_update(g_ctx, 2, neg, 1.0f, b3), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_ctx_last_error(g_ctx), "'counts'"));
}

/* ---- expert choice ----------------------------------------------------------------------------- */

typedef struct ec_closure {
    int64_t n;
    int e;
    int64_t c;
    const double *r_w, *r_p;
} ec_closure;

static double ec_loss_fd(const void *cl, const double *logits)
{
    const ec_closure *c = cl;
    double *p = xmalloc(sizeof(double) * (size_t)(c->n * c->e)), *w = xmalloc(sizeof(double) * (size_t)(c->e * c->c));
    int *idx = xmalloc(sizeof(int) * (size_t)(c->e * c->c));
    refmoe_expert_choice(c->n, c->e, c->c, logits, p, idx, w);
    double l = 0.0;
    for (int64_t i = 0; i < c->e * c->c; i++) l += c->r_w[i] * w[i];
    if (c->r_p)
        for (int64_t i = 0; i < c->n * c->e; i++) l += c->r_p[i] * p[i];
    free(p), free(w), free(idx);
    return l;
}

static void test_expert_choice(void **state)
{
    (void)state;
    refmoe_rng rng = {99};
    const int64_t cfg[][3] = {{9, 4, 3}, {5, 3, 5}, {1, 4, 1}, {7, 1, 2}, {13, 6, 4}, {6, 8, 1}};
    for (size_t s = 0; s < sizeof cfg / sizeof cfg[0]; s++) {
        const int64_t n = cfg[s][0], c = cfg[s][2], ne = n * cfg[s][1];
        const int e = (int)cfg[s][1];
        const int64_t ec = e * c;
        double *logits = xmalloc(sizeof(double) * (size_t)ne), *p_ref = xmalloc(sizeof(double) * (size_t)ne);
        double *w_ref = xmalloc(sizeof(double) * (size_t)ec), *g_ref = xmalloc(sizeof(double) * (size_t)ne);
        double *r_w = xmalloc(sizeof(double) * (size_t)ec), *r_p = xmalloc(sizeof(double) * (size_t)ne);
        int *idx_ref = xmalloc(sizeof(int) * (size_t)ec);
        float *lf = xmalloc(sizeof(float) * (size_t)ne), *pf = xmalloc(sizeof(float) * (size_t)ne);
        float *wf = xmalloc(sizeof(float) * (size_t)ec), *dl = xmalloc(sizeof(float) * (size_t)ne);
        float *r_wf = xmalloc(sizeof(float) * (size_t)ec), *r_pf = xmalloc(sizeof(float) * (size_t)ne);
        int32_t *idx = xmalloc(sizeof(int32_t) * (size_t)ec);
        size_t wsb = moei_router_expert_choice_workspace_size(n, e);
        void *ws = xmalloc(wsb);
        for (int tries = 0;; tries++) {
            assert_true(tries < 1000);
            refmoe_fill_uniform(&rng, logits, ne, -2.0, 2.0);
            refmoe_to_float(logits, lf, ne);
            refmoe_to_double(lf, logits, ne);
            refmoe_scores(n, e, 0, logits, p_ref);
            /* one expert: every score is exactly 1, the selection is the tie rule alone */
            if (e == 1 || refmoe_expert_choice_margin(n, e, c, p_ref) > MARGIN) break;
        }
        refmoe_expert_choice(n, e, c, logits, p_ref, idx_ref, w_ref);
        assert_int_equal(moei_router_expert_choice_forward(g_ctx, n, e, c, lf, pf, idx, wf, ws, wsb), MOE_OK);
        for (int64_t i = 0; i < ec; i++) assert_int_equal(idx[i], idx_ref[i]);
        assert_close(pf, p_ref, ne, FWD_TOL, "ec probs");
        assert_close(wf, w_ref, ec, FWD_TOL, "ec w");

        refmoe_fill_uniform(&rng, r_w, ec, -1.0, 1.0);
        refmoe_fill_uniform(&rng, r_p, ne, -1.0, 1.0);
        refmoe_to_float(r_w, r_wf, ec);
        refmoe_to_double(r_wf, r_w, ec);
        refmoe_to_float(r_p, r_pf, ne);
        refmoe_to_double(r_pf, r_p, ne);
        int extra = (int)(s % 2);
        ec_closure cl = {n, e, c, r_w, extra ? r_p : NULL};
        finite_diff(ec_loss_fd, &cl, logits, ne, g_ref);
        for (int64_t i = 0; i < ne; i++) dl[i] = NAN; /* must be overwritten */
        assert_int_equal(
            moei_router_expert_choice_backward(g_ctx, n, e, c, pf, idx, r_wf, extra ? r_pf : NULL, dl), MOE_OK);
        assert_close(dl, g_ref, ne, GRAD_TOL, "ec d_logits");
        free(logits), free(p_ref), free(w_ref), free(g_ref), free(r_w), free(r_p), free(idx_ref), free(lf), free(pf);
        free(wf), free(dl), free(r_wf), free(r_pf), free(idx), free(ws);
    }
}

static void test_expert_choice_ties(void **state)
{
    (void)state;
    /* identical tokens tie in every column: each expert takes the lowest token indices */
    enum { N = 6, E = 3, C = 2 };
    float l[N * E], p[N * E], w[E * C];
    int32_t idx[E * C], idx2[E * C];
    for (int t = 0; t < N; t++)
        for (int e = 0; e < E; e++) l[t * E + e] = (float)e * 0.5f;
    /* token 4 ranks above the tied rest for expert 2 */
    l[4 * E + 2] = 3.0f;
    size_t wsb = moei_router_expert_choice_workspace_size(N, E);
    void *ws = xmalloc(wsb);
    assert_int_equal(moei_router_expert_choice_forward(g_ctx, N, E, C, l, p, idx, w, ws, wsb), MOE_OK);
    const int32_t want[E * C] = {0, 1, 0, 1, 0, 4};
    for (int i = 0; i < E * C; i++) assert_int_equal(idx[i], want[i]);
    assert_int_equal(moei_router_expert_choice_forward(g_ctx, N, E, C, l, p, idx2, w, ws, wsb), MOE_OK);
    assert_memory_equal(idx, idx2, sizeof idx);
    /* a large column of equal scores exercises the selection on many ties */
    enum { N2 = 300, E2 = 2, C2 = 17 };
    float *l2 = xmalloc(sizeof(float) * N2 * E2), *p2 = xmalloc(sizeof(float) * N2 * E2);
    float *w2 = xmalloc(sizeof(float) * E2 * C2);
    int32_t *i2 = xmalloc(sizeof(int32_t) * E2 * C2);
    void *ws2 = xmalloc(moei_router_expert_choice_workspace_size(N2, E2));
    /* every third token prefers expert 0; all other tokens tie at 1/2 in both columns */
    for (int t = 0; t < N2; t++) {
        l2[t * E2] = (t % 3 == 0) ? 1.0f : 0.0f;
        l2[t * E2 + 1] = 0.0f;
    }
    assert_int_equal(moei_router_expert_choice_forward(g_ctx, N2, E2, C2, l2, p2, i2, w2, ws2,
                                                       moei_router_expert_choice_workspace_size(N2, E2)),
                     MOE_OK);
    for (int c = 0, t = 0; c < C2; c++, t++) {
        assert_int_equal(i2[c], 3 * c);
        if (t % 3 == 0) t++; /* expert 1: the lowest-index tokens among the tied 1/2 scores */
        assert_int_equal(i2[C2 + c], t);
    }
    free(ws), free(l2), free(p2), free(w2), free(i2), free(ws2);
}

/* ---- determinism ------------------------------------------------------------------------------- */

typedef struct det_out {
    float *p, *w, *dl, *aux_dl, *ec_p, *ec_w, *ec_dl, *tf, *pm;
    int32_t *idx, *ec_idx;
    float aux, z;
} det_out;

static void det_run(int threads, const float *lf, const float *bias, const float *r_w, int64_t n, int e, int k,
                     int64_t c, det_out *o)
{
    omp_set_num_threads(threads);
    const int64_t ne = n * e;
    assert_int_equal(moei_router_topk_forward(g_ctx, n, e, k, MOEI_SCORE_SIGMOID, 1, 2.5f, lf, bias, o->p, o->idx, o->w),
                     MOE_OK);
    assert_int_equal(
        moei_router_topk_backward(g_ctx, n, e, k, MOEI_SCORE_SIGMOID, 1, 2.5f, o->p, o->idx, r_w, NULL, o->dl), MOE_OK);
    int32_t counts[64];
    assert_int_equal(moei_router_count_experts(g_ctx, n, e, k, o->idx, counts), MOE_OK);
    memset(o->aux_dl, 0, sizeof(float) * (size_t)ne);
    assert_int_equal(moei_router_aux_loss(g_ctx, n, e, k, MOEI_SCORE_SIGMOID, 0.01f, o->p, counts, &o->aux, o->aux_dl),
                     MOE_OK);
    assert_int_equal(moei_router_z_loss(g_ctx, n, e, 1e-3f, lf, &o->z, o->aux_dl), MOE_OK);
    assert_int_equal(moei_router_balance_stats(g_ctx, n, e, k, o->p, o->idx, o->tf, o->pm), MOE_OK);
    size_t wsb = moei_router_expert_choice_workspace_size(n, e);
    void *ws = xmalloc(wsb);
    assert_int_equal(moei_router_expert_choice_forward(g_ctx, n, e, c, lf, o->ec_p, o->ec_idx, o->ec_w, ws, wsb),
                     MOE_OK);
    assert_int_equal(moei_router_expert_choice_backward(g_ctx, n, e, c, o->ec_p, o->ec_idx, r_w, NULL, o->ec_dl),
                     MOE_OK);
    free(ws);
}

static void det_alloc(det_out *o, int64_t n, int e, int k, int64_t c)
{
    const size_t ne = (size_t)(n * e), nk = (size_t)(n * k), ec = (size_t)(e * c);
    o->p = xmalloc(4 * ne), o->w = xmalloc(4 * nk), o->dl = xmalloc(4 * ne), o->aux_dl = xmalloc(4 * ne);
    o->ec_p = xmalloc(4 * ne), o->ec_w = xmalloc(4 * ec), o->ec_dl = xmalloc(4 * ne);
    o->tf = xmalloc(4 * (size_t)e), o->pm = xmalloc(4 * (size_t)e);
    o->idx = xmalloc(4 * nk), o->ec_idx = xmalloc(4 * ec);
}

static void det_free(det_out *o)
{
    free(o->p), free(o->w), free(o->dl), free(o->aux_dl), free(o->ec_p), free(o->ec_w), free(o->ec_dl);
    free(o->tf), free(o->pm), free(o->idx), free(o->ec_idx);
}

static void test_determinism_threads(void **state)
{
    (void)state;
    enum { N = 3001, E = 16, K = 4, C = 700 };
    refmoe_rng rng = {2024};
    float *lf = xmalloc(sizeof(float) * N * E), *bias = xmalloc(sizeof(float) * E);
    float *r_w = xmalloc(sizeof(float) * N * E); /* big enough for [N, K] and [E, C] */
    for (int i = 0; i < N * E; i++) lf[i] = (float)refmoe_rng_uniform(&rng, -3.0, 3.0);
    for (int i = 0; i < E; i++) bias[i] = (float)refmoe_rng_uniform(&rng, -0.1, 0.1);
    for (int i = 0; i < N * E; i++) r_w[i] = (float)refmoe_rng_uniform(&rng, -1.0, 1.0);
    int saved = omp_get_max_threads();
    det_out a, b;
    det_alloc(&a, N, E, K, C);
    det_alloc(&b, N, E, K, C);
    det_run(1, lf, bias, r_w, N, E, K, C, &a);
    det_run(2, lf, bias, r_w, N, E, K, C, &b);
    omp_set_num_threads(saved);
    const size_t ne = 4 * (size_t)N * E, nk = 4 * (size_t)N * K, ec = 4 * (size_t)E * C;
    assert_memory_equal(a.p, b.p, ne);
    assert_memory_equal(a.idx, b.idx, nk);
    assert_memory_equal(a.w, b.w, nk);
    assert_memory_equal(a.dl, b.dl, ne);
    assert_memory_equal(a.aux_dl, b.aux_dl, ne);
    assert_memory_equal(&a.aux, &b.aux, sizeof a.aux);
    assert_memory_equal(&a.z, &b.z, sizeof a.z);
    assert_memory_equal(a.tf, b.tf, 4 * E);
    assert_memory_equal(a.pm, b.pm, 4 * E);
    assert_memory_equal(a.ec_p, b.ec_p, ne);
    assert_memory_equal(a.ec_idx, b.ec_idx, ec);
    assert_memory_equal(a.ec_w, b.ec_w, ec);
    assert_memory_equal(a.ec_dl, b.ec_dl, ne);
    /* the large expert-choice case also agrees with the reference selection */
    double *ld = xmalloc(sizeof(double) * N * E), *pd = xmalloc(sizeof(double) * N * E);
    double *wd = xmalloc(sizeof(double) * E * C);
    int *id = xmalloc(sizeof(int) * E * C);
    refmoe_to_double(lf, ld, N * E);
    refmoe_expert_choice(N, E, C, ld, pd, id, wd);
    if (refmoe_expert_choice_margin(N, E, C, pd) > 1e-6)
        for (int i = 0; i < E * C; i++) assert_int_equal(a.ec_idx[i], id[i]);
    det_free(&a);
    det_free(&b);
    free(lf), free(bias), free(r_w), free(ld), free(pd), free(wd), free(id);
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
    float l[8] = {0}, p[8], w[4], dl[8], loss;
    int32_t idx[4] = {0, 1, 0, 1}, counts[4] = {0};
    const int I = MOE_ERR_INVALID_ARG;
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 5, 0, 0, 1.0f, l, NULL, p, idx, w), I, "'top_k'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 0, 0, 0, 1.0f, l, NULL, p, idx, w), I, "'top_k'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 0, 1, 0, 0, 1.0f, l, NULL, p, idx, w), I, "'n_experts'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, -1, 4, 1, 0, 0, 1.0f, l, NULL, p, idx, w), I, "'n_tokens'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 7, 0, 1.0f, l, NULL, p, idx, w), I, "'score_fn'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, 1.0f, NULL, NULL, p, idx, w), I, "'logits'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, 1.0f, l, NULL, NULL, idx, w), I, "'probs'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, 1.0f, l, NULL, p, NULL, w), I, "'topk_idx'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, 1.0f, l, NULL, p, idx, NULL), I, "'topk_w'");
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, NAN, l, NULL, p, idx, w), I, "'scale'");
    EXPECT_FAIL(moei_router_topk_backward(g_ctx, 2, 4, 2, 0, 0, 1.0f, p, idx, w, NULL, NULL), I, "'d_logits'");
    EXPECT_FAIL(moei_router_topk_backward(g_ctx, 2, 4, 2, 0, 0, 1.0f, p, NULL, w, NULL, dl), I, "'topk_idx'");
    EXPECT_FAIL(moei_router_topk_backward(g_ctx, 2, 4, 5, 0, 0, 1.0f, p, idx, w, NULL, dl), I, "'top_k'");
    int32_t bad_idx[4] = {0, 4, 1, 2};
    EXPECT_FAIL(moei_router_topk_backward(g_ctx, 2, 4, 2, 0, 0, 1.0f, p, bad_idx, w, NULL, dl), I, "'topk_idx'");
    EXPECT_FAIL(moei_router_count_experts(g_ctx, 2, 4, 2, bad_idx, counts), I, "'topk_idx'");
    EXPECT_FAIL(moei_router_count_experts(g_ctx, 2, 4, 2, idx, NULL), I, "'counts'");
    EXPECT_FAIL(moei_router_aux_loss(g_ctx, 2, 4, 2, 0, 1.0f, p, NULL, &loss, NULL), I, "'counts'");
    EXPECT_FAIL(moei_router_aux_loss(g_ctx, 2, 4, 2, 0, 1.0f, p, counts, NULL, NULL), I, "'loss'");
    EXPECT_FAIL(moei_router_aux_loss(g_ctx, 2, 4, 0, 0, 1.0f, p, counts, &loss, NULL), I, "'top_k'");
    EXPECT_FAIL(moei_router_z_loss(g_ctx, 2, 0, 1.0f, l, &loss, NULL), I, "'n_experts'");
    EXPECT_FAIL(moei_router_z_loss(g_ctx, 2, 4, 1.0f, NULL, &loss, NULL), I, "'logits'");
    EXPECT_FAIL(moei_router_balance_stats(g_ctx, 2, 4, 2, p, idx, NULL, w), I, "'tokens_fraction'");
    EXPECT_FAIL(moei_router_prob_mean_backward(g_ctx, 2, 4, 0, p, NULL, dl), I, "'d_prob_mean'");
    EXPECT_FAIL(moei_router_bias_update(g_ctx, 0, NULL, 1.0f, w), I, "'n_experts'");
    EXPECT_FAIL(moei_router_bias_update(g_ctx, 2, NULL, 1.0f, w), I, "'counts'");

    char ws[64];
    int32_t ec_idx[4];
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 4, 0, l, p, ec_idx, w, ws, sizeof ws), I, "'capacity'");
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 4, 3, l, p, ec_idx, w, ws, sizeof ws), I, "'capacity'");
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 4, 1, l, p, ec_idx, w, ws, 4), I, "'workspace_bytes'");
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 4, 1, l, p, ec_idx, w, NULL, sizeof ws), I, "'workspace'");
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 0, 1, l, p, ec_idx, w, ws, sizeof ws), I, "'n_experts'");
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 4, 1, l, p, NULL, w, ws, sizeof ws), I, "'ec_idx'");
    int32_t dup[4] = {1, 1, 0, 1}; /* expert 0 lists token 1 twice */
    EXPECT_FAIL(moei_router_expert_choice_backward(g_ctx, 2, 2, 2, p, dup, w, NULL, dl), I, "'ec_idx'");

    /* non-finite inputs are reported, not propagated into a selection */
    l[5] = NAN;
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, 1.0f, l, NULL, p, idx, w), MOE_ERR_NUMERIC,
                "'logits'[1, 1]");
    EXPECT_FAIL(moei_router_z_loss(g_ctx, 2, 4, 1.0f, l, &loss, NULL), MOE_ERR_NUMERIC, "'logits'");
    EXPECT_FAIL(moei_router_expert_choice_forward(g_ctx, 2, 4, 1, l, p, ec_idx, w, ws, sizeof ws), MOE_ERR_NUMERIC,
                "'logits'");
    l[5] = 0.0f;
    float bias[4] = {0, INFINITY, 0, 0};
    EXPECT_FAIL(moei_router_topk_forward(g_ctx, 2, 4, 2, 0, 0, 1.0f, l, bias, p, idx, w), MOE_ERR_NUMERIC, "'bias'");

    /* zero tokens is valid and touches nothing */
    assert_int_equal(moei_router_topk_forward(g_ctx, 0, 4, 2, 0, 1, 1.0f, NULL, NULL, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_router_topk_backward(g_ctx, 0, 4, 2, 0, 1, 1.0f, NULL, NULL, NULL, NULL, NULL), MOE_OK);
    assert_int_equal(moei_router_z_loss(g_ctx, 0, 4, 1.0f, NULL, &loss, NULL), MOE_OK);
    assert_true(loss == 0.0f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk_forward_backward),
        cmocka_unit_test(test_topk_known_values),
        cmocka_unit_test(test_topk_ties),
        cmocka_unit_test(test_aux_loss),
        cmocka_unit_test(test_z_loss),
        cmocka_unit_test(test_balance_stats),
        cmocka_unit_test(test_capacity_and_bias_update),
        cmocka_unit_test(test_expert_choice),
        cmocka_unit_test(test_expert_choice_ties),
        cmocka_unit_test(test_determinism_threads),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
