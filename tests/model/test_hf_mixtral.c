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
#include <unistd.h>

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

/* Re-write the reference checkpoint in the fused expert layout (gate_up_proj [E, 2I, H],
 * down_proj [E, H, I], mlp.gate) split over two shards with an index, import it, and compare with
 * the classic import bit for bit. */
static void test_fused_sharded_layout(void **state)
{
    fixture *f = *state;
    char tmpl[] = "/tmp/moe-hf-fused-XXXXXX";
    char *dir = mkdtemp(tmpl);
    assert_non_null(dir);
    moei_st_file *src = NULL;
    assert_int_equal(moei_st_open(f->ctx, DIR "/model.safetensors", &src), MOE_OK);
    moei_st_writer *w[2] = {NULL, NULL};
    assert_int_equal(moei_st_writer_create(f->ctx, &w[0]), MOE_OK);
    assert_int_equal(moei_st_writer_create(f->ctx, &w[1]), MOE_OK);
    const int64_t E = 4, I = 48, H = 32;
    float *fused[2][2]; /* [layer][gate_up | down] */
    char index[8192];
    int pos = snprintf(index, sizeof index, "{\"metadata\": {}, \"weight_map\": {");
    int first = 1;
    for (int l = 0; l < 2; l++) {
        fused[l][0] = malloc((size_t)(E * 2 * I * H) * sizeof(float));
        fused[l][1] = malloc((size_t)(E * H * I) * sizeof(float));
        for (int64_t e = 0; e < E; e++) {
            char name[128];
            const moei_st_tensor *t;
            snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, (int)e);
            t = moei_st_find(src, name);
            assert_non_null(t);
            assert_int_equal(moei_st_read_f32(f->ctx, t, 0, I * H, fused[l][0] + e * 2 * I * H), MOE_OK);
            snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, (int)e);
            t = moei_st_find(src, name);
            assert_int_equal(moei_st_read_f32(f->ctx, t, 0, I * H, fused[l][0] + e * 2 * I * H + I * H), MOE_OK);
            snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, (int)e);
            t = moei_st_find(src, name);
            assert_int_equal(moei_st_read_f32(f->ctx, t, 0, H * I, fused[l][1] + e * H * I), MOE_OK);
        }
        char gu[128], dn[128];
        snprintf(gu, sizeof gu, "model.layers.%d.mlp.experts.gate_up_proj", l);
        snprintf(dn, sizeof dn, "model.layers.%d.mlp.experts.down_proj", l);
        const int64_t gshape[3] = {E, 2 * I, H}, dshape[3] = {E, H, I};
        assert_int_equal(moei_st_writer_add(w[l], gu, MOE_DTYPE_F32, 3, gshape, fused[l][0],
                                            (uint64_t)(E * 2 * I * H) * 4), MOE_OK);
        assert_int_equal(moei_st_writer_add(w[l], dn, MOE_DTYPE_F32, 3, dshape, fused[l][1],
                                            (uint64_t)(E * H * I) * 4), MOE_OK);
        pos += snprintf(index + pos, sizeof index - (size_t)pos, "%s\"%s\": \"part-%d.safetensors\", \"%s\": \"part-%d.safetensors\"",
                        first ? "" : ", ", gu, l, dn, l);
        first = 0;
    }
    /* every other tensor: rename the router, keep the rest, put it in the shard of its layer */
    for (int64_t i = 0; i < moei_st_count(src); i++) {
        const moei_st_tensor *t = moei_st_at(src, i);
        if (strstr(t->name, ".experts.")) continue;
        char name[160];
        int layer = 0;
        if (sscanf(t->name, "model.layers.%d.", &layer) != 1) layer = 0;
        if (strstr(t->name, "block_sparse_moe.gate.weight"))
            snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", layer);
        else
            snprintf(name, sizeof name, "%s", t->name);
        assert_int_equal(moei_st_writer_add(w[layer], name, t->dtype, t->ndim, t->shape, t->data, t->nbytes), MOE_OK);
        pos += snprintf(index + pos, sizeof index - (size_t)pos, ", \"%s\": \"part-%d.safetensors\"", name, layer);
    }
    pos += snprintf(index + pos, sizeof index - (size_t)pos, "}}");
    assert_true(pos < (int)sizeof index);
    char path[512];
    for (int l = 0; l < 2; l++) {
        snprintf(path, sizeof path, "%s/part-%d.safetensors", dir, l);
        assert_int_equal(moei_st_writer_write(w[l], path), MOE_OK);
        moei_st_writer_destroy(w[l]);
        free(fused[l][0]);
        free(fused[l][1]);
    }
    moei_st_close(src);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *fp = fopen(path, "w");
    fputs(index, fp);
    fclose(fp);

    moe_model_config c = {.struct_size = sizeof c};
    assert_int_equal(moe_model_get_config(f->model, &c), MOE_OK);
    moe_model *a = NULL, *b = NULL;
    assert_int_equal(moe_model_create(f->ctx, f->mesh, &c, &a), MOE_OK);
    assert_int_equal(moe_model_create(f->ctx, f->mesh, &c, &b), MOE_OK);
    assert_int_equal(moe_model_import_hf(a, DIR), MOE_OK);
    if (moe_model_import_hf(b, dir) != MOE_OK) {
        print_error("fused import: %s\n", moe_ctx_last_error(f->ctx));
        fail();
    }
    assert_int_equal(a->params.total, b->params.total);
    assert_memory_equal(a->params.data, b->params.data, (size_t)a->params.total * sizeof(float));
    /* a weight_map entry escaping the directory is refused */
    fp = fopen(path, "w");
    fputs("{\"weight_map\": {\"lm_head.weight\": \"../evil.safetensors\"}}", fp);
    fclose(fp);
    assert_int_equal(moe_model_import_hf(b, dir), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_ctx_last_error(f->ctx), "not a file name"));
    moe_model_destroy(a);
    moe_model_destroy(b);
    for (int l = 0; l < 2; l++) {
        snprintf(path, sizeof path, "%s/part-%d.safetensors", dir, l);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_logits_and_router),
        cmocka_unit_test(test_loss_grads_and_adamw),
        cmocka_unit_test(test_bad_checkpoints),
        cmocka_unit_test(test_fused_sharded_layout),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
