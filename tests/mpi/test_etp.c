/* Expert tensor parallelism under mpirun: each expert's hidden units split over etp ranks (w1/w3
 * rows, w2 columns), alone (dp2·etp2, dp4·etp2 with edp 2, also under ZeRO-1) and with expert
 * parallelism (dp4·ep2·etp2), follows the single-rank run on the same global batch — loss, grad
 * norm (clipping active) and every parameter slice within 1e-5 relative — while each rank holds
 * only its slice and the etp group's traffic equals the formula of docs/parallelism.md. The
 * single-rank reference runs in the same process on the self communicator. */
#include <math.h>
#include <stdlib.h>

#include "mpi/equiv_util.h"
#include "mpi/mpi_harness.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"

enum { MICRO_LOCAL = 2, MBS = 2, SEQ = 6, STEPS = 3, TOPK = 2, EXPERTS = 4 };

static void tiny_config(moe_model_config *c)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = 13;
    c->max_seq_len = SEQ;
    c->d_model = 16;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->moe_num_experts = EXPERTS;
    c->moe_top_k = TOPK;
    c->moe_expert_hidden = 12;
    c->moe_shared_expert_hidden = 8;
    c->init_std = 0.2f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
    c->moe_bias_update_rate = 0.01f;
}


static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

static void run_mesh(int32_t dp, int32_t ep, int32_t etp, uint32_t zero)
{
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.dp = dp;
    mc.ep = ep;
    mc.etp = etp;
    moe_model_config c;
    tiny_config(&c);
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    oc.clip_grad_norm = 0.5f; /* clipping active: the global norm must agree */
    oc.zero_stage = zero;
    moe_optimizer_config roc = oc;
    roc.zero_stage = 0;
    eq_pair pair;
    if (!eq_open(&pair, mc, &c, &oc, &roc)) {
        eq_close(&pair);
        return;
    }
    moe_mesh *mesh = pair.mesh;
    moe_model *m = pair.m, *ref = pair.ref;
    moe_optimizer *o = pair.o, *ro = pair.ro;
    moei_comm *etc = moei_mesh_comm(mesh, MOE_AXIS_ETP);
    const uint64_t etp_bytes0 = etc->bytes_sent;
    moe_batch local, global;
    eq_batches(&pair, MICRO_LOCAL, MBS, SEQ, 13, &local, &global);
    const int64_t G = (int64_t)dp * MICRO_LOCAL, per = MBS * SEQ; /* the global batch, for the row counts */
    double worst_loss = 0.0, worst_norm = 0.0, worst_param = 0.0;
    for (int step = 0; step < STEPS; step++) {
        moe_step_stats s = {.struct_size = sizeof s}, r = {.struct_size = sizeof r};
        CHECK_OK(moe_train_step(m, o, &local, &s));
        CHECK_OK(moe_train_step(ref, ro, &global, &r));
        CHECK(rel(s.loss, r.loss) < 1e-5, "dp%d ep%d etp%d step %d: loss %.9g vs single rank %.9g", dp, ep, etp, step,
              s.loss, r.loss);
        CHECK(rel(s.aux_loss, r.aux_loss) < 1e-5, "dp%d ep%d etp%d step %d: aux %.9g vs %.9g", dp, ep, etp, step,
              s.aux_loss, r.aux_loss);
        CHECK(rel(s.grad_norm, r.grad_norm) < 1e-5, "dp%d ep%d etp%d step %d: grad norm %.9g vs %.9g", dp, ep, etp,
              step, s.grad_norm, r.grad_norm);
        CHECK(r.grad_norm > oc.clip_grad_norm, "step %d: norm %.3g does not clip", step, r.grad_norm);
        if (rel(s.loss, r.loss) > worst_loss) worst_loss = rel(s.loss, r.loss);
        if (rel(s.grad_norm, r.grad_norm) > worst_norm) worst_norm = rel(s.grad_norm, r.grad_norm);
    }
    /* etp group traffic (docs/parallelism.md, "Expert tensor parallelism"): per gather (forward and
     * backward) R own rows and G gathered ones; the gather sends (etp - 1)·R rows and the
     * reduce-scatter G - R rows, d floats each; each forward adds (etp - 1)·El int32 counts. */
    {
        const int64_t El = EXPERTS / ep;
        uint64_t own = 0, all = 0, exch = 0;
        int64_t moe_layers = 0;
        for (int32_t l = 0; l < c.num_layers; l++) {
            if (!m->blocks[l].is_moe) continue;
            moe_layers++;
            own += m->blocks[l].moe.etp_rows_own;
            all += m->blocks[l].moe.etp_rows_all;
            exch += m->blocks[l].moe.etp_count_exchanges;
        }
        uint64_t expect = ((uint64_t)(etp - 1) * own + (all - own)) * (uint64_t)c.d_model * 4 +
                          exch * (uint64_t)(etp - 1) * (uint64_t)El * 4;
        CHECK(etc->bytes_sent - etp_bytes0 == expect, "dp%d ep%d etp%d: etp group counted %llu bytes, formula %llu", dp,
              ep, etp, (unsigned long long)(etc->bytes_sent - etp_bytes0), (unsigned long long)expect);
        CHECK(exch == (uint64_t)(STEPS * MICRO_LOCAL * moe_layers), "%llu count exchanges", (unsigned long long)exch);
        /* independent of the layer's counters: the group's gathered rows are its ranks' own rows,
         * and over the world the own rows are every routed row (no capacity: tokens·top_k), once in
         * the forward and once in the backward */
        uint64_t sums[2] = {own, all};
        long long w_own = 0;
        MPI_Allreduce(MPI_IN_PLACE, sums, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD); /* own over the world */
        w_own = (long long)sums[0];
        long long want = (long long)STEPS * 2 * moe_layers * G * per * TOPK;
        CHECK(w_own == want, "own rows over the world %lld, tokens·top_k says %lld", w_own, want);
        uint64_t g_own = own;
        CHECK_OK(etc->ops->all_reduce_sum(etc, &g_own, 1, MOE_DTYPE_I64));
        CHECK(g_own == all, "etp group's own rows %llu != gathered rows %llu", (unsigned long long)g_own,
              (unsigned long long)all);
    }
    /* every parameter: this rank's slice against the same slice of the single-rank tensor */
    const moei_params *p = &m->params, *rp = &ref->params;
    int64_t expect_local = 0;
    for (int32_t i = 0; i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        CHECK(strcmp(e->name, rp->entries[i].name) == 0, "parameter order differs at %d", (int)i);
        double r = eq_slice_rel(e, moei_param_data(p, i), moei_param_data(rp, i));
        if (r > worst_param) worst_param = r;
        CHECK(r < 1e-5, "dp%d ep%d etp%d: %s differs by %.3g relative", dp, ep, etp, e->name, r);
        /* shard formula: experts split over ep·etp (w1/w3 along dim 1, w2 along dim 2), the rest whole */
        int64_t full = 1;
        for (int32_t d = 0; d < e->ndim; d++) full *= e->full_shape[d];
        int64_t want = e->group == MOEI_GROUP_EXPERT ? full / (ep * etp) : full;
        CHECK(e->numel == want, "%s holds %lld elements, the shard formula says %lld", e->name, (long long)e->numel,
              (long long)want);
        if (e->group == MOEI_GROUP_EXPERT) {
            int32_t dim = strstr(e->name, ".w2") ? 2 : 1;
            CHECK(e->shape[dim] * etp == e->full_shape[dim] && e->start[dim] == mesh->rank[MOE_AXIS_ETP] * e->shape[dim],
                  "%s: slice [%lld, +%lld) of dimension %d", e->name, (long long)e->start[dim],
                  (long long)e->shape[dim], (int)dim);
        }
        expect_local += want;
    }
    CHECK(p->region_size[0] + p->region_size[1] >= expect_local &&
              p->region_size[0] + p->region_size[1] < expect_local + dp + mesh->size[MOE_AXIS_EDP],
          "parameter floats %lld, the formula says %lld (+ padding)", (long long)(p->region_size[0] + p->region_size[1]),
          (long long)expect_local);
    for (int32_t l = 0; l < c.num_layers; l++)
        CHECK(memcmp(m->blocks[l].moe.bias, ref->blocks[l].moe.bias, EXPERTS * sizeof(float)) == 0,
              "layer %d expert bias differs", (int)l);
    if (h_rank == 0)
        printf("  dp%d ep%d etp%d zero%u: worst relative loss %.2g, grad norm %.2g, parameter %.2g\n", dp, ep, etp,
               zero, worst_loss, worst_norm, worst_param);
    eq_close(&pair);
}

