/* Hugging Face Mixtral export: config.json + safetensors under HF names (classic per-expert
 * layout), sharded with model.safetensors.index.json above a size, written into a temporary
 * sibling directory and renamed into place. Only what Mixtral can express is exported, so that
 * from_pretrained computes what this model computes. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/ctx.h"
#include "core/device.h"
#include "core/error.h"
#include "io/checkpoint_fs.h"
#include "io/checkpoint_index.h"
#include "io/fsio.h"
#include "io/hf.h"
#include "io/safetensors.h"
#include "moe/checkpoint.h"
#include "nn/model.h"

#define EX_PATH_CAP 4096
#define EX_NAME_CAP 256

typedef struct ex_tensor {
    char name[EX_NAME_CAP];
    int32_t ndim;
    int64_t shape[2];
    const float *data;
    uint64_t nbytes;
    int32_t shard;
} ex_tensor;

/* The config settings Mixtral has no counterpart for; the message names the field. */
static moe_status check_mixtral(const moe_model *m, const char *fn)
{
    const moe_model_config *c = &m->cfg;
    const char *field = NULL, *why = NULL;
    if (c->position != MOE_POSITION_ROPE) field = "position", why = "Mixtral uses RoPE";
    else if (c->norm != MOE_NORM_RMSNORM) field = "norm", why = "Mixtral uses RMSNorm";
    else if (c->moe_num_experts < 1) field = "moe_num_experts", why = "Mixtral layers are all MoE";
    else if (c->moe_first_dense != 0) field = "moe_first_dense", why = "Mixtral has no dense layers";
    else if (c->moe_layer_freq != 1) field = "moe_layer_freq", why = "Mixtral layers are all MoE";
    else if (c->moe_activation != MOE_ACTIVATION_SWIGLU) field = "moe_activation", why = "Mixtral experts are SwiGLU";
    else if (c->moe_shared_expert_hidden != 0) field = "moe_shared_expert_hidden", why = "Mixtral has no shared expert";
    else if (c->moe_router != MOE_ROUTER_TOKEN_CHOICE) field = "moe_router", why = "Mixtral routes by token choice";
    else if (c->moe_score_function != MOE_SCORE_SOFTMAX) field = "moe_score_function", why = "Mixtral scores by softmax";
    else if (c->moe_renormalize != 1) field = "moe_renormalize", why = "Mixtral renormalises the top-k weights";
    if (!field) {
        for (int32_t l = 0; !field && l < c->num_layers; l++) {
            const moei_moe *mo = &m->blocks[l].moe;
            for (int32_t e = 0; m->blocks[l].is_moe && e < mo->s.num_experts; e++)
                if (mo->bias[e] != 0.0f) {
                    field = "moe_bias_update_rate";
                    why = "the expert selection bias learnt by aux-loss-free balancing has no Mixtral counterpart";
                    break;
                }
        }
    }
    if (field)
        return moei_fail(m->ctx, MOE_ERR_UNSUPPORTED, "%s: the model is not Mixtral-compatible: moe_model_config.%s (%s)",
                         fn, field, why);
    return MOE_OK;
}

static int add_num(cJSON *o, const char *key, double v)
{
    cJSON *it = cJSON_CreateNumber(v);
    return it && cJSON_AddItemToObject(o, key, it);
}

static int add_float(cJSON *o, const char *key, float v)
{
    char b[48];
    moei_ckpt_format_float(v, b, sizeof b);
    cJSON *it = cJSON_CreateRaw(b);
    return it && cJSON_AddItemToObject(o, key, it);
}

static int add_str(cJSON *o, const char *key, const char *v)
{
    cJSON *it = cJSON_CreateString(v);
    return it && cJSON_AddItemToObject(o, key, it);
}

static int add_item(cJSON *o, const char *key, cJSON *it)
{
    if (it && cJSON_AddItemToObject(o, key, it)) return 1;
    cJSON_Delete(it);
    return 0;
}

