/* Whole-model gradients against central finite differences of the loss (lm + router losses), for
 * every parameter tensor, in each router mode, position scheme, norm, activation, dense/MoE
 * pattern, shared experts and tied embeddings. The check is directional: along the tensor's own
 * gradient (FD must equal its norm) and along a random direction (FD must equal the projection). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include "model/model_util.h"

#define B 2
#define T 5

typedef struct variant {
    const char *name;
    void (*apply)(moe_model_config *c);
} variant;

static void v_default(moe_model_config *c) { (void)c; }
static void v_sigmoid(moe_model_config *c)
{
    c->moe_score_function = MOE_SCORE_SIGMOID;
    c->moe_renormalize = 0;
}
static void v_expert_choice(moe_model_config *c)
{
    c->moe_router = MOE_ROUTER_EXPERT_CHOICE;
    c->moe_capacity_factor = 1.0f;
}
static void v_alibi_layernorm_gelu_shared(moe_model_config *c)
{
    c->position = MOE_POSITION_ALIBI;
    c->norm = MOE_NORM_LAYERNORM;
    c->moe_activation = MOE_ACTIVATION_GELU;
    c->moe_shared_expert_hidden = 5;
}
static void v_learned_tied_first_dense(moe_model_config *c)
{
    c->position = MOE_POSITION_LEARNED;
    c->tie_embeddings = 1;
    c->moe_first_dense = 1;
    c->num_kv_heads = 2;
}
static void v_capacity_drops(moe_model_config *c) { c->moe_capacity_factor = 0.5f; }
static void v_dense_mqa_gelu(moe_model_config *c)
{
    c->moe_num_experts = 0;
    c->ffn_activation = MOE_ACTIVATION_GELU;
    c->num_heads = 4;
    c->num_kv_heads = 1;
    c->head_dim = 2;
}
static void v_every_second_bias(moe_model_config *c)
{
    c->num_layers = 3;
    c->moe_layer_freq = 2;
    c->moe_shared_expert_hidden = 4;
    c->moe_bias_update_rate = 0.01f;
}

static const variant variants[] = {
    {"default (softmax top-2, renorm, RoPE, RMSNorm, SwiGLU)", v_default},
    {"sigmoid scores, no renormalisation", v_sigmoid},
    {"expert choice", v_expert_choice},
    {"ALiBi, LayerNorm, GELU experts, shared expert", v_alibi_layernorm_gelu_shared},
    {"learned positions, tied embeddings, first layer dense, MHA", v_learned_tied_first_dense},
    {"token choice with capacity drops", v_capacity_drops},
    {"all dense, MQA, GELU", v_dense_mqa_gelu},
    {"every second layer MoE, shared expert, bias balancing", v_every_second_bias},
};

static double total_loss(moe_model *m, const int32_t *tok, const int32_t *tgt)
{
    double lm = 0.0, aux = 0.0;
    assert_int_equal(moe_model_forward_backward(m, tok, tgt, B, T, 1.0f, &lm, &aux), MOE_OK);
    return lm + aux;
}

static void check_variant(const variant *v)
{
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL;
    moe_model *m = NULL;
    assert_int_equal(moe_ctx_create(NULL, &ctx), MOE_OK);
    assert_int_equal(moe_mesh_create(ctx, NULL, &mesh), MOE_OK);
    moe_model_config c;
    tu_tiny_config(&c);
    v->apply(&c);
    assert_int_equal(moe_model_create(ctx, mesh, &c, &m), MOE_OK);
    int32_t tok[B * T], tgt[B * T];
    tu_tokens(7, c.vocab_size, B * T, tok, tgt);
    tgt[3] = -100; /* an uncounted position */

    int32_t count = 0;
    assert_int_equal(moe_model_param_count(m, &count), MOE_OK);
    uint64_t rs = 99;
    const float eps = 1e-3f;
    int checked = 0;
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        int32_t ndim = 0;
        int64_t shape[8];
        assert_int_equal(moe_model_param_info(m, i, name, sizeof name, &ndim, shape), MOE_OK);
        int64_t numel = 1;
        for (int32_t d = 0; d < ndim; d++) numel *= shape[d];
        float *theta = malloc((size_t)numel * sizeof(float)), *g = malloc((size_t)numel * sizeof(float)),
              *dir = malloc((size_t)numel * sizeof(float)), *work = malloc((size_t)numel * sizeof(float));
        assert_int_equal(moe_model_param_read(m, name, 0, theta, numel), MOE_OK);
        /* the finite-difference passes accumulate gradients too: recompute them fresh */
        assert_int_equal(moe_model_zero_grad(m), MOE_OK);
        total_loss(m, tok, tgt);
        assert_int_equal(moe_model_param_read(m, name, 1, g, numel), MOE_OK);
        double gnorm = 0.0;
        for (int64_t j = 0; j < numel; j++) gnorm += (double)g[j] * g[j];
        gnorm = sqrt(gnorm);
        for (int pass = 0; pass < 2; pass++) {
            /* pass 0: along the gradient; pass 1: a random unit direction */
            double dnorm = 0.0, expect = 0.0;
            for (int64_t j = 0; j < numel; j++) {
                dir[j] = pass == 0 ? g[j] : (float)tu_normal(&rs);
                dnorm += (double)dir[j] * dir[j];
            }
            dnorm = sqrt(dnorm);
            if (dnorm == 0.0) continue; /* zero gradient along itself: covered by the random pass */
            for (int64_t j = 0; j < numel; j++) {
                dir[j] = (float)(dir[j] / dnorm);
                expect += (double)g[j] * dir[j];
            }
            for (int64_t j = 0; j < numel; j++) work[j] = theta[j] + eps * dir[j];
            assert_int_equal(moe_model_param_write(m, name, work, numel), MOE_OK);
            double lp = total_loss(m, tok, tgt);
            for (int64_t j = 0; j < numel; j++) work[j] = theta[j] - eps * dir[j];
            assert_int_equal(moe_model_param_write(m, name, work, numel), MOE_OK);
            double lm = total_loss(m, tok, tgt);
            assert_int_equal(moe_model_param_write(m, name, theta, numel), MOE_OK);
            double fd = (lp - lm) / (2.0 * eps);
            double tol = 2e-2 * (gnorm > fabs(expect) ? gnorm : fabs(expect)) + 3e-3;
            if (fabs(fd - expect) > tol) {
                print_error("%s: %s (%s): finite difference %.6g, analytic %.6g (|g| = %.4g)\n", v->name, name,
                            pass == 0 ? "along gradient" : "random direction", fd, expect, gnorm);
                fail();
            }
            checked++;
        }
        free(theta);
        free(g);
        free(dir);
        free(work);
    }
    assert_true(checked >= count);
    moe_model_destroy(m);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
}

static void test_variant(void **state) { check_variant((const variant *)*state); }

int main(void)
{
    struct CMUnitTest tests[sizeof variants / sizeof variants[0]];
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        struct CMUnitTest t = {variants[i].name, test_variant, NULL, NULL, (void *)&variants[i]};
        tests[i] = t;
    }
    return _cmocka_run_group_tests("model_grad", tests, sizeof variants / sizeof variants[0], NULL, NULL);
}
