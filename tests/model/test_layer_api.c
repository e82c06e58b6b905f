/* Public layer API: standalone MoE and dense MLP layers and layers borrowed from a model. Their
 * backward is checked against central finite differences (in double) of their own fp32 forward,
 * for dx and every parameter tensor, in every router mode; then errors, state and determinism. */
#define _POSIX_C_SOURCE 200809L
#include <sys/wait.h>
#include <unistd.h>

#include "model/api_util.h"

#define LB 2 /* batch */
#define LT 5 /* seq_len */
#define LD 8 /* d_model */
#define LN (LB * LT * LD)

/* Finite-difference settings shared by the checks: step 1e-2 along unit directions keeps routing
 * decisions fixed for these inputs, and the observed error is ~1e-4 |g|. A gradient scaled by 1.01
 * moves the along-gradient comparison by 1e-2 |g|, 10x the tolerance (test_fd_check_detects_
 * scaled_gradient proves it on every variant). The router-losses-only variants (w = 0) make a
 * missing or mis-scaled aux/z gradient visible, which the full loss would hide under the combine
 * weights' larger gradient. */
#define FD_EPS 1e-2f
#define FD_RTOL 1e-3
#define FD_ATOL 1e-5

typedef struct layer_variant {
    const char *name;
    void (*apply)(moe_layer_config *c);
    double w_scale; /* 0: L is the router losses alone, so their gradients are checked unmasked */
} layer_variant;

static void lv_softmax_top2(moe_layer_config *c) { (void)c; }
static void lv_sigmoid_norenorm(moe_layer_config *c)
{
    c->score_function = MOE_SCORE_SIGMOID;
    c->renormalize = 0;
}
static void lv_expert_choice(moe_layer_config *c)
{
    c->router = MOE_ROUTER_EXPERT_CHOICE;
    c->capacity_factor = 1.0f;
}
static void lv_gelu_shared(moe_layer_config *c)
{
    c->activation = MOE_ACTIVATION_GELU;
    c->shared_expert_hidden = 5;
}
static void lv_capacity_drops(moe_layer_config *c) { c->capacity_factor = 0.5f; }
static void lv_jitter(moe_layer_config *c) { c->jitter = 0.1f; }
static void lv_top1_no_renorm(moe_layer_config *c)
{
    c->top_k = 1;
    c->renormalize = 0;
}
static void lv_dense_swiglu(moe_layer_config *c) { c->kind = MOE_LAYER_DENSE_MLP; }
static void lv_dense_gelu(moe_layer_config *c)
{
    c->kind = MOE_LAYER_DENSE_MLP;
    c->activation = MOE_ACTIVATION_GELU;
}

static const layer_variant layer_variants[] = {
    {"MoE softmax top-2 renormalised", lv_softmax_top2, 1.0},
    {"MoE sigmoid, no renormalisation", lv_sigmoid_norenorm, 1.0},
    {"MoE expert choice (capacity 1)", lv_expert_choice, 1.0},
    {"MoE GELU experts with a shared expert", lv_gelu_shared, 1.0},
    {"MoE token choice with capacity drops (0.5)", lv_capacity_drops, 1.0},
    {"MoE with router jitter", lv_jitter, 1.0},
    {"MoE softmax top-1, no renormalisation", lv_top1_no_renorm, 1.0},
    {"MoE router losses only (softmax top-2)", lv_softmax_top2, 0.0},
    {"MoE router losses only (sigmoid)", lv_sigmoid_norenorm, 0.0},
    {"MoE router losses only (expert choice: z-loss)", lv_expert_choice, 0.0},
    {"MoE router losses only (capacity drops)", lv_capacity_drops, 0.0},
    {"dense MLP SwiGLU", lv_dense_swiglu, 1.0},
    {"dense MLP GELU", lv_dense_gelu, 1.0},
};
#define NUM_LAYER_VARIANTS (sizeof layer_variants / sizeof layer_variants[0])

static void small_layer_config(moe_layer_config *c)
{
    AU_OK(moe_layer_config_init(c, sizeof *c));
    c->d_model = LD;
    c->hidden = 6;
    c->num_experts = 4;
    c->top_k = 2;
    c->init_std = 0.4f;
    c->aux_loss_coef = 0.05f;
    c->z_loss_coef = 0.01f;
}

static void make_inputs(uint64_t seed, float *x, float *w, double w_scale)
{
    uint64_t rs = seed;
    au_fill_normal(&rs, x, LN, 1.0);
    au_fill_normal(&rs, w, LN, w_scale);
}

static double run_variant_check(const layer_variant *v, double scale, int verbose)
{
    au_env e;
    au_env_open(&e, 4321);
    moe_layer_config c;
    small_layer_config(&c);
    v->apply(&c);
    moe_layer *l = NULL;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    float x[LN], w[LN];
    make_inputs(11, x, w, v->w_scale);
    au_fd_case fc = {v->name, l, LB, LT, LD, x, w, FD_EPS, FD_RTOL, FD_ATOL, scale, verbose};
    double worst = au_layer_fd_check(&fc, 5);
    moe_layer_destroy(l);
    au_env_close(&e);
    return worst;
}

static void test_layer_fd(void **state)
{
    const layer_variant *v = (const layer_variant *)*state;
    double worst = run_variant_check(v, 1.0, 1);
    print_message("  %s: worst error/tolerance %.3g\n", v->name, worst);
    assert_true(worst <= 1.0);
}

/* The same check must reject a backward that is off by 1%. */
static void test_fd_check_detects_scaled_gradient(void **state)
{
    (void)state;
    for (size_t i = 0; i < NUM_LAYER_VARIANTS; i++) {
        double worst = run_variant_check(&layer_variants[i], 1.01, 0);
        if (!(worst > 1.0))
            fail_msg("%s: a gradient scaled by 1.01 passed (worst ratio %.3g)", layer_variants[i].name, worst);
    }
}


/* ---- standalone layer parameters, stats, state ---------------------------------------------------- */

