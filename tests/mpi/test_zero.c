/* ZeRO-1 under mpirun: a run with zero_stage = 1 follows the replicated optimizer on the same mesh
 * and the single-rank run on the same global batch (loss, grad norm, every parameter, AdamW and
 * SGD) for dp, dp·ep2 and dp·ep=world; each rank keeps optimizer state for its chunk only (the
 * chunk formula, checked against the ctx's allocation counter); a step moves the bytes of one
 * all-reduce (reduce-scatter + all-gather); and a non-finite gradient on one rank, in a chunk
 * another rank owns, skips the step on every rank. */
#include <math.h>
#include <stdlib.h>

#include "mpi/equiv_util.h"
#include "mpi/mpi_harness.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"

enum { MICRO_LOCAL = 2, MBS = 2, SEQ = 6, STEPS = 3 };

static void tiny_config(moe_model_config *c, int32_t tp)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = 13;
    c->max_seq_len = SEQ;
    c->d_model = 12;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->ffn_hidden = 7; /* odd sizes: the regions need padding to split evenly */
    c->moe_first_dense = 1;
    c->moe_num_experts = 4;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 5;
    c->moe_shared_expert_hidden = 3;
    c->init_std = 0.2f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
    c->moe_bias_update_rate = 0.01f;
    if (tp > 1) { /* heads and the dense MLP must split over tp */
        c->num_kv_heads = 2;
        c->ffn_hidden = 8;
    }
}

