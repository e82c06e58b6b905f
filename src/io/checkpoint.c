/* Checkpoints (DESIGN.md §8), one shard per rank (here one rank): save into a temporary directory,
 * make it durable, rename it into place, then move `latest`; load verifies everything (index,
 * config, shapes, slices, xxHash64 of every tensor) before it changes the model or optimizer.
 * Invariant: at every instant the root holds, through `latest`, the previous complete checkpoint
 * or the new one: a step directory only ever appears by a rename of a complete, fsync'd one, and
 * one being replaced is first renamed to "step-<n>.old", which the loader and the next save honour. */
#include "moe/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/config.h"
#include "core/ctx.h"
#include "core/device.h"
#include "core/error.h"
#include "io/checkpoint_fs.h"
#include "io/checkpoint_index.h"
#include "io/fsio.h"
#include "io/safetensors.h"
#include "moe/version.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"

#define CK_SHARD_FILE "shard-00000-of-00001.safetensors"
#define CK_INDEX_FILE "index.json"
#define CK_LATEST "latest"
#define CK_PATH_CAP 4096
#define CK_ROOT_MAX (CK_PATH_CAP - 128) /* room for "/.tmp-step-<n>-<pid>/<file>" */

static void info_defaults(moe_checkpoint_info *d)
{
    memset(d, 0, sizeof *d);
    d->struct_size = sizeof *d;
}

MOE_API moe_status moe_checkpoint_info_init(moe_checkpoint_info *info, uint32_t struct_size)
{
    moe_checkpoint_info d;
    info_defaults(&d);
    return moei_config_init(info, struct_size, &d, sizeof d, "moe_checkpoint_info_init");
}

/* ---- the tensors of a model + optimizer -------------------------------------------------------- */

typedef struct ck_item {
    char name[MOEI_CKPT_NAME_MAX + 1];
    int32_t ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];
    int64_t numel;
    float *data; /* host memory: the source of a save, the destination of a load */
} ck_item;

/* Host views of the model's and optimizer's buffers. On the CPU they are the buffers themselves;
 * with device memory they are host copies (filled for a save, written back after a load). */
typedef struct ck_host {
    moe_ctx *ctx;
    int staged;
    uint64_t bytes;
    float *params, *m, *v;
} ck_host;

static void host_free(ck_host *h)
{
    if (h->staged) {
        free(h->params);
        free(h->m);
        free(h->v);
    }
    memset(h, 0, sizeof *h);
}

