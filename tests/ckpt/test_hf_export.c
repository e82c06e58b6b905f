/* Hugging Face Mixtral export. The reference checkpoint (written by transformers' save_pretrained)
 * is imported, exported and imported again: parameters bit-identical; every exported tensor equals
 * the reference file's tensor of the same name, byte for byte; config.json agrees with the
 * reference config.json on every field both carry. Sharded exports write a valid index (total_size,
 * a weight_map naming the file that holds each tensor) and round-trip too; tied embeddings omit
 * lm_head; models Mixtral cannot express are refused naming the setting; existing directories are
 * replaced only when they hold an earlier export; a fault at any file-system call leaves either
 * no export or a complete one, and no temporary directory. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>

#include "ckpt_util.h"
#include "io/fsio.h"
#include "io/safetensors.h"

#ifndef MOE_TEST_REFERENCE_DIR
#error "MOE_TEST_REFERENCE_DIR must point at tests/reference"
#endif
#define REF MOE_TEST_REFERENCE_DIR "/mixtral"

typedef struct fixture {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model; /* the reference weights */
    moe_model_config cfg;
    char dir[512];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (moe_ctx_create(NULL, &f->ctx) != MOE_OK || moe_mesh_create(f->ctx, NULL, &f->mesh) != MOE_OK) return -1;
    moe_model_config_init(&f->cfg, sizeof f->cfg);
    if (moe_hf_read_config(REF, &f->cfg) != MOE_OK) return -1;
    if (moe_model_create(f->ctx, f->mesh, &f->cfg, &f->model) != MOE_OK) return -1;
    if (moe_model_import_hf(f->model, REF) != MOE_OK) return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(f->dir, sizeof f->dir, "%s/moe_hfx_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(f->dir)) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    ck_rmrf(f->dir);
    moe_model_destroy(f->model);
    moe_mesh_destroy(f->mesh);
    moe_ctx_destroy(f->ctx);
    free(f);
    return 0;
}

/* Import `dir` into a fresh model built from its own config.json; its parameters must equal `m`'s. */
static void assert_imports_equal(fixture *f, const moe_model *m, const char *dir)
{
    moe_model_config c;
    moe_model_config_init(&c, sizeof c);
    CK_ASSERT_OK(moe_hf_read_config(dir, &c));
    moe_model_config mc;
    moe_model_config_init(&mc, sizeof mc);
    CK_ASSERT_OK(moe_model_get_config(m, &mc));
    assert_memory_equal(&c, &mc, sizeof c);
    moe_model *x = NULL;
    CK_ASSERT_OK(moe_model_create(f->ctx, f->mesh, &c, &x));
    CK_ASSERT_OK(moe_model_import_hf(x, dir));
    assert_int_equal(x->params.total, m->params.total);
    assert_memory_equal(x->params.data, m->params.data, (size_t)m->params.total * sizeof(float));
    moe_model_destroy(x);
}

/* The set of tensors in the files of an export, with the file that holds each. */
typedef struct listing {
    int n;
    char name[256][128];
    char file[256][64];
    uint64_t bytes;
} listing;

static void list_file(fixture *f, const char *dir, const char *file, listing *l)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    moei_st_file *st = NULL;
    CK_ASSERT_OK(moei_st_open(f->ctx, path, &st));
    const char *fmt = moei_st_metadata_find(st, "format");
    assert_non_null(fmt);
    assert_string_equal(fmt, "pt");
    for (int64_t i = 0; i < moei_st_count(st); i++) {
        const moei_st_tensor *t = moei_st_at(st, i);
        assert_true(l->n < 256);
        snprintf(l->name[l->n], sizeof l->name[0], "%s", t->name);
        snprintf(l->file[l->n], sizeof l->file[0], "%s", file);
        assert_string_equal(t->dtype_name, "F32");
        l->bytes += t->nbytes;
        l->n++;
    }
    moei_st_close(st);
}