static void test_standalone_param_names(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 1);
    moe_layer_config c;
    small_layer_config(&c);
    c.shared_expert_hidden = 5;
    moe_layer *l = NULL;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    int32_t kind = -1, count = 0;
    AU_OK(moe_layer_kind_of(l, &kind));
    assert_int_equal(kind, MOE_LAYER_MOE);
    AU_OK(moe_layer_param_count(l, &count));
    static const struct {
        const char *name;
        int32_t ndim;
        int64_t shape[3];
    } expect[] = {{"layer.router", 2, {4, 8}},
                  {"layer.experts.w1", 3, {4, 6, 8}},
                  {"layer.experts.w3", 3, {4, 6, 8}},
                  {"layer.experts.w2", 3, {4, 8, 6}},
                  {"layer.shared_expert.w1", 2, {5, 8}},
                  {"layer.shared_expert.w3", 2, {5, 8}},
                  {"layer.shared_expert.w2", 2, {8, 5}}};
    assert_int_equal(count, (int32_t)(sizeof expect / sizeof expect[0]));
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        int32_t ndim = 0;
        int64_t shape[8] = {0};
        AU_OK(moe_layer_param_info(l, i, name, sizeof name, &ndim, shape));
        assert_string_equal(name, expect[i].name);
        assert_int_equal(ndim, expect[i].ndim);
        for (int32_t d = 0; d < ndim; d++) assert_int_equal(shape[d], expect[i].shape[d]);
        /* a name buffer one byte short fails and is left untouched */
        char small[128];
        memset(small, 'Z', sizeof small);
        AU_FAILS_CTX(e.ctx, moe_layer_param_info(l, i, small, (uint32_t)strlen(expect[i].name), NULL, NULL),
                     MOE_ERR_INVALID_ARG, "moe_layer_param_info", "name_capacity");
        for (size_t b = 0; b < sizeof small; b++) assert_int_equal(small[b], 'Z');
        AU_OK(moe_layer_param_info(l, i, small, (uint32_t)strlen(expect[i].name) + 1, NULL, NULL));
        assert_string_equal(small, expect[i].name);
    }
    /* init: router and experts are N(0, init_std) with this seed, not zero or constant */
    float w1[4 * 6 * 8];
    AU_OK(moe_layer_param_read(l, 1, 0, w1, 4 * 6 * 8));
    double s2 = 0.0;
    for (int i = 0; i < 4 * 6 * 8; i++) s2 += (double)w1[i] * w1[i];
    double sd = sqrt(s2 / (4 * 6 * 8));
    assert_true(sd > 0.3 && sd < 0.5); /* init_std 0.4, 192 samples */
    moe_layer_destroy(l);

    /* dense MLP names */
    small_layer_config(&c);
    c.kind = MOE_LAYER_DENSE_MLP;
    c.activation = MOE_ACTIVATION_GELU;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    AU_OK(moe_layer_kind_of(l, &kind));
    assert_int_equal(kind, MOE_LAYER_DENSE_MLP);
    AU_OK(moe_layer_param_count(l, &count));
    assert_int_equal(count, 2);
    char name[64];
    int32_t ndim = 0;
    int64_t shape[8];
    AU_OK(moe_layer_param_info(l, 0, name, sizeof name, &ndim, shape));
    assert_string_equal(name, "layer.w1");
    assert_int_equal(ndim, 2);
    assert_int_equal(shape[0], 6);
    assert_int_equal(shape[1], 8);
    AU_OK(moe_layer_param_info(l, 1, name, sizeof name, &ndim, shape));
    assert_string_equal(name, "layer.w2");
    assert_int_equal(shape[0], 8);
    assert_int_equal(shape[1], 6);
    moe_layer_destroy(l);
    au_env_close(&e);
}

static void test_param_access_errors_and_round_trip(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 2);
    moe_layer_config c;
    small_layer_config(&c);
    moe_layer *l = NULL;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    int32_t count = 0;
    AU_OK(moe_layer_param_count(l, &count));
    float buf[4 * 8], back[4 * 8];
    const int64_t n = 4 * 8; /* the router */
    AU_FAILS_CTX(e.ctx, moe_layer_param_info(l, -1, NULL, 0, NULL, NULL), MOE_ERR_INVALID_ARG, "moe_layer_param_info",
                 "index -1");
    AU_FAILS_CTX(e.ctx, moe_layer_param_info(l, count, NULL, 0, NULL, NULL), MOE_ERR_INVALID_ARG,
                 "index");
    AU_FAILS_CTX(e.ctx, moe_layer_param_read(l, count, 0, buf, n), MOE_ERR_INVALID_ARG, "moe_layer_param_read",
                 "index");
    AU_FAILS_CTX(e.ctx, moe_layer_param_read(l, -1, 0, buf, n), MOE_ERR_INVALID_ARG, "index");
    AU_FAILS_CTX(e.ctx, moe_layer_param_write(l, count, buf, n), MOE_ERR_INVALID_ARG, "moe_layer_param_write", "index");
    AU_FAILS_CTX(e.ctx, moe_layer_param_read(l, 0, 0, buf, n - 1), MOE_ERR_INVALID_ARG, "count");
    AU_FAILS_CTX(e.ctx, moe_layer_param_read(l, 0, 0, buf, n + 1), MOE_ERR_INVALID_ARG, "count");
    AU_FAILS_CTX(e.ctx, moe_layer_param_read(l, 0, 2, buf, n), MOE_ERR_INVALID_ARG, "gradient");
    AU_FAILS_CTX(e.ctx, moe_layer_param_write(l, 0, buf, n - 1), MOE_ERR_INVALID_ARG, "count");
    AU_FAILS_CTX(e.ctx, moe_layer_param_write(l, 0, buf, 0), MOE_ERR_INVALID_ARG, "count");
    /* round trip */
    for (int64_t i = 0; i < n; i++) buf[i] = (float)i * 0.25f - 3.0f;
    AU_OK(moe_layer_param_write(l, 0, buf, n));
    AU_OK(moe_layer_param_read(l, 0, 0, back, n));
    assert_memory_equal(buf, back, sizeof buf);
    /* gradients start at zero */
    AU_OK(moe_layer_param_read(l, 0, 1, back, n));
    for (int64_t i = 0; i < n; i++) assert_true(back[i] == 0.0f);
    moe_layer_destroy(l);
    au_env_close(&e);
}