static void global_micro(int64_t g, int32_t *tok, int32_t *tgt)
{
    for (int i = 0; i < MBS * SEQ; i++) {
        tok[i] = (int32_t)(h_mix((uint64_t)(g * 1000 + i)) % 13);
        tgt[i] = (i % 7 == 3) ? -100 : (int32_t)(h_mix((uint64_t)(g * 1000 + i + 500)) % 13);
    }
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

typedef struct run {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moe_optimizer *opt;
    uint64_t opt_bytes; /* ctx memory the optimizer took */
} run;

static void run_open(run *r, int32_t tp, int32_t dp, int32_t ep, int self, const moe_model_config *c,
                     const moe_optimizer_config *oc)
{
    memset(r, 0, sizeof *r);
    CHECK_OK(moe_ctx_create(NULL, &r->ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.tp = tp;
    mc.dp = dp;
    mc.ep = ep;
    mc.comm_backend = self ? MOE_COMM_SELF : MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(r->ctx, &mc, &r->mesh));
    if (r->mesh) CHECK_OK(moe_model_create(r->ctx, r->mesh, c, &r->model));
    uint64_t before = 0, after = 0;
    moe_ctx_memory(r->ctx, &before, NULL);
    if (r->model) CHECK_OK(moe_optimizer_create(r->model, oc, &r->opt));
    moe_ctx_memory(r->ctx, &after, NULL);
    r->opt_bytes = after - before;
}

static void run_close(run *r)
{
    moe_optimizer_destroy(r->opt);
    moe_model_destroy(r->model);
    moe_mesh_destroy(r->mesh);
    moe_ctx_destroy(r->ctx);
    memset(r, 0, sizeof *r);
}

/* The chunk formula, from the logical shapes alone: dense tensors whole on every rank, experts
 * split over ep; each region padded to a multiple of its replica count and split by it. */
static int64_t chunk_formula(const moe_model *m, int32_t dp, int32_t ep)
{
    const int32_t edp = dp / ep;
    int64_t dense = 0, expert = 0;
    for (int32_t i = 0; i < m->params.count; i++) {
        const moei_param *e = &m->params.entries[i];
        int64_t full = 1;
        for (int32_t d = 0; d < e->ndim; d++) full *= e->full_shape[d];
        if (e->group == MOEI_GROUP_EXPERT) expert += full / ep;
        else dense += full;
    }
    int64_t dpad = (dense + dp - 1) / dp * dp, epad = (expert + edp - 1) / edp * edp;
    return dpad / dp + epad / edp;
}

/* Per-tensor relative distance of this rank's slice (any dimensions) from the same slice of a
 * whole-model tensor. */
static double param_rel(const moei_params *p, const moei_params *rp, int32_t i)
{
    return eq_slice_rel(&p->entries[i], moei_param_data(p, i), moei_param_data(rp, i));
}

static void equivalence(int32_t tp, int32_t dp, int32_t ep, int32_t type)
{
    moe_model_config c;
    tiny_config(&c, tp);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.type = type;
    oc.lr = 1e-2f;
    oc.clip_grad_norm = 0.5f; /* clipping active: the global norm must agree */
    run z, nz, ref;
    oc.zero_stage = 1;
    run_open(&z, tp, dp, ep, 0, &c, &oc);
    oc.zero_stage = 0;
    run_open(&nz, tp, dp, ep, 0, &c, &oc);
    run_open(&ref, 1, 1, 1, 1, &c, &oc);
    if (!z.opt || !nz.opt || !ref.opt) {
        run_close(&z);
        run_close(&nz);
        run_close(&ref);
        return;
    }
    /* memory: 2 moments (AdamW; SGD: 1) + 1 decay flag per element of the chunk */
    /* with tp the dense shards depend on the layer shapes: the chunks of the regions as laid out */
    const int64_t chunk = tp == 1 ? chunk_formula(z.model, dp, ep)
                                  : z.model->params.region_size[0] / dp + z.model->params.region_size[1] / (dp * tp / ep);
    const uint64_t per = type == MOE_OPTIMIZER_ADAMW ? 2 * sizeof(float) + 1 : sizeof(float) + 1;
    CHECK(z.opt->count == chunk, "dp%d ep%d: ZeRO state holds %lld elements, the chunk formula says %lld", dp, ep,
          (long long)z.opt->count, (long long)chunk);
    CHECK(z.opt_bytes == (uint64_t)chunk * per, "dp%d ep%d: ZeRO optimizer took %llu bytes, want %llu", dp, ep,
          (unsigned long long)z.opt_bytes, (unsigned long long)((uint64_t)chunk * per));
    CHECK(nz.opt_bytes == (uint64_t)nz.model->params.total * per, "replicated optimizer took %llu bytes",
          (unsigned long long)nz.opt_bytes);

    const int32_t dp_rank = z.mesh->rank[MOE_AXIS_DP];
    const int64_t G = (int64_t)dp * MICRO_LOCAL, per_mb = MBS * SEQ;
    int32_t *gtok = malloc((size_t)(G * per_mb) * sizeof *gtok), *gtgt = malloc((size_t)(G * per_mb) * sizeof *gtgt);
    for (int64_t g = 0; g < G; g++) global_micro(g, gtok + g * per_mb, gtgt + g * per_mb);
    moe_batch local, global;
    moe_batch_init(&local, sizeof local);
    local.tokens = gtok + (int64_t)dp_rank * MICRO_LOCAL * per_mb;
    local.targets = gtgt + (int64_t)dp_rank * MICRO_LOCAL * per_mb;
    local.micro_batch_size = MBS;
    local.seq_len = SEQ;
    local.num_micro_batches = MICRO_LOCAL;
    global = local;
    global.tokens = gtok;
    global.targets = gtgt;
    global.num_micro_batches = (int32_t)G;
    const char *tn = type == MOE_OPTIMIZER_ADAMW ? "adamw" : "sgd";
    for (int step = 0; step < STEPS; step++) {
        moe_step_stats s = {.struct_size = sizeof s}, n = {.struct_size = sizeof n}, r = {.struct_size = sizeof r};
        CHECK_OK(moe_train_step(z.model, z.opt, &local, &s));
        CHECK_OK(moe_train_step(nz.model, nz.opt, &local, &n));
        CHECK_OK(moe_train_step(ref.model, ref.opt, &global, &r));
        CHECK(rel(s.loss, r.loss) < 1e-5, "%s dp%d ep%d step %d: loss %.9g vs single rank %.9g", tn, dp, ep, step,
              s.loss, r.loss);
        CHECK(rel(s.grad_norm, r.grad_norm) < 1e-5, "%s dp%d ep%d step %d: grad norm %.9g vs single rank %.9g", tn, dp,
              ep, step, s.grad_norm, r.grad_norm);
        /* same mesh: the summed gradients are the same bits; only the norm's summation order differs */
        CHECK(rel(s.loss, n.loss) < 1e-6, "%s dp%d ep%d step %d: loss %.9g vs replicated %.9g", tn, dp, ep, step, s.loss,
              n.loss);
        CHECK(rel(s.grad_norm, n.grad_norm) < 1e-12, "%s dp%d ep%d step %d: grad norm %.17g vs replicated %.17g", tn, dp,
              ep, step, s.grad_norm, n.grad_norm);
        CHECK(s.skipped == 0 && s.step == step + 1, "%s: step %d skipped %u, counter %lld", tn, step, s.skipped,
              (long long)s.step);
    }
    double worst_ref = 0.0, worst_nz = 0.0;
    for (int32_t i = 0; i < z.model->params.count; i++) {
        double a = param_rel(&z.model->params, &ref.model->params, i);
        /* the replicated run holds the same shard as the ZeRO run */
        const moei_param *e = &z.model->params.entries[i];
        const float *x = moei_param_data(&z.model->params, i), *y = moei_param_data(&nz.model->params, i);
        double d2 = 0.0, r2 = 0.0;
        for (int64_t j = 0; j < e->numel; j++) {
            d2 += ((double)x[j] - y[j]) * ((double)x[j] - y[j]);
            r2 += (double)y[j] * y[j];
        }
        double b = sqrt(d2 / (r2 > 0 ? r2 : 1));
        CHECK(a < 1e-5, "%s dp%d ep%d: %s differs from the single-rank run by %.3g", tn, dp, ep, e->name, a);
        CHECK(b < 1e-6, "%s dp%d ep%d: %s differs from the replicated optimizer by %.3g", tn, dp, ep, e->name, b);
        if (a > worst_ref) worst_ref = a;
        if (b > worst_nz) worst_nz = b;
    }
    /* every replica holds the whole region again after the all-gather */
    const moei_params *p = &z.model->params;
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        moei_comm *grp = moei_mesh_comm(z.mesh, g == 0 ? MOE_AXIS_DP : MOE_AXIS_EDP);
        int64_t n = p->region_size[g];
        float *all = malloc((size_t)(n * grp->size + 1) * sizeof(float));
        CHECK_OK(moei_comm_host_all_gather(grp, p->data + p->region_offset[g], all, (size_t)n * sizeof(float)));
        for (int32_t r = 1; r < grp->size; r++)
            CHECK(memcmp(all, all + (int64_t)r * n, (size_t)n * sizeof(float)) == 0,
                  "%s dp%d ep%d: replica %d of region %d differs", tn, dp, ep, (int)r, (int)g);
        free(all);
    }
    for (int32_t l = 0; l < c.num_layers; l++)
        if (z.model->blocks[l].is_moe)
            CHECK(memcmp(z.model->blocks[l].moe.bias, ref.model->blocks[l].moe.bias, 4 * sizeof(float)) == 0,
                  "layer %d expert bias differs", (int)l);
    if (h_rank == 0)
        printf("  %s tp%d dp%d ep%d: chunk %lld of %lld elements; params vs single rank %.2e, vs replicated %.2e\n", tn,
               tp, dp, ep, (long long)chunk, (long long)p->total, worst_ref, worst_nz);
    free(gtok);
    free(gtgt);
    run_close(&z);
    run_close(&nz);
    run_close(&ref);
}

static void test_adamw_dp(void) { equivalence(1, h_size, 1, MOE_OPTIMIZER_ADAMW); }
static void test_adamw_ep2(void) { equivalence(1, h_size, 2, MOE_OPTIMIZER_ADAMW); }
static void test_adamw_ep_all(void) { equivalence(1, h_size, h_size, MOE_OPTIMIZER_ADAMW); }
static void test_sgd_ep2(void) { equivalence(1, h_size, 2, MOE_OPTIMIZER_SGD); }
/* tensor parallelism: dense slices along any dimension, replicated norms counted once */
static void test_adamw_tp2_ep2(void) { equivalence(2, h_size / 2, 2, MOE_OPTIMIZER_ADAMW); }

/* Bytes one optimizer step sends over dp and edp: a reduce-scatter and an all-gather of each
 * region, (p - 1) chunks each way, the same volume as the replicated optimizer's all-reduce. */
static void test_volume(void)
{
    const int32_t dp = h_size, ep = 2, edp = dp / ep;
    moe_model_config c;
    tiny_config(&c, 1);
    c.moe_bias_update_rate = 0.0f; /* no count all-reduce in the step */
    for (uint32_t stage = 0; stage <= 1; stage++) {
        moe_optimizer_config oc;
        moe_optimizer_config_init(&oc, sizeof oc);
        oc.zero_stage = stage;
        run r;
        run_open(&r, 1, dp, ep, 0, &c, &oc);
        if (!r.opt) {
            run_close(&r);
            continue;
        }
        int32_t tok[MBS * SEQ], tgt[MBS * SEQ];
        global_micro(h_rank, tok, tgt);
        CHECK_OK(moe_model_forward_backward(r.model, tok, tgt, MBS, SEQ, 0.25f, NULL, NULL));
        moei_comm *dpc = moei_mesh_comm(r.mesh, MOE_AXIS_DP), *edpc = moei_mesh_comm(r.mesh, MOE_AXIS_EDP);
        uint64_t d0 = dpc->bytes_sent, e0 = edpc->bytes_sent;
        moe_optimizer_stats s = {.struct_size = sizeof s};
        CHECK_OK(moe_optimizer_step(r.opt, &s));
        const moei_params *p = &r.model->params;
        uint64_t wd = 2ull * (uint64_t)(dp - 1) * (uint64_t)(p->region_size[0] / dp) * sizeof(float);
        uint64_t we = 2ull * (uint64_t)(edp - 1) * (uint64_t)(p->region_size[1] / edp) * sizeof(float);
        CHECK(dpc->bytes_sent - d0 == wd, "zero_stage %u: dp bytes %llu, want %llu", stage,
              (unsigned long long)(dpc->bytes_sent - d0), (unsigned long long)wd);
        CHECK(edpc->bytes_sent - e0 == we, "zero_stage %u: edp bytes %llu, want %llu", stage,
              (unsigned long long)(edpc->bytes_sent - e0), (unsigned long long)we);
        run_close(&r);
    }
}

/* A NaN that only one rank's gradient holds, in the chunk another rank owns: every rank skips. */
static void test_nonfinite(void)
{
    moe_model_config c;
    tiny_config(&c, 1);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.zero_stage = 1;
    run r;
    run_open(&r, 1, h_size, 2, 0, &c, &oc);
    if (!r.opt) {
        run_close(&r);
        return;
    }
    const moei_params *p = &r.model->params;
    for (int round = 0; round < 2; round++) {
        int32_t tok[MBS * SEQ], tgt[MBS * SEQ];
        global_micro(h_rank + 10 * round, tok, tgt);
        CHECK_OK(moe_model_zero_grad(r.model));
        CHECK_OK(moe_model_forward_backward(r.model, tok, tgt, MBS, SEQ, 0.25f, NULL, NULL));
        /* round 0: the last rank poisons the first dense element (dp rank 0's chunk);
         * round 1: rank 0 poisons the last expert element of its region (the last edp rank's chunk) */
        if (round == 0 && h_rank == h_size - 1) p->grad[p->region_offset[0]] = NAN;
        if (round == 1 && h_rank == 0) p->grad[p->region_offset[1] + p->region_size[1] - 1] = INFINITY;
        size_t bytes = (size_t)p->total * sizeof(float);
        float *before = malloc(bytes);
        memcpy(before, p->data, bytes);
        moe_optimizer_stats s = {.struct_size = sizeof s};
        CHECK_OK(moe_optimizer_step(r.opt, &s));
        CHECK(s.skipped == 1 && s.skipped_total == round + 1 && s.step == 0,
              "round %d: skipped %u, skipped_total %lld, step %lld", round, s.skipped, (long long)s.skipped_total,
              (long long)s.step);
        CHECK(!isfinite(s.grad_norm), "round %d: grad norm %g", round, s.grad_norm);
        CHECK(memcmp(before, p->data, bytes) == 0, "round %d: a skipped step changed the parameters", round);
        free(before);
    }
    /* and the next finite step goes through everywhere */
    int32_t tok[MBS * SEQ], tgt[MBS * SEQ];
    global_micro(h_rank, tok, tgt);
    CHECK_OK(moe_model_zero_grad(r.model));
    CHECK_OK(moe_model_forward_backward(r.model, tok, tgt, MBS, SEQ, 0.25f, NULL, NULL));
    moe_optimizer_stats s = {.struct_size = sizeof s};
    CHECK_OK(moe_optimizer_step(r.opt, &s));
    CHECK(s.skipped == 0 && s.step == 1 && isfinite(s.grad_norm), "finite step: skipped %u step %lld", s.skipped,
          (long long)s.step);
    run_close(&r);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    H_RUN(test_adamw_dp);
    H_RUN(test_adamw_ep2);
    if (h_size > 2) H_RUN(test_adamw_ep_all);
    H_RUN(test_sgd_ep2);
    if (h_size > 2) H_RUN(test_adamw_tp2_ep2); /* ZeRO needs dp > 1 to split the dense region */
    H_RUN(test_volume);
    H_RUN(test_nonfinite);
    MPI_Finalize();
    return h_total_fail ? 1 : 0;
}