/* config.json as transformers' MixtralConfig reads it (v4 and v5 spellings where they differ). */
static char *config_json(const moe_model *m)
{
    const moe_model_config *c = &m->cfg;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON *arch = cJSON_CreateArray();
    cJSON *an = cJSON_CreateString("MixtralForCausalLM");
    int ok = arch && an && cJSON_AddItemToArray(arch, an);
    if (!ok) cJSON_Delete(an);
    ok = add_item(o, "architectures", arch) && ok;
    ok = ok && add_str(o, "model_type", "mixtral");
    ok = ok && add_num(o, "vocab_size", c->vocab_size);
    ok = ok && add_num(o, "hidden_size", c->d_model);
    ok = ok && add_num(o, "intermediate_size", c->moe_expert_hidden);
    ok = ok && add_num(o, "num_hidden_layers", c->num_layers);
    ok = ok && add_num(o, "num_attention_heads", c->num_heads);
    ok = ok && add_num(o, "num_key_value_heads", c->num_kv_heads);
    ok = ok && add_num(o, "head_dim", m->head_dim);
    ok = ok && add_str(o, "hidden_act", "silu");
    ok = ok && add_num(o, "max_position_embeddings", c->max_seq_len);
    ok = ok && add_float(o, "initializer_range", c->init_std);
    ok = ok && add_float(o, "rms_norm_eps", c->norm_eps);
    ok = ok && add_item(o, "use_cache", cJSON_CreateTrue());
    ok = ok && add_float(o, "rope_theta", c->rope_theta);
    cJSON *rp = cJSON_CreateObject();
    ok = ok && rp && add_float(rp, "rope_theta", c->rope_theta) && add_str(rp, "rope_type", "default");
    ok = add_item(o, "rope_parameters", rp) && ok;
    ok = ok && add_item(o, "sliding_window", cJSON_CreateNull());
    ok = ok && add_num(o, "attention_dropout", 0.0);
    ok = ok && add_num(o, "num_experts_per_tok", c->moe_top_k);
    ok = ok && add_num(o, "num_local_experts", c->moe_num_experts);
    ok = ok && add_item(o, "output_router_logits", cJSON_CreateFalse());
    ok = ok && add_float(o, "router_aux_loss_coef", c->moe_aux_loss_coef);
    ok = ok && add_float(o, "router_jitter_noise", c->moe_jitter);
    ok = ok && add_item(o, "tie_word_embeddings", c->tie_embeddings ? cJSON_CreateTrue() : cJSON_CreateFalse());
    ok = ok && add_str(o, "torch_dtype", "float32");
    ok = ok && add_str(o, "dtype", "float32");
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    return text;
}

static int cmp_ptr_name(const void *a, const void *b)
{
    return strcmp((*(const ex_tensor *const *)a)->name, (*(const ex_tensor *const *)b)->name);
}

static char *index_json(ex_tensor *t, int64_t n, int32_t nshards)
{
    ex_tensor **ord = malloc((size_t)(n ? n : 1) * sizeof *ord);
    cJSON *o = cJSON_CreateObject(), *meta = cJSON_CreateObject(), *map = cJSON_CreateObject();
    int ok = ord && o && meta && map;
    uint64_t total = 0;
    for (int64_t i = 0; ok && i < n; i++) {
        ord[i] = &t[i];
        total += t[i].nbytes;
    }
    if (ok) qsort(ord, (size_t)n, sizeof *ord, cmp_ptr_name);
    char b[64];
    snprintf(b, sizeof b, "%llu", (unsigned long long)total);
    ok = ok && add_item(meta, "total_size", cJSON_CreateRaw(b));
    for (int64_t i = 0; ok && i < n; i++) {
        snprintf(b, sizeof b, "model-%05d-of-%05d.safetensors", (int)ord[i]->shard + 1, (int)nshards);
        ok = add_str(map, ord[i]->name, b);
    }
    if (o) {
        ok = add_item(o, "metadata", meta) && ok;
        ok = add_item(o, "weight_map", map) && ok;
    } else {
        cJSON_Delete(meta);
        cJSON_Delete(map);
    }
    char *text = ok ? cJSON_Print(o) : NULL;
    cJSON_Delete(o);
    free(ord);
    return text;
}

/* Names an earlier export leaves in its directory. */
static int is_export_file(const char *name)
{
    if (!strcmp(name, "config.json") || !strcmp(name, "generation_config.json") || !strcmp(name, "model.safetensors") ||
        !strcmp(name, "model.safetensors.index.json"))
        return 1;
    /* model-DDDDD-of-DDDDD.safetensors */
    static const char pattern[] = "model-#####-of-#####.safetensors";
    if (strlen(name) != sizeof pattern - 1) return 0;
    for (size_t i = 0; pattern[i]; i++)
        if (pattern[i] == '#' ? !(name[i] >= '0' && name[i] <= '9') : name[i] != pattern[i]) return 0;
    return 1;
}

static moe_status io_fail(moe_ctx *ctx, const char *fn, const char *call, const char *path)
{
    int err = errno;
    return moei_fail(ctx, MOE_ERR_IO, "%s: %s of '%.300s' failed: %s", fn, call, path, strerror(err));
}