static void test_routing_stats(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 3);
    float x[LN], w[LN], y[LN];
    make_inputs(21, x, w, 1.0);
    const float factors[3] = {0.0f, 0.5f, 1.0f};
    for (int r = 0; r < 2; r++)
        for (int fi = 0; fi < 3; fi++) {
            moe_layer_config c;
            small_layer_config(&c);
            c.router = r == 0 ? MOE_ROUTER_TOKEN_CHOICE : MOE_ROUTER_EXPERT_CHOICE;
            if (r == 1 && fi == 0) continue; /* expert choice needs a capacity */
            c.capacity_factor = factors[fi];
            moe_layer *l = NULL;
            AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
            moe_routing_stats s;
            memset(&s, 0, sizeof s);
            s.struct_size = sizeof s;
            int64_t tpe[5] = {-1, -1, -1, -1, -1};
            AU_FAILS_CTX(e.ctx, moe_layer_routing_stats(l, &s, tpe, 4), MOE_ERR_STATE, "moe_layer_routing_stats");
            AU_OK(moe_layer_forward(l, x, LB, LT, y));
            AU_FAILS_CTX(e.ctx, moe_layer_routing_stats(l, &s, tpe, 3), MOE_ERR_INVALID_ARG, "capacity");
            AU_FAILS_CTX(e.ctx, moe_layer_routing_stats(l, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "stats");
            AU_OK(moe_layer_routing_stats(l, &s, tpe, 4));
            assert_int_equal(tpe[4], -1); /* nothing past num_experts */
            const int64_t tokens = LB * LT, k = 2;
            const int64_t cap = (int64_t)ceil(c.capacity_factor * (double)tokens * (double)k / 4.0);
            assert_int_equal(s.num_experts, 4);
            assert_int_equal(s.tokens, tokens);
            int64_t sum = 0, mx = 0;
            for (int i = 0; i < 4; i++) {
                assert_true(tpe[i] >= 0);
                sum += tpe[i];
                if (tpe[i] > mx) mx = tpe[i];
            }
            assert_int_equal(sum, s.assignments);
            assert_int_equal(mx, s.max_load);
            assert_true(fabs(s.mean_load - (double)s.assignments / 4.0) < 1e-12);
            assert_true(s.z_loss > 0.0);
            if (r == 0) {
                assert_int_equal(s.assignments + s.dropped, tokens * k);
                assert_true(s.aux_loss > 0.0);
                if (c.capacity_factor == 0.0f) assert_int_equal(s.dropped, 0);
                if (c.capacity_factor == 0.5f) assert_true(s.dropped > 0);
                if (c.capacity_factor > 0.0f) assert_true(s.max_load <= cap);
            } else {
                /* every expert takes exactly its capacity of tokens */
                for (int i = 0; i < 4; i++) assert_int_equal(tpe[i], cap < tokens ? cap : tokens);
            }
            moe_layer_destroy(l);
        }
    /* a dense layer has no routing */
    moe_layer_config c;
    small_layer_config(&c);
    c.kind = MOE_LAYER_DENSE_MLP;
    moe_layer *l = NULL;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    AU_OK(moe_layer_forward(l, x, LB, LT, y));
    moe_routing_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    AU_FAILS_CTX(e.ctx, moe_layer_routing_stats(l, &s, NULL, 0), MOE_ERR_INVALID_ARG, "moe_layer_routing_stats",
                 "MoE");
    moe_layer_destroy(l);
    au_env_close(&e);
}

static void test_backward_state_and_zero_grad(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 4);
    float x[LN], w[LN], y[LN], dx[LN];
    make_inputs(31, x, w, 1.0);
    for (int kind = 0; kind < 2; kind++) {
        moe_layer_config c;
        small_layer_config(&c);
        c.kind = kind == 0 ? MOE_LAYER_MOE : MOE_LAYER_DENSE_MLP;
        moe_layer *l = NULL;
        AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
        AU_FAILS_CTX(e.ctx, moe_layer_backward(l, w, dx), MOE_ERR_STATE, "moe_layer_backward", "forward");
        AU_OK(moe_layer_forward(l, x, LB, LT, y));
        AU_OK(moe_layer_backward(l, w, dx));
        int32_t count = 0;
        AU_OK(moe_layer_param_count(l, &count));
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1) AU_OK(moe_layer_zero_grad(l));
            for (int32_t i = 0; i < count; i++) {
                int32_t ndim = 0;
                int64_t shape[8];
                AU_OK(moe_layer_param_info(l, i, NULL, 0, &ndim, shape));
                int64_t n = au_numel(ndim, shape);
                float *g = malloc((size_t)n * sizeof(float));
                assert_non_null(g);
                AU_OK(moe_layer_param_read(l, i, 1, g, n));
                double s = 0.0;
                for (int64_t j = 0; j < n; j++) s += fabs(g[j]);
                if (pass == 0)
                    assert_true(s > 0.0);
                else
                    assert_true(s == 0.0);
                free(g);
            }
        }
        moe_layer_destroy(l);
    }
    au_env_close(&e);
}

/* Gradients are added: two backwards of two forwards give twice the gradient; dx is overwritten. */
static void test_gradients_accumulate(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 5);
    float x[LN], w[LN], y[LN], dx1[LN], dx2[LN];
    make_inputs(41, x, w, 1.0);
    moe_layer_config c;
    small_layer_config(&c);
    moe_layer *l = NULL;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    float g1[4 * 6 * 8], g2[4 * 6 * 8];
    const int64_t n = 4 * 6 * 8;
    AU_OK(moe_layer_forward(l, x, LB, LT, y));
    AU_OK(moe_layer_backward(l, w, dx1));
    AU_OK(moe_layer_param_read(l, 1, 1, g1, n));
    AU_OK(moe_layer_forward(l, x, LB, LT, y));
    memset(dx2, 0x7f, sizeof dx2);
    AU_OK(moe_layer_backward(l, w, dx2));
    AU_OK(moe_layer_param_read(l, 1, 1, g2, n));
    assert_memory_equal(dx1, dx2, sizeof dx1);
    for (int64_t i = 0; i < n; i++) assert_true(fabsf(g2[i] - 2.0f * g1[i]) <= 1e-6f * (fabsf(g1[i]) + 1e-6f));
    moe_layer_destroy(l);
    au_env_close(&e);
}

