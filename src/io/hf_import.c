/* Mixtral import: config.json → moe_model_config, and safetensors (one file or an index with
 * shards, classic or fused expert layout) → the model's parameters, every shape checked. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "moe/hf.h"
#include "nn/model.h"

#define HF_JSON_MAX (64u << 20) /* config.json and index files are small; refuse anything absurd */
#define HF_MAX_SHARDS 4096

int32_t moei_read_text_file(struct moe_ctx *ctx, const char *path, uint64_t max_bytes, char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return moei_fail(ctx, MOE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory reading '%s'", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + len, 1, 4096, f);
        len += got;
        if (len > max_bytes) {
            free(buf);
            fclose(f);
            return moei_fail(ctx, MOE_ERR_FORMAT, "'%s' is larger than %llu bytes", path, (unsigned long long)max_bytes);
        }
        if (got < 4096) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return moei_fail(ctx, MOE_ERR_IO, "error reading '%s'", path);
    }
    buf[len] = '\0';
    *out = buf;
    return MOE_OK;
}

static const char *const attn_hf[4][2] = {{"wq", "q_proj"}, {"wk", "k_proj"}, {"wv", "v_proj"}, {"wo", "o_proj"}};
static const char *const mlp_hf[3][2] = {{"w1", "gate_proj"}, {"w3", "up_proj"}, {"w2", "down_proj"}};

int moei_hf_classic_name(const char *ours, int32_t expert, char *out, size_t cap)
{
    int layer = -1, n = 0;
    char part[32] = "", rest[32] = "";
    int w;
    if (strcmp(ours, "embed.weight") == 0) w = snprintf(out, cap, "model.embed_tokens.weight");
    else if (strcmp(ours, "final_norm.weight") == 0) w = snprintf(out, cap, "model.norm.weight");
    else if (strcmp(ours, "lm_head.weight") == 0) w = snprintf(out, cap, "lm_head.weight");
    else if (sscanf(ours, "layers.%d.%31[^.].%31s%n", &layer, part, rest, &n) == 3 && ours[n] == '\0' && layer >= 0) {
        if (strcmp(part, "attn_norm") == 0 && strcmp(rest, "weight") == 0)
            w = snprintf(out, cap, "model.layers.%d.input_layernorm.weight", layer);
        else if (strcmp(part, "ffn_norm") == 0 && strcmp(rest, "weight") == 0)
            w = snprintf(out, cap, "model.layers.%d.post_attention_layernorm.weight", layer);
        else if (strcmp(part, "attn") == 0) {
            w = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(rest, attn_hf[i][0]) == 0)
                    w = snprintf(out, cap, "model.layers.%d.self_attn.%s.weight", layer, attn_hf[i][1]);
        } else if (strcmp(part, "mlp") == 0) {
            w = -1;
            for (int i = 0; i < 3; i++)
                if (strcmp(rest, mlp_hf[i][0]) == 0)
                    w = snprintf(out, cap, "model.layers.%d.mlp.%s.weight", layer, mlp_hf[i][1]);
        } else if (strcmp(part, "moe") == 0 && strcmp(rest, "router") == 0)
            w = snprintf(out, cap, "model.layers.%d.block_sparse_moe.gate.weight", layer);
        else if (strcmp(part, "moe") == 0 && strncmp(rest, "experts.w", 9) == 0 && strlen(rest) == 10 &&
                 (rest[9] == '1' || rest[9] == '2' || rest[9] == '3'))
            w = snprintf(out, cap, "model.layers.%d.block_sparse_moe.experts.%d.w%c.weight", layer, (int)expert, rest[9]);
        else
            w = -1;
    } else
        w = -1;
    return w > 0 && (size_t)w < cap;
}

/* ---- config.json ------------------------------------------------------------------------------ */

static moe_status json_int(cJSON *root, const char *key, int required, int32_t *out, const char *path)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return moei_fail(NULL, MOE_ERR_FORMAT, "%s: missing field \"%s\"", path, key);
        return MOE_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 0 ||
        v->valuedouble > 2147483647.0)
        return moei_fail(NULL, MOE_ERR_FORMAT, "%s: field \"%s\" is not a non-negative integer", path, key);
    *out = (int32_t)v->valuedouble;
    return MOE_OK;
}

static moe_status json_float(cJSON *root, const char *key, int required, float *out, const char *path)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (required) return moei_fail(NULL, MOE_ERR_FORMAT, "%s: missing field \"%s\"", path, key);
        return MOE_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return moei_fail(NULL, MOE_ERR_FORMAT, "%s: field \"%s\" is not a finite number", path, key);
    *out = (float)v->valuedouble;
    return MOE_OK;
}