/* Remove "<base>.tmp-<pid>" and "<base>.old-<pid>" siblings left by exports that died. */
static void cleanup_siblings(const char *out)
{
    char parent[EX_PATH_CAP];
    const char *slash = strrchr(out, '/');
    const char *base = slash ? slash + 1 : out;
    if (slash == out) snprintf(parent, sizeof parent, "/");
    else if (slash) snprintf(parent, sizeof parent, "%.*s", (int)(slash - out), out);
    else snprintf(parent, sizeof parent, ".");
    char **names = NULL;
    size_t n = 0;
    if (moei_ckpt_list_dir(parent, &names, &n) != 0) return;
    size_t bl = strlen(base);
    char path[EX_PATH_CAP];
    for (size_t i = 0; i < n; i++) {
        const char *nm = names[i];
        if (strncmp(nm, base, bl) != 0 || (strncmp(nm + bl, ".tmp-", 5) != 0 && strncmp(nm + bl, ".old-", 5) != 0))
            continue;
        char *end = NULL;
        long pid = strtol(nm + bl + 5, &end, 10);
        if (!end || *end != '\0' || pid <= 0 || (pid != (long)getpid() && moei_ckpt_pid_alive(pid))) continue;
        if (moei_ckpt_join(path, sizeof path, parent, nm) == 0) (void)moei_ckpt_remove_tree(path);
    }
    moei_ckpt_free_names(names, n);
}

