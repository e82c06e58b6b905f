/* Shared by the multi-rank equivalence tests: the model on an MPI mesh beside its single-rank
 * reference on the self communicator, the global batch both train on, and how far this rank's slice
 * of a parameter is from the same slice of the reference's whole tensor. */
#ifndef MOE_TESTS_MPI_EQUIV_UTIL_H
#define MOE_TESTS_MPI_EQUIV_UTIL_H

#include <math.h>
#include <string.h>

#include <stdlib.h>

#include "mpi/mpi_harness.h"
#include "nn/params.h"
#include "parallel/mesh.h"

/* ||a - b[slice]|| / ||b[slice]|| for this rank's slice `a` of entry e and the whole tensor `whole`. */
static inline double eq_slice_rel(const moei_param *e, const float *a, const float *whole)
{
    double d2 = 0.0, r2 = 0.0;
    for (int64_t j = 0; j < e->numel; j++) {
        double y = whole[moei_param_full_index(e, j)];
        d2 += ((double)a[j] - y) * ((double)a[j] - y);
        r2 += y * y;
    }
    return sqrt(d2 / (r2 > 0 ? r2 : 1));
}

/* The model under test (mesh over MPI) and the single-rank reference, each with an optimizer. */
typedef struct eq_pair {
    moe_ctx *ctx, *rctx;
    moe_mesh *mesh, *self;
    moe_model *m, *ref;
    moe_optimizer *o, *ro;
    int32_t *tokens, *targets; /* the global batch (eq_batches) */
} eq_pair;

/* Returns 1 when both models and optimizers exist (failures are CHECKed; close the pair anyway). */
static inline int eq_open(eq_pair *e, moe_mesh_config mc, const moe_model_config *c, const moe_optimizer_config *oc,
                          const moe_optimizer_config *ref_oc)
{
    memset(e, 0, sizeof *e);
    CHECK_OK(moe_ctx_create(NULL, &e->ctx));
    CHECK_OK(moe_ctx_create(NULL, &e->rctx));
    mc.comm_backend = MOE_COMM_MPI;
    if (e->ctx) CHECK_OK(moe_mesh_create(e->ctx, &mc, &e->mesh));
    moe_mesh_config sc;
    moe_mesh_config_init(&sc, sizeof sc);
    sc.comm_backend = MOE_COMM_SELF;
    if (e->rctx) CHECK_OK(moe_mesh_create(e->rctx, &sc, &e->self));
    if (e->mesh) CHECK_OK(moe_model_create(e->ctx, e->mesh, c, &e->m));
    if (e->self) CHECK_OK(moe_model_create(e->rctx, e->self, c, &e->ref));
    if (e->m) CHECK_OK(moe_optimizer_create(e->m, oc, &e->o));
    if (e->ref) CHECK_OK(moe_optimizer_create(e->ref, ref_oc, &e->ro));
    return e->o && e->ro;
}

/* Micro-batch g of the global batch over a vocabulary of `vocab`, the same on every rank; every
 * seventh target is not counted. */
static inline void eq_global_micro(int64_t g, int64_t n, int32_t vocab, int32_t *tok, int32_t *tgt)
{
    for (int64_t i = 0; i < n; i++) {
        tok[i] = (int32_t)(h_mix((uint64_t)(g * 1000 + i)) % (uint64_t)vocab);
        tgt[i] = (i % 7 == 3) ? -100 : (int32_t)(h_mix((uint64_t)(g * 1000 + i + 500)) % (uint64_t)vocab);
    }
}

/* The global batch of dp * micro_local micro-batches: `local` is this dp rank's share of it for the
 * mesh, `global` all of it for the single-rank reference. */
static inline void eq_batches(eq_pair *e, int32_t micro_local, int32_t mbs, int32_t seq, int32_t vocab,
                              moe_batch *local, moe_batch *global)
{
    const int32_t dp = e->mesh->size[MOE_AXIS_DP], dp_rank = e->mesh->rank[MOE_AXIS_DP];
    const int64_t G = (int64_t)dp * micro_local, per = (int64_t)mbs * seq;
    e->tokens = malloc((size_t)(G * per) * sizeof *e->tokens);
    e->targets = malloc((size_t)(G * per) * sizeof *e->targets);
    for (int64_t g = 0; g < G; g++) eq_global_micro(g, per, vocab, e->tokens + g * per, e->targets + g * per);
    moe_batch_init(local, sizeof *local);
    local->tokens = e->tokens + (int64_t)dp_rank * micro_local * per;
    local->targets = e->targets + (int64_t)dp_rank * micro_local * per;
    local->micro_batch_size = mbs;
    local->seq_len = seq;
    local->num_micro_batches = micro_local;
    *global = *local;
    global->tokens = e->tokens;
    global->targets = e->targets;
    global->num_micro_batches = (int32_t)G;
}

static inline void eq_close(eq_pair *e)
{
    free(e->tokens);
    free(e->targets);
    moe_optimizer_destroy(e->o);
    moe_optimizer_destroy(e->ro);
    moe_model_destroy(e->m);
    moe_model_destroy(e->ref);
    moe_mesh_destroy(e->mesh);
    moe_mesh_destroy(e->self);
    moe_ctx_destroy(e->ctx);
    moe_ctx_destroy(e->rctx);
}

#endif