static moe_status host_open(ck_host *h, moe_model *model, const moe_optimizer *opt, int fill, const char *fn)
{
    memset(h, 0, sizeof *h);
    h->ctx = model->ctx;
    h->bytes = (uint64_t)model->params.total * sizeof(float);
    if (model->ctx->device_type == MOE_DEVICE_CPU) {
        h->params = model->params.data;
        h->m = opt ? opt->m : NULL;
        h->v = opt ? opt->v : NULL;
        return MOE_OK;
    }
    h->staged = 1;
    size_t n = h->bytes ? (size_t)h->bytes : 1;
    h->params = malloc(n);
    if (opt) h->m = malloc(n);
    if (opt && opt->v) h->v = malloc(n);
    if (!h->params || (opt && !h->m) || (opt && opt->v && !h->v)) {
        host_free(h);
        return moei_fail(model->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory staging the model", fn);
    }
    moe_status st = MOE_OK;
    if (fill) {
        st = moei_device_copy_d2h(model->ctx, h->params, model->params.data, (size_t)h->bytes);
        if (st == MOE_OK && h->m) st = moei_device_copy_d2h(model->ctx, h->m, opt->m, (size_t)h->bytes);
        if (st == MOE_OK && h->v) st = moei_device_copy_d2h(model->ctx, h->v, opt->v, (size_t)h->bytes);
    }
    if (st != MOE_OK) host_free(h);
    return st;
}

static moe_status host_commit(ck_host *h, moe_model *model, moe_optimizer *opt)
{
    if (!h->staged) return MOE_OK;
    moe_status st = moei_device_copy_h2d(model->ctx, model->params.data, h->params, (size_t)h->bytes);
    if (st == MOE_OK && opt && h->m) st = moei_device_copy_h2d(model->ctx, opt->m, h->m, (size_t)h->bytes);
    if (st == MOE_OK && opt && h->v) st = moei_device_copy_h2d(model->ctx, opt->v, h->v, (size_t)h->bytes);
    return st;
}

static int item_set(ck_item *it, const char *name, int32_t ndim, const int64_t *shape, float *data)
{
    if (snprintf(it->name, sizeof it->name, "%s", name) >= (int)sizeof it->name || !moei_ckpt_valid_name(it->name))
        return 0;
    it->ndim = ndim;
    it->numel = 1;
    for (int32_t d = 0; d < ndim; d++) {
        it->shape[d] = shape[d];
        it->numel *= shape[d];
    }
    it->data = data;
    return 1;
}

/* Every tensor a checkpoint of (model, opt) holds: parameters, optimizer moments, MoE bias states. */
static moe_status collect_items(moe_model *model, const moe_optimizer *opt, const ck_host *h, ck_item **out,
                                int64_t *count, const char *fn)
{
    const moei_params *p = &model->params;
    int64_t n = p->count;
    if (opt) n += (int64_t)p->count * (opt->v ? 2 : 1);
    for (int32_t l = 0; l < model->cfg.num_layers; l++) n += model->blocks[l].is_moe;
    ck_item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    if (!items) return moei_fail(model->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int64_t k = 0;
    int ok = 1;
    char name[MOEI_CKPT_NAME_MAX + 1];
    for (int32_t i = 0; ok && i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        ok = item_set(&items[k++], e->name, e->ndim, e->shape, h->params + e->offset);
    }
    for (int pass = 0; opt && ok && pass < (opt->v ? 2 : 1); pass++)
        for (int32_t i = 0; ok && i < p->count; i++) {
            const moei_param *e = &p->entries[i];
            snprintf(name, sizeof name, "optim.%s.%s", pass ? "v" : "m", e->name);
            ok = item_set(&items[k++], name, e->ndim, e->shape, (pass ? h->v : h->m) + e->offset);
        }
    for (int32_t l = 0; ok && l < model->cfg.num_layers; l++) {
        if (!model->blocks[l].is_moe) continue;
        const moei_moe *mo = &model->blocks[l].moe;
        int64_t shape[1] = {mo->s.num_experts};
        snprintf(name, sizeof name, "state.%s.expert_bias", mo->prefix);
        ok = item_set(&items[k++], name, 1, shape, mo->bias);
    }
    if (!ok) {
        moe_status st = moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: tensor name '%s' cannot be stored in a checkpoint",
                                  fn, items[k - 1].name);
        free(items);
        return st;
    }
    *out = items;
    *count = k;
    return MOE_OK;
}

static void mesh_sizes(const moe_model *model, int32_t mesh[MOEI_CKPT_MESH_COUNT])
{
    const moe_mesh *m = model->mesh;
    mesh[MOEI_CKPT_MESH_WORLD] = m->size[MOE_AXIS_WORLD];
    mesh[MOEI_CKPT_MESH_DP] = m->size[MOE_AXIS_DP];
    mesh[MOEI_CKPT_MESH_TP] = m->size[MOE_AXIS_TP];
    mesh[MOEI_CKPT_MESH_PP] = m->size[MOE_AXIS_PP];
    mesh[MOEI_CKPT_MESH_EP] = m->size[MOE_AXIS_EP];
    mesh[MOEI_CKPT_MESH_ETP] = m->size[MOE_AXIS_ETP];
}

/* ---- names in the root directory --------------------------------------------------------------- */

/* Parse a canonical decimal (no sign, no leading zero) at s; *end receives the first other byte. */
static int parse_dec(const char *s, const char **end, int64_t *out)
{
    int64_t v = 0;
    int n = 0;
    while (s[n] >= '0' && s[n] <= '9') {
        if (n == 18) return 0; /* < 10^18: fits */
        v = v * 10 + (s[n] - '0');
        n++;
    }
    if (n == 0 || (n > 1 && s[0] == '0')) return 0;
    *end = s + n;
    *out = v;
    return 1;
}

/* "step-<n>" exactly. */
static int parse_step_name(const char *name, int64_t *step)
{
    const char *e;
    return strncmp(name, "step-", 5) == 0 && parse_dec(name + 5, &e, step) && *e == '\0';
}

/* "<prefix><n>-<pid>" exactly (prefix ".tmp-step-" or ".del-step-"). */
static int parse_temp_name(const char *name, const char *prefix, int64_t *pid)
{
    size_t pl = strlen(prefix);
    const char *e;
    int64_t step;
    return strncmp(name, prefix, pl) == 0 && parse_dec(name + pl, &e, &step) && *e == '-' && parse_dec(e + 1, &e, pid) &&
           *e == '\0';
}

static int temp_is_stale(int64_t pid) { return pid == (int64_t)getpid() || !moei_ckpt_pid_alive((long)pid); }

/* Remove what interrupted saves left behind, and undo a replacement cut short (a "step-<n>.old"
 * without its "step-<n>" is put back). Failures are logged, never fatal. */
static void cleanup_stale(moe_ctx *ctx, const char *root, const char *fn)
{
    char **names = NULL;
    size_t n = 0;
    if (moei_ckpt_list_dir(root, &names, &n) != 0) return;
    char path[CK_PATH_CAP], other[CK_PATH_CAP];
    for (size_t i = 0; i < n; i++) {
        const char *nm = names[i];
        int64_t v = 0;
        const char *e;
        if (moei_ckpt_join(path, sizeof path, root, nm) != 0) continue;
        if (parse_temp_name(nm, ".tmp-step-", &v) || parse_temp_name(nm, ".del-step-", &v)) {
            if (temp_is_stale(v) && moei_ckpt_remove_tree(path) != 0)
                moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove '%.300s': %s", fn, path, strerror(errno));
        } else if (strncmp(nm, CK_LATEST ".tmp-", 11) == 0 && parse_dec(nm + 11, &e, &v) && *e == '\0') {
            if (temp_is_stale(v) && moei_fs_unlink(path) != 0)
                moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove '%.300s': %s", fn, path, strerror(errno));
        } else if (strncmp(nm, "step-", 5) == 0 && parse_dec(nm + 5, &e, &v) && strcmp(e, ".old") == 0) {
            moei_ckpt_concat(other, sizeof other, path, "");
            other[strlen(other) - 4] = '\0'; /* drop ".old" */
            if (moei_ckpt_is_dir(other)) {
                if (moei_ckpt_remove_tree(path) != 0)
                    moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove '%.300s': %s", fn, path, strerror(errno));
            } else if (moei_fs_rename(path, other) != 0 || moei_fs_fsync_dir(root) != 0) {
                moei_log(ctx, MOE_LOG_WARN, "%s: cannot restore '%.300s': %s", fn, other, strerror(errno));
            }
        }
    }
    moei_ckpt_free_names(names, n);
}

static int cmp_desc(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The step `latest` names, or -1. */
static int64_t latest_step(const char *root)
{
    char path[CK_PATH_CAP];
    if (moei_ckpt_join(path, sizeof path, root, CK_LATEST) != 0) return -1;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char buf[64];
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    if (len > 0 && buf[len - 1] == '\n') buf[len - 1] = '\0';
    int64_t s;
    return parse_step_name(buf, &s) ? s : -1;
}

/* Delete complete checkpoints older than `step` beyond the newest keep_last (this one counted). */
static void rotate(moe_ctx *ctx, const char *root, int64_t step, int32_t keep_last, const char *fn)
{
    if (keep_last <= 0) return;
    char **names = NULL;
    size_t n = 0;
    if (moei_ckpt_list_dir(root, &names, &n) != 0) {
        moei_log(ctx, MOE_LOG_WARN, "%s: cannot list '%.300s' to rotate checkpoints: %s", fn, root, strerror(errno));
        return;
    }
    int64_t *steps = malloc((n ? n : 1) * sizeof *steps);
    size_t ns = 0;
    char path[CK_PATH_CAP], file[CK_PATH_CAP];
    for (size_t i = 0; steps && i < n; i++) {
        int64_t s;
        if (!parse_step_name(names[i], &s) || s >= step) continue;
        if (moei_ckpt_join(path, sizeof path, root, names[i]) != 0 ||
            moei_ckpt_join(file, sizeof file, path, CK_INDEX_FILE) != 0 || !moei_ckpt_is_file(file))
            continue; /* not a complete checkpoint: not ours to delete */
        steps[ns++] = s;
    }
    moei_ckpt_free_names(names, n);
    if (!steps) return;
    qsort(steps, ns, sizeof *steps, cmp_desc);
    int64_t keep_latest = latest_step(root);
    for (size_t i = (size_t)keep_last - 1; i < ns; i++) {
        if (steps[i] == keep_latest) continue;
        char name[64], del[64];
        snprintf(name, sizeof name, "step-%lld", (long long)steps[i]);
        snprintf(del, sizeof del, ".del-step-%lld-%ld", (long long)steps[i], (long)getpid());
        if (moei_ckpt_join(path, sizeof path, root, name) != 0 || moei_ckpt_join(file, sizeof file, root, del) != 0)
            continue;
        /* Renamed first, so no half-deleted step directory is ever visible. */
        if (moei_fs_rename(path, file) != 0 || moei_ckpt_remove_tree(file) != 0)
            moei_log(ctx, MOE_LOG_WARN, "%s: cannot delete old checkpoint '%.300s': %s", fn, path, strerror(errno));
    }
    free(steps);
}

static moe_status io_fail(moe_ctx *ctx, const char *fn, const char *call, const char *path)
{
    int err = errno;
    return moei_fail(ctx, MOE_ERR_IO, "%s: %s of '%.300s' failed: %s", fn, call, path, strerror(err));
}

static moe_status ensure_root(moe_ctx *ctx, const char *root, const char *fn)
{
    if (moei_ckpt_is_dir(root)) return MOE_OK;
    if (moei_fs_mkdir(root, 0755) != 0) {
        if (errno == EEXIST && moei_ckpt_is_dir(root)) return MOE_OK;
        return io_fail(ctx, fn, "mkdir", root);
    }
    if (moei_fs_fsync_parent(root) != 0) return io_fail(ctx, fn, "fsync of the parent directory", root);
    return MOE_OK;
}

/* Write the step directory and move `latest` (see the file comment for the order). */
static moe_status write_checkpoint(moe_ctx *ctx, const char *root, int64_t step, moei_st_writer *w, const char *index,
                                   size_t index_len, const char *fn)
{
    char tmp[CK_PATH_CAP], final[CK_PATH_CAP], aside[CK_PATH_CAP], path[CK_PATH_CAP], name[96];
    snprintf(name, sizeof name, ".tmp-step-%lld-%ld", (long long)step, (long)getpid());
    moei_ckpt_join(tmp, sizeof tmp, root, name);
    snprintf(name, sizeof name, "step-%lld", (long long)step);
    moei_ckpt_join(final, sizeof final, root, name);
    moei_ckpt_concat(aside, sizeof aside, final, ".old");

    if (moei_ckpt_remove_tree(tmp) != 0) return io_fail(ctx, fn, "removal of a stale", tmp);
    if (moei_fs_mkdir(tmp, 0755) != 0) return io_fail(ctx, fn, "mkdir", tmp);
    moe_status st = MOE_OK;
    int replaced = 0;
    moei_ckpt_join(path, sizeof path, tmp, CK_SHARD_FILE);
    st = moei_st_writer_write(w, path);
    if (st != MOE_OK) goto fail;
    moei_ckpt_join(path, sizeof path, tmp, CK_INDEX_FILE);
    st = moei_ckpt_write_file(ctx, path, index, index_len, fn);
    if (st != MOE_OK) goto fail;
    if (moei_fs_fsync_dir(tmp) != 0) {
        st = io_fail(ctx, fn, "fsync", tmp);
        goto fail;
    }
    struct stat sb;
    if (lstat(final, &sb) == 0) {
        /* Replace an existing step-<n>: move it aside; the loader reads the aside copy while the
         * new one is not in place yet, and the next save puts it back if we stop here. */
        if (moei_ckpt_remove_tree(aside) != 0) {
            st = io_fail(ctx, fn, "removal of a stale", aside);
            goto fail;
        }
        if (moei_fs_rename(final, aside) != 0) {
            st = io_fail(ctx, fn, "rename aside", final);
            goto fail;
        }
        replaced = 1;
    }
    if (moei_fs_rename(tmp, final) != 0) {
        st = io_fail(ctx, fn, "rename into place", final);
        if (replaced && moei_fs_rename(aside, final) != 0)
            moei_log(ctx, MOE_LOG_WARN, "%s: cannot put '%.300s' back (the next save will): %s", fn, final,
                     strerror(errno));
        goto fail;
    }
    if (moei_fs_fsync_dir(root) != 0) return io_fail(ctx, fn, "fsync", root);
    if (replaced && moei_ckpt_remove_tree(aside) != 0)
        moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove the replaced checkpoint '%.300s': %s", fn, aside, strerror(errno));

    char text[96];
    int tl = snprintf(text, sizeof text, "step-%lld\n", (long long)step);
    moei_ckpt_join(path, sizeof path, root, CK_LATEST);
    return moei_ckpt_write_file_atomic(ctx, path, text, (size_t)tl, fn);

fail:
    if (moei_ckpt_remove_tree(tmp) != 0)
        moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove '%.300s' (the next save will): %s", fn, tmp, strerror(errno));
    return st;
}

/* Copy `root` without trailing slashes into buf. */
static moe_status normalize_root(moe_ctx *ctx, const char *root, char *buf, size_t cap, const char *fn, const char *arg)
{
    size_t n = strlen(root);
    if (n == 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is empty", fn, arg);
    while (n > 1 && root[n - 1] == '/') n--;
    if (n >= cap || n > CK_ROOT_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is longer than %d bytes", fn, arg, CK_ROOT_MAX);
    memcpy(buf, root, n);
    buf[n] = '\0';
    return MOE_OK;
}

MOE_API moe_status moe_checkpoint_save(moe_model *model, const moe_optimizer *opt, const char *root_dir,
                                       const moe_checkpoint_info *info)
{
    static const char *fn = "moe_checkpoint_save";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, root_dir, fn);
    MOEI_CHECK_NOT_NULL(ctx, info, fn);
    if (opt && opt->model != model)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' belongs to another model", fn);
    moe_checkpoint_info in;
    info_defaults(&in);
    moe_status st = moei_config_read(&in, sizeof in, info, "moe_checkpoint_info", fn);
    if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    const int64_t limit = (int64_t)1 << 53; /* integers a JSON number holds exactly */
    if (in.step < 0 || in.step > limit)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->step = %lld (must be in [0, 2^53])", fn, (long long)in.step);
    if (in.data_position < -limit || in.data_position > limit)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->data_position = %lld (must be within +-2^53)", fn,
                         (long long)in.data_position);
    if (in.keep_last < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->keep_last = %d (must be >= 0)", fn, (int)in.keep_last);
    if (in.user_json && !moei_ckpt_valid_text(in.user_json))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->user_json is not UTF-8 text of at most %u bytes", fn,
                         MOEI_CKPT_USER_MAX);
    char root[CK_PATH_CAP];
    st = normalize_root(ctx, root_dir, root, sizeof root, fn, "root_dir");
    if (st != MOE_OK) return st;

    moei_ckpt_index ix;
    memset(&ix, 0, sizeof ix);
    ix.step = in.step;
    ix.data_position = in.data_position;
    ix.rng_seed = ctx->seed;
    ix.rng_step = model->rng_step;
    ix.config = model->cfg;
    if (opt) {
        ix.has_optimizer = 1;
        ix.opt_type = opt->cfg.type;
        ix.opt_step = opt->step;
        ix.opt_skipped = opt->skipped_total;
        ix.opt_config = opt->cfg;
    }
    mesh_sizes(model, ix.mesh);
    ix.user = (char *)in.user_json; /* only read */

    ck_host h;
    st = host_open(&h, model, opt, 1, fn);
    if (st != MOE_OK) return st;
    ck_item *items = NULL;
    int64_t n = 0;
    moei_st_writer *w = NULL;
    char *index = NULL;
    size_t index_len = 0;
    st = collect_items(model, opt, &h, &items, &n, fn);
    if (st == MOE_OK) {
        ix.tensors = calloc((size_t)(n ? n : 1), sizeof *ix.tensors);
        if (!ix.tensors) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    if (st == MOE_OK) st = moei_st_writer_create(ctx, &w);
    if (st == MOE_OK) st = moei_st_writer_set_metadata(w, "format", "pt");
    /* One shard holding every tensor whole: the slice is the full shape. */
    moei_ckpt_shard *shards = st == MOE_OK ? calloc((size_t)(n ? n : 1), sizeof *shards) : NULL;
    if (st == MOE_OK && !shards) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    for (int64_t i = 0; st == MOE_OK && i < n; i++) {
        const ck_item *it = &items[i];
        uint64_t nbytes = (uint64_t)it->numel * sizeof(float);
        st = moei_st_writer_add(w, it->name, MOE_DTYPE_F32, it->ndim, it->shape, it->data, nbytes);
        moei_ckpt_shard *s = &shards[i];
        s->file = (char *)CK_SHARD_FILE;
        s->tensor = (char *)it->name;
        for (int32_t d = 0; d < it->ndim; d++) s->end[d] = it->shape[d];
        s->xxh64 = XXH64(it->data, (size_t)nbytes, 0);
        moei_ckpt_tensor *t = &ix.tensors[i];
        t->name = (char *)it->name;
        t->dtype = MOE_DTYPE_F32;
        t->ndim = it->ndim;
        memcpy(t->shape, it->shape, sizeof t->shape);
        t->numel = it->numel;
        t->nshards = 1;
        t->shards = s;
    }
    ix.ntensors = n;
    if (st == MOE_OK) st = moei_ckpt_index_write(ctx, &ix, &index, &index_len);
    if (st == MOE_OK) st = ensure_root(ctx, root, fn);
    if (st == MOE_OK) {
        cleanup_stale(ctx, root, fn);
        st = write_checkpoint(ctx, root, in.step, w, index, index_len, fn);
    }
    if (st == MOE_OK) rotate(ctx, root, in.step, in.keep_last, fn);
    free(index);
    free(shards);
    free(ix.tensors);
    moei_st_writer_destroy(w);
    free(items);
    host_free(&h);
    return st;
}

/* ---- loading ------------------------------------------------------------------------------------ */

/* The whole file at `path` (at most `max` bytes, else MOE_ERR_FORMAT) into a malloc'ed buffer. */
static moe_status read_bounded(moe_ctx *ctx, const char *path, uint64_t max, char **out, size_t *len, const char *fn)
{
    FILE *f = fopen(path, "rb");
    if (!f) return moei_fail(ctx, MOE_ERR_IO, "%s: cannot open '%.300s': %s", fn, path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    moe_status st = MOE_OK;
    for (;;) {
        if (cap - n < 65536) {
            size_t nc = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, nc);
            if (!nb) {
                st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory reading '%.300s'", fn, path);
                break;
            }
            buf = nb;
            cap = nc;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n > max) {
            st = moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s' is larger than %llu bytes", fn, path,
                           (unsigned long long)max);
            break;
        }
        if (got == 0) {
            if (ferror(f)) st = moei_fail(ctx, MOE_ERR_IO, "%s: error reading '%.300s'", fn, path);
            break;
        }
    }
    fclose(f);
    if (st != MOE_OK) {
        free(buf);
        return st;
    }
    *out = buf;
    *len = n;
    return MOE_OK;
}

/* The checkpoint directory `dir` names: itself, or the one its `latest` names (or that one's aside
 * copy while a replacement is cut short). */
static moe_status resolve_dir(moe_ctx *ctx, const char *dir, char *out, size_t cap, const char *fn)
{
    char base[CK_PATH_CAP], path[CK_PATH_CAP];
    moe_status st = normalize_root(ctx, dir, base, sizeof base, fn, "dir");
    if (st != MOE_OK) return st;
    moei_ckpt_join(path, sizeof path, base, CK_INDEX_FILE);
    if (moei_ckpt_is_file(path)) {
        snprintf(out, cap, "%s", base);
        return MOE_OK;
    }
    moei_ckpt_join(path, sizeof path, base, CK_LATEST);
    if (!moei_ckpt_is_file(path))
        return moei_fail(ctx, MOE_ERR_IO, "%s: '%.300s' holds neither " CK_INDEX_FILE " nor " CK_LATEST, fn, base);
    char *text = NULL;
    size_t len = 0;
    st = read_bounded(ctx, path, 255, &text, &len, fn);
    if (st != MOE_OK) return st;
    if (len > 0 && text[len - 1] == '\n') len--;
    text[len] = '\0'; /* the buffer holds at least len + 1 bytes */
    int64_t step;
    if (strlen(text) != len || !parse_step_name(text, &step)) {
        free(text);
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s' does not name a checkpoint directory (step-<n>)", fn, path);
    }
    char sub[CK_PATH_CAP];
    moei_ckpt_join(sub, sizeof sub, base, text);
    free(text);
    moei_ckpt_join(path, sizeof path, sub, CK_INDEX_FILE);
    if (moei_ckpt_is_file(path)) {
        snprintf(out, cap, "%s", sub);
        return MOE_OK;
    }
    char aside[CK_PATH_CAP];
    moei_ckpt_concat(aside, sizeof aside, sub, ".old");
    moei_ckpt_join(path, sizeof path, aside, CK_INDEX_FILE);
    if (moei_ckpt_is_file(path)) {
        snprintf(out, cap, "%s", aside);
        return MOE_OK;
    }
    return moei_fail(ctx, MOE_ERR_IO, "%s: '%.300s' names '%.300s', which holds no " CK_INDEX_FILE, fn,
                     CK_LATEST, sub);
}

static moe_status read_index(moe_ctx *ctx, const char *dir, moei_ckpt_index **out, char *stepdir, size_t cap,
                             const char *fn)
{
    moe_status st = resolve_dir(ctx, dir, stepdir, cap, fn);
    if (st != MOE_OK) return st;
    char path[CK_PATH_CAP];
    moei_ckpt_join(path, sizeof path, stepdir, CK_INDEX_FILE);
    char *text = NULL;
    size_t len = 0;
    st = read_bounded(ctx, path, MOEI_CKPT_INDEX_MAX, &text, &len, fn);
    if (st != MOE_OK) return st;
    st = moei_ckpt_index_parse(ctx, text, len, path, out);
    free(text);
    return st;
}

static void shape_text(const int64_t *shape, int32_t ndim, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int32_t d = 0; d < ndim; d++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%lld", d ? "," : "", (long long)shape[d]);
    }
}

/* The slice's elements (contiguous at src, row-major) into their place in the full tensor at dst. */
static void copy_slice(float *dst, const int64_t *shape, int32_t ndim, const moei_ckpt_shard *s, const unsigned char *src)
{
    if (ndim == 0) {
        memcpy(dst, src, sizeof(float));
        return;
    }
    int64_t ext[MOE_TENSOR_MAX_DIMS] = {0}, idx[MOE_TENSOR_MAX_DIMS] = {0}, stride[MOE_TENSOR_MAX_DIMS] = {0};
    int64_t rows = 1;
    for (int32_t d = ndim - 1; d >= 0; d--) {
        ext[d] = s->end[d] - s->start[d];
        if (ext[d] == 0) return;
        stride[d] = d == ndim - 1 ? 1 : stride[d + 1] * shape[d + 1];
        idx[d] = 0;
        if (d < ndim - 1) rows *= ext[d];
    }
    const size_t row_bytes = (size_t)ext[ndim - 1] * sizeof(float);
    for (int64_t r = 0; r < rows; r++) {
        int64_t off = 0;
        for (int32_t d = 0; d < ndim; d++) off += (s->start[d] + (d < ndim - 1 ? idx[d] : 0)) * stride[d];
        memcpy(dst + off, src + (size_t)r * row_bytes, row_bytes);
        for (int32_t d = ndim - 2; d >= 0; d--) {
            if (++idx[d] < ext[d]) break;
            idx[d] = 0;
        }
    }
}

typedef struct ck_files {
    moe_ctx *ctx;
    const char *dir;
    int32_t n;
    char **names;
    moei_st_file **files;
} ck_files;

static void files_close(ck_files *f)
{
    for (int32_t i = 0; i < f->n; i++) {
        moei_st_close(f->files[i]);
        free(f->names[i]);
    }
    free(f->names);
    free(f->files);
}

static moe_status files_get(ck_files *f, const char *name, moei_st_file **out)
{
    for (int32_t i = 0; i < f->n; i++)
        if (strcmp(f->names[i], name) == 0) {
            *out = f->files[i];
            return MOE_OK;
        }
    char path[CK_PATH_CAP];
    moei_ckpt_join(path, sizeof path, f->dir, name);
    char **nn = realloc(f->names, (size_t)(f->n + 1) * sizeof *nn);
    if (nn) f->names = nn;
    moei_st_file **nf = nn ? realloc(f->files, (size_t)(f->n + 1) * sizeof *nf) : NULL;
    if (nf) f->files = nf;
    char *copy = nf ? malloc(strlen(name) + 1) : NULL;
    if (!copy) return moei_fail(f->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory opening '%.300s'", path);
    strcpy(copy, name);
    moei_st_file *file = NULL;
    moe_status st = moei_st_open(f->ctx, path, &file);
    if (st != MOE_OK) {
        free(copy);
        return st;
    }
    f->names[f->n] = copy;
    f->files[f->n++] = file;
    *out = file;
    return MOE_OK;
}

/* Check one shard of a logical tensor against its file: present, F32, shaped as the slice, and
 * holding the bytes the index's xxHash64 vouches for. */
static moe_status verify_shard(ck_files *files, const moei_ckpt_tensor *t, const moei_ckpt_shard *s,
                               const moei_st_tensor **out, const char *fn)
{
    moe_ctx *ctx = files->ctx;
    moei_st_file *f = NULL;
    moe_status st = files_get(files, s->file, &f);
    if (st != MOE_OK) return st;
    const moei_st_tensor *ft = moei_st_find(f, s->tensor);
    if (!ft)
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: tensor '%s': shard file '%s' has no tensor '%s'", fn, t->name, s->file,
                         s->tensor);
    int ok = ft->dtype == MOE_DTYPE_F32 && ft->ndim == t->ndim;
    for (int32_t d = 0; ok && d < t->ndim; d++) ok = ft->shape[d] == s->end[d] - s->start[d];
    if (!ok)
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: tensor '%s': '%s' in shard file '%s' is not an F32 tensor of the slice's shape",
                         fn, t->name, s->tensor, s->file);
    uint64_t h = XXH64(ft->data, (size_t)ft->nbytes, 0);
    if (h != s->xxh64)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: checksum mismatch for tensor '%s' (shard file '%s'): xxh64 %016llx, the index says %016llx",
                         fn, t->name, s->file, (unsigned long long)h, (unsigned long long)s->xxh64);
    *out = ft;
    return MOE_OK;
}