MOE_API moe_status moe_hf_read_config(const char *dir, moe_model_config *cfg)
{
    static const char *fn = "moe_hf_read_config";
    MOEI_CHECK_NOT_NULL(NULL, dir, fn);
    MOEI_CHECK_NOT_NULL(NULL, cfg, fn);
    if (cfg->struct_size < sizeof(uint32_t))
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: cfg->struct_size = %u; call moe_model_config_init first", fn,
                         (unsigned)cfg->struct_size);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: path too long", fn);
    char *text = NULL;
    moe_status st = moei_read_text_file(NULL, path, HF_JSON_MAX, &text);
    if (st != MOE_OK) return st;
    cJSON *root = cJSON_Parse(text);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moei_fail(NULL, MOE_ERR_FORMAT, "%s: not a JSON object", path);
    }
    /* Work on a full-size copy, then hand back only the caller's struct_size bytes. */
    moe_model_config c;
    moe_model_config_init(&c, sizeof c);
    memcpy(&c, cfg, cfg->struct_size < sizeof c ? cfg->struct_size : sizeof c);
    c.struct_size = sizeof c;
    cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "mixtral") != 0)
        st = moei_fail(NULL, MOE_ERR_FORMAT, "%s: model_type is not \"mixtral\"", path);
    int32_t head_dim = 0;
    if (st == MOE_OK) st = json_int(root, "vocab_size", 1, &c.vocab_size, path);
    if (st == MOE_OK) st = json_int(root, "hidden_size", 1, &c.d_model, path);
    if (st == MOE_OK) st = json_int(root, "intermediate_size", 1, &c.moe_expert_hidden, path);
    if (st == MOE_OK) st = json_int(root, "num_hidden_layers", 1, &c.num_layers, path);
    if (st == MOE_OK) st = json_int(root, "num_attention_heads", 1, &c.num_heads, path);
    if (st == MOE_OK) c.num_kv_heads = c.num_heads;
    if (st == MOE_OK) st = json_int(root, "num_key_value_heads", 0, &c.num_kv_heads, path);
    if (st == MOE_OK) st = json_int(root, "head_dim", 0, &head_dim, path);
    if (st == MOE_OK) st = json_int(root, "max_position_embeddings", 1, &c.max_seq_len, path);
    if (st == MOE_OK) st = json_int(root, "num_local_experts", 1, &c.moe_num_experts, path);
    if (st == MOE_OK) st = json_int(root, "num_experts_per_tok", 1, &c.moe_top_k, path);
    if (st == MOE_OK) st = json_float(root, "rms_norm_eps", 1, &c.norm_eps, path);
    if (st == MOE_OK) st = json_float(root, "initializer_range", 0, &c.init_std, path);
    if (st == MOE_OK) st = json_float(root, "router_aux_loss_coef", 0, &c.moe_aux_loss_coef, path);
    /* rope_theta sits at the top level in older configs and under rope_parameters in newer ones */
    if (st == MOE_OK) st = json_float(root, "rope_theta", 0, &c.rope_theta, path);
    cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (st == MOE_OK && cJSON_IsObject(rp)) st = json_float(rp, "rope_theta", 0, &c.rope_theta, path);
    cJSON *tie = cJSON_GetObjectItemCaseSensitive(root, "tie_word_embeddings");
    if (st == MOE_OK && tie && !cJSON_IsNull(tie)) {
        if (!cJSON_IsBool(tie)) st = moei_fail(NULL, MOE_ERR_FORMAT, "%s: tie_word_embeddings is not a boolean", path);
        c.tie_embeddings = cJSON_IsTrue(tie) ? 1 : 0;
    }
    cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (st == MOE_OK && act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        st = moei_fail(NULL, MOE_ERR_FORMAT, "%s: hidden_act must be \"silu\" for Mixtral", path);
    cJSON_Delete(root);
    if (st != MOE_OK) return st;
    c.head_dim = head_dim;
    c.position = MOE_POSITION_ROPE;
    c.norm = MOE_NORM_RMSNORM;
    c.ffn_hidden = c.moe_expert_hidden;
    c.ffn_activation = MOE_ACTIVATION_SWIGLU;
    c.moe_activation = MOE_ACTIVATION_SWIGLU;
    c.moe_layer_freq = 1;
    c.moe_first_dense = 0;
    c.moe_shared_expert_hidden = 0;
    c.moe_router = MOE_ROUTER_TOKEN_CHOICE;
    c.moe_score_function = MOE_SCORE_SOFTMAX;
    c.moe_renormalize = 1;
    c.moe_capacity_factor = 0.0f;
    c.moe_z_loss_coef = 0.0f;
    st = moe_model_config_validate(&c);
    if (st != MOE_OK) return moei_fail(NULL, MOE_ERR_FORMAT, "%s: %s", path, moe_last_error());
    uint32_t size = cfg->struct_size;
    memcpy(cfg, &c, size < sizeof c ? size : sizeof c);
    cfg->struct_size = size;
    return MOE_OK;
}

