/* Checkpoints (DESIGN.md §8): one safetensors shard per rank and an index.json naming every logical
 * tensor, its full shape and the slice each shard holds. Save (collective): every rank writes the
 * slices it holds — a tensor replicated over ranks by its first replica only — into a temporary
 * directory rank 0 made; only when every rank reported success does rank 0 write the index, rename
 * the directory into place and move `latest`. Load (collective): each rank reads, from whichever
 * shards hold them, exactly the elements it holds on its own mesh (parameters, optimizer moments
 * stored per logical tensor like parameters, MoE bias state), verifying the xxHash64 of every shard
 * tensor it reads, so a checkpoint loads onto any mesh, and every rank agrees before anything changes.
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

#include "comm/comm.h"
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

#define CK_INDEX_FILE "index.json"
#define CK_LATEST "latest"
#define CK_PATH_CAP 4096
#define CK_ROOT_MAX (CK_PATH_CAP - 128) /* room for "/.tmp-step-<n>-<pid>/<file>" */
#define CK_TAG 7013                     /* slice lists sent to rank 0 */

/* "shard-<rank>-of-<world>.safetensors", both numbers of at least 5 digits. */
static void shard_file_name(char *buf, size_t cap, int32_t rank, int32_t world)
{
    snprintf(buf, cap, "shard-%05d-of-%05d.safetensors", (int)rank, (int)world);
}

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

/* One logical tensor as this rank holds it: the box [start, start + shape) of a tensor of shape
 * `full`, and of that box (row-major) the elements [first, first + count) at `data`: the whole box
 * for parameters and bias states, this rank's share of the moments under ZeRO-1. */
typedef struct ck_item {
    char name[MOEI_CKPT_NAME_MAX + 1];
    int32_t ndim;
    int64_t full[MOE_TENSOR_MAX_DIMS], start[MOE_TENSOR_MAX_DIMS], shape[MOE_TENSOR_MAX_DIMS];
    int64_t first, count;
    float *data; /* host memory: the source of a save, the destination of a load */
    int writer;  /* this rank stores it (the first of the ranks holding the same elements) */
} ck_item;

/* Host views of the model's and optimizer's buffers. On the CPU they are the buffers themselves;
 * with device memory they are host copies (filled first, written back after a load). */