/* The backward goes through the saved state of the last forward: a second backward of the same
 * forward must repeat the first (or refuse with MOE_ERR_STATE), never silently differ. */
static void test_second_backward_of_one_forward(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 6);
    float x[LN], w[LN], y[LN], dx1[LN], dx2[LN];
    int bad = 0;
    make_inputs(51, x, w, 1.0);
    for (int kind = 0; kind < 2; kind++) {
        moe_layer_config c;
        small_layer_config(&c);
        c.kind = kind == 0 ? MOE_LAYER_MOE : MOE_LAYER_DENSE_MLP;
        moe_layer *l = NULL;
        AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
        AU_OK(moe_layer_forward(l, x, LB, LT, y));
        AU_OK(moe_layer_backward(l, w, dx1));
        moe_status st = moe_layer_backward(l, w, dx2);
        if (st == MOE_OK) {
            double r = au_rel_diff(dx2, dx1, LN);
            if (r > 1e-6) {
                print_error("%s: a second backward of the same forward gives a different dx (relative difference "
                            "%.3g)\n", kind == 0 ? "MoE" : "dense MLP", r);
                bad++;
            }
        } else if (st != MOE_ERR_STATE) {
            print_error("second backward returned %s\n", moe_status_string(st));
            bad++;
        }
        moe_layer_destroy(l);
    }
    au_env_close(&e);
    assert_int_equal(bad, 0);
}

static void test_determinism(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 7);
    float x[LN], w[LN], y1[LN], y2[LN], dx1[LN], dx2[LN];
    make_inputs(61, x, w, 1.0);
    for (size_t v = 0; v < NUM_LAYER_VARIANTS; v++) {
        moe_layer_config c;
        small_layer_config(&c);
        layer_variants[v].apply(&c);
        moe_layer *l = NULL, *l2 = NULL;
        AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
        AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l2)); /* same ctx seed: same parameters */
        AU_OK(moe_layer_forward(l, x, LB, LT, y1));
        AU_OK(moe_layer_backward(l, w, dx1));
        AU_OK(moe_layer_forward(l, x, LB, LT, y2));
        assert_memory_equal(y1, y2, sizeof y1);
        AU_OK(moe_layer_forward(l2, x, LB, LT, y2));
        AU_OK(moe_layer_backward(l2, w, dx2));
        assert_memory_equal(y1, y2, sizeof y1);
        assert_memory_equal(dx1, dx2, sizeof dx1);
        moe_layer_destroy(l);
        moe_layer_destroy(l2);
    }
    au_env_close(&e);
}

/* ---- errors ---------------------------------------------------------------------------------- */

static void test_null_arguments(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 8);
    moe_layer_config c;
    small_layer_config(&c);
    moe_layer *l = NULL, *sentinel = (moe_layer *)(uintptr_t)0x1234;
    moe_layer *out = sentinel;
    AU_FAILS(moe_layer_config_init(NULL, sizeof c), MOE_ERR_INVALID_ARG, "moe_layer_config_init", "cfg");
    AU_FAILS(moe_layer_create(NULL, e.mesh, &c, &out), MOE_ERR_INVALID_ARG, "moe_layer_create", "ctx");
    AU_FAILS_CTX(e.ctx, moe_layer_create(e.ctx, NULL, &c, &out), MOE_ERR_INVALID_ARG, "moe_layer_create", "mesh");
    AU_FAILS_CTX(e.ctx, moe_layer_create(e.ctx, e.mesh, NULL, &out), MOE_ERR_INVALID_ARG, "moe_layer_create", "cfg");
    AU_FAILS_CTX(e.ctx, moe_layer_create(e.ctx, e.mesh, &c, NULL), MOE_ERR_INVALID_ARG, "moe_layer_create", "out");
    assert_ptr_equal(out, sentinel);
    moe_layer_destroy(NULL);
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));

    float x[LN], w[LN], y[LN], dx[LN];
    make_inputs(71, x, w, 1.0);
    int32_t i32 = 0;
    moe_routing_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    AU_FAILS(moe_model_layer(NULL, 0, MOE_LAYER_ATTENTION, &out), MOE_ERR_INVALID_ARG, "moe_model_layer", "model");
    AU_FAILS(moe_layer_kind_of(NULL, &i32), MOE_ERR_INVALID_ARG, "moe_layer_kind_of", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_kind_of(l, NULL), MOE_ERR_INVALID_ARG, "moe_layer_kind_of", "kind");
    AU_FAILS(moe_layer_forward(NULL, x, LB, LT, y), MOE_ERR_INVALID_ARG, "moe_layer_forward", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_forward(l, NULL, LB, LT, y), MOE_ERR_INVALID_ARG, "moe_layer_forward", "'x'");
    AU_FAILS_CTX(e.ctx, moe_layer_forward(l, x, LB, LT, NULL), MOE_ERR_INVALID_ARG, "moe_layer_forward", "'y'");
    AU_FAILS_CTX(e.ctx, moe_layer_forward(l, x, 0, LT, y), MOE_ERR_INVALID_ARG, "moe_layer_forward", "batch");
    AU_FAILS_CTX(e.ctx, moe_layer_forward(l, x, LB, 0, y), MOE_ERR_INVALID_ARG, "moe_layer_forward", "seq_len");
    AU_FAILS_CTX(e.ctx, moe_layer_forward(l, x, -1, LT, y), MOE_ERR_INVALID_ARG, "batch");
    /* failed forwards leave no state to go back through */
    AU_FAILS_CTX(e.ctx, moe_layer_backward(l, w, dx), MOE_ERR_STATE, "moe_layer_backward");
    AU_OK(moe_layer_forward(l, x, LB, LT, y));
    AU_FAILS(moe_layer_backward(NULL, w, dx), MOE_ERR_INVALID_ARG, "moe_layer_backward", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_backward(l, NULL, dx), MOE_ERR_INVALID_ARG, "moe_layer_backward", "dy");
    AU_FAILS_CTX(e.ctx, moe_layer_backward(l, w, NULL), MOE_ERR_INVALID_ARG, "moe_layer_backward", "dx");
    AU_FAILS(moe_layer_zero_grad(NULL), MOE_ERR_INVALID_ARG, "moe_layer_zero_grad", "layer");
    AU_FAILS(moe_layer_param_count(NULL, &i32), MOE_ERR_INVALID_ARG, "moe_layer_param_count", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_param_count(l, NULL), MOE_ERR_INVALID_ARG, "moe_layer_param_count", "count");
    AU_FAILS(moe_layer_param_info(NULL, 0, NULL, 0, NULL, NULL), MOE_ERR_INVALID_ARG, "moe_layer_param_info", "layer");
    AU_OK(moe_layer_param_info(l, 0, NULL, 0, NULL, NULL)); /* every out-parameter is optional */
    AU_FAILS(moe_layer_param_read(NULL, 0, 0, y, 32), MOE_ERR_INVALID_ARG, "moe_layer_param_read", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_param_read(l, 0, 0, NULL, 32), MOE_ERR_INVALID_ARG, "moe_layer_param_read", "dst");
    AU_FAILS(moe_layer_param_write(NULL, 0, y, 32), MOE_ERR_INVALID_ARG, "moe_layer_param_write", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_param_write(l, 0, NULL, 32), MOE_ERR_INVALID_ARG, "moe_layer_param_write", "src");
    AU_FAILS(moe_layer_routing_stats(NULL, &s, NULL, 0), MOE_ERR_INVALID_ARG, "moe_layer_routing_stats", "layer");
    AU_FAILS_CTX(e.ctx, moe_layer_routing_stats(l, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "moe_layer_routing_stats",
                 "stats");
    s.struct_size = 0;
    AU_FAILS_CTX(e.ctx, moe_layer_routing_stats(l, &s, NULL, 0), MOE_ERR_INVALID_ARG, "struct_size");
    moe_layer_destroy(l);
    au_env_close(&e);
}

