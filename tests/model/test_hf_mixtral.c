/* Agreement with Hugging Face Transformers' own MixtralForCausalLM (tests/reference/: weights
 * written by save_pretrained, outputs recorded by make_mixtral_reference.py): logits, loss,
 * router logits, HF's load-balancing loss, every gradient, and the weights after one AdamW step,
 * each within 1e-4 relative (||a - b|| / ||ref||). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moe.h>

#include "cpu/router.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "nn/model.h"

#ifndef MOE_TEST_REFERENCE_DIR
#error "MOE_TEST_REFERENCE_DIR must point at tests/reference"
#endif
#define DIR MOE_TEST_REFERENCE_DIR "/mixtral"

typedef struct fixture {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moei_st_file *ref;
    int32_t tokens[64], targets[64];
    int32_t batch, seq;
} fixture;

static float *ref_tensor(fixture *f, const char *name, int64_t *numel)
{
    const moei_st_tensor *t = NULL;
    if (moei_st_get(f->ctx, f->ref, name, &t) != MOE_OK) {
        print_error("reference tensor %s: %s\n", name, moe_ctx_last_error(f->ctx));
        fail();
    }
    float *out = malloc((size_t)t->numel * sizeof(float));
    assert_int_equal(moei_st_read_f32(f->ctx, t, 0, t->numel, out), MOE_OK);
    *numel = t->numel;
    return out;
}

static double rel_err(const float *a, const float *ref, int64_t n)
{
    double d = 0.0, r = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    return r > 0.0 ? sqrt(d / r) : sqrt(d);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (moe_ctx_create(NULL, &f->ctx) != MOE_OK || moe_mesh_create(f->ctx, NULL, &f->mesh) != MOE_OK) return -1;
    moe_model_config c;
    moe_model_config_init(&c, sizeof c);
    if (moe_hf_read_config(DIR, &c) != MOE_OK) {
        fprintf(stderr, "config: %s\n", moe_last_error());
        return -1;
    }
    c.moe_aux_loss_coef = 0.0f; /* the reference gradients are of the LM loss alone */
    if (moe_model_create(f->ctx, f->mesh, &c, &f->model) != MOE_OK) return -1;
    if (moe_model_import_hf(f->model, DIR) != MOE_OK) {
        fprintf(stderr, "import: %s\n", moe_ctx_last_error(f->ctx));
        return -1;
    }
    if (moei_st_open(f->ctx, DIR "/reference.safetensors", &f->ref) != MOE_OK) return -1;
    const moei_st_tensor *ids = moei_st_find(f->ref, "input_ids");
    if (!ids || ids->ndim != 2 || ids->dtype != MOE_DTYPE_I64 || ids->numel > 64) return -1;
    f->batch = (int32_t)ids->shape[0];
    f->seq = (int32_t)ids->shape[1];
    for (int64_t i = 0; i < ids->numel; i++) {
        int64_t v;
        memcpy(&v, (const char *)ids->data + 8 * i, 8);
        f->tokens[i] = (int32_t)v;
    }
    /* HF shifts the labels inside the loss: position t predicts token t + 1 */
    for (int32_t b = 0; b < f->batch; b++)
        for (int32_t t = 0; t < f->seq; t++)
            f->targets[b * f->seq + t] = t + 1 < f->seq ? f->tokens[b * f->seq + t + 1] : -100;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    moei_st_close(f->ref);
    moe_model_destroy(f->model);
    moe_mesh_destroy(f->mesh);
    moe_ctx_destroy(f->ctx);
    free(f);
    return 0;
}

static void test_config(void **state)
{
    fixture *f = *state;
    moe_model_config c = {.struct_size = sizeof c};
    assert_int_equal(moe_model_get_config(f->model, &c), MOE_OK);
    assert_int_equal(c.vocab_size, 97);
    assert_int_equal(c.d_model, 32);
    assert_int_equal(c.num_layers, 2);
    assert_int_equal(c.num_heads, 4);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.moe_num_experts, 4);
    assert_int_equal(c.moe_top_k, 2);
    assert_int_equal(c.moe_expert_hidden, 48);
    assert_true(c.rope_theta == 10000.0f);
}

static void test_logits_and_router(void **state)
{
    fixture *f = *state;
    int64_t n = 0;
    float *ref = ref_tensor(f, "logits", &n);
    float *logits = malloc((size_t)n * sizeof(float));
    assert_int_equal(moe_model_forward(f->model, f->tokens, f->batch, f->seq, logits, (uint64_t)n), MOE_OK);
    double e = rel_err(logits, ref, n);
    print_message("logits: rel err %.3g\n", e);
    assert_true(e <= 1e-4);
    for (int l = 0; l < 2; l++) {
        char name[64];
        snprintf(name, sizeof name, "router_logits.%d", l);
        int64_t rn = 0;
        float *rl = ref_tensor(f, name, &rn);
        double er = rel_err(MOEI_BUF_F32(f->model->blocks[l].moe.logits), rl, rn);
        print_message("%s: rel err %.3g\n", name, er);
        assert_true(er <= 1e-4);
        free(rl);
    }
    /* HF's load-balancing loss pools every layer's routing: E * sum_e mean_l(f_e) * mean_l(P_e) */
    const int32_t E = 4, k = 2;
    double fe[4] = {0}, pe[4] = {0};
    for (int l = 0; l < 2; l++) {
        const moei_moe *mo = &f->model->blocks[l].moe;
        float tf[4], pm[4];
        assert_int_equal(moei_router_balance_stats(f->ctx, mo->n, E, k, MOEI_BUF_F32(mo->probs),
                                                   MOEI_BUF_I32(mo->sel_idx), tf, pm),
                         MOE_OK);
        for (int x = 0; x < E; x++) {
            fe[x] += tf[x] / 2.0;
            pe[x] += pm[x] / 2.0;
        }
    }
    double aux = 0.0;
    for (int x = 0; x < E; x++) aux += fe[x] * pe[x];
    aux *= E;
    int64_t an = 0;
    float *ra = ref_tensor(f, "aux_loss", &an);
    print_message("aux loss (HF form): %.7f vs %.7f\n", aux, ra[0]);
    assert_true(fabs(aux - ra[0]) <= 1e-4 * fabs(ra[0]));
    free(ra);
    free(ref);
    free(logits);
}

