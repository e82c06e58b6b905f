/* Every parallel mesh computes what one rank computes: a model trained under mpirun with data
 * parallelism, expert parallelism and expert data parallelism (dp, ep, edp) follows the single-rank
 * run on the same global batch — loss, grad norm and every parameter within 1e-5 relative — and
 * each rank holds only its shard. The single-rank reference runs in the same process on the self
 * communicator. Router losses, capacity drops and aux-loss-free bias balancing are all on, because
 * each needs global counts to agree. */
#include <math.h>
#include <stdlib.h>

#include "mpi/equiv_util.h"
#include "mpi/mpi_harness.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"

enum { MICRO_LOCAL = 2, MBS = 2, SEQ = 6, STEPS = 3 };

static void tiny_config(moe_model_config *c, float capacity)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = 13;
    c->max_seq_len = SEQ;
    c->d_model = 16;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->moe_num_experts = 4;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 12;
    c->moe_shared_expert_hidden = 8;
    c->init_std = 0.2f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
    c->moe_bias_update_rate = 0.01f;
    c->moe_capacity_factor = capacity;
}

/* Micro-batch g of the global batch (tokens and targets), the same on every rank. */

static int64_t p_dense_size(const moe_model *m) { return m->params.region_size[MOEI_GROUP_DENSE]; }

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

static void run_mesh(int32_t dp, int32_t ep, float capacity)
{
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.dp = dp;
    mc.ep = ep;
    moe_model_config c;
    tiny_config(&c, capacity);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    oc.clip_grad_norm = 0.5f; /* clipping active: the global norm must agree */
    eq_pair pair;
    if (!eq_open(&pair, mc, &c, &oc, &oc)) {
        eq_close(&pair);
        return;
    }
    moe_mesh *mesh = pair.mesh;
    moe_model *m = pair.m, *ref = pair.ref;
    moe_optimizer *o = pair.o, *ro = pair.ro;
    const int32_t dp_rank = mesh->rank[MOE_AXIS_DP];
    moei_comm *dpc = moei_mesh_comm(mesh, MOE_AXIS_DP), *epc = moei_mesh_comm(mesh, MOE_AXIS_EP);
    const uint64_t dp_bytes0 = dpc->bytes_sent, ep_bytes0 = epc->bytes_sent;
    moe_batch local, global;
    eq_batches(&pair, MICRO_LOCAL, MBS, SEQ, 13, &local, &global);
    for (int step = 0; step < STEPS; step++) {
        moe_step_stats s = {.struct_size = sizeof s}, r = {.struct_size = sizeof r};
        CHECK_OK(moe_train_step(m, o, &local, &s));
        CHECK_OK(moe_train_step(ref, ro, &global, &r));
        CHECK(rel(s.loss, r.loss) < 1e-5, "dp%d ep%d step %d: loss %.9g vs single rank %.9g", dp, ep, step, s.loss,
              r.loss);
        CHECK(rel(s.aux_loss, r.aux_loss) < 1e-5, "dp%d ep%d step %d: aux %.9g vs %.9g", dp, ep, step, s.aux_loss,
              r.aux_loss);
        CHECK(rel(s.grad_norm, r.grad_norm) < 1e-5, "dp%d ep%d step %d: grad norm %.9g vs %.9g", dp, ep, step,
              s.grad_norm, r.grad_norm);
        CHECK(s.tokens == r.tokens && s.dropped == r.dropped, "dp%d ep%d: tokens %lld/%lld dropped %lld/%lld", dp, ep,
              (long long)s.tokens, (long long)r.tokens, (long long)s.dropped, (long long)r.dropped);
    }
    /* Communication volume against the formulas of docs/parallelism.md. dp group, per step: the
     * global token count (1 int64), the skip flag (1 int32), the dense gradients (f32) and, per MoE
     * layer with bias balancing, the routed counts (E int64); an all-reduce of n elements adds
     * (n + (p - 2) * c_r) * esize with c_r = this rank's chunk (n / p, one more for r < n % p). */
    {
        const int64_t pd = dp;
#define AR(n, esize) (((n) + (pd - 2) * ((n) / pd + ((int64_t)dp_rank < (n) % pd ? 1 : 0))) * (esize))
        int64_t moe_layers = 0;
        for (int32_t l = 0; l < c.num_layers; l++) moe_layers += m->blocks[l].is_moe;
        int64_t per_step = pd > 1 ? AR(1, 8) + AR(1, 4) + AR(p_dense_size(m), 4) + moe_layers * AR(4, 8) : 0;
#undef AR
        CHECK(dpc->bytes_sent - dp_bytes0 == (uint64_t)(STEPS * per_step),
              "dp%d ep%d: dp group counted %llu bytes, the formula says %lld", dp, ep,
              (unsigned long long)(dpc->bytes_sent - dp_bytes0), (long long)(STEPS * per_step));
        /* ep group: per MoE layer and micro-batch, the counts all-gather ((ep - 1) * E int32, once in the
         * forward) and, for
         * the forward and the backward, rows to and from other ranks of d floats each */
        uint64_t rows = 0, exchanges = 0;
        for (int32_t l = 0; l < c.num_layers; l++) {
            rows += m->blocks[l].moe.ep_rows_offrank;
            exchanges += m->blocks[l].moe.ep_count_exchanges;
        }
        uint64_t expect_ep = ep > 1 ? rows * (uint64_t)c.d_model * 4 + exchanges * (uint64_t)(ep - 1) * 4 * 4 : 0;
        CHECK(epc->bytes_sent - ep_bytes0 == expect_ep, "dp%d ep%d: ep group counted %llu bytes, the formula says %llu",
              dp, ep, (unsigned long long)(epc->bytes_sent - ep_bytes0), (unsigned long long)expect_ep);
        CHECK(ep == 1 || exchanges == (uint64_t)(STEPS * MICRO_LOCAL * 2), "dp%d ep%d: %llu count exchanges", dp, ep,
              (unsigned long long)exchanges);
    }
    /* every parameter: this rank's shard against the same slice of the single-rank tensor */
    const moei_params *p = &m->params, *rp = &ref->params;
    int64_t expect_local = 0;
    for (int32_t i = 0; i < p->count; i++) {
        const moei_param *e = &p->entries[i], *re = &rp->entries[i];
        CHECK(strcmp(e->name, re->name) == 0, "parameter order differs at %d", (int)i);
        double x = eq_slice_rel(e, moei_param_data(p, i), moei_param_data(rp, i));
        CHECK(x < 1e-5, "dp%d ep%d: %s differs by %.3g relative", dp, ep, e->name, x);
        /* shard formula: experts split over ep, everything else whole */
        int64_t full = 1;
        for (int32_t d = 0; d < e->ndim; d++) full *= e->full_shape[d];
        int64_t want = e->group == MOEI_GROUP_EXPERT ? full / ep : full;
        CHECK(e->numel == want, "%s holds %lld elements, the shard formula says %lld", e->name, (long long)e->numel,
              (long long)want);
        expect_local += want;
    }
    CHECK(p->region_size[0] + p->region_size[1] == expect_local, "parameter bytes %lld != %lld",
          (long long)(p->region_size[0] + p->region_size[1]), (long long)expect_local);
    /* the aux-loss-free bias follows the global counts, so it agrees too */
    for (int32_t l = 0; l < c.num_layers; l++)
        CHECK(memcmp(m->blocks[l].moe.bias, ref->blocks[l].moe.bias, 4 * sizeof(float)) == 0,
              "layer %d expert bias differs", (int)l);
    eq_close(&pair);
}