typedef struct layer_bad_field {
    const char *field;
    void (*apply)(moe_layer_config *c);
} layer_bad_field;

static void lb_kind(moe_layer_config *c) { c->kind = 7; }
static void lb_kind_attention(moe_layer_config *c) { c->kind = MOE_LAYER_ATTENTION; }
static void lb_d_model(moe_layer_config *c) { c->d_model = 0; }
static void lb_d_model_neg(moe_layer_config *c) { c->d_model = -8; }
static void lb_hidden(moe_layer_config *c) { c->hidden = 0; }
static void lb_hidden_dense(moe_layer_config *c)
{
    c->kind = MOE_LAYER_DENSE_MLP;
    c->hidden = -1;
}
static void lb_activation(moe_layer_config *c) { c->activation = 2; }
static void lb_activation_dense(moe_layer_config *c)
{
    c->kind = MOE_LAYER_DENSE_MLP;
    c->activation = -1;
}
static void lb_num_experts(moe_layer_config *c) { c->num_experts = 0; }
static void lb_top_k_big(moe_layer_config *c) { c->top_k = 5; }
static void lb_top_k_zero(moe_layer_config *c) { c->top_k = 0; }
static void lb_shared(moe_layer_config *c) { c->shared_expert_hidden = -1; }
static void lb_router(moe_layer_config *c) { c->router = 2; }
static void lb_score(moe_layer_config *c) { c->score_function = 2; }
static void lb_ec_sigmoid(moe_layer_config *c)
{
    c->router = MOE_ROUTER_EXPERT_CHOICE;
    c->capacity_factor = 1.0f;
    c->score_function = MOE_SCORE_SIGMOID;
}
static void lb_renorm(moe_layer_config *c) { c->renormalize = 2; }
static void lb_capacity_neg(moe_layer_config *c) { c->capacity_factor = -0.5f; }
static void lb_capacity_nan(moe_layer_config *c) { c->capacity_factor = NAN; }
static void lb_ec_capacity(moe_layer_config *c)
{
    c->router = MOE_ROUTER_EXPERT_CHOICE;
    c->capacity_factor = 0.0f;
}
static void lb_jitter(moe_layer_config *c) { c->jitter = 1.0f; }
static void lb_jitter_neg(moe_layer_config *c) { c->jitter = -0.1f; }
static void lb_aux(moe_layer_config *c) { c->aux_loss_coef = -1.0f; }
static void lb_aux_inf(moe_layer_config *c) { c->aux_loss_coef = INFINITY; }
static void lb_z(moe_layer_config *c) { c->z_loss_coef = NAN; }
static void lb_bias(moe_layer_config *c) { c->bias_update_rate = -0.1f; }
static void lb_bias_ec(moe_layer_config *c)
{
    c->router = MOE_ROUTER_EXPERT_CHOICE;
    c->capacity_factor = 1.0f;
    c->bias_update_rate = 0.01f;
}
static void lb_init_std(moe_layer_config *c) { c->init_std = 0.0f; }
static void lb_init_std_nan(moe_layer_config *c) { c->init_std = NAN; }
static void lb_init_std_dense(moe_layer_config *c)
{
    c->kind = MOE_LAYER_DENSE_MLP;
    c->init_std = -1.0f;
}
static void lb_struct_size(moe_layer_config *c) { c->struct_size = 0; }

