/* Shared by the checkpoint tests: status/message assertions, scratch directories, a tiny MoE
 * model, deterministic batches, and snapshots of the complete training state (parameters,
 * optimizer moments and counters, MoE bias states, RNG step) compared bit for bit. */
#ifndef MOE_TESTS_CKPT_UTIL_H
#define MOE_TESTS_CKPT_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include <moe/moe.h>
#include <moe/checkpoint.h>

#include "nn/model.h"
#include "optim/optimizer.h"

#define CK_ASSERT_OK(expr)                                                                                            \
    do {                                                                                                              \
        moe_status st_ = (expr);                                                                                      \
        if (st_ != MOE_OK) fail_msg("%s -> %s: %s", #expr, moe_status_string(st_), moe_last_error());                \
    } while (0)

/* `expr` returns `code` and moe_last_error() contains every string given after it. */
#define CK_ASSERT_FAILS(expr, code, ...)                                                                              \
    do {                                                                                                              \
        moe_status st_ = (expr);                                                                                      \
        const char *msg_ = moe_last_error();                                                                          \
        if (st_ != (code))                                                                                            \
            fail_msg("%s returned %s, expected %s; message '%s'", #expr, moe_status_string(st_),                      \
                     moe_status_string(code), msg_);                                                                  \
        const char *subs_[] = {__VA_ARGS__, NULL};                                                                    \
        for (size_t i_ = 0; subs_[i_]; i_++)                                                                          \
            if (!strstr(msg_, subs_[i_])) fail_msg("%s: message '%s' lacks '%s'", #expr, msg_, subs_[i_]);           \
    } while (0)

/* ---- scratch directories ------------------------------------------------------------------------ */

static inline void ck_make_temp(char *buf, size_t cap, const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, cap, "%s/moe_%s_XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    if (!mkdtemp(buf)) fail_msg("mkdtemp(%s): %s", buf, strerror(errno));
}

/* rm -rf, written independently of the library's own tree removal. */
static inline void ck_rmrf(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) return;
    if (S_ISDIR(sb.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            char child[4096];
            while ((e = readdir(d)) != NULL) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                snprintf(child, sizeof child, "%s/%s", path, e->d_name);
                ck_rmrf(child);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* Number of entries of `dir` whose name starts with `prefix` (or contains it when contains != 0). */
static inline int ck_count_entries(const char *dir, const char *pat, int contains)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (contains ? strstr(e->d_name, pat) != NULL : strncmp(e->d_name, pat, strlen(pat)) == 0) n++;
    }
    closedir(d);
    return n;
}

static inline int ck_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static inline char *ck_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = '\0';
    if (len) *len = (size_t)n;
    return b;
}

static inline void ck_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) fail_msg("cannot write %s", path);
    fclose(f);
}

/* ---- model, data ---------------------------------------------------------------------------------- */

static inline void ck_tiny_config(moe_model_config *c)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = 13;
    c->max_seq_len = 16;
    c->d_model = 8;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->head_dim = 4;
    c->ffn_hidden = 12;
    c->moe_num_experts = 4;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 6;
    c->init_std = 0.3f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
}

typedef struct ck_run {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moe_optimizer *opt;
} ck_run;

static inline void ck_run_create(ck_run *r, const moe_model_config *c, const moe_optimizer_config *oc, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    moe_ctx_config cc;
    moe_ctx_config_init(&cc, sizeof cc);
    cc.seed = seed;
    CK_ASSERT_OK(moe_ctx_create(&cc, &r->ctx));
    CK_ASSERT_OK(moe_mesh_create(r->ctx, NULL, &r->mesh));
    CK_ASSERT_OK(moe_model_create(r->ctx, r->mesh, c, &r->model));
    if (oc) CK_ASSERT_OK(moe_optimizer_create(r->model, oc, &r->opt));
}

static inline void ck_run_destroy(ck_run *r)
{
    moe_optimizer_destroy(r->opt);
    moe_model_destroy(r->model);
    moe_mesh_destroy(r->mesh);
    moe_ctx_destroy(r->ctx);
    memset(r, 0, sizeof *r);
}

static inline uint64_t ck_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The batch of step `step` (batch 2 x seq 8), a function of the step alone. */
static inline double ck_train_step(ck_run *r, int64_t step)
{
    enum { B = 2, T = 8 };
    int32_t tok[B * T], tgt[B * T];
    uint64_t s = (uint64_t)step * 2654435761u + 12345u;
    for (int i = 0; i < B * T; i++) {
        tok[i] = (int32_t)(ck_next(&s) % 13u);
        tgt[i] = (int32_t)(ck_next(&s) % 13u);
    }
    tgt[3] = -100;
    moe_batch b;
    moe_batch_init(&b, sizeof b);
    b.tokens = tok;
    b.targets = tgt;
    b.micro_batch_size = 1;
    b.seq_len = T;
    b.num_micro_batches = B;
    moe_step_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    CK_ASSERT_OK(moe_train_step(r->model, r->opt, &b, &st));
    return st.loss;
}

/* ---- state snapshots ------------------------------------------------------------------------------ */

typedef struct ck_state {
    int64_t total;
    float *params, *m, *v;
    int32_t layers, experts;
    float *bias; /* [layers][experts], 0 for dense layers */
    uint64_t rng_step;
    int64_t opt_step, opt_skipped;
} ck_state;

static inline void ck_snapshot(const moe_model *model, const moe_optimizer *opt, ck_state *s)
{
    memset(s, 0, sizeof *s);
    s->total = model->params.total;
    size_t bytes = (size_t)s->total * sizeof(float);
    s->params = malloc(bytes);
    memcpy(s->params, model->params.data, bytes);
    if (opt) {
        s->m = malloc(bytes);
        memcpy(s->m, opt->m, bytes);
        if (opt->v) {
            s->v = malloc(bytes);
            memcpy(s->v, opt->v, bytes);
        }
        s->opt_step = opt->step;
        s->opt_skipped = opt->skipped_total;
    }
    s->layers = model->cfg.num_layers;
    s->experts = model->cfg.moe_num_experts;
    s->bias = calloc((size_t)(s->layers * s->experts) + 1, sizeof(float));
    for (int32_t l = 0; l < s->layers; l++)
        if (model->blocks[l].is_moe) memcpy(s->bias + l * s->experts, model->blocks[l].moe.bias, (size_t)s->experts * 4);
    s->rng_step = model->rng_step;
}

static inline void ck_state_free(ck_state *s)
{
    free(s->params);
    free(s->m);
    free(s->v);
    free(s->bias);
    memset(s, 0, sizeof *s);
}

/* 1 when two snapshots are bitwise equal (optimizer part compared only when both have it). */
static inline int ck_state_equal(const ck_state *a, const ck_state *b)
{
    size_t bytes = (size_t)a->total * sizeof(float);
    if (a->total != b->total || memcmp(a->params, b->params, bytes) != 0) return 0;
    if ((a->m != NULL) != (b->m != NULL) || (a->v != NULL) != (b->v != NULL)) return 0;
    if (a->m && memcmp(a->m, b->m, bytes) != 0) return 0;
    if (a->v && memcmp(a->v, b->v, bytes) != 0) return 0;
    if (a->m && (a->opt_step != b->opt_step || a->opt_skipped != b->opt_skipped)) return 0;
    if (memcmp(a->bias, b->bias, (size_t)(a->layers * a->experts) * sizeof(float)) != 0) return 0;
    return a->rng_step == b->rng_step;
}

#endif