static void test_round_trip_single(void **state)
{
    fixture *f = *state;
    char out[1024];
    snprintf(out, sizeof out, "%s/single", f->dir);
    CK_ASSERT_OK(moe_model_export_hf(f->model, out, 0));
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    assert_false(ck_exists(path));
    assert_imports_equal(f, f->model, out);

    /* Every tensor equals the reference file's (written by transformers), same names, same count. */
    moei_st_file *ref = NULL, *got = NULL;
    CK_ASSERT_OK(moei_st_open(f->ctx, REF "/model.safetensors", &ref));
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    CK_ASSERT_OK(moei_st_open(f->ctx, path, &got));
    assert_int_equal(moei_st_count(got), moei_st_count(ref));
    for (int64_t i = 0; i < moei_st_count(ref); i++) {
        const moei_st_tensor *r = moei_st_at(ref, i);
        const moei_st_tensor *g = moei_st_find(got, r->name);
        if (!g) fail_msg("the export lacks '%s'", r->name);
        assert_string_equal(g->dtype_name, r->dtype_name);
        assert_int_equal(g->ndim, r->ndim);
        for (int32_t d = 0; d < r->ndim; d++) assert_int_equal(g->shape[d], r->shape[d]);
        assert_int_equal(g->nbytes, r->nbytes);
        assert_memory_equal(g->data, r->data, (size_t)r->nbytes);
    }
    assert_string_equal(moei_st_metadata_find(got, "format"), "pt");
    moei_st_close(ref);
    moei_st_close(got);

    /* config.json against the reference's own config.json */
    snprintf(path, sizeof path, "%s/config.json", out);
    char *text = ck_read_file(path, NULL);
    char *rtext = ck_read_file(REF "/config.json", NULL);
    cJSON *j = cJSON_Parse(text), *r = cJSON_Parse(rtext);
    free(text);
    free(rtext);
    assert_non_null(j);
    assert_non_null(r);
    assert_string_equal(cJSON_GetObjectItem(j, "model_type")->valuestring, "mixtral");
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "architectures"), 0)->valuestring,
                        "MixtralForCausalLM");
    assert_string_equal(cJSON_GetObjectItem(j, "torch_dtype")->valuestring, "float32");
    assert_string_equal(cJSON_GetObjectItem(j, "hidden_act")->valuestring, "silu");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "tie_word_embeddings")));
    assert_true(cJSON_GetObjectItem(j, "rope_theta")->valuedouble ==
                cJSON_GetObjectItem(cJSON_GetObjectItem(r, "rope_parameters"), "rope_theta")->valuedouble);
    const char *same[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                          "num_local_experts", "num_experts_per_tok", "rms_norm_eps", "router_aux_loss_coef",
                          "router_jitter_noise", "initializer_range", "attention_dropout", "dtype"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        cJSON *a = cJSON_GetObjectItem(j, same[i]), *b = cJSON_GetObjectItem(r, same[i]);
        if (!a || !b) fail_msg("config.json key '%s' missing", same[i]);
        if (cJSON_IsString(b)) assert_string_equal(a->valuestring, b->valuestring);
        else if (a->valuedouble != b->valuedouble)
            fail_msg("config.json '%s': %.17g, reference %.17g", same[i], a->valuedouble, b->valuedouble);
    }
    cJSON_Delete(j);
    cJSON_Delete(r);
}

