/* Training behaviour through moe_train_step: the loss falls; gradient accumulation equals one big
 * batch; non-finite steps are skipped; clipping, AdamW and SGD updates match hand computations in
 * double; the LR schedule follows its formula; aux-loss-free bias balancing evens the load. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include "model/model_util.h"

typedef struct fixture {
    moe_ctx *ctx;
    moe_mesh *mesh;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (moe_ctx_create(NULL, &f->ctx) != MOE_OK || moe_mesh_create(f->ctx, NULL, &f->mesh) != MOE_OK) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    moe_mesh_destroy(f->mesh);
    moe_ctx_destroy(f->ctx);
    free(f);
    return 0;
}

static moe_model *make_model(fixture *f, const moe_model_config *c)
{
    moe_model *m = NULL;
    assert_int_equal(moe_model_create(f->ctx, f->mesh, c, &m), MOE_OK);
    return m;
}

static moe_optimizer *make_opt(moe_model *m, const moe_optimizer_config *oc)
{
    moe_optimizer *o = NULL;
    assert_int_equal(moe_optimizer_create(m, oc, &o), MOE_OK);
    return o;
}

static moe_batch make_batch(const int32_t *tok, const int32_t *tgt, int32_t mbs, int32_t seq, int32_t micro)
{
    moe_batch b;
    moe_batch_init(&b, sizeof b);
    b.tokens = tok;
    b.targets = tgt;
    b.micro_batch_size = mbs;
    b.seq_len = seq;
    b.num_micro_batches = micro;
    return b;
}

/* All parameters, concatenated in param_info order. */
static float *read_all(moe_model *m, int gradient, int64_t *total)
{
    int32_t count = 0;
    assert_int_equal(moe_model_param_count(m, &count), MOE_OK);
    int64_t t = 0;
    assert_int_equal(moe_model_num_params(m, &t, NULL), MOE_OK);
    float *all = malloc((size_t)t * sizeof(float));
    int64_t off = 0;
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        int32_t nd;
        int64_t shape[8], n = 1;
        assert_int_equal(moe_model_param_info(m, i, name, sizeof name, &nd, shape), MOE_OK);
        for (int32_t d = 0; d < nd; d++) n *= shape[d];
        assert_int_equal(moe_model_param_read(m, name, (uint32_t)gradient, all + off, n), MOE_OK);
        off += n;
    }
    assert_int_equal(off, t);
    *total = t;
    return all;
}

static void test_loss_falls(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    c.init_std = 0.05f;
    moe_model *m = make_model(f, &c);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    moe_optimizer *o = make_opt(m, &oc);
    enum { MBS = 4, SEQ = 8 };
    int32_t tok[MBS * SEQ], tgt[MBS * SEQ];
    /* a learnable pattern: the next token is (token + 1) mod vocab */
    for (int i = 0; i < MBS * SEQ; i++) tok[i] = (i * 5 + i / SEQ) % c.vocab_size;
    for (int i = 0; i < MBS * SEQ; i++) tgt[i] = (tok[i] + 1) % c.vocab_size;
    moe_batch b = make_batch(tok, tgt, MBS, SEQ, 1);
    moe_step_stats s = {.struct_size = sizeof s};
    double first = 0.0, last = 0.0;
    for (int step = 0; step < 60; step++) {
        assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
        assert_int_equal(s.skipped, 0);
        assert_int_equal(s.step, step + 1);
        assert_int_equal(s.tokens, MBS * SEQ);
        if (step == 0) first = s.loss;
        last = s.loss;
    }
    assert_true(first > 2.0);      /* about ln(13) at the start */
    assert_true(last < 0.3 * first); /* and it learns the pattern */
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
}

static void test_accumulation_equals_big_batch(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    c.moe_aux_loss_coef = 0.0f; /* router losses are per micro-batch by design */
    c.moe_z_loss_coef = 0.0f;
    moe_model *a = make_model(f, &c), *b = make_model(f, &c);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    moe_optimizer *oa = make_opt(a, &oc), *ob = make_opt(b, &oc);
    enum { MB = 4, SEQ = 6 };
    int32_t tok[MB * SEQ], tgt[MB * SEQ];
    tu_tokens(3, c.vocab_size, MB * SEQ, tok, tgt);
    /* uneven counted targets per sequence, so the token weighting matters */
    tgt[0] = tgt[1] = tgt[2] = -100;
    tgt[SEQ + 4] = -100;
    moe_batch one = make_batch(tok, tgt, MB, SEQ, 1), four = make_batch(tok, tgt, 1, SEQ, MB);
    moe_step_stats sa = {.struct_size = sizeof sa}, sb = {.struct_size = sizeof sb};
    for (int step = 0; step < 3; step++) {
        assert_int_equal(moe_train_step(a, oa, &one, &sa), MOE_OK);
        assert_int_equal(moe_train_step(b, ob, &four, &sb), MOE_OK);
        assert_true(fabs(sa.loss - sb.loss) <= 1e-5 * fabs(sa.loss));
        assert_true(fabs(sa.grad_norm - sb.grad_norm) <= 1e-5 * sa.grad_norm);
        assert_int_equal(sa.tokens, sb.tokens);
    }
    int64_t n = 0;
    float *pa = read_all(a, 0, &n), *pb = read_all(b, 0, &n);
    double diff = 0.0, ref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        diff += (double)(pa[i] - pb[i]) * (pa[i] - pb[i]);
        ref += (double)pa[i] * pa[i];
    }
    assert_true(sqrt(diff / ref) < 1e-5);
    free(pa);
    free(pb);
    moe_optimizer_destroy(oa);
    moe_optimizer_destroy(ob);
    moe_model_destroy(a);
    moe_model_destroy(b);
}