static void test_etp2(void) { run_mesh(h_size, 1, 2, 0); }
static void test_etp2_zero(void) { run_mesh(h_size, 1, 2, 1); }
static void test_ep2_etp2(void) { run_mesh(h_size, 2, 2, 0); }

/* Combinations not made exact yet are refused on every rank, naming the sizes; an expert hidden
 * size that does not split is refused naming the field. */
static void test_refusals(void)
{
    moe_ctx *ctx = NULL;
    moe_mesh *tp = NULL, *plain = NULL;
    moe_model *m = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.tp = 2;
    mc.dp = h_size / 2;
    mc.etp = 2;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &tp));
    mc.tp = 1;
    mc.dp = h_size;
    CHECK_OK(moe_mesh_create(ctx, &mc, &plain));
    moe_model_config c;
    tiny_config(&c);
    if (tp) {
        CHECK_FAILS(moe_model_create(ctx, tp, &c, &m), MOE_ERR_UNSUPPORTED, "etp = 2");
        CHECK(strstr(moe_ctx_last_error(ctx), "tp = 2") != NULL, "message: %s", moe_ctx_last_error(ctx));
    }
    if (plain) {
        c.moe_expert_hidden = 13;
        CHECK_FAILS(moe_model_create(ctx, plain, &c, &m), MOE_ERR_INVALID_ARG, "moe_expert_hidden = 13");
    }
    moe_mesh_destroy(tp);
    moe_mesh_destroy(plain);
    moe_ctx_destroy(ctx);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    H_RUN(test_etp2);
    H_RUN(test_etp2_zero);
    if (h_size % 4 == 0) H_RUN(test_ep2_etp2);
    H_RUN(test_refusals);
    MPI_Finalize();
    return h_total_fail ? 1 : 0;
}