static void test_loss_grads_and_adamw(void **state)
{
    fixture *f = *state;
    moe_model *m = f->model;
    /* one step through the public train step: gradients stay in the model afterwards */
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    oc.beta1 = 0.9f;
    oc.beta2 = 0.95f;
    oc.eps = 1e-8f;
    oc.weight_decay = 0.1f;
    oc.clip_grad_norm = 0.0f;
    oc.decay_norms_and_biases = 1; /* torch's AdamW decays every parameter */
    oc.decay_embeddings = 1;
    moe_optimizer *o = NULL;
    assert_int_equal(moe_optimizer_create(m, &oc, &o), MOE_OK);
    moe_batch b;
    moe_batch_init(&b, sizeof b);
    b.tokens = f->tokens;
    b.targets = f->targets;
    b.micro_batch_size = f->batch;
    b.seq_len = f->seq;
    moe_step_stats s = {.struct_size = sizeof s};
    assert_int_equal(moe_train_step(m, o, &b, &s), MOE_OK);
    int64_t ln = 0;
    float *rl = ref_tensor(f, "loss", &ln);
    print_message("loss: %.7f vs %.7f\n", s.loss, rl[0]);
    assert_true(fabs(s.loss - rl[0]) <= 1e-5 * fabs(rl[0]));
    free(rl);
    int32_t count = 0;
    moe_model_param_count(m, &count);
    double worst_g = 0.0, worst_p = 0.0;
    for (int32_t i = 0; i < count; i++) {
        const moei_param *e = &m->params.entries[i];
        int layer = -1;
        char which = 0;
        int expert = sscanf(e->name, "layers.%d.moe.experts.w%c", &layer, &which) == 2;
        int64_t pieces = expert ? e->shape[0] : 1, per = e->numel / pieces;
        for (int64_t x = 0; x < pieces; x++) {
            char hf[256], name[300];
            assert_true(moei_hf_classic_name(e->name, (int32_t)x, hf, sizeof hf));
            int64_t n = 0;
            snprintf(name, sizeof name, "grad.%s", hf);
            float *rg = ref_tensor(f, name, &n);
            assert_int_equal(n, per);
            double eg = rel_err(moei_param_grad(&m->params, i) + x * per, rg, n);
            snprintf(name, sizeof name, "after_adamw.%s", hf);
            float *rp = ref_tensor(f, name, &n);
            double ep = rel_err(moei_param_data(&m->params, i) + x * per, rp, n);
            if (eg > worst_g) worst_g = eg;
            if (ep > worst_p) worst_p = ep;
            if (eg > 1e-4 || ep > 1e-4) {
                print_error("%s: gradient rel err %.3g, after AdamW rel err %.3g\n", hf, eg, ep);
                fail();
            }
            free(rg);
            free(rp);
        }
    }
    print_message("worst gradient rel err %.3g, worst post-AdamW rel err %.3g over %d tensors\n", worst_g, worst_p,
                  (int)count);
    moe_optimizer_destroy(o);
}

static void test_bad_checkpoints(void **state)
{
    (void)state;
    moe_model_config c;
    moe_model_config_init(&c, sizeof c);
    assert_int_equal(moe_hf_read_config("/nonexistent-dir", &c), MOE_ERR_IO);
    assert_non_null(strstr(moe_last_error(), "config.json"));
    assert_int_equal(moe_hf_read_config(NULL, &c), MOE_ERR_INVALID_ARG);
    assert_int_equal(moe_hf_read_config(DIR, NULL), MOE_ERR_INVALID_ARG);
    fixture *f = *state;
    assert_int_equal(moe_model_import_hf(f->model, "/nonexistent-dir"), MOE_ERR_IO);
    assert_int_equal(moe_model_import_hf(NULL, DIR), MOE_ERR_INVALID_ARG);
    /* a model of another shape: the first mismatching tensor is named */
    moe_model_config small;
    moe_model_config_init(&small, sizeof small);
    assert_int_equal(moe_hf_read_config(DIR, &small), MOE_OK);
    small.d_model = 16;
    small.head_dim = 4;
    moe_model *m2 = NULL;
    assert_int_equal(moe_model_create(f->ctx, f->mesh, &small, &m2), MOE_OK);
    assert_int_equal(moe_model_import_hf(m2, DIR), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_ctx_last_error(f->ctx), "model.embed_tokens.weight"));
    moe_model_destroy(m2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_logits_and_router),
        cmocka_unit_test(test_loss_grads_and_adamw),
        cmocka_unit_test(test_bad_checkpoints),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