static void test_non_finite_step_is_skipped(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    moe_model *m = make_model(f, &c);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    moe_optimizer *o = make_opt(m, &oc);
    int32_t tok[8], tgt[8];
    tu_tokens(5, c.vocab_size, 8, tok, tgt);
    moe_batch b = make_batch(tok, tgt, 2, 4, 1);
    moe_step_stats s = {.struct_size = sizeof s};
    assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
    assert_int_equal(s.skipped, 0);
    /* poison one weight: the loss and gradients become NaN */
    float w[8 * 8];
    assert_int_equal(moe_model_param_read(m, "layers.0.attn.wq", 0, w, 64), MOE_OK);
    w[5] = NAN;
    assert_int_equal(moe_model_param_write(m, "layers.0.attn.wq", w, 64), MOE_OK);
    int64_t n = 0;
    float *before = read_all(m, 0, &n);
    assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
    assert_int_equal(s.skipped, 1);
    assert_int_equal(s.step, 1); /* not counted */
    assert_false(isfinite(s.grad_norm));
    float *after = read_all(m, 0, &n);
    assert_memory_equal(before, after, (size_t)n * sizeof(float)); /* bit for bit, NaN included */
    free(before);
    free(after);
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
}

/* One step of each optimizer against the update computed in double from the gradients the step
 * used (they stay in the model after moe_train_step). */
static void check_one_step(fixture *f, int32_t type, float clip)
{
    moe_model_config c;
    tu_tiny_config(&c);
    moe_model *m = make_model(f, &c);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.type = type;
    oc.lr = 0.01f;
    oc.weight_decay = 0.1f;
    oc.momentum = 0.9f;
    oc.clip_grad_norm = clip;
    moe_optimizer *o = make_opt(m, &oc);
    int32_t tok[12], tgt[12];
    tu_tokens(11, c.vocab_size, 12, tok, tgt);
    moe_batch b = make_batch(tok, tgt, 2, 6, 1);
    int64_t n = 0;
    float *p0 = read_all(m, 0, &n);
    moe_step_stats s = {.struct_size = sizeof s};
    assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
    float *g = read_all(m, 1, &n), *p1 = read_all(m, 0, &n);
    double norm = 0.0;
    for (int64_t i = 0; i < n; i++) norm += (double)g[i] * g[i];
    norm = sqrt(norm);
    assert_true(fabs(norm - s.grad_norm) <= 1e-6 * norm);
    double scale = (clip > 0 && norm > clip) ? clip / (norm + 1e-6) : 1.0;
    /* decayed: everything but norm weights and the embedding (defaults); find them by name */
    int32_t count = 0;
    moe_model_param_count(m, &count);
    int64_t off = 0;
    double err = 0.0, mag = 0.0;
    for (int32_t t = 0; t < count; t++) {
        char name[128];
        int32_t nd;
        int64_t shape[8], len = 1;
        moe_model_param_info(m, t, name, sizeof name, &nd, shape);
        for (int32_t d = 0; d < nd; d++) len *= shape[d];
        int decayed = strstr(name, "norm") == NULL && strcmp(name, "embed.weight") != 0;
        for (int64_t i = off; i < off + len; i++) {
            double gi = g[i] * scale, p = p0[i], expect;
            double wd = decayed ? 0.1 : 0.0;
            if (type == MOE_OPTIMIZER_ADAMW) {
                /* step 1: m_hat = g, v_hat = g^2 */
                p *= 1.0 - 0.01 * wd;
                expect = p - 0.01 * gi / (fabs(gi) + 1e-8);
            } else {
                expect = p - 0.01 * (gi + wd * p); /* momentum buffer = g on the first step */
            }
            err += (expect - p1[i]) * (expect - p1[i]);
            mag += (expect - p0[i]) * (expect - p0[i]);
        }
        off += len;
    }
    assert_true(sqrt(err / mag) < 1e-4);
    free(p0);
    free(p1);
    free(g);
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
}