static int is_optim_name(const char *name) { return strncmp(name, "optim.", 6) == 0; }

MOE_API moe_status moe_checkpoint_load(moe_model *model, moe_optimizer *opt, const char *dir,
                                       moe_checkpoint_info *info_out, char *user_json_out, uint32_t user_json_capacity)
{
    static const char *fn = "moe_checkpoint_load";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, dir, fn);
    if (opt && opt->model != model)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' belongs to another model", fn);
    if (info_out && info_out->struct_size < sizeof(uint32_t))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info_out->struct_size = %u; call moe_checkpoint_info_init first",
                         fn, (unsigned)info_out->struct_size);
    if (!user_json_out && user_json_capacity > 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: user_json_out is NULL but user_json_capacity = %u", fn,
                         (unsigned)user_json_capacity);

    char stepdir[CK_PATH_CAP];
    moei_ckpt_index *ix = NULL;
    moe_status st = read_index(ctx, dir, &ix, stepdir, sizeof stepdir, fn);
    if (st != MOE_OK) return st;

    ck_host h;
    memset(&h, 0, sizeof h);
    ck_item *items = NULL;
    int64_t n = 0;
    ck_files files = {ctx, stepdir, 0, NULL, NULL};
    const moei_st_tensor **src = NULL;

    /* The checkpoint must describe this model exactly. */
    size_t nf = 0;
    const moei_ckpt_field *mf = moei_ckpt_model_fields(&nf);
    for (size_t i = 0; i < nf; i++) {
        if (memcmp((const char *)&model->cfg + mf[i].offset, (const char *)&ix->config + mf[i].offset,
                   moei_ckpt_kind_size(mf[i].kind)) == 0)
            continue;
        char a[48], b[48];
        moei_ckpt_field_format(&mf[i], &model->cfg, a, sizeof a);
        moei_ckpt_field_format(&mf[i], &ix->config, b, sizeof b);
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: model config field '%s' is %s but the checkpoint's is %s", fn,
                       mf[i].name, a, b);
        goto out;
    }
    if (ix->mesh[MOEI_CKPT_MESH_WORLD] != model->mesh->size[MOE_AXIS_WORLD]) {
        st = moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s: the checkpoint was written by %d ranks, this mesh has %d; "
                       "resharding is not available yet", fn, (int)ix->mesh[MOEI_CKPT_MESH_WORLD],
                       (int)model->mesh->size[MOE_AXIS_WORLD]);
        goto out;
    }
    if (opt && !ix->has_optimizer) {
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' is given but the checkpoint holds no optimizer state",
                       fn);
        goto out;
    }
    if (opt && opt->cfg.type != ix->opt_type) {
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' is %s but the checkpoint's optimizer is %s", fn,
                       opt->cfg.type == MOE_OPTIMIZER_SGD ? "sgd" : "adamw",
                       ix->opt_type == MOE_OPTIMIZER_SGD ? "sgd" : "adamw");
        goto out;
    }
    uint64_t user_size = ix->user ? strlen(ix->user) + 1 : 1;
    if (user_json_out && user_size > user_json_capacity) {
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: user_json_capacity = %u but the trainer text needs %llu bytes", fn,
                       (unsigned)user_json_capacity, (unsigned long long)user_size);
        goto out;
    }

    st = host_open(&h, model, opt, 0, fn);
    if (st == MOE_OK) st = collect_items(model, opt, &h, &items, &n, fn);
    if (st != MOE_OK) goto out;
    /* Exactly the expected tensors (optimizer state may be skipped when no optimizer is given). */
    int64_t skipped = 0;
    for (int64_t i = 0; !opt && i < ix->ntensors; i++) skipped += is_optim_name(ix->tensors[i].name);
    const moei_ckpt_tensor **ts = calloc((size_t)(n ? n : 1), sizeof *ts);
    if (!ts) {
        st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        goto out;
    }
    int64_t nsrc = 0;
    for (int64_t i = 0; st == MOE_OK && i < n; i++) {
        const ck_item *it = &items[i];
        const moei_ckpt_tensor *t = moei_ckpt_index_find(ix, it->name);
        if (!t) {
            st = moei_fail(ctx, MOE_ERR_FORMAT, "%s: the checkpoint has no tensor '%s'", fn, it->name);
            break;
        }
        int ok = t->ndim == it->ndim;
        for (int32_t d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == it->shape[d];
        if (!ok) {
            char a[160], b[160];
            shape_text(t->shape, t->ndim, a, sizeof a);
            shape_text(it->shape, it->ndim, b, sizeof b);
            st = moei_fail(ctx, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s] in the checkpoint, the model needs [%s]",
                           fn, it->name, a, b);
            break;
        }
        ts[i] = t;
        nsrc += t->nshards;
    }
    if (st == MOE_OK && n != ix->ntensors - skipped) {
        for (int64_t i = 0; i < ix->ntensors; i++) {
            const char *name = ix->tensors[i].name;
            if (!opt && is_optim_name(name)) continue;
            int64_t k = 0;
            while (k < n && strcmp(items[k].name, name) != 0) k++;
            if (k == n) {
                st = moei_fail(ctx, MOE_ERR_FORMAT, "%s: the checkpoint holds tensor '%s', which this model does not have",
                               fn, name);
                break;
            }
        }
    }
    if (st == MOE_OK) {
        src = calloc((size_t)(nsrc ? nsrc : 1), sizeof *src);
        if (!src) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    /* Verify every byte before anything changes. */
    for (int64_t i = 0, k = 0; st == MOE_OK && i < n; i++)
        for (int32_t s = 0; st == MOE_OK && s < ts[i]->nshards; s++)
            st = verify_shard(&files, ts[i], &ts[i]->shards[s], &src[k++], fn);
    /* The items tile the parameter buffer (and the moments) without gaps, so a staged copy is
     * wholly rewritten before it goes back to the device. */
    if (st == MOE_OK) {
        for (int64_t i = 0, k = 0; i < n; i++)
            for (int32_t s = 0; s < ts[i]->nshards; s++, k++)
                copy_slice(items[i].data, items[i].shape, items[i].ndim, &ts[i]->shards[s],
                           (const unsigned char *)src[k]->data);
        st = host_commit(&h, model, opt);
    }
    free(ts);
    if (st != MOE_OK) goto out;

    if (opt) {
        opt->step = ix->opt_step;
        opt->skipped_total = ix->opt_skipped;
    }
    model->rng_step = ix->rng_step;
    for (int32_t l = 0; l < model->cfg.num_layers; l++)
        if (model->blocks[l].is_moe)
            memset(model->blocks[l].moe.step_counts, 0, (size_t)model->blocks[l].moe.s.num_experts * sizeof(int64_t));
    if (ix->rng_seed != ctx->seed)
        moei_log(ctx, MOE_LOG_WARN,
                 "%s: the checkpoint was saved with ctx seed %llu, this ctx has %llu: router jitter will differ", fn,
                 (unsigned long long)ix->rng_seed, (unsigned long long)ctx->seed);
    if (info_out) {
        moe_checkpoint_info r;
        info_defaults(&r);
        r.struct_size = info_out->struct_size;
        r.step = ix->step;
        r.data_position = ix->data_position;
        r.rng_seed = ix->rng_seed;
        memcpy(info_out, &r, info_out->struct_size < sizeof r ? info_out->struct_size : sizeof r);
    }
    if (user_json_out) memcpy(user_json_out, ix->user ? ix->user : "", (size_t)user_size);

out:
    free(src);
    files_close(&files);
    free(items);
    host_free(&h);
    moei_ckpt_index_free(ix);
    return st;
}

