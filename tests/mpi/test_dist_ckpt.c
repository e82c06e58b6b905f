/* Distributed checkpoints under mpirun. A run on dp·ep2 with ZeRO-1 saves after K steps and goes
 * on for J more; the checkpoint is then resumed (a) on the same mesh — the next losses, parameters
 * and moments are bit for bit those of the uninterrupted run; (b) on other meshes (another ep,
 * another ZeRO stage) and (c) in one process on one rank — the next losses equal the uninterrupted
 * run's within 1e-6 and the parameters the single-rank reference's within 1e-5; a checkpoint
 * re-saved right after loading on another mesh holds bit for bit the same logical tensors.
 * Then every file-system call of a save fails in turn on one rank: every rank reports the failure
 * (none waits), and the root still loads the previous checkpoint (or the new one when the failure
 * came after it was in place). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "io/fsio.h"
#include "mpi/equiv_util.h"
#include "mpi/mpi_harness.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"

enum { GLOBAL_MICRO = 4, MBS = 2, SEQ = 6, K = 2, J = 2 };

static char g_root[256]; /* one temporary directory shared by all ranks */

static void tiny_config(moe_model_config *c)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = 13;
    c->max_seq_len = SEQ;
    c->d_model = 12;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 2; /* heads and the dense MLP split over tp = 2 */
    c->ffn_hidden = 8;
    c->moe_first_dense = 1;
    c->moe_num_experts = 4;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 5;
    c->moe_shared_expert_hidden = 3;
    c->init_std = 0.2f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
    c->moe_bias_update_rate = 0.01f;
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

typedef struct run {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moe_optimizer *opt;
} run;

/* A mesh (world = tp · pp · dp) and the optimizer's ZeRO stage. */
typedef struct mesh_case {
    int32_t tp, pp, dp, ep;
    uint32_t zero;
} mesh_case;

static int run_open(run *r, const mesh_case *m, int self)
{
    memset(r, 0, sizeof *r);
    moe_ctx_config cc;
    moe_ctx_config_init(&cc, sizeof cc);
    cc.seed = 77;
    CHECK_OK(moe_ctx_create(&cc, &r->ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.tp = m->tp;
    mc.pp = m->pp;
    mc.dp = m->dp;
    mc.ep = m->ep;
    mc.comm_backend = self ? MOE_COMM_SELF : MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(r->ctx, &mc, &r->mesh));
    moe_model_config c;
    tiny_config(&c);
    if (r->mesh) CHECK_OK(moe_model_create(r->ctx, r->mesh, &c, &r->model));
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    oc.clip_grad_norm = 0.5f;
    oc.zero_stage = m->zero;
    if (r->model) CHECK_OK(moe_optimizer_create(r->model, &oc, &r->opt));
    return r->opt != NULL;
}

static const mesh_case one_rank = {1, 1, 1, 1, 0}, one_rank_zero = {1, 1, 1, 1, 1};

static void run_close(run *r)
{
    moe_optimizer_destroy(r->opt);
    moe_model_destroy(r->model);
    moe_mesh_destroy(r->mesh);
    moe_ctx_destroy(r->ctx);
    memset(r, 0, sizeof *r);
}

/* One training step on the global batch of step `step` (GLOBAL_MICRO micro-batches, split over dp). */
static double train(run *r, int64_t step)
{
    enum { PER = MBS * SEQ };
    int32_t tok[GLOBAL_MICRO * PER], tgt[GLOBAL_MICRO * PER];
    for (int64_t g = 0; g < GLOBAL_MICRO; g++)
        for (int i = 0; i < PER; i++) {
            uint64_t key = (uint64_t)(step * 100 + g) * 1000 + (uint64_t)i;
            tok[g * PER + i] = (int32_t)(h_mix(key) % 13);
            tgt[g * PER + i] = (i % 7 == 3) ? -100 : (int32_t)(h_mix(key + 500) % 13);
        }
    const int32_t dp = r->mesh->size[MOE_AXIS_DP], dp_rank = r->mesh->rank[MOE_AXIS_DP], local = GLOBAL_MICRO / dp;
    moe_batch b;
    moe_batch_init(&b, sizeof b);
    b.tokens = tok + (int64_t)dp_rank * local * PER;
    b.targets = tgt + (int64_t)dp_rank * local * PER;
    b.micro_batch_size = MBS;
    b.seq_len = SEQ;
    b.num_micro_batches = local;
    moe_step_stats s = {.struct_size = sizeof s};
    CHECK_OK(moe_train_step(r->model, r->opt, &b, &s));
    return s.loss;
}

static moe_status save(run *r, const char *root, int64_t step)
{
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    info.step = step;
    info.data_position = 1000 + step;
    return moe_checkpoint_save(r->model, r->opt, root, &info);
}

static moe_status load(run *r, const char *root, int64_t *step)
{
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    moe_status st = moe_checkpoint_load(r->model, r->opt, root, &info, NULL, 0);
    if (step) *step = st == MOE_OK ? info.step : -1;
    return st;
}

/* Worst per-tensor relative distance of this rank's slices (any dimensions) from the same slices
 * of a whole model. */
static double params_vs_whole(const moe_model *m, const moe_model *whole)
{
    double worst = 0.0;
    for (int32_t i = 0; i < m->params.count; i++) {
        const moei_param *e = &m->params.entries[i];
        int32_t wi = moei_params_find(&whole->params, e->name);
        CHECK(wi >= 0, "'%s' is not in the whole model", e->name);
        if (wi < 0) continue;
        const float *a = moei_param_data(&m->params, i), *b = moei_param_data(&whole->params, wi);
        double x = eq_slice_rel(e, a, b);
        if (x > worst) worst = x;
    }
    return worst;
}

static void rmrf(const char *path)
{
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", path, e->d_name);
            rmrf(p);
        }
    closedir(d);
    rmdir(path);
}