static void test_adamw_step(void **state) { check_one_step(*state, MOE_OPTIMIZER_ADAMW, 0.0f); }
static void test_sgd_step_clipped(void **state) { check_one_step(*state, MOE_OPTIMIZER_SGD, 0.05f); }
static void test_adamw_step_clipped(void **state) { check_one_step(*state, MOE_OPTIMIZER_ADAMW, 0.05f); }

static void test_lr_schedule(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    moe_model *m = make_model(f, &c);
    const int32_t decays[3] = {MOE_LR_CONSTANT, MOE_LR_COSINE, MOE_LR_LINEAR};
    for (int k = 0; k < 3; k++) {
        moe_optimizer_config oc;
        moe_optimizer_config_init(&oc, sizeof oc);
        oc.lr = 1.0f;
        oc.min_lr = 0.1f;
        oc.warmup_steps = 10;
        oc.decay_steps = 100;
        oc.decay = decays[k];
        moe_optimizer *o = make_opt(m, &oc);
        const int64_t steps[] = {0, 4, 9, 10, 35, 60, 109, 110, 500};
        for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
            int64_t st = steps[i];
            double lr = 0.0, expect;
            assert_int_equal(moe_optimizer_lr_at(o, st, &lr), MOE_OK);
            if (st < 10)
                expect = (double)(st + 1) / 10.0;
            else {
                double t = (double)(st - 10) / 100.0;
                if (t > 1) t = 1;
                expect = decays[k] == MOE_LR_CONSTANT ? 1.0
                         : decays[k] == MOE_LR_COSINE ? 0.1 + 0.9 * 0.5 * (1 + cos(3.141592653589793 * t))
                                                      : 1.0 - 0.9 * t;
            }
            assert_true(fabs(lr - expect) < 1e-6);
        }
        double lr;
        assert_int_equal(moe_optimizer_lr_at(o, -1, &lr), MOE_ERR_INVALID_ARG);
        moe_optimizer_destroy(o);
    }
    moe_model_destroy(m);
}

static void test_optimizer_config_errors(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    moe_model *m = make_model(f, &c);
    moe_optimizer_config oc;
    moe_optimizer *o = NULL;
#define EXPECT_BAD(field, stmt)                                                                       \
    do {                                                                                              \
        moe_optimizer_config_init(&oc, sizeof oc);                                                    \
        stmt;                                                                                         \
        assert_int_equal(moe_optimizer_create(m, &oc, &o), MOE_ERR_INVALID_ARG);                      \
        assert_null(o);                                                                               \
        assert_non_null(strstr(moe_last_error(), field));                                             \
    } while (0)
    EXPECT_BAD("type", oc.type = 9);
    EXPECT_BAD("lr", oc.lr = -1.0f);
    EXPECT_BAD("lr", oc.lr = NAN);
    EXPECT_BAD("min_lr", oc.min_lr = 2.0f);
    EXPECT_BAD("warmup_steps", oc.warmup_steps = -1);
    EXPECT_BAD("decay_steps", oc.decay_steps = -1);
    EXPECT_BAD("decay_steps", oc.decay = MOE_LR_COSINE);
    EXPECT_BAD("decay", oc.decay = 7);
    EXPECT_BAD("beta1", oc.beta1 = 1.0f);
    EXPECT_BAD("beta2", oc.beta2 = -0.1f);
    EXPECT_BAD("eps", oc.eps = 0.0f);
    EXPECT_BAD("weight_decay", oc.weight_decay = -0.5f);
    EXPECT_BAD("momentum", oc.momentum = 1.5f);
    EXPECT_BAD("nesterov", oc.nesterov = 2);
    EXPECT_BAD("nesterov", (oc.nesterov = 1, oc.momentum = 0.0f));
    EXPECT_BAD("clip_grad_norm", oc.clip_grad_norm = -1.0f);
    EXPECT_BAD("decay_norms_and_biases", oc.decay_norms_and_biases = 3);
    EXPECT_BAD("decay_embeddings", oc.decay_embeddings = 3);
    EXPECT_BAD("struct_size", oc.struct_size = 0);
    assert_int_equal(moe_optimizer_create(NULL, &oc, &o), MOE_ERR_INVALID_ARG);
    moe_optimizer_config_init(&oc, sizeof oc);
    assert_int_equal(moe_optimizer_create(m, NULL, &o), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_optimizer_create(m, &oc, NULL), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_optimizer_config_init(NULL, sizeof oc), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_optimizer_step(NULL, NULL), MOE_ERR_INVALID_ARG);
    moe_optimizer_destroy(NULL);
    moe_model_destroy(m);
}