MOE_API moe_status moe_checkpoint_read_config(const char *dir, moe_model_config *cfg)
{
    static const char *fn = "moe_checkpoint_read_config";
    MOEI_CHECK_NOT_NULL(NULL, dir, fn);
    MOEI_CHECK_NOT_NULL(NULL, cfg, fn);
    if (cfg->struct_size < sizeof(uint32_t))
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: cfg->struct_size = %u; call moe_model_config_init first", fn,
                         (unsigned)cfg->struct_size);
    char stepdir[CK_PATH_CAP];
    moei_ckpt_index *ix = NULL;
    moe_status st = read_index(NULL, dir, &ix, stepdir, sizeof stepdir, fn);
    if (st != MOE_OK) return st;
    if (moe_model_config_validate(&ix->config) != MOE_OK) {
        st = moei_fail(NULL, MOE_ERR_FORMAT, "%s: %.300s/" CK_INDEX_FILE ": config: %s", fn, stepdir, moe_last_error());
    } else {
        uint32_t size = cfg->struct_size;
        memcpy(cfg, &ix->config, size < sizeof ix->config ? size : sizeof ix->config);
        cfg->struct_size = size;
    }
    moei_ckpt_index_free(ix);
    return st;
}

MOE_API moe_status moe_checkpoint_read_info(const char *dir, moe_checkpoint_info *info_out, char *user_json_out,
                                            uint32_t user_json_capacity, uint32_t *user_json_size)
{
    static const char *fn = "moe_checkpoint_read_info";
    MOEI_CHECK_NOT_NULL(NULL, dir, fn);
    if (info_out && info_out->struct_size < sizeof(uint32_t))
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: info_out->struct_size = %u; call moe_checkpoint_info_init first",
                         fn, (unsigned)info_out->struct_size);
    char stepdir[CK_PATH_CAP];
    moei_ckpt_index *ix = NULL;
    moe_status st = read_index(NULL, dir, &ix, stepdir, sizeof stepdir, fn);
    if (st != MOE_OK) return st;
    uint64_t size = ix->user ? strlen(ix->user) + 1 : 1; /* <= 16 MiB + 1 */
    if (user_json_size) *user_json_size = (uint32_t)size;
    if (user_json_out && size > user_json_capacity) {
        st = moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: user_json_capacity = %u but the trainer text needs %llu bytes", fn,
                       (unsigned)user_json_capacity, (unsigned long long)size);
    } else {
        if (user_json_out) memcpy(user_json_out, ix->user ? ix->user : "", (size_t)size);
        if (info_out) {
            moe_checkpoint_info r;
            info_defaults(&r);
            r.struct_size = info_out->struct_size;
            r.step = ix->step;
            r.data_position = ix->data_position;
            r.rng_seed = ix->rng_seed;
            memcpy(info_out, &r, info_out->struct_size < sizeof r ? info_out->struct_size : sizeof r);
        }
    }
    moei_ckpt_index_free(ix);
    return st;
}