/* ---- weights ---------------------------------------------------------------------------------- */

typedef struct hf_source {
    moe_ctx *ctx;
    char dir[4096];
    cJSON *index;          /* weight_map of a sharded checkpoint, or NULL */
    int32_t nfiles;
    char *names[HF_MAX_SHARDS];
    moei_st_file *files[HF_MAX_SHARDS];
} hf_source;

static void source_close(hf_source *s)
{
    for (int32_t i = 0; i < s->nfiles; i++) {
        moei_st_close(s->files[i]);
        free(s->names[i]);
    }
    cJSON_Delete(s->index);
}

static moe_status source_open_file(hf_source *s, const char *file, moei_st_file **out)
{
    for (int32_t i = 0; i < s->nfiles; i++)
        if (strcmp(s->names[i], file) == 0) {
            *out = s->files[i];
            return MOE_OK;
        }
    if (s->nfiles == HF_MAX_SHARDS) return moei_fail(s->ctx, MOE_ERR_FORMAT, "more than %d shard files", HF_MAX_SHARDS);
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", s->dir, file);
    moei_st_file *f = NULL;
    moe_status st = moei_st_open(s->ctx, path, &f);
    if (st != MOE_OK) return st;
    s->names[s->nfiles] = strdup(file);
    if (!s->names[s->nfiles]) {
        moei_st_close(f);
        return moei_fail(s->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    s->files[s->nfiles++] = f;
    *out = f;
    return MOE_OK;
}

static moe_status source_open(hf_source *s, moe_ctx *ctx, const char *dir)
{
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    if (snprintf(s->dir, sizeof s->dir, "%s", dir) >= (int)sizeof s->dir)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "checkpoint path too long");
    char path[8192];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    char *text = NULL;
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        moei_st_file *f = NULL;
        return source_open_file(s, "model.safetensors", &f);
    }
    fclose(probe);
    moe_status st = moei_read_text_file(ctx, path, HF_JSON_MAX, &text);
    if (st != MOE_OK) return st;
    cJSON *root = cJSON_Parse(text);
    free(text);
    cJSON *map = root ? cJSON_DetachItemFromObjectCaseSensitive(root, "weight_map") : NULL;
    cJSON_Delete(root);
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(map);
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: no \"weight_map\" object", path);
    }
    for (cJSON *e = map->child; e; e = e->next) {
        /* shard names must stay inside the checkpoint directory */
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || strcmp(e->valuestring, "..") == 0 ||
            e->valuestring[0] == '\0') {
            moe_status bad = moei_fail(ctx, MOE_ERR_FORMAT,
                                      "%s: weight_map entry \"%s\" is not a file name in the directory", path,
                                      e->string ? e->string : "");
            cJSON_Delete(map); /* after the message: it names the entry */
            return bad;
        }
    }
    s->index = map;
    return MOE_OK;
}

/* The tensor named `name`, or NULL (no error recorded) when the checkpoint lacks it. */
static moe_status source_find(hf_source *s, const char *name, const moei_st_tensor **out)
{
    *out = NULL;
    moei_st_file *f = NULL;
    if (s->index) {
        cJSON *e = cJSON_GetObjectItemCaseSensitive(s->index, name);
        if (!e) return MOE_OK;
        moe_status st = source_open_file(s, e->valuestring, &f);
        if (st != MOE_OK) return st;
    } else {
        f = s->files[0];
    }
    *out = moei_st_find(f, name);
    if (s->index && !*out)
        return moei_fail(s->ctx, MOE_ERR_FORMAT, "the index maps '%s' to a shard that does not hold it", name);
    return MOE_OK;
}