static void test_train_step_errors(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    moe_model *m = make_model(f, &c), *other = make_model(f, &c);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    moe_optimizer *o = make_opt(m, &oc), *o2 = make_opt(other, &oc);
    int32_t tok[4] = {1, 2, 3, 4}, tgt[4] = {2, 3, 4, 5};
    moe_batch b = make_batch(tok, tgt, 1, 4, 1);
    assert_int_equal(moe_train_step(m, o2, &b, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_ctx_last_error(f->ctx), "another model"));
    assert_int_equal(moe_train_step(NULL, o, &b, NULL), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_train_step(m, NULL, &b, NULL), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_train_step(m, o, NULL, NULL), MOE_ERR_INVALID_ARG);
    moe_batch bad = b;
    bad.num_micro_batches = 0;
    assert_int_equal(moe_train_step(m, o, &bad, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_ctx_last_error(f->ctx), "num_micro_batches"));
    bad = b;
    bad.targets = NULL;
    assert_int_equal(moe_train_step(m, o, &bad, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_ctx_last_error(f->ctx), "targets"));
    int32_t badtok[4] = {1, 2, 99, 4};
    bad = b;
    bad.tokens = badtok;
    assert_int_equal(moe_train_step(m, o, &bad, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_ctx_last_error(f->ctx), "tokens[2]"));
    moe_step_stats s = {.struct_size = 0};
    assert_int_equal(moe_train_step(m, o, &b, &s), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_batch_init(NULL, sizeof b), MOE_ERR_INVALID_ARG);
    moe_optimizer_destroy(o);
    moe_optimizer_destroy(o2);
    moe_model_destroy(m);
    moe_model_destroy(other);
}

/* Aux-loss-free balancing: with the LR at 0 nothing else changes, so the bias alone must even out
 * the load of a skewed router over a few steps. */
static void test_bias_balancing(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    tu_tiny_config(&c);
    c.num_layers = 1;
    c.moe_aux_loss_coef = 0.0f;
    c.moe_bias_update_rate = 0.02f;
    c.moe_top_k = 1;
    moe_model *m = make_model(f, &c);
    /* skew the router: expert 0's row becomes a large copy of expert 1's, so whichever way a
     * token leans, these two compete for it and the other two starve */
    float router[4 * 8];
    assert_int_equal(moe_model_param_read(m, "layers.0.moe.router", 0, router, 32), MOE_OK);
    for (int j = 0; j < 8; j++) {
        router[j] = 4.0f * router[8 + j];
        router[8 + j] = -4.0f * router[8 + j];
    }
    assert_int_equal(moe_model_param_write(m, "layers.0.moe.router", router, 32), MOE_OK);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 0.0f;
    oc.min_lr = 0.0f;
    oc.weight_decay = 0.0f;
    moe_optimizer *o = make_opt(m, &oc);
    enum { N = 64 };
    int32_t tok[N], tgt[N];
    tu_tokens(21, c.vocab_size, N, tok, tgt);
    moe_batch b = make_batch(tok, tgt, 4, N / 4, 1);
    moe_step_stats s = {.struct_size = sizeof s};
    assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
    double first = s.max_load;
    for (int i = 0; i < 40; i++) assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
    print_message("bias balancing: max/mean load %.3f -> %.3f\n", first, s.max_load);
    assert_true(first > 1.5);
    assert_true(s.max_load < first - 0.3);
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
}

static void test_determinism(void **state)
{
    fixture *f = *state;
    double losses[2][5];
    for (int run = 0; run < 2; run++) {
        moe_model_config c;
        tu_tiny_config(&c);
        c.moe_jitter = 0.1f; /* keyed by seed and step, so it repeats too */
        moe_model *m = make_model(f, &c);
        moe_optimizer_config oc;
        moe_optimizer_config_init(&oc, sizeof oc);
        moe_optimizer *o = make_opt(m, &oc);
        int32_t tok[16], tgt[16];
        tu_tokens(9, c.vocab_size, 16, tok, tgt);
        moe_batch b = make_batch(tok, tgt, 2, 4, 2);
        moe_step_stats s = {.struct_size = sizeof s};
        for (int i = 0; i < 5; i++) {
            assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
            losses[run][i] = s.loss;
        }
        moe_optimizer_destroy(o);
        moe_model_destroy(m);
    }
    assert_memory_equal(losses[0], losses[1], sizeof losses[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_falls),
        cmocka_unit_test(test_accumulation_equals_big_batch),
        cmocka_unit_test(test_non_finite_step_is_skipped),
        cmocka_unit_test(test_adamw_step),
        cmocka_unit_test(test_adamw_step_clipped),
        cmocka_unit_test(test_sgd_step_clipped),
        cmocka_unit_test(test_lr_schedule),
        cmocka_unit_test(test_optimizer_config_errors),
        cmocka_unit_test(test_train_step_errors),
        cmocka_unit_test(test_bias_balancing),
        cmocka_unit_test(test_determinism),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