static void test_round_trip_sharded(void **state)
{
    fixture *f = *state;
    char out[1024], path[4096];
    snprintf(out, sizeof out, "%s/sharded", f->dir);
    /* an earlier single-file export in the same place is replaced, its model.safetensors removed */
    CK_ASSERT_OK(moe_model_export_hf(f->model, out, 0));
    const uint64_t limit = 20000;
    CK_ASSERT_OK(moe_model_export_hf(f->model, out, limit));
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    assert_false(ck_exists(path));
    assert_int_equal(ck_count_entries(f->dir, "sharded.", 0), 0); /* no temporary or aside sibling */

    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    char *text = ck_read_file(path, NULL);
    assert_non_null(text);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_non_null(j);
    cJSON *map = cJSON_GetObjectItem(j, "weight_map");
    int files = ck_count_entries(out, "model-", 0);
    assert_true(files >= 3);
    listing *l = calloc(1, sizeof *l);
    for (int i = 1; i <= files; i++) {
        char name[64];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", i, files);
        uint64_t before = l->bytes;
        int n_before = l->n;
        list_file(f, out, name, l);
        /* a shard exceeds the limit only when it is one tensor larger than the limit */
        if (l->bytes - before > limit) assert_int_equal(l->n - n_before, 1);
    }
    assert_int_equal(cJSON_GetArraySize(map), l->n);
    for (int i = 0; i < l->n; i++) {
        cJSON *e = cJSON_GetObjectItem(map, l->name[i]);
        if (!e) fail_msg("weight_map lacks '%s'", l->name[i]);
        assert_string_equal(e->valuestring, l->file[i]);
    }
    cJSON *total = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size");
    assert_true((uint64_t)total->valuedouble == l->bytes);
    assert_int_equal(l->bytes, (uint64_t)f->model->params.total * sizeof(float));
    cJSON_Delete(j);
    free(l);
    assert_imports_equal(f, f->model, out);
    /* one tensor per shard at the smallest limit */
    CK_ASSERT_OK(moe_model_export_hf(f->model, out, 1));
    assert_imports_equal(f, f->model, out);
}

/* A trained model with tied embeddings and its own sizes: no lm_head in the files, still exact. */
static void test_tied_trained(void **state)
{
    fixture *f = *state;
    moe_model_config c;
    ck_tiny_config(&c);
    c.tie_embeddings = 1;
    c.moe_z_loss_coef = 0.0f; /* Mixtral has no z-loss: the import sets it to 0 */
    c.ffn_hidden = c.moe_expert_hidden;
    c.moe_jitter = 0.0f;
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    ck_run r;
    ck_run_create(&r, &c, &oc, 21);
    ck_train_step(&r, 1);
    ck_train_step(&r, 2);
    char out[1024], path[4096];
    snprintf(out, sizeof out, "%s/tied", f->dir);
    CK_ASSERT_OK(moe_model_export_hf(r.model, out, 0));
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    moei_st_file *st = NULL;
    CK_ASSERT_OK(moei_st_open(f->ctx, path, &st));
    assert_null(moei_st_find(st, "lm_head.weight"));
    assert_non_null(moei_st_find(st, "model.layers.1.block_sparse_moe.experts.3.w2.weight"));
    moei_st_close(st);
    snprintf(path, sizeof path, "%s/config.json", out);
    char *text = ck_read_file(path, NULL);
    cJSON *j = cJSON_Parse(text);
    free(text);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "tie_word_embeddings")));
    cJSON_Delete(j);
    assert_imports_equal(f, r.model, out);
    ck_run_destroy(&r);
}

static void test_not_mixtral(void **state)
{
    fixture *f = *state;
    char out[1024];
    snprintf(out, sizeof out, "%s/never", f->dir);
    const struct {
        const char *field;
        int which;
    } cases[] = {{"position", 0},        {"norm", 1},       {"moe_activation", 2}, {"moe_shared_expert_hidden", 3},
                 {"moe_first_dense", 4}, {"moe_layer_freq", 5}, {"moe_score_function", 6}, {"moe_router", 7},
                 {"moe_renormalize", 8}, {"moe_num_experts", 9}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        moe_model_config c;
        ck_tiny_config(&c);
        switch (cases[i].which) {
        case 0: c.position = MOE_POSITION_ALIBI; break;
        case 1: c.norm = MOE_NORM_LAYERNORM; break;
        case 2: c.moe_activation = MOE_ACTIVATION_GELU; break;
        case 3: c.moe_shared_expert_hidden = 4; break;
        case 4: c.moe_first_dense = 1; break;
        case 5: c.moe_layer_freq = 2; break;
        case 6: c.moe_score_function = MOE_SCORE_SIGMOID; break;
        case 7: c.moe_router = MOE_ROUTER_EXPERT_CHOICE; c.moe_capacity_factor = 1.0f; break;
        case 8: c.moe_renormalize = 0; break;
        default: c.moe_num_experts = 0; break;
        }
        ck_run r;
        ck_run_create(&r, &c, NULL, 1);
        char needle[96];
        snprintf(needle, sizeof needle, "moe_model_config.%s", cases[i].field);
        CK_ASSERT_FAILS(moe_model_export_hf(r.model, out, 0), MOE_ERR_UNSUPPORTED, needle);
        ck_run_destroy(&r);
    }
    /* an expert selection bias in use has no Mixtral counterpart */
    moe_model_config c;
    ck_tiny_config(&c);
    c.moe_bias_update_rate = 0.1f;
    ck_run r;
    ck_run_create(&r, &c, NULL, 1);
    CK_ASSERT_OK(moe_model_export_hf(r.model, out, 0)); /* rate set, bias still zero: exact */
    ck_rmrf(out);
    r.model->blocks[1].moe.bias[2] = 0.25f;
    CK_ASSERT_FAILS(moe_model_export_hf(r.model, out, 0), MOE_ERR_UNSUPPORTED, "moe_bias_update_rate");
    ck_run_destroy(&r);
    assert_false(ck_exists(out));
    assert_int_equal(ck_count_entries(f->dir, "never", 0), 0);
}