static moe_status check_shape(moe_ctx *ctx, const moei_st_tensor *t, int32_t ndim, const int64_t *shape)
{
    int ok = t->ndim == ndim;
    for (int32_t d = 0; ok && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (ok) return MOE_OK;
    char want[128] = "", got[128] = "";
    for (int32_t d = 0; d < ndim; d++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", d ? "," : "", (long long)shape[d]);
    for (int32_t d = 0; d < t->ndim; d++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? "," : "", (long long)t->shape[d]);
    return moei_fail(ctx, MOE_ERR_FORMAT, "tensor '%s' has shape [%s], the model needs [%s]", t->name, got, want);
}

static moe_status load_experts_fused(hf_source *s, moei_params *p, int32_t idx, int layer, char which)
{
    const moei_param *e = &p->entries[idx];
    const int64_t E = e->shape[0], rows = e->shape[1], cols = e->shape[2];
    char name[256];
    const moei_st_tensor *t = NULL;
    int64_t shape[3];
    int64_t row_offset = 0;
    if (which == '2') {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.down_proj", layer);
        shape[0] = E, shape[1] = rows, shape[2] = cols;
    } else {
        snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj", layer);
        shape[0] = E, shape[1] = 2 * rows, shape[2] = cols;
        row_offset = which == '3' ? rows : 0; /* [gate | up] along the rows */
    }
    moe_status st = source_find(s, name, &t);
    if (st != MOE_OK) return st;
    if (!t) return moei_fail(s->ctx, MOE_ERR_FORMAT, "checkpoint has no tensor '%s' (nor the classic per-expert layout)", name);
    st = check_shape(s->ctx, t, 3, shape);
    for (int64_t x = 0; st == MOE_OK && x < E; x++)
        st = moei_st_read_f32(s->ctx, t, (x * shape[1] + row_offset) * cols, rows * cols,
                              moei_param_data(p, idx) + x * rows * cols);
    return st;
}

static moe_status load_param(hf_source *s, moe_model *m, int32_t idx)
{
    moei_params *p = &m->params;
    const moei_param *e = &p->entries[idx];
    char name[256];
    const moei_st_tensor *t = NULL;
    int layer = -1;
    char which = 0;
    int is_expert = sscanf(e->name, "layers.%d.moe.experts.w%c", &layer, &which) == 2;
    if (!is_expert) {
        if (!moei_hf_classic_name(e->name, 0, name, sizeof name))
            return moei_fail(s->ctx, MOE_ERR_UNSUPPORTED, "tensor '%s' has no Mixtral counterpart", e->name);
        moe_status st = source_find(s, name, &t);
        if (st != MOE_OK) return st;
        if (!t && strstr(name, ".block_sparse_moe.gate.weight")) { /* fused layout names the router mlp.gate */
            snprintf(name, sizeof name, "model.layers.%d.mlp.gate.weight", layer >= 0 ? layer : atoi(e->name + 7));
            st = source_find(s, name, &t);
            if (st != MOE_OK) return st;
        }
        if (!t) return moei_fail(s->ctx, MOE_ERR_FORMAT, "checkpoint has no tensor '%s'", name);
        st = check_shape(s->ctx, t, e->ndim, e->shape);
        if (st == MOE_OK) st = moei_st_read_f32(s->ctx, t, 0, e->numel, moei_param_data(p, idx));
        return st;
    }
    const int64_t E = e->shape[0], per = e->numel / E;
    moei_hf_classic_name(e->name, 0, name, sizeof name);
    moe_status st = source_find(s, name, &t);
    if (st != MOE_OK) return st;
    if (!t) return load_experts_fused(s, p, idx, layer, which);
    for (int64_t x = 0; x < E; x++) {
        moei_hf_classic_name(e->name, (int32_t)x, name, sizeof name);
        st = source_find(s, name, &t);
        if (st != MOE_OK) return st;
        if (!t) return moei_fail(s->ctx, MOE_ERR_FORMAT, "checkpoint has no tensor '%s'", name);
        st = check_shape(s->ctx, t, 2, e->shape + 1);
        if (st == MOE_OK) st = moei_st_read_f32(s->ctx, t, 0, per, moei_param_data(p, idx) + x * per);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

MOE_API moe_status moe_model_import_hf(moe_model *model, const char *dir)
{
    static const char *fn = "moe_model_import_hf";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, dir, fn);
    for (int32_t i = 0; i < model->params.count; i++) {
        const moei_param *e = &model->params.entries[i];
        int64_t full = 1;
        for (int32_t d = 0; d < e->ndim; d++) full *= e->full_shape[d];
        if (full != e->numel)
            return moei_fail(model->ctx, MOE_ERR_UNSUPPORTED,
                             "%s: '%s' is split over ranks; import on one rank, then save a checkpoint and load it on the mesh",
                             fn, e->name);
    }
    hf_source s;
    moe_status st = source_open(&s, model->ctx, dir);
    for (int32_t i = 0; st == MOE_OK && i < model->params.count; i++) st = load_param(&s, model, i);
    source_close(&s);
    return st;
}