MOE_API moe_status moe_model_export_hf(const moe_model *model, const char *out_dir, uint64_t max_shard_bytes)
{
    static const char *fn = "moe_model_export_hf";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, out_dir, fn);
    for (int32_t i = 0; i < model->params.count; i++) {
        const moei_param *e = &model->params.entries[i];
        int64_t full = 1;
        for (int32_t d = 0; d < e->ndim; d++) full *= e->full_shape[d];
        if (full != e->numel)
            return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                             "%s: '%s' is split over ranks; load the checkpoint on one rank to export", fn, e->name);
    }
    if (model->pipe)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s: the model is split over pipeline stages; export on one rank", fn);
    char out[EX_PATH_CAP];
    size_t ol = strlen(out_dir);
    while (ol > 1 && out_dir[ol - 1] == '/') ol--;
    if (ol == 0 || ol > EX_PATH_CAP - 128)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'out_dir' is empty or longer than %d bytes", fn,
                         EX_PATH_CAP - 128);
    memcpy(out, out_dir, ol);
    out[ol] = '\0';
    moe_status st = check_mixtral(model, fn);
    if (st != MOE_OK) return st;

    /* An existing out_dir is replaced only when it is empty or an earlier export. */
    int replace = 0;
    if (moei_ckpt_is_dir(out)) {
        char **names = NULL;
        size_t n = 0;
        if (moei_ckpt_list_dir(out, &names, &n) != 0) return io_fail(ctx, fn, "listing", out);
        for (size_t i = 0; i < n && st == MOE_OK; i++)
            if (!is_export_file(names[i]))
                st = moei_fail(ctx, MOE_ERR_INVALID_ARG,
                               "%s: out_dir '%.300s' exists and holds '%.100s', which an export does not write; "
                               "choose another directory", fn, out, names[i]);
        moei_ckpt_free_names(names, n);
        if (st != MOE_OK) return st;
        replace = 1;
    } else if (access(out, F_OK) == 0) {
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: out_dir '%.300s' exists and is not a directory", fn, out);
    }

    const moei_params *p = &model->params;
    const float *host = p->data;
    float *staged = NULL;
    uint64_t bytes = (uint64_t)p->total * sizeof(float);
    if (ctx->device_type != MOE_DEVICE_CPU) {
        staged = malloc(bytes ? (size_t)bytes : 1);
        if (!staged) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        st = moei_device_copy_d2h(ctx, staged, p->data, (size_t)bytes);
        if (st != MOE_OK) {
            free(staged);
            return st;
        }
        host = staged;
    }

    /* Every HF tensor: one per parameter, one per expert for expert weights [E, out, in]. */
    int64_t n = 0;
    for (int32_t i = 0; i < p->count; i++)
        n += strstr(p->entries[i].name, ".moe.experts.") ? p->entries[i].shape[0] : 1;
    ex_tensor *t = calloc((size_t)(n ? n : 1), sizeof *t);
    char *cfg_text = NULL, *idx_text = NULL;
    moei_st_writer **writers = NULL;
    int32_t nshards = 0;
    char tmp[EX_PATH_CAP], path[EX_PATH_CAP], aside[EX_PATH_CAP];
    int made_tmp = 0;
    if (!t) {
        st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    int64_t k = 0;
    for (int32_t i = 0; st == MOE_OK && i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        int expert = strstr(e->name, ".moe.experts.") != NULL;
        int64_t count = expert ? e->shape[0] : 1, per = expert ? e->numel / e->shape[0] : e->numel;
        for (int64_t x = 0; x < count; x++, k++) {
            if (!moei_hf_classic_name(e->name, (int32_t)x, t[k].name, sizeof t[k].name)) {
                st = moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s: parameter '%s' has no Mixtral counterpart", fn, e->name);
                break;
            }
            t[k].ndim = expert ? 2 : e->ndim;
            for (int32_t d = 0; d < t[k].ndim; d++) t[k].shape[d] = expert ? e->shape[d + 1] : e->shape[d];
            t[k].data = host + e->offset + x * per;
            t[k].nbytes = (uint64_t)per * sizeof(float);
        }
    }
    if (st != MOE_OK) goto done;
    /* Greedy packing in parameter order; a tensor larger than the limit gets a shard of its own. */
    uint64_t fill = 0;
    for (int64_t i = 0; i < n; i++) {
        if (max_shard_bytes > 0 && fill > 0 && fill + t[i].nbytes > max_shard_bytes) {
            nshards++;
            fill = 0;
        }
        t[i].shard = nshards;
        fill += t[i].nbytes;
    }
    nshards++;
    if (nshards > 99999) {
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: max_shard_bytes = %llu gives more than 99999 shards", fn,
                       (unsigned long long)max_shard_bytes);
        goto done;
    }
    writers = calloc((size_t)nshards, sizeof *writers);
    cfg_text = config_json(model);
    if (nshards > 1) idx_text = index_json(t, n, nshards);
    if (!writers || !cfg_text || (nshards > 1 && !idx_text)) {
        st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto done;
    }
    for (int32_t s = 0; st == MOE_OK && s < nshards; s++) {
        st = moei_st_writer_create(ctx, &writers[s]);
        if (st == MOE_OK) st = moei_st_writer_set_metadata(writers[s], "format", "pt");
    }
    for (int64_t i = 0; st == MOE_OK && i < n; i++)
        st = moei_st_writer_add(writers[t[i].shard], t[i].name, MOE_DTYPE_F32, t[i].ndim, t[i].shape, t[i].data,
                                t[i].nbytes);
    if (st != MOE_OK) goto done;

    cleanup_siblings(out);
    char suffix[48];
    snprintf(suffix, sizeof suffix, ".tmp-%ld", (long)getpid());
    moei_ckpt_concat(tmp, sizeof tmp, out, suffix);
    snprintf(suffix, sizeof suffix, ".old-%ld", (long)getpid());
    moei_ckpt_concat(aside, sizeof aside, out, suffix);
    if (moei_fs_mkdir(tmp, 0755) != 0) {
        st = io_fail(ctx, fn, "mkdir", tmp);
        goto done;
    }
    made_tmp = 1;
    for (int32_t s = 0; st == MOE_OK && s < nshards; s++) {
        char file[64];
        if (nshards == 1) snprintf(file, sizeof file, "model.safetensors");
        else snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", (int)s + 1, (int)nshards);
        moei_ckpt_join(path, sizeof path, tmp, file);
        st = moei_st_writer_write(writers[s], path);
    }
    if (st == MOE_OK && idx_text) {
        moei_ckpt_join(path, sizeof path, tmp, "model.safetensors.index.json");
        st = moei_ckpt_write_file(ctx, path, idx_text, strlen(idx_text), fn);
    }
    if (st == MOE_OK) {
        moei_ckpt_join(path, sizeof path, tmp, "config.json");
        st = moei_ckpt_write_file(ctx, path, cfg_text, strlen(cfg_text), fn);
    }
    if (st == MOE_OK && moei_fs_fsync_dir(tmp) != 0) st = io_fail(ctx, fn, "fsync", tmp);
    if (st == MOE_OK && replace && moei_fs_rename(out, aside) != 0) st = io_fail(ctx, fn, "rename aside", out);
    if (st == MOE_OK && moei_fs_rename(tmp, out) != 0) {
        st = io_fail(ctx, fn, "rename into place", out);
        if (replace) (void)moei_fs_rename(aside, out);
    }
    if (st != MOE_OK) goto done;
    made_tmp = 0;
    if (moei_fs_fsync_parent(out) != 0) st = io_fail(ctx, fn, "fsync of the parent directory", out);
    if (replace && moei_ckpt_remove_tree(aside) != 0)
        moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove the replaced export '%.300s': %s", fn, aside, strerror(errno));

done:
    if (made_tmp) (void)moei_ckpt_remove_tree(tmp);
    for (int32_t s = 0; writers && s < nshards; s++) moei_st_writer_destroy(writers[s]);
    free(writers);
    free(cfg_text);
    free(idx_text);
    free(t);
    free(staged);
    return st;
}