static void test_existing_and_args(void **state)
{
    fixture *f = *state;
    char out[1024], path[4096];
    snprintf(out, sizeof out, "%s/busy", f->dir);
    mkdir(out, 0755);
    snprintf(path, sizeof path, "%s/notes.txt", out);
    ck_write_file(path, "mine", 4);
    CK_ASSERT_FAILS(moe_model_export_hf(f->model, out, 0), MOE_ERR_INVALID_ARG, "notes.txt");
    assert_true(ck_exists(path));
    assert_int_equal(ck_count_entries(out, "", 0), 1);
    unlink(path);
    CK_ASSERT_OK(moe_model_export_hf(f->model, out, 0)); /* empty: replaced */
    assert_imports_equal(f, f->model, out);
    snprintf(path, sizeof path, "%s/plainfile", f->dir);
    ck_write_file(path, "x", 1);
    CK_ASSERT_FAILS(moe_model_export_hf(f->model, path, 0), MOE_ERR_INVALID_ARG, "not a directory");
    CK_ASSERT_FAILS(moe_model_export_hf(NULL, out, 0), MOE_ERR_INVALID_ARG, "'model'");
    CK_ASSERT_FAILS(moe_model_export_hf(f->model, NULL, 0), MOE_ERR_INVALID_ARG, "'out_dir'");
    CK_ASSERT_FAILS(moe_model_export_hf(f->model, "", 0), MOE_ERR_INVALID_ARG, "'out_dir'");
    snprintf(path, sizeof path, "%s/no/parent", f->dir);
    CK_ASSERT_FAILS(moe_model_export_hf(f->model, path, 0), MOE_ERR_IO, "mkdir");
}

/* Every file-system call failed once: no export, or a complete one; never a temporary sibling. */
static void test_faults(void **state)
{
    fixture *f = *state;
    char out[1024];
    snprintf(out, sizeof out, "%s/faulty", f->dir);
    for (int64_t k = 1;; k++) {
        moei_fs_fail_nth(k, EIO);
        moe_status st = moe_model_export_hf(f->model, out, 30000);
        uint64_t calls = moei_fs_call_count();
        moei_fs_reset_faults();
        if (st == MOE_OK && (uint64_t)k > calls) {
            assert_imports_equal(f, f->model, out);
            break; /* k passed the last call: a clean export */
        }
        if (st != MOE_OK) {
            assert_int_equal(st, MOE_ERR_IO);
            assert_non_null(strstr(moe_last_error(), "Input/output error"));
        }
        if (ck_exists(out)) assert_imports_equal(f, f->model, out);
        assert_int_equal(ck_count_entries(f->dir, "faulty.", 0), 0);
        ck_rmrf(out);
        assert_true(k < 1000);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_single), cmocka_unit_test(test_round_trip_sharded),
        cmocka_unit_test(test_tied_trained),      cmocka_unit_test(test_not_mixtral),
        cmocka_unit_test(test_existing_and_args), cmocka_unit_test(test_faults),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