static void test_bad_config_fields(void **state)
{
    (void)state;
    static const layer_bad_field bad[] = {
        {"kind", lb_kind},
        {"kind", lb_kind_attention},
        {"d_model", lb_d_model},
        {"d_model", lb_d_model_neg},
        {"hidden", lb_hidden},
        {"hidden", lb_hidden_dense},
        {"activation", lb_activation},
        {"activation", lb_activation_dense},
        {"num_experts", lb_num_experts},
        {"top_k", lb_top_k_big},
        {"top_k", lb_top_k_zero},
        {"shared_expert_hidden", lb_shared},
        {"router", lb_router},
        {"score_function", lb_score},
        {"score_function", lb_ec_sigmoid},
        {"renormalize", lb_renorm},
        {"capacity_factor", lb_capacity_neg},
        {"capacity_factor", lb_capacity_nan},
        {"capacity_factor", lb_ec_capacity},
        {"jitter", lb_jitter},
        {"jitter", lb_jitter_neg},
        {"aux_loss_coef", lb_aux},
        {"aux_loss_coef", lb_aux_inf},
        {"z_loss_coef", lb_z},
        {"bias_update_rate", lb_bias},
        {"bias_update_rate", lb_bias_ec},
        {"init_std", lb_init_std},
        {"init_std", lb_init_std_nan},
        {"init_std", lb_init_std_dense},
        {"struct_size", lb_struct_size},
    };
    au_env e;
    au_env_open(&e, 9);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_layer_config c;
        small_layer_config(&c);
        bad[i].apply(&c);
        char want[64];
        snprintf(want, sizeof want, "moe_layer_config.%s", bad[i].field);
        moe_layer *sentinel = (moe_layer *)(uintptr_t)0x5678, *out = sentinel;
        moe_status st = moe_layer_create(e.ctx, e.mesh, &c, &out);
        const char *msg = moe_last_error(), *cmsg = moe_ctx_last_error(e.ctx);
        if (st != MOE_ERR_INVALID_ARG || !strstr(msg, want) || !strstr(cmsg, want) ||
            !strstr(msg, "moe_layer_create"))
            fail_msg("case %zu (%s): status %s, message '%s', ctx message '%s'", i, bad[i].field,
                     moe_status_string(st), msg, cmsg);
        assert_ptr_equal(out, sentinel);
    }
    au_env_close(&e);
}

static void test_config_versioning(void **state)
{
    (void)state;
    unsigned char raw[sizeof(moe_layer_config) + 16];
    AU_FAILS(moe_layer_config_init((moe_layer_config *)(void *)raw, 0), MOE_ERR_INVALID_ARG, "struct_size");
    /* an older, shorter struct: only its bytes are written */
    const uint32_t old = (uint32_t)offsetof(moe_layer_config, shared_expert_hidden);
    memset(raw, 0xAB, sizeof raw);
    AU_OK(moe_layer_config_init((moe_layer_config *)(void *)raw, old));
    for (size_t b = old; b < sizeof raw; b++) assert_int_equal(raw[b], 0xAB);
    moe_layer_config c;
    memcpy(&c, raw, sizeof c);
    assert_int_equal(c.struct_size, old);
    assert_int_equal(c.kind, MOE_LAYER_MOE);
    assert_int_equal(c.top_k, 2);
    /* ... and the newer fields (garbage here) take their defaults when the library reads it */
    c.d_model = LD;
    c.hidden = 6;
    c.num_experts = 4;
    c.router = 99;
    c.capacity_factor = -5.0f;
    c.init_std = -1.0f;
    au_env e;
    au_env_open(&e, 10);
    moe_layer *l = NULL;
    AU_OK(moe_layer_create(e.ctx, e.mesh, &c, &l));
    float x[LN], w[LN], y[LN];
    make_inputs(81, x, w, 1.0);
    AU_OK(moe_layer_forward(l, x, LB, LT, y));
    moe_routing_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    AU_OK(moe_layer_routing_stats(l, &s, NULL, 0));
    assert_int_equal(s.dropped, 0); /* dropless token choice, the default */
    assert_int_equal(s.assignments, LB * LT * 2);
    /* a shorter stats struct gets only its own bytes */
    unsigned char sraw[sizeof(moe_routing_stats) + 8];
    memset(sraw, 0xCD, sizeof sraw);
    uint32_t ssz = (uint32_t)offsetof(moe_routing_stats, dropped);
    memcpy(sraw, &ssz, sizeof ssz);
    AU_OK(moe_layer_routing_stats(l, (moe_routing_stats *)(void *)sraw, NULL, 0));
    for (size_t b = ssz; b < sizeof sraw; b++) assert_int_equal(sraw[b], 0xCD);
    moe_routing_stats part;
    memcpy(&part, sraw, offsetof(moe_routing_stats, dropped));
    assert_int_equal(part.struct_size, ssz);
    assert_int_equal(part.assignments, LB * LT * 2);
    moe_layer_destroy(l);
    au_env_close(&e);
}

/* ---- layers borrowed from a model -------------------------------------------------------------- */

static void borrowed_model_config(moe_model_config *c, int alibi_layernorm)
{
    au_tiny_config(c);
    c->moe_first_dense = 1; /* block 0 dense, block 1 MoE */
    if (alibi_layernorm) {
        c->position = MOE_POSITION_ALIBI;
        c->norm = MOE_NORM_LAYERNORM;
        c->num_kv_heads = 2;
    }
}

static int has_prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

static void check_borrowed_names(moe_layer *l, int32_t block, const char *part, const char *norm, int32_t expect_count)
{
    int32_t count = 0;
    AU_OK(moe_layer_param_count(l, &count));
    assert_int_equal(count, expect_count);
    char p1[64], p2[64];
    snprintf(p1, sizeof p1, "layers.%d.%s.", (int)block, part);
    snprintf(p2, sizeof p2, "layers.%d.%s.", (int)block, norm);
    int saw_norm = 0;
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        AU_OK(moe_layer_param_info(l, i, name, sizeof name, NULL, NULL));
        if (!has_prefix(name, p1) && !has_prefix(name, p2)) fail_msg("borrowed layer holds '%s'", name);
        saw_norm |= has_prefix(name, p2);
    }
    assert_true(saw_norm);
}

