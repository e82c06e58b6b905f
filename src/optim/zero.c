/* ZeRO-1 layout, gradient reduce-scatter, chunk-wise global norm and parameter all-gather (see
 * zero.h). Invariant: on every rank of a replica group the region has the same size (the group
 * holds copies of one layout), so chunk r is the same element range on each of them, and the
 * chunks of a group tile the region exactly once. */
#include "optim/zero.h"

#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "cpu/optim_kernels.h"
#include "nn/model.h"
#include "nn/tp_model.h"
#include "parallel/mesh.h"

int32_t moei_optimizer_group_axis(int32_t g) { return g == MOEI_GROUP_EXPERT ? MOE_AXIS_EDP : MOE_AXIS_DP; }

moe_status moei_zero_layout(moe_optimizer *opt, const char *fn)
{
    const moei_params *p = &opt->model->params;
    const moe_mesh *mesh = opt->model->mesh;
    int64_t state = 0;
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        if (opt->cfg.zero_stage == 0) {
            opt->own_start[g] = 0;
            opt->own_len[g] = p->region_size[g];
            opt->state_offset[g] = p->region_offset[g];
            continue;
        }
        const int32_t axis = moei_optimizer_group_axis(g);
        const int64_t size = mesh->size[axis], rank = mesh->rank[axis];
        if (p->region_size[g] % size != 0)
            return moei_fail(opt->ctx, MOE_ERR_INVALID_ARG,
                             "%s: zero_stage = 1 needs the %s parameter region (%lld elements) to split evenly over "
                             "its %lld replicas",
                             fn, g == MOEI_GROUP_EXPERT ? "expert" : "dense", (long long)p->region_size[g],
                             (long long)size);
        const int64_t chunk = p->region_size[g] / size;
        opt->own_start[g] = rank * chunk;
        opt->own_len[g] = chunk;
        opt->state_offset[g] = state;
        state += chunk;
    }
    opt->count = opt->cfg.zero_stage == 0 ? p->total : state;
    return MOE_OK;
}

void moei_optimizer_param_state(const moe_optimizer *opt, const moei_param *e, int64_t *first, int64_t *count,
                                int64_t *state)
{
    const moei_params *p = &opt->model->params;
    const int32_t g = e->group;
    const int64_t lo = p->region_offset[g] + opt->own_start[g], hi = lo + opt->own_len[g];
    const int64_t a = e->offset > lo ? e->offset : lo, b = e->offset + e->numel < hi ? e->offset + e->numel : hi;
    if (a >= b) {
        *first = *count = *state = 0;
        return;
    }
    *first = a - e->offset;
    *count = b - a;
    *state = opt->state_offset[g] + (a - lo);
}

moe_status moei_zero_reduce(moe_optimizer *opt)
{
    moe_model *m = opt->model;
    const moei_params *p = &m->params;
    /* as moei_model_reduce_grads: gradients that are partial over tp are summed over tp first */
    moe_status st = moei_tp_reduce_partial_grads(m);
    for (int32_t g = 0; st == MOE_OK && g < MOEI_GROUP_COUNT; g++) {
        const int32_t axis = moei_optimizer_group_axis(g);
        if (m->mesh->size[axis] <= 1 || p->region_size[g] == 0) continue;
        moei_comm *c = moei_mesh_comm(m->mesh, axis);
        float *base = p->grad + p->region_offset[g];
        /* the output is this rank's own block of the input: the reduced chunk lands in place */
        st = c->ops->reduce_scatter_sum(c, base, base + opt->own_start[g], opt->own_len[g], MOE_DTYPE_F32);
    }
    return st;
}

/* Squared norm of [lo, lo + n) of the gradient buffer, counting with tp > 1 only the elements this
 * rank accounts for: tensors sliced over tp on every tp rank, whole ones (held by every tp rank)
 * on tp rank 0 only. */
static moe_status chunk_sumsq(moe_optimizer *opt, int32_t g, int64_t lo, int64_t n, double *out)
{
    moe_model *m = opt->model;
    const moei_params *p = &m->params;
    *out = 0.0;
    if (g != MOEI_GROUP_DENSE || m->mesh->size[MOE_AXIS_TP] <= 1)
        return moei_cpu_sum_squares(opt->ctx, n, p->grad + lo, out);
    const int32_t tp_rank = m->mesh->rank[MOE_AXIS_TP];
    for (int32_t i = 0; i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        if (e->group != g || (e->tp != MOEI_TP_SHARDED && tp_rank != 0)) continue;
        int64_t a = e->offset > lo ? e->offset : lo, b = e->offset + e->numel < lo + n ? e->offset + e->numel : lo + n;
        if (a >= b) continue;
        double s = 0.0;
        moe_status st = moei_cpu_sum_squares(opt->ctx, b - a, p->grad + a, &s);
        if (st != MOE_OK) return st;
        *out += s;
    }
    return MOE_OK;
}

moe_status moei_zero_grad_sumsq(moe_optimizer *opt, int force_skip, double *sumsq, int32_t *finite)
{
    moe_model *m = opt->model;
    const moei_params *p = &m->params;
    double local[2] = {0.0, force_skip ? 0.0 : 1.0}; /* squares, finite flag */
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        const int64_t lo = p->region_offset[g] + opt->own_start[g], n = opt->own_len[g];
        int32_t ok = 1;
        double s = 0.0;
        moe_status st = moei_cpu_all_finite(opt->ctx, n, p->grad + lo, &ok, NULL);
        if (st == MOE_OK) st = chunk_sumsq(opt, g, lo, n, &s);
        if (st != MOE_OK) return st;
        local[0] += s;
        if (!ok) local[1] = 0.0;
    }
    /* Every element has exactly one owner in the world: chunks tile each region over its group,
     * and the groups' regions hold distinct tensors (ep slices, pipeline stages, tp shards). */
    moei_comm *world = moei_mesh_comm(m->mesh, MOE_AXIS_WORLD);
    moe_status st = moei_comm_host_all_gather(world, local, opt->gather, sizeof local);
    if (st != MOE_OK) return st;
    double total = 0.0;
    int32_t ok = 1;
    for (int32_t r = 0; r < world->size; r++) { /* rank order: the same bits everywhere */
        total += opt->gather[2 * r];
        if (opt->gather[2 * r + 1] == 0.0) ok = 0;
    }
    *sumsq = total;
    *finite = ok;
    return MOE_OK;
}

moe_status moei_zero_gather(moe_optimizer *opt)
{
    moe_model *m = opt->model;
    const moei_params *p = &m->params;
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        const int32_t axis = moei_optimizer_group_axis(g);
        if (m->mesh->size[axis] <= 1 || p->region_size[g] == 0) continue;
        moei_comm *c = moei_mesh_comm(m->mesh, axis);
        float *base = p->data + p->region_offset[g];
        /* in place: this rank's chunk already sits in its slot of the region */
        moe_status st = c->ops->all_gather(c, base + opt->own_start[g], base, opt->own_len[g], MOE_DTYPE_F32);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}
