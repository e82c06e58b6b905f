/* ZeRO-1 in one process (every build): on a world of one, zero_stage = 1 owns the whole buffer
 * and must train bit for bit as zero_stage = 0 (AdamW and SGD: losses, grad norms, parameters,
 * moments); the state layout helper maps every parameter to its own elements; zero_stage is
 * validated by name and defaults to 0, also for callers compiled before the field existed. */
#include <stdlib.h>

#include "core/test_util.h"
#include "nn/model.h"
#include "optim/optimizer.h"

static void tiny_config(moe_model_config *c)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = 13;
    c->max_seq_len = 8;
    c->d_model = 12;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->ffn_hidden = 7;
    c->moe_first_dense = 1;
    c->moe_num_experts = 4;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 5;
    c->init_std = 0.2f;
    c->moe_bias_update_rate = 0.01f;
}

typedef struct run {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moe_optimizer *opt;
} run;

static void run_open(run *r, const moe_optimizer_config *oc)
{
    memset(r, 0, sizeof *r);
    ASSERT_OK(moe_ctx_create(NULL, &r->ctx));
    ASSERT_OK(moe_mesh_create(r->ctx, NULL, &r->mesh));
    moe_model_config c;
    tiny_config(&c);
    ASSERT_OK(moe_model_create(r->ctx, r->mesh, &c, &r->model));
    ASSERT_OK(moe_optimizer_create(r->model, oc, &r->opt));
}

static void run_close(run *r)
{
    moe_optimizer_destroy(r->opt);
    moe_model_destroy(r->model);
    moe_mesh_destroy(r->mesh);
    moe_ctx_destroy(r->ctx);
}

static void step(run *r, int64_t s, moe_step_stats *out)
{
    int32_t tok[24], tgt[24];
    for (int i = 0; i < 24; i++) {
        tok[i] = (int32_t)((s * 7 + i * 5) % 13);
        tgt[i] = i % 5 == 2 ? -100 : (int32_t)((s * 3 + i * 11) % 13);
    }
    moe_batch b;
    moe_batch_init(&b, sizeof b);
    b.tokens = tok;
    b.targets = tgt;
    b.micro_batch_size = 1;
    b.seq_len = 8;
    b.num_micro_batches = 3;
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    ASSERT_OK(moe_train_step(r->model, r->opt, &b, out));
}

static void same_run(int32_t type)
{
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.type = type;
    oc.lr = 2e-2f;
    oc.clip_grad_norm = 0.3f;
    run a, b;
    run_open(&a, &oc);
    oc.zero_stage = 1;
    run_open(&b, &oc);
    assert_int_equal(b.opt->count, b.model->params.total);
    for (int64_t s = 0; s < 4; s++) {
        moe_step_stats x, y;
        step(&a, s, &x);
        step(&b, s, &y);
        assert_true(x.loss == y.loss);
        assert_true(x.grad_norm == y.grad_norm);
        assert_int_equal(y.skipped, 0);
    }
    size_t bytes = (size_t)a.model->params.total * sizeof(float);
    assert_memory_equal(a.model->params.data, b.model->params.data, bytes);
    assert_memory_equal(a.opt->m, b.opt->m, bytes);
    if (type == MOE_OPTIMIZER_ADAMW) assert_memory_equal(a.opt->v, b.opt->v, bytes);
    run_close(&a);
    run_close(&b);
}

static void test_adamw(void **state)
{
    (void)state;
    same_run(MOE_OPTIMIZER_ADAMW);
}

static void test_sgd(void **state)
{
    (void)state;
    same_run(MOE_OPTIMIZER_SGD);
}

/* On one rank every parameter's state is all of it, at the parameter's own offset. */
static void test_layout(void **state)
{
    (void)state;
    for (uint32_t zero = 0; zero <= 1; zero++) {
        moe_optimizer_config oc;
        moe_optimizer_config_init(&oc, sizeof oc);
        oc.zero_stage = zero;
        run r;
        run_open(&r, &oc);
        const moei_params *p = &r.model->params;
        for (int32_t i = 0; i < p->count; i++) {
            int64_t first = -1, count = -1, at = -1;
            moei_optimizer_param_state(r.opt, &p->entries[i], &first, &count, &at);
            assert_int_equal(first, 0);
            assert_int_equal(count, p->entries[i].numel);
            assert_int_equal(at, p->entries[i].offset);
        }
        run_close(&r);
    }
}

static void test_config(void **state)
{
    (void)state;
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    assert_int_equal(oc.zero_stage, 0);
    run r;
    run_open(&r, &oc);
    moe_optimizer *o = NULL;
    oc.zero_stage = 2;
    ASSERT_FAILS(moe_optimizer_create(r.model, &oc, &o), MOE_ERR_INVALID_ARG, "zero_stage", "0 or 1");
    assert_null(o);
    /* a caller compiled before zero_stage existed: whatever follows its struct is not read */
    unsigned char raw[sizeof(moe_optimizer_config)];
    memset(raw, 0x5a, sizeof raw);
    moe_optimizer_config old;
    moe_optimizer_config_init(&old, (uint32_t)offsetof(moe_optimizer_config, zero_stage));
    memcpy(raw, &old, offsetof(moe_optimizer_config, zero_stage));
    ASSERT_OK(moe_optimizer_create(r.model, (const moe_optimizer_config *)(const void *)raw, &o));
    assert_int_equal(o->cfg.zero_stage, 0);
    moe_optimizer_destroy(o);
    run_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_sgd),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