typedef struct ck_host {
    moe_ctx *ctx;
    int staged;
    uint64_t bytes, state_bytes;
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

static moe_status host_open(ck_host *h, moe_model *model, const moe_optimizer *opt, const char *fn)
{
    memset(h, 0, sizeof *h);
    h->ctx = model->ctx;
    h->bytes = (uint64_t)model->params.total * sizeof(float);
    h->state_bytes = opt ? (uint64_t)opt->count * sizeof(float) : 0;
    if (model->ctx->device_type == MOE_DEVICE_CPU) {
        h->params = model->params.data;
        h->m = opt ? opt->m : NULL;
        h->v = opt ? opt->v : NULL;
        return MOE_OK;
    }
    h->staged = 1;
    h->params = malloc(h->bytes ? (size_t)h->bytes : 1);
    if (opt) h->m = malloc(h->state_bytes ? (size_t)h->state_bytes : 1);
    if (opt && opt->v) h->v = malloc(h->state_bytes ? (size_t)h->state_bytes : 1);
    if (!h->params || (opt && !h->m) || (opt && opt->v && !h->v)) {
        host_free(h);
        return moei_fail(model->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory staging the model", fn);
    }
    /* filled for a load too: a load rewrites only what this rank holds, and the rest goes back as it was */
    moe_status st = moei_device_copy_d2h(model->ctx, h->params, model->params.data, (size_t)h->bytes);
    if (st == MOE_OK && h->m) st = moei_device_copy_d2h(model->ctx, h->m, opt->m, (size_t)h->state_bytes);
    if (st == MOE_OK && h->v) st = moei_device_copy_d2h(model->ctx, h->v, opt->v, (size_t)h->state_bytes);
    if (st != MOE_OK) host_free(h);
    return st;
}

static moe_status host_commit(ck_host *h, moe_model *model, moe_optimizer *opt)
{
    if (!h->staged) return MOE_OK;
    moe_status st = moei_device_copy_h2d(model->ctx, model->params.data, h->params, (size_t)h->bytes);
    if (st == MOE_OK && opt && h->m) st = moei_device_copy_h2d(model->ctx, opt->m, h->m, (size_t)h->state_bytes);
    if (st == MOE_OK && opt && h->v) st = moei_device_copy_h2d(model->ctx, opt->v, h->v, (size_t)h->state_bytes);
    return st;
}

static int item_set(ck_item *it, const char *name, int32_t ndim, const int64_t *full, const int64_t *start,
                    const int64_t *shape, int64_t first, int64_t count, float *data, int writer)
{
    if (snprintf(it->name, sizeof it->name, "%s", name) >= (int)sizeof it->name || !moei_ckpt_valid_name(it->name))
        return 0;
    it->ndim = ndim;
    for (int32_t d = 0; d < ndim; d++) {
        it->full[d] = full[d];
        it->start[d] = start[d];
        it->shape[d] = shape[d];
    }
    it->first = first;
    it->count = count;
    it->data = data;
    it->writer = writer;
    return 1;
}

/* Whether this rank stores its copy of parameter `e` (or of its moments, `state`): tensors are
 * replicated over dp (dense) or edp (experts) and dense ones held whole by every tp rank are
 * replicated over tp too; the first replica writes. ZeRO-1 moments are each replica's own. */
static int replica_writer(const moe_mesh *mesh, const moe_optimizer *opt, const moei_param *e, int state)
{
    if (e->group == MOEI_GROUP_DENSE && e->tp != MOEI_TP_SHARDED && mesh->rank[MOE_AXIS_TP] != 0) return 0;
    if (state && opt->cfg.zero_stage == 1) return 1;
    return mesh->rank[moei_optimizer_group_axis(e->group)] == 0;
}

/* Every tensor a checkpoint of (model, opt) holds on this rank: parameters, optimizer moments, MoE
 * bias states. */
static moe_status collect_items(moe_model *model, const moe_optimizer *opt, const ck_host *h, ck_item **out,
                                int64_t *count, const char *fn)
{
    const moei_params *p = &model->params;
    const moe_mesh *mesh = model->mesh;
    int64_t n = p->count;
    if (opt) n += (int64_t)p->count * (opt->v ? 2 : 1);
    for (int32_t l = 0; l < model->cfg.num_layers; l++) n += model->blocks[l].is_moe && !model->blocks[l].absent;
    ck_item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    if (!items) return moei_fail(model->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int64_t k = 0;
    int ok = 1;
    char name[MOEI_CKPT_NAME_MAX + 8];
    for (int32_t i = 0; ok && i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        ok = item_set(&items[k++], e->name, e->ndim, e->full_shape, e->start, e->shape, 0, e->numel,
                      h->params + e->offset, replica_writer(mesh, opt, e, 0));
    }
    for (int pass = 0; opt && ok && pass < (opt->v ? 2 : 1); pass++)
        for (int32_t i = 0; ok && i < p->count; i++) {
            const moei_param *e = &p->entries[i];
            int64_t first, cnt, state;
            moei_optimizer_param_state(opt, e, &first, &cnt, &state);
            snprintf(name, sizeof name, "optim.%s.%s", pass ? "v" : "m", e->name);
            ok = item_set(&items[k++], name, e->ndim, e->full_shape, e->start, e->shape, first, cnt,
                          (pass ? h->v : h->m) + state, replica_writer(mesh, opt, e, 1));
        }
    /* the bias state is replicated over the whole pipeline stage: its first rank writes */
    const int stage_first = mesh->rank[MOE_AXIS_DP] == 0 && mesh->rank[MOE_AXIS_TP] == 0;
    for (int32_t l = 0; ok && l < model->cfg.num_layers; l++) {
        if (!model->blocks[l].is_moe || model->blocks[l].absent) continue;
        const moei_moe *mo = &model->blocks[l].moe;
        int64_t shape[1] = {mo->s.num_experts}, zero[1] = {0};
        snprintf(name, sizeof name, "state.%s.expert_bias", mo->prefix);
        ok = item_set(&items[k++], name, 1, shape, zero, shape, 0, shape[0], mo->bias, stage_first);
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
/* Rank 0, first step of a save: the root exists and is clean of stale leftovers, and the
 * temporary directory `tmp` (named by rank 0's pid) exists, empty. */
static moe_status prepare_temp(moe_ctx *ctx, const char *root, const char *tmp, const char *fn)
{
    moe_status st = ensure_root(ctx, root, fn);
    if (st != MOE_OK) return st;
    cleanup_stale(ctx, root, fn);
    if (moei_ckpt_remove_tree(tmp) != 0) return io_fail(ctx, fn, "removal of a stale", tmp);
    if (moei_fs_mkdir(tmp, 0755) != 0) return io_fail(ctx, fn, "mkdir", tmp);
    return MOE_OK;
}

static void remove_temp(moe_ctx *ctx, const char *tmp, const char *fn)
{
    if (moei_ckpt_remove_tree(tmp) != 0)
        moei_log(ctx, MOE_LOG_WARN, "%s: cannot remove '%.300s' (the next save will): %s", fn, tmp, strerror(errno));
}

/* Rank 0, last step of a save, once every shard is in `tmp`: write the index, make the directory
 * durable, rename it into place and move `latest` (see the file comment for the order). On a
 * failure before the rename, `tmp` is removed. */
static moe_status commit_temp(moe_ctx *ctx, const char *root, int64_t step, const char *tmp, const char *index,
                              size_t index_len, const char *fn)
{
    char final[CK_PATH_CAP], aside[CK_PATH_CAP], path[CK_PATH_CAP], name[96];
    snprintf(name, sizeof name, "step-%lld", (long long)step);
    moei_ckpt_join(final, sizeof final, root, name);
    moei_ckpt_concat(aside, sizeof aside, final, ".old");
    int replaced = 0;
    moei_ckpt_join(path, sizeof path, tmp, CK_INDEX_FILE);
    moe_status st = moei_ckpt_write_file(ctx, path, index, index_len, fn);
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
    remove_temp(ctx, tmp, fn);
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

/* ---- this rank's shard and its slice list ------------------------------------------------------ */

/* One slice a rank stores: elements [start, end) of logical tensor `name`, stored as tensor
 * `stored` of that rank's shard file. */
typedef struct ck_piece {
    const char *name, *stored;
    int32_t ndim, rank;
    int64_t seq; /* order within its rank */
    int64_t full[MOE_TENSOR_MAX_DIMS], start[MOE_TENSOR_MAX_DIMS], end[MOE_TENSOR_MAX_DIMS];
    uint64_t xxh64;
} ck_piece;

/* A growable byte buffer for the slice list (sent to rank 0). */
typedef struct ck_bytes {
    unsigned char *p;
    size_t len, cap;
    int oom;
} ck_bytes;

static void bytes_put(ck_bytes *b, const void *data, size_t n)
{
    if (b->oom) return;
    if (b->cap - b->len < n) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc - b->len < n) nc *= 2;
        unsigned char *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void bytes_put_str(ck_bytes *b, const char *s)
{
    uint32_t n = (uint32_t)strlen(s);
    bytes_put(b, &n, sizeof n);
    bytes_put(b, s, n + 1); /* with its NUL, so the receiver can point into the buffer */
}

/* The window of every item this rank writes, cut into boxes of the logical tensor: added to the
 * shard writer (borrowing the item's memory) and described in `list`. Names within the shard: the
 * logical name, then "<name>.part<k>" for further boxes of the same tensor. */
static moe_status build_shard(moe_ctx *ctx, const ck_item *items, int64_t n, moei_st_writer *w, ck_bytes *list,
                              int64_t *stored, const char *fn)
{
    moe_status st = MOE_OK;
    *stored = 0;
    for (int64_t i = 0; st == MOE_OK && i < n; i++) {
        const ck_item *it = &items[i];
        if (!it->writer || it->count == 0) continue;
        moei_ckpt_box boxes[MOEI_CKPT_WINDOW_BOXES];
        int32_t nb = moei_ckpt_window_boxes(it->ndim, it->shape, it->first, it->count, boxes);
        for (int32_t k = 0; st == MOE_OK && k < nb; k++) {
            const moei_ckpt_box *b = &boxes[k];
            char sname[MOEI_CKPT_NAME_MAX + 32];
            if (k == 0) snprintf(sname, sizeof sname, "%s", it->name);
            else snprintf(sname, sizeof sname, "%s.part%d", it->name, (int)k);
            if (!moei_ckpt_valid_name(sname))
                return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tensor name '%s' cannot be stored in a checkpoint", fn,
                                 sname);
            int64_t shape[MOE_TENSOR_MAX_DIMS], start[MOE_TENSOR_MAX_DIMS], end[MOE_TENSOR_MAX_DIMS], numel = 1;
            for (int32_t d = 0; d < it->ndim; d++) {
                shape[d] = b->end[d] - b->start[d];
                start[d] = it->start[d] + b->start[d];
                end[d] = it->start[d] + b->end[d];
                numel *= shape[d];
            }
            const float *data = it->data + (b->first - it->first);
            uint64_t nbytes = (uint64_t)numel * sizeof(float);
            st = moei_st_writer_add(w, sname, MOE_DTYPE_F32, it->ndim, shape, data, nbytes);
            uint64_t h = XXH64(data, (size_t)nbytes, 0);
            bytes_put_str(list, it->name);
            bytes_put_str(list, sname);
            bytes_put(list, &it->ndim, sizeof it->ndim);
            bytes_put(list, it->full, (size_t)it->ndim * sizeof(int64_t));
            bytes_put(list, start, (size_t)it->ndim * sizeof(int64_t));
            bytes_put(list, end, (size_t)it->ndim * sizeof(int64_t));
            bytes_put(list, &h, sizeof h);
            (*stored)++;
        }
    }
    if (st == MOE_OK && list->oom) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    return st;
}

/* Parse rank `rank`'s slice list (written by build_shard on the same build: host byte order),
 * appending to pieces; names point into `buf`, which must outlive them. */
static int parse_list(const unsigned char *buf, size_t len, int32_t rank, ck_piece *pieces, int64_t *n, int64_t cap)
{
    size_t at = 0;
    int64_t seq = 0;
#define TAKE(dst, nbytes)                                                                                              \
    do {                                                                                                               \
        if (len - at < (size_t)(nbytes)) return 0;                                                                     \
        memcpy((dst), buf + at, (size_t)(nbytes));                                                                     \
        at += (size_t)(nbytes);                                                                                        \
    } while (0)
    while (at < len) {
        if (*n == cap) return 0;
        ck_piece *pc = &pieces[(*n)++];
        memset(pc, 0, sizeof *pc);
        for (int s = 0; s < 2; s++) {
            uint32_t sl;
            TAKE(&sl, sizeof sl);
            if (len - at < (size_t)sl + 1 || buf[at + sl] != '\0') return 0;
            if (s == 0) pc->name = (const char *)buf + at;
            else pc->stored = (const char *)buf + at;
            at += (size_t)sl + 1;
        }
        TAKE(&pc->ndim, sizeof pc->ndim);
        if (pc->ndim < 0 || pc->ndim > MOE_TENSOR_MAX_DIMS) return 0;
        TAKE(pc->full, (size_t)pc->ndim * sizeof(int64_t));
        TAKE(pc->start, (size_t)pc->ndim * sizeof(int64_t));
        TAKE(pc->end, (size_t)pc->ndim * sizeof(int64_t));
        TAKE(&pc->xxh64, sizeof pc->xxh64);
        pc->rank = rank;
        pc->seq = seq++;
    }
#undef TAKE
    return 1;
}

/* Every rank's slice list to rank 0 (sizes gathered, then one message per rank). Collective over
 * the world. On rank 0, *all receives the concatenation (rank-major) and offs[r] where rank r's
 * part starts (offs[world] = total). Metadata: left out of the byte counters, like agreement. */
static moe_status gather_lists(moei_comm *world, const ck_bytes *mine, unsigned char **all, uint64_t **offs,
                               const char *fn)
{
    moe_ctx *ctx = world->ctx;
    const int32_t p = world->size;
    const uint64_t sent_before = world->bytes_sent;
    uint64_t *sizes = calloc((size_t)p + 1, sizeof *sizes);
    moe_status st = sizes ? MOE_OK : moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    st = moei_comm_agree(world, st, NULL);
    uint64_t len = mine->len;
    if (st == MOE_OK) st = moei_comm_host_all_gather(world, &len, sizes, sizeof len);
    unsigned char *buf = NULL;
    if (st == MOE_OK && world->rank == 0) {
        uint64_t total = 0;
        for (int32_t r = 0; r < p; r++) {
            uint64_t s = sizes[r];
            sizes[r] = total;
            total += s;
        }
        sizes[p] = total;
        buf = malloc(total ? (size_t)total : 1);
        if (!buf) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory for the slice lists", fn);
        else if (mine->len) memcpy(buf, mine->p, mine->len);
    }
    if (st == MOE_OK) st = moei_comm_agree(world, st, NULL); /* rank 0 can receive */
    if (st == MOE_OK) {
        if (world->rank == 0) {
            for (int32_t r = 1; st == MOE_OK && r < p; r++)
                if (sizes[r + 1] > sizes[r])
                    st = world->ops->recv(world, buf + sizes[r], (int64_t)(sizes[r + 1] - sizes[r]), MOE_DTYPE_U8, r,
                                          CK_TAG);
        } else if (mine->len) {
            st = world->ops->send(world, mine->p, (int64_t)mine->len, MOE_DTYPE_U8, 0, CK_TAG);
        }
    }
    world->bytes_sent = sent_before;
    if (st != MOE_OK) {
        free(buf);
        free(sizes);
        return st;
    }
    *all = buf;
    *offs = sizes;
    return MOE_OK;
}

static int cmp_piece(const void *a, const void *b)
{
    const ck_piece *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Rank 0: the index's tensors from every rank's slices: grouped by logical name, each slice naming
 * its rank's shard file; slices repeated by replicas (the same box) are listed once. Then the index
 * text, parsed back once: it must load (tiling every tensor exactly) before it is committed. */
static moe_status build_index(moe_ctx *ctx, moei_ckpt_index *ix, const unsigned char *lists, const uint64_t *offs,
                              int32_t world, char **text, size_t *text_len, const char *fn)
{
    int64_t cap = 0;
    for (int32_t r = 0; r < world; r++) cap += (int64_t)(offs[r + 1] - offs[r]) / 16 + 1; /* a slice takes > 16 bytes */
    ck_piece *pc = calloc((size_t)cap, sizeof *pc);
    char(*files)[64] = calloc((size_t)world, sizeof *files);
    moei_ckpt_shard *shards = calloc((size_t)cap, sizeof *shards);
    moe_status st = MOE_OK;
    if (!pc || !files || !shards) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int64_t n = 0;
    for (int32_t r = 0; st == MOE_OK && r < world; r++) {
        shard_file_name(files[r], sizeof files[r], r, world);
        if (!parse_list(lists + offs[r], (size_t)(offs[r + 1] - offs[r]), r, pc, &n, cap))
            st = moei_fail(ctx, MOE_ERR_STATE, "%s: the slice list of rank %d is malformed", fn, (int)r);
    }
    if (st == MOE_OK) qsort(pc, (size_t)n, sizeof *pc, cmp_piece);
    ix->tensors = st == MOE_OK ? calloc((size_t)(n ? n : 1), sizeof *ix->tensors) : NULL;
    if (st == MOE_OK && !ix->tensors) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    int64_t ns = 0;
    for (int64_t i = 0; st == MOE_OK && i < n;) {
        int64_t j = i;
        moei_ckpt_tensor *t = &ix->tensors[ix->ntensors++];
        t->name = (char *)pc[i].name;
        t->dtype = MOE_DTYPE_F32;
        t->ndim = pc[i].ndim;
        t->numel = 1;
        for (int32_t d = 0; d < t->ndim; d++) {
            t->shape[d] = pc[i].full[d];
            t->numel *= t->shape[d];
        }
        t->shards = &shards[ns];
        for (; st == MOE_OK && j < n && strcmp(pc[j].name, pc[i].name) == 0; j++) {
            int same = pc[j].ndim == t->ndim && memcmp(pc[j].full, t->shape, (size_t)t->ndim * sizeof(int64_t)) == 0;
            if (!same) {
                st = moei_fail(ctx, MOE_ERR_STATE, "%s: ranks %d and %d disagree on the shape of tensor '%s'", fn,
                               (int)pc[i].rank, (int)pc[j].rank, t->name);
                break;
            }
            int dup = 0;
            for (int32_t k = 0; !dup && k < t->nshards; k++)
                dup = memcmp(t->shards[k].start, pc[j].start, (size_t)t->ndim * sizeof(int64_t)) == 0 &&
                      memcmp(t->shards[k].end, pc[j].end, (size_t)t->ndim * sizeof(int64_t)) == 0;
            if (dup) continue;
            moei_ckpt_shard *s = &shards[ns++];
            s->file = files[pc[j].rank];
            s->tensor = (char *)pc[j].stored;
            memcpy(s->start, pc[j].start, sizeof s->start);
            memcpy(s->end, pc[j].end, sizeof s->end);
            s->xxh64 = pc[j].xxh64;
            t->nshards++;
        }
        i = j;
    }
    if (st == MOE_OK) st = moei_ckpt_index_write(ctx, ix, text, text_len);
    if (st == MOE_OK) {
        moei_ckpt_index *check = NULL;
        st = moei_ckpt_index_parse(ctx, *text, *text_len, CK_INDEX_FILE, &check);
        moei_ckpt_index_free(check);
        if (st != MOE_OK) {
            st = moei_fail(ctx, MOE_ERR_STATE, "%s: the index of this save would not load: %s", fn, moe_last_error());
            free(*text);
            *text = NULL;
        }
    }
    free(ix->tensors);
    ix->tensors = NULL;
    ix->ntensors = 0;
    free(shards);
    free(files);
    free(pc);
    return st;
}

MOE_API moe_status moe_checkpoint_save(moe_model *model, const moe_optimizer *opt, const char *root_dir,
                                       const moe_checkpoint_info *info)
{
    static const char *fn = "moe_checkpoint_save";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    moei_comm *world = moei_mesh_comm(model->mesh, MOE_AXIS_WORLD);
    const int32_t rank = world->rank, nranks = world->size;
    moe_checkpoint_info in;
    info_defaults(&in);
    char root[CK_PATH_CAP] = "";
    /* Arguments are checked on every rank; a bad one anywhere fails the save everywhere. */
    moe_status st = MOE_OK;
    if (!root_dir) st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'root_dir' is NULL", fn);
    else if (!info) st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'info' is NULL", fn);
    else if (opt && opt->model != model)
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' belongs to another model", fn);
    if (st == MOE_OK) {
        st = moei_config_read(&in, sizeof in, info, "moe_checkpoint_info", fn);
        if (st != MOE_OK) st = moei_fail_msg(ctx, st, moe_last_error());
    }
    const int64_t limit = (int64_t)1 << 53; /* integers a JSON number holds exactly */
    if (st == MOE_OK && (in.step < 0 || in.step > limit))
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->step = %lld (must be in [0, 2^53])", fn, (long long)in.step);
    if (st == MOE_OK && (in.data_position < -limit || in.data_position > limit))
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->data_position = %lld (must be within +-2^53)", fn,
                       (long long)in.data_position);
    if (st == MOE_OK && in.keep_last < 0)
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->keep_last = %d (must be >= 0)", fn, (int)in.keep_last);
    if (st == MOE_OK && in.user_json && !moei_ckpt_valid_text(in.user_json))
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info->user_json is not UTF-8 text of at most %u bytes", fn,
                       MOEI_CKPT_USER_MAX);
    if (st == MOE_OK) st = normalize_root(ctx, root_dir, root, sizeof root, fn, "root_dir");

    /* This rank's shard, in memory (the writer borrows the tensors). */
    ck_host h;
    memset(&h, 0, sizeof h);
    ck_item *items = NULL;
    int64_t n = 0, stored = 0;
    moei_st_writer *w = NULL;
    ck_bytes list = {NULL, 0, 0, 0};
    if (st == MOE_OK) st = host_open(&h, model, opt, fn);
    if (st == MOE_OK) st = collect_items(model, opt, &h, &items, &n, fn);
    if (st == MOE_OK) st = moei_st_writer_create(ctx, &w);
    if (st == MOE_OK) st = moei_st_writer_set_metadata(w, "format", "pt");
    if (st == MOE_OK) st = build_shard(ctx, items, n, w, &list, &stored, fn);

    /* 1. rank 0 makes the temporary directory, named by its pid */
    char tmp[CK_PATH_CAP] = "", path[CK_PATH_CAP], name[96];
    int64_t pid = (int64_t)getpid(), *pids = NULL;
    st = moei_comm_agree(world, st, NULL);
    if (st == MOE_OK) {
        pids = malloc((size_t)nranks * sizeof *pids);
        if (!pids) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        st = moei_comm_agree(world, st, NULL);
    }
    if (st == MOE_OK) st = moei_comm_host_all_gather(world, &pid, pids, sizeof pid);
    if (st == MOE_OK) {
        snprintf(name, sizeof name, ".tmp-step-%lld-%lld", (long long)in.step, (long long)pids[0]);
        moei_ckpt_join(tmp, sizeof tmp, root, name);
        if (rank == 0) st = prepare_temp(ctx, root, tmp, fn);
        st = moei_comm_agree(world, st, NULL);
    }
    /* 2. every rank writes and fsyncs its shard; all must succeed */
    if (st == MOE_OK) {
        if (stored > 0) {
            char file[64];
            shard_file_name(file, sizeof file, rank, nranks);
            moei_ckpt_join(path, sizeof path, tmp, file);
            st = moei_st_writer_write(w, path);
        }
        st = moei_comm_agree(world, st, NULL);
        if (st != MOE_OK && rank == 0) remove_temp(ctx, tmp, fn);
    }
    /* 3. rank 0 writes the index and commits; every rank learns the outcome */
    if (st == MOE_OK) {
        unsigned char *lists = NULL;
        uint64_t *offs = NULL;
        st = gather_lists(world, &list, &lists, &offs, fn);
        if (rank == 0) {
            char *index = NULL;
            size_t index_len = 0;
            if (st == MOE_OK) {
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
                st = build_index(ctx, &ix, lists, offs, nranks, &index, &index_len, fn);
            }
            if (st == MOE_OK) st = commit_temp(ctx, root, in.step, tmp, index, index_len, fn);
            else remove_temp(ctx, tmp, fn);
            if (st == MOE_OK) rotate(ctx, root, in.step, in.keep_last, fn);
            free(index);
        }
        free(lists);
        free(offs);
        st = moei_comm_agree(world, st, NULL);
    }
    free(pids);
    free(list.p);
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

/* Shard files opened by a load, each once. */
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

/* The checks of a load that need only this rank: the index against the model, optimizer and
 * arguments, and every tensor this rank holds present with its full shape (ts[i] for items[i]). */
static moe_status match_items(moe_model *model, const moe_optimizer *opt, const moei_ckpt_index *ix,
                              const ck_item *items, int64_t n, const moei_ckpt_tensor **ts, const char *fn)
{
    moe_ctx *ctx = model->ctx;
    size_t nf = 0;
    const moei_ckpt_field *mf = moei_ckpt_model_fields(&nf);
    for (size_t i = 0; i < nf; i++) {
        if (memcmp((const char *)&model->cfg + mf[i].offset, (const char *)&ix->config + mf[i].offset,
                   moei_ckpt_kind_size(mf[i].kind)) == 0)
            continue;
        char a[48], b[48];
        moei_ckpt_field_format(&mf[i], &model->cfg, a, sizeof a);
        moei_ckpt_field_format(&mf[i], &ix->config, b, sizeof b);
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: model config field '%s' is %s but the checkpoint's is %s", fn,
                         mf[i].name, a, b);
    }
    if (opt && !ix->has_optimizer)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' is given but the checkpoint holds no optimizer state",
                         fn);
    if (opt && opt->cfg.type != ix->opt_type)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' is %s but the checkpoint's optimizer is %s", fn,
                         opt->cfg.type == MOE_OPTIMIZER_SGD ? "sgd" : "adamw",
                         ix->opt_type == MOE_OPTIMIZER_SGD ? "sgd" : "adamw");
    for (int64_t i = 0; i < n; i++) {
        const ck_item *it = &items[i];
        const moei_ckpt_tensor *t = moei_ckpt_index_find(ix, it->name);
        if (!t) return moei_fail(ctx, MOE_ERR_FORMAT, "%s: the checkpoint has no tensor '%s'", fn, it->name);
        int ok = t->ndim == it->ndim;
        for (int32_t d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == it->full[d];
        if (!ok) {
            char a[160], b[160];
            shape_text(t->shape, t->ndim, a, sizeof a);
            shape_text(it->full, it->ndim, b, sizeof b);
            return moei_fail(ctx, MOE_ERR_FORMAT, "%s: tensor '%s' has shape [%s] in the checkpoint, the model needs [%s]",
                             fn, it->name, a, b);
        }
        ts[i] = t;
    }
    return MOE_OK;
}

/* Every tensor of the checkpoint must be held by some rank (optimizer state is skipped when no
 * optimizer is loaded). Collective over the world: the ranks pool which tensors they use. */
static moe_status check_unused(moei_comm *world, const moei_ckpt_index *ix, const moei_ckpt_tensor **ts, int64_t n,
                               int skip_optim, const char *fn)
{
    moe_ctx *ctx = world->ctx;
    const size_t nt = (size_t)ix->ntensors;
    if (nt == 0) return MOE_OK;
    unsigned char *used = calloc(nt, 1), *all = calloc(nt, (size_t)world->size);
    moe_status st = used && all ? MOE_OK : moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    for (int64_t i = 0; st == MOE_OK && i < n; i++) used[ts[i] - ix->tensors] = 1;
    st = moei_comm_agree(world, st, NULL);
    if (st == MOE_OK) st = moei_comm_host_all_gather(world, used, all, nt);
    for (int32_t r = 1; st == MOE_OK && r < world->size; r++)
        for (size_t k = 0; k < nt; k++) all[k] |= all[(size_t)r * nt + k];
    for (size_t k = 0; st == MOE_OK && k < nt; k++)
        if (!all[k] && !(skip_optim && is_optim_name(ix->tensors[k].name)))
            st = moei_fail(ctx, MOE_ERR_FORMAT, "%s: the checkpoint holds tensor '%s', which this model does not have", fn,
                           ix->tensors[k].name);
    free(used);
    free(all);
    return st;
}

MOE_API moe_status moe_checkpoint_load(moe_model *model, moe_optimizer *opt, const char *dir,
                                       moe_checkpoint_info *info_out, char *user_json_out, uint32_t user_json_capacity)
{
    static const char *fn = "moe_checkpoint_load";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    moei_comm *world = moei_mesh_comm(model->mesh, MOE_AXIS_WORLD);
    moe_status st = MOE_OK;
    if (!dir) st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'dir' is NULL", fn);
    else if (opt && opt->model != model)
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'opt' belongs to another model", fn);
    else if (info_out && info_out->struct_size < sizeof(uint32_t))
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: info_out->struct_size = %u; call moe_checkpoint_info_init first",
                       fn, (unsigned)info_out->struct_size);
    else if (!user_json_out && user_json_capacity > 0)
        st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: user_json_out is NULL but user_json_capacity = %u", fn,
                       (unsigned)user_json_capacity);

    char stepdir[CK_PATH_CAP];
    moei_ckpt_index *ix = NULL;
    ck_host h;
    memset(&h, 0, sizeof h);
    ck_item *items = NULL;
    int64_t n = 0, nsrc = 0;
    ck_files files = {ctx, stepdir, 0, NULL, NULL};
    const moei_ckpt_tensor **ts = NULL;
    const moei_st_tensor **src = NULL;
    uint64_t user_size = 1;

    if (st == MOE_OK) st = read_index(ctx, dir, &ix, stepdir, sizeof stepdir, fn);
    if (st == MOE_OK) {
        user_size = ix->user ? strlen(ix->user) + 1 : 1;
        if (user_json_out && user_size > user_json_capacity)
            st = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: user_json_capacity = %u but the trainer text needs %llu bytes",
                           fn, (unsigned)user_json_capacity, (unsigned long long)user_size);
    }
    if (st == MOE_OK) st = host_open(&h, model, opt, fn);
    if (st == MOE_OK) st = collect_items(model, opt, &h, &items, &n, fn);
    if (st == MOE_OK) {
        ts = calloc((size_t)(n ? n : 1), sizeof *ts);
        if (!ts) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    if (st == MOE_OK) st = match_items(model, opt, ix, items, n, ts, fn);
    st = moei_comm_agree(world, st, NULL);
    if (st == MOE_OK) st = check_unused(world, ix, ts, n, opt == NULL, fn);

    /* Verify every shard tensor this rank reads, and that the slices cover what it holds, before
     * anything changes. The index tiles each tensor, so whatever the mesh, every element this rank
     * holds is in exactly one slice. */
    for (int64_t i = 0; st == MOE_OK && i < n; i++) nsrc += ts[i]->nshards;
    if (st == MOE_OK) {
        src = calloc((size_t)(nsrc ? nsrc : 1), sizeof *src);
        if (!src) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    for (int64_t i = 0, k = 0; st == MOE_OK && i < n; i++) {
        const ck_item *it = &items[i];
        int64_t covered = 0;
        for (int32_t s = 0; st == MOE_OK && s < ts[i]->nshards; s++, k++) {
            const moei_ckpt_shard *sh = &ts[i]->shards[s];
            int64_t got = moei_ckpt_copy_window(it->ndim, it->start, it->shape, it->first, it->count, NULL, sh->start,
                                                sh->end, NULL);
            if (got == 0) continue;
            covered += got;
            st = verify_shard(&files, ts[i], sh, &src[k], fn);
        }
        if (st == MOE_OK && covered != it->count)
            st = moei_fail(ctx, MOE_ERR_FORMAT, "%s: the slices of tensor '%s' do not cover this rank's part of it", fn,
                           it->name);
    }
    st = moei_comm_agree(world, st, NULL);
    if (st != MOE_OK) goto out;

    /* Every rank is ready: copy. */
    for (int64_t i = 0, k = 0; i < n; i++) {
        const ck_item *it = &items[i];
        for (int32_t s = 0; s < ts[i]->nshards; s++, k++)
            if (src[k])
                moei_ckpt_copy_window(it->ndim, it->start, it->shape, it->first, it->count, it->data,
                                      ts[i]->shards[s].start, ts[i]->shards[s].end, src[k]->data);
    }
    st = host_commit(&h, model, opt);
    st = moei_comm_agree(world, st, NULL);
    if (st != MOE_OK) goto out;
    if (opt) {
        opt->step = ix->opt_step;
        opt->skipped_total = ix->opt_skipped;
    }
    model->rng_step = ix->rng_step;
    for (int32_t l = 0; l < model->cfg.num_layers; l++)
        if (model->blocks[l].is_moe && !model->blocks[l].absent)
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
    free(ts);
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