static void test_dp(void) { run_mesh(h_size, 1, 0.0f); }
static void test_ep2(void) { run_mesh(h_size, 2, 0.0f); }
static void test_ep_all(void) { run_mesh(h_size, h_size, 0.0f); }
static void test_ep2_capacity(void) { run_mesh(h_size, 2, 0.75f); }

/* A bad token on one rank fails every rank, each with that rank's message, instead of a hang. */
static void test_bad_batch_on_one_rank(void)
{
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL;
    moe_model *m = NULL;
    moe_optimizer *o = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.dp = h_size;
    mc.ep = 2;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    moe_model_config c;
    tiny_config(&c, 0.0f);
    CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    if (m) CHECK_OK(moe_optimizer_create(m, &oc, &o));
    if (o) {
        int32_t tok[MBS * SEQ], tgt[MBS * SEQ];
        eq_global_micro(h_rank, MBS * SEQ, 13, tok, tgt);
        if (h_rank == h_size - 1) tok[5] = 99; /* out of the vocabulary, on the last rank only */
        moe_batch b;
        moe_batch_init(&b, sizeof b);
        b.tokens = tok;
        b.targets = tgt;
        b.micro_batch_size = MBS;
        b.seq_len = SEQ;
        double t0 = h_now();
        moe_status st = moe_train_step(m, o, &b, NULL);
        CHECK(st == MOE_ERR_INVALID_ARG, "rank %d: train step returned %s", h_rank, moe_status_string(st));
        CHECK(strstr(moe_ctx_last_error(ctx), "tokens[5]") != NULL, "rank %d message: %s", h_rank,
              moe_ctx_last_error(ctx));
        CHECK(h_now() - t0 < 10.0, "rank %d took %.1f s to fail", h_rank, h_now() - t0);
        /* and the next, good step works on every rank */
        tok[5] = 1;
        CHECK_OK(moe_train_step(m, o, &b, NULL));
    }
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
}

/* A mesh the model cannot use yet is refused on every rank with a message, not a hang. */
static void test_unsupported_axes(void)
{
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL;
    moe_model *m = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.etp = 2; /* expert tensor parallelism combined with tensor parallelism */
    mc.tp = 2;
    mc.dp = h_size / 2;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    moe_model_config c;
    tiny_config(&c, 0.0f);
    if (mesh) {
        CHECK(moe_model_create(ctx, mesh, &c, &m) == MOE_ERR_UNSUPPORTED, "etp = 2 with tp = 2 was accepted");
        CHECK(strstr(moe_ctx_last_error(ctx), "etp = 2") != NULL && strstr(moe_ctx_last_error(ctx), "tp = 2") != NULL,
              "message: %s", moe_ctx_last_error(ctx));
    }
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    H_RUN(test_dp);
    H_RUN(test_ep2);
    if (h_size > 2) H_RUN(test_ep_all);
    H_RUN(test_ep2_capacity);
    H_RUN(test_bad_batch_on_one_rank);
    H_RUN(test_unsupported_axes);
    MPI_Finalize();
    return h_total_fail ? 1 : 0;
}