static int count_prefix(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    int n = 0;
    if (!d) return 0;
    struct dirent *e;
    while ((e = readdir(d))) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

static const char *mesh_text(const mesh_case *m, char *buf, size_t cap)
{
    snprintf(buf, cap, "tp%d pp%d dp%d ep%d zero %u", m->tp, m->pp, m->dp, m->ep, m->zero);
    return buf;
}

/* Train on mesh `a` for K steps, save, train J more; resume on `a` (bit for bit), on every mesh of
 * `cases`, on one rank, and the single-rank run's checkpoint on `a`. */
static void resume_from(const mesh_case *am, const mesh_case *cases, int ncases)
{
    char root[300], resave[300], single[300], mt[64];
    static int round = 0;
    round++;
    snprintf(root, sizeof root, "%s/run-%d", g_root, round);
    snprintf(single, sizeof single, "%s/single-%d", g_root, round);
    run a, ref;
    int ok = run_open(&a, am, 0);
    ok &= run_open(&ref, &one_rank, 1);
    if (!ok) {
        run_close(&a);
        run_close(&ref);
        return;
    }
    if (h_rank == 0) printf("  from %s\n", mesh_text(am, mt, sizeof mt));
    double la[K + J], lr[K + J];
    for (int64_t s = 0; s < K; s++) {
        la[s] = train(&a, s);
        lr[s] = train(&ref, s);
    }
    CHECK_OK(save(&a, root, K));
    if (h_rank == 0) CHECK_OK(save(&ref, single, K));
    for (int64_t s = K; s < K + J; s++) {
        la[s] = train(&a, s);
        lr[s] = train(&ref, s);
    }
    MPI_Barrier(MPI_COMM_WORLD);

    /* (a) the same mesh and stage: bit for bit */
    run b;
    if (run_open(&b, am, 0)) {
        int64_t step = -1;
        CHECK_OK(load(&b, root, &step));
        CHECK(step == K, "loaded step %lld", (long long)step);
        for (int64_t s = K; s < K + J; s++) {
            double l = train(&b, s);
            CHECK(l == la[s], "same mesh, step %lld: loss %.17g, uninterrupted %.17g", (long long)s, l, la[s]);
        }
        const moei_params *p = &a.model->params, *q = &b.model->params;
        CHECK(memcmp(p->data, q->data, (size_t)p->total * sizeof(float)) == 0, "same mesh: parameters differ");
        CHECK(b.opt->count == a.opt->count && memcmp(a.opt->m, b.opt->m, (size_t)a.opt->count * 4) == 0 &&
                  memcmp(a.opt->v, b.opt->v, (size_t)a.opt->count * 4) == 0,
              "same mesh: moments differ");
        CHECK(b.opt->step == a.opt->step, "optimizer step %lld vs %lld", (long long)b.opt->step, (long long)a.opt->step);
    }
    run_close(&b);

    /* (b) other meshes; each re-saves right after loading */
    for (int ci = 0; ci < ncases; ci++) {
        const mesh_case *mc = &cases[ci];
        mesh_text(mc, mt, sizeof mt);
        if (!run_open(&b, mc, 0)) {
            run_close(&b);
            continue;
        }
        int64_t step = -1;
        CHECK_OK(load(&b, root, &step));
        CHECK(step == K, "loaded step %lld", (long long)step);
        snprintf(resave, sizeof resave, "%s/resave-%d-%d", g_root, round, ci);
        CHECK_OK(save(&b, resave, K));
        double worst = 0.0;
        for (int64_t s = K; s < K + J; s++) {
            double l = train(&b, s);
            CHECK(rel(l, la[s]) < 1e-6, "%s, step %lld: loss %.9g, uninterrupted %.9g", mt, (long long)s, l, la[s]);
            if (rel(l, la[s]) > worst) worst = rel(l, la[s]);
        }
        double pr = params_vs_whole(b.model, ref.model);
        CHECK(pr < 1e-5, "%s: parameters differ from the single-rank run by %.3g", mt, pr);
        if (h_rank == 0)
            printf("    resumed on %s: losses within %.2e, parameters within %.2e of one rank\n", mt, worst, pr);
        run_close(&b);
    }

    /* (e) the single-rank run's checkpoint resumed on mesh a: ZeRO chunks cut the one shard's
     * tensors in the middle of rows */
    if (run_open(&b, am, 0)) {
        CHECK_OK(load(&b, single, NULL));
        for (int64_t s = K; s < K + J; s++) {
            double l = train(&b, s);
            CHECK(rel(l, lr[s]) < 1e-6, "from one rank, step %lld: loss %.9g, uninterrupted %.9g", (long long)s, l, lr[s]);
        }
        double pr = params_vs_whole(b.model, ref.model);
        CHECK(pr < 1e-5, "from one rank: parameters differ from the single-rank run by %.3g", pr);
    }
    run_close(&b);

    /* (c) one process on one rank reads the parallel checkpoint; (d) re-saved checkpoints hold
     * the same logical tensors bit for bit */
    if (h_rank == 0) {
        for (uint32_t zero = 0; zero <= 1; zero++) {
            if (!run_open(&b, zero ? &one_rank_zero : &one_rank, 1)) {
                run_close(&b);
                continue;
            }
            int64_t step = -1;
            CHECK_OK(load(&b, root, &step));
            double worst = 0.0;
            for (int64_t s = K; s < K + J; s++) {
                double l = train(&b, s);
                CHECK(rel(l, la[s]) < 1e-6, "one rank, zero %u, step %lld: loss %.9g, uninterrupted %.9g", zero,
                      (long long)s, l, la[s]);
                if (rel(l, la[s]) > worst) worst = rel(l, la[s]);
            }
            double pr = params_vs_whole(b.model, ref.model), pa = params_vs_whole(a.model, b.model);
            CHECK(pr < 1e-5, "one rank: parameters differ from the single-rank run by %.3g", pr);
            CHECK(pa < 1e-6, "one rank: parameters differ from the uninterrupted run by %.3g", pa);
            printf("    resumed on one rank, zero %u: losses within %.2e; parameters within %.2e of the "
                   "uninterrupted run\n", zero, worst, pa);
            run_close(&b);
        }
        run x, y;
        run_open(&x, &one_rank, 1);
        run_open(&y, &one_rank, 1);
        CHECK_OK(load(&x, root, NULL));
        for (int ci = 0; ci < ncases; ci++) {
            snprintf(resave, sizeof resave, "%s/resave-%d-%d", g_root, round, ci);
            CHECK_OK(load(&y, resave, NULL));
            const moei_params *p = &x.model->params, *q = &y.model->params;
            size_t bytes = (size_t)p->total * sizeof(float);
            CHECK(memcmp(p->data, q->data, bytes) == 0, "re-save %d: parameters differ", ci);
            CHECK(memcmp(x.opt->m, y.opt->m, bytes) == 0 && memcmp(x.opt->v, y.opt->v, bytes) == 0,
                  "re-save %d: moments differ", ci);
            CHECK(x.opt->step == y.opt->step && x.model->rng_step == y.model->rng_step, "re-save %d: counters differ", ci);
            for (int32_t l = 0; l < x.model->cfg.num_layers; l++)
                if (x.model->blocks[l].is_moe)
                    CHECK(memcmp(x.model->blocks[l].moe.bias, y.model->blocks[l].moe.bias, 4 * sizeof(float)) == 0,
                          "re-save %d: layer %d bias differs", ci, (int)l);
        }
        run_close(&x);
        run_close(&y);
    }
    run_close(&a);
    run_close(&ref);
}

static void test_resume_dp_ep(void)
{
    const int32_t w = h_size;
    const mesh_case a = {1, 1, w, 2, 1};
    const mesh_case cases[] = {{1, 1, w, w, 1}, {1, 1, w, 1, 1}, {1, 1, w, 2, 0}, {1, 1, w, 1, 0}};
    resume_from(&a, cases, 4);
}

/* Tensor and pipeline parallelism: slices along other dimensions, stages holding some layers. */
static void test_resume_tp_pp(void)
{
    const int32_t w = h_size;
    const mesh_case a = {2, w / 2, 1, 2, 1}; /* 4 ranks: tp2·pp2·ep2; 2 ranks: tp2·ep2 */
    const mesh_case cases[] = {{1, 1, w, w, 1}, {2, 1, w / 2, 1, 1}, {1, w / 2, 2, 2, 0}};
    resume_from(&a, cases, 3);
}

static int count_hook(moei_fs_op op, const char *path, uint64_t n, void *user)
{
    (void)op;
    (void)path;
    (void)n;
    (void)user;
    return 0;
}

/* Each file-system call of a save fails in turn on one rank. */
static void test_faults(void)
{
    char root[300];
    snprintf(root, sizeof root, "%s/faults", g_root);
    const mesh_case am = {1, 1, h_size, 2, 1};
    run a;
    if (!run_open(&a, &am, 0)) {
        run_close(&a);
        return;
    }
    const size_t bytes = (size_t)a.model->params.total * sizeof(float);
    float *p1 = malloc(bytes), *p2 = malloc(bytes);
    train(&a, 0);
    CHECK_OK(save(&a, root, 1));
    memcpy(p1, a.model->params.data, bytes);
    train(&a, 1);
    memcpy(p2, a.model->params.data, bytes);
    run probe;
    run_open(&probe, &am, 0);
    const int32_t failing[2] = {h_size - 1, 0};
    for (int fi = 0; fi < 2; fi++) {
        const int32_t f = failing[fi];
        /* how many calls a clean save makes on the failing rank */
        if (h_rank == f) moei_fs_set_fault_hook(count_hook, NULL);
        CHECK_OK(save(&a, root, 2));
        int64_t calls = h_rank == f ? (int64_t)moei_fs_call_count() : 0;
        moei_fs_reset_faults();
        MPI_Bcast(&calls, 1, MPI_INT64_T, f, MPI_COMM_WORLD);
        CHECK(calls >= 6, "rank %d made %lld calls", (int)f, (long long)calls);
        int saw_new = 0, saw_old = 0;
        for (int64_t k = 1; k <= calls + 1; k++) {
            /* the previous checkpoint: step 1 */
            if (h_rank == 0) {
                char p[400];
                snprintf(p, sizeof p, "%s/step-2", root);
                rmrf(p);
                snprintf(p, sizeof p, "%s/latest", root);
                FILE *fl = fopen(p, "w");
                fputs("step-1\n", fl);
                fclose(fl);
            }
            MPI_Barrier(MPI_COMM_WORLD);
            if (h_rank == f) moei_fs_fail_nth(k, k % 2 ? EIO : ENOSPC);
            moe_status st = save(&a, root, 2);
            moei_fs_reset_faults();
            moe_status all[64];
            MPI_Allgather(&st, 1, MPI_INT32_T, all, 1, MPI_INT32_T, MPI_COMM_WORLD);
            for (int r = 0; r < h_size; r++)
                CHECK(all[r] == st, "rank %d fails call %lld: rank %d returned %d, this rank %d", (int)f, (long long)k, r,
                      (int)all[r], (int)st);
            if (k <= calls && f != 0) /* its every call is part of writing its shard */
                CHECK(st == MOE_ERR_IO, "fault at call %lld of rank %d: %s", (long long)k, (int)f, moe_status_string(st));
            if (st != MOE_OK && h_rank != f)
                CHECK(strstr(moe_ctx_last_error(a.ctx), "failed") != NULL, "message: %s", moe_ctx_last_error(a.ctx));
            if (k == calls + 1) CHECK(st == MOE_OK, "a save without faults failed: %s", moe_ctx_last_error(a.ctx));
            int64_t step = -1;
            CHECK_OK(load(&probe, root, &step));
            const float *want = step == 2 ? p2 : p1;
            CHECK(step == 1 || step == 2, "loaded step %lld", (long long)step);
            CHECK(memcmp(probe.model->params.data, want, bytes) == 0, "fault at call %lld of rank %d: step %lld loads "
                  "other parameters", (long long)k, (int)f, (long long)step);
            CHECK(st != MOE_OK || step == 2, "a successful save is not what loads");
            saw_new |= step == 2;
            saw_old |= step == 1;
        }
        CHECK(saw_old && saw_new, "rank %d: old %d new %d", (int)f, saw_old, saw_new);
        /* a clean save leaves nothing temporary behind */
        CHECK_OK(save(&a, root, 3));
        if (h_rank == 0) CHECK(count_prefix(root, ".tmp-") == 0, "temporary directories are left in the root");
    }
    free(p1);
    free(p2);
    run_close(&probe);
    run_close(&a);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    if (h_rank == 0) {
        snprintf(g_root, sizeof g_root, "/tmp/moe_dist_ckpt_XXXXXX");
        if (!mkdtemp(g_root)) g_root[0] = '\0';
    }
    MPI_Bcast(g_root, sizeof g_root, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (g_root[0]) {
        H_RUN(test_resume_dp_ep);
        H_RUN(test_resume_tp_pp);
        H_RUN(test_faults);
    } else {
        h_total_fail = 1;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (h_rank == 0 && g_root[0]) rmrf(g_root);
    MPI_Finalize();
    return h_total_fail ? 1 : 0;
}