static void test_borrowed_layers(void **state)
{
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        au_env e;
        au_env_open(&e, 100 + (uint64_t)variant);
        moe_model_config mc;
        borrowed_model_config(&mc, variant);
        moe_model *m = NULL;
        AU_OK(moe_model_create(e.ctx, e.mesh, &mc, &m));
        moe_layer *attn0 = NULL, *mlp0 = NULL, *attn1 = NULL, *moe1 = NULL, *again = NULL;
        AU_OK(moe_model_layer(m, 0, MOE_LAYER_ATTENTION, &attn0));
        AU_OK(moe_model_layer(m, 0, MOE_LAYER_DENSE_MLP, &mlp0));
        AU_OK(moe_model_layer(m, 1, MOE_LAYER_ATTENTION, &attn1));
        AU_OK(moe_model_layer(m, 1, MOE_LAYER_MOE, &moe1));
        AU_OK(moe_model_layer(m, 1, MOE_LAYER_MOE, &again));
        assert_ptr_equal(again, moe1);
        int32_t kind = -1;
        AU_OK(moe_layer_kind_of(attn0, &kind));
        assert_int_equal(kind, MOE_LAYER_ATTENTION);
        AU_OK(moe_layer_kind_of(mlp0, &kind));
        assert_int_equal(kind, MOE_LAYER_DENSE_MLP);
        AU_OK(moe_layer_kind_of(moe1, &kind));
        assert_int_equal(kind, MOE_LAYER_MOE);
        const int32_t norm_tensors = variant ? 2 : 1;
        check_borrowed_names(attn0, 0, "attn", "attn_norm", 4 + norm_tensors);
        check_borrowed_names(attn1, 1, "attn", "attn_norm", 4 + norm_tensors);
        check_borrowed_names(mlp0, 0, "mlp", "ffn_norm", 3 + norm_tensors);
        check_borrowed_names(moe1, 1, "moe", "ffn_norm", 4 + norm_tensors);

        /* wrong kinds and blocks */
        moe_layer *sentinel = (moe_layer *)(uintptr_t)0x9abc, *out = sentinel;
        AU_FAILS_CTX(e.ctx, moe_model_layer(m, 0, MOE_LAYER_MOE, &out), MOE_ERR_INVALID_ARG, "moe_model_layer",
                     "MOE_LAYER_DENSE_MLP");
        AU_FAILS_CTX(e.ctx, moe_model_layer(m, 1, MOE_LAYER_DENSE_MLP, &out), MOE_ERR_INVALID_ARG, "MOE_LAYER_MOE");
        AU_FAILS_CTX(e.ctx, moe_model_layer(m, 1, 7, &out), MOE_ERR_INVALID_ARG, "moe_model_layer", "kind");
        AU_FAILS_CTX(e.ctx, moe_model_layer(m, 2, MOE_LAYER_ATTENTION, &out), MOE_ERR_INVALID_ARG, "block");
        AU_FAILS_CTX(e.ctx, moe_model_layer(m, -1, MOE_LAYER_ATTENTION, &out), MOE_ERR_INVALID_ARG, "block");
        AU_FAILS_CTX(e.ctx, moe_model_layer(m, 0, MOE_LAYER_ATTENTION, NULL), MOE_ERR_INVALID_ARG, "out");
        assert_ptr_equal(out, sentinel);

        /* finite differences through each borrowed layer (x is the block input before the norm) */
        float x[LN], w[LN];
        make_inputs(91 + (uint64_t)variant, x, w, 1.0);
        moe_layer *ls[4] = {attn0, mlp0, attn1, moe1};
        const char *what[4] = {"borrowed attention (block 0)", "borrowed dense MLP (block 0)",
                               "borrowed attention (block 1)", "borrowed MoE (block 1)"};
        for (int i = 0; i < 4; i++) {
            au_fd_case fc = {what[i], ls[i], LB, LT, LD, x, w, FD_EPS, FD_RTOL, FD_ATOL, 1.0, 1};
            double worst = au_layer_fd_check(&fc, 17 + (uint64_t)i);
            if (!(worst <= 1.0)) fail_msg("%s (variant %d): worst error/tolerance %.3g", what[i], variant, worst);
            fc.scale = 1.01;
            fc.verbose = 0;
            worst = au_layer_fd_check(&fc, 17 + (uint64_t)i);
            if (!(worst > 1.0)) fail_msg("%s: a 1%% scaled gradient was not detected", what[i]);
        }

        /* attention is causal and bounded by max_seq_len */
        float big[LD * 17], ybig[LD * 17];
        memset(big, 0, sizeof big);
        AU_FAILS_CTX(e.ctx, moe_layer_forward(attn0, big, 1, 17, ybig), MOE_ERR_INVALID_ARG, "seq_len");

        /* a borrowed layer writes the model's parameters */
        char name[128];
        int32_t ndim = 0;
        int64_t shape[8];
        AU_OK(moe_layer_param_info(attn1, 0, name, sizeof name, &ndim, shape));
        int64_t n = au_numel(ndim, shape);
        float *v = malloc((size_t)n * sizeof(float)), *back = malloc((size_t)n * sizeof(float));
        assert_non_null(v);
        assert_non_null(back);
        for (int64_t i = 0; i < n; i++) v[i] = 0.01f * (float)i;
        AU_OK(moe_layer_param_write(attn1, 0, v, n));
        AU_OK(moe_model_param_read(m, name, 0, back, n));
        assert_memory_equal(v, back, (size_t)n * sizeof(float));
        free(v);
        free(back);

        /* zero_grad on a borrowed layer clears its own tensors only */
        int32_t tok[LB * LT], tgt[LB * LT];
        tu_tokens(3, mc.vocab_size, LB * LT, tok, tgt);
        AU_OK(moe_model_zero_grad(m));
        AU_OK(moe_model_forward_backward(m, tok, tgt, LB, LT, 1.0f, NULL, NULL));
        AU_OK(moe_layer_zero_grad(attn1));
        int32_t total = 0;
        AU_OK(moe_model_param_count(m, &total));
        for (int32_t i = 0; i < total; i++) {
            AU_OK(moe_model_param_info(m, i, name, sizeof name, &ndim, shape));
            n = au_numel(ndim, shape);
            float *g = malloc((size_t)n * sizeof(float));
            assert_non_null(g);
            AU_OK(moe_model_param_read(m, name, 1, g, n));
            double s = 0.0;
            for (int64_t j = 0; j < n; j++) s += fabs(g[j]);
            if (has_prefix(name, "layers.1.attn.") || has_prefix(name, "layers.1.attn_norm.")) {
                if (s != 0.0) fail_msg("'%s' keeps a gradient after zero_grad on its layer", name);
            } else if (s == 0.0) {
                fail_msg("'%s' lost its gradient to another layer's zero_grad", name);
            }
            free(g);
        }

        /* destroying a borrowed layer does nothing: the model and the layer keep working */
        float logits[LB * LT * 13], logits2[LB * LT * 13], y[LN];
        AU_OK(moe_model_forward(m, tok, LB, LT, logits, sizeof logits / sizeof logits[0]));
        moe_layer_destroy(attn0);
        moe_layer_destroy(moe1);
        AU_OK(moe_model_forward(m, tok, LB, LT, logits2, sizeof logits2 / sizeof logits2[0]));
        assert_memory_equal(logits, logits2, sizeof logits);
        AU_OK(moe_layer_forward(attn0, x, LB, LT, y));
        AU_OK(moe_layer_forward(moe1, x, LB, LT, y));
        AU_OK(moe_model_layer(m, 0, MOE_LAYER_ATTENTION, &again));
        assert_ptr_equal(again, attn0);
        moe_model_destroy(m);
        au_env_close(&e);
    }
}


/* A borrowed layer shares its sub-layer's saved state with the model: a model forward between the
 * layer's forward and backward must not make the layer's backward use the model's activations (a
 * larger model batch would even size the writes past the layer's buffers). The backward must either
 * give the clean result or refuse with MOE_ERR_STATE. Each case runs in a child process, because a
 * wrong backward here corrupts the heap, which can crash or hang the process. */
static int borrowed_interleave_case(int32_t kind)
{
    au_env e;
    au_env_open(&e, 110);
    moe_model_config mc;
    borrowed_model_config(&mc, 0);
    moe_model *m = NULL;
    if (moe_model_create(e.ctx, e.mesh, &mc, &m) != MOE_OK) return 10;
    enum { SB = 1, ST = 3, SN = SB * ST * LD };
    float x[LN], w[LN], y[LN], dx_clean[SN], dx[SN + 64];
    make_inputs(121, x, w, 1.0);
    int32_t tok[3 * 12];
    tu_tokens(4, mc.vocab_size, 3 * 12, tok, NULL);
    moe_layer *l = NULL;
    if (moe_model_layer(m, 1, kind, &l) != MOE_OK) return 11;
    if (moe_layer_forward(l, x, SB, ST, y) != MOE_OK || moe_layer_backward(l, w, dx_clean) != MOE_OK) return 12;
    if (moe_layer_forward(l, x, SB, ST, y) != MOE_OK) return 13;
    if (moe_model_forward(m, tok, 3, 12, NULL, 0) != MOE_OK) return 14; /* 36 tokens through the block */
    for (int i = 0; i < SN + 64; i++) dx[i] = 12345.0f;
    moe_status st = moe_layer_backward(l, w, dx);
    for (int i = SN; i < SN + 64; i++)
        if (dx[i] != 12345.0f) return 2; /* wrote past the layer's outputs */
    if (st == MOE_OK && au_rel_diff(dx, dx_clean, SN) > 1e-6) return 3; /* used the model's activations */
    if (st != MOE_OK && st != MOE_ERR_STATE) return 4;
    moe_model_destroy(m);
    au_env_close(&e);
    return 0;
}

static void test_borrowed_backward_after_model_forward(void **state)
{
    (void)state;
    static const char *why[] = {"passed", "failed or crashed (see its output)", "wrote past dx",
                                "gave a dx computed from the model's activations",
                                "returned a status other than MOE_OK or MOE_ERR_STATE"};
    const char *kinds[2] = {"0", "2"}; /* MOE_LAYER_ATTENTION, MOE_LAYER_MOE */
    int bad = 0;
    for (int k = 0; k < 2; k++) {
        fflush(NULL);
        /* a fresh process (fork + exec): a forked child of an OpenMP process cannot use OpenMP */
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            alarm(60); /* survives exec */
            execl("/proc/self/exe", "test_layer_api", "--borrowed-interleave", kinds[k], (char *)NULL);
            _exit(127);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        const char *what = k ? "borrowed MoE" : "borrowed attention";
        if (WIFSIGNALED(status)) {
            print_error("%s: layer backward after a model forward died with signal %d\n", what, WTERMSIG(status));
            bad++;
        } else if (WEXITSTATUS(status) != 0) {
            int code = WEXITSTATUS(status);
            print_error("%s: layer backward after a model forward %s (exit code %d)\n", what,
                        code < 5 ? why[code] : "could not be set up", code);
            bad++;
        }
    }
    assert_int_equal(bad, 0);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--borrowed-interleave") == 0) return borrowed_interleave_case(atoi(argv[2]));
    struct CMUnitTest tests[NUM_LAYER_VARIANTS + 16];
    size_t nt = 0;
    for (size_t i = 0; i < NUM_LAYER_VARIANTS; i++) {
        struct CMUnitTest t = {layer_variants[i].name, test_layer_fd, NULL, NULL, (void *)&layer_variants[i]};
        tests[nt++] = t;
    }
    const struct CMUnitTest fixed[] = {
        {"fd check detects a 1% scaled gradient", test_fd_check_detects_scaled_gradient, NULL, NULL, NULL},
        cmocka_unit_test(test_standalone_param_names),
        cmocka_unit_test(test_param_access_errors_and_round_trip),
        cmocka_unit_test(test_routing_stats),
        cmocka_unit_test(test_backward_state_and_zero_grad),
        cmocka_unit_test(test_gradients_accumulate),
        cmocka_unit_test(test_second_backward_of_one_forward),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_bad_config_fields),
        cmocka_unit_test(test_config_versioning),
        cmocka_unit_test(test_borrowed_layers),
        cmocka_unit_test(test_borrowed_backward_after_model_forward),
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) tests[nt++] = fixed[i];
    return _cmocka_run_group_tests("layer_api", tests, nt, NULL, NULL);
}
