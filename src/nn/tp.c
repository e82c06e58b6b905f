/* See tp.h. Every collective here runs over the tp group with sizes that are equal on its ranks by
 * construction (taken from the config and the micro-batch), so no agreement step is needed. */
#include "nn/tp.h"

#include <string.h>

#include "comm/comm.h"
#include "moe/tensor.h"
#include "parallel/mesh.h"

void moei_tp_from_mesh(const struct moe_mesh *mesh, moei_tp *tp)
{
    memset(tp, 0, sizeof *tp);
    tp->size = mesh->size[MOE_AXIS_TP];
    tp->rank = mesh->rank[MOE_AXIS_TP];
    tp->sp = tp->size > 1 && mesh->cfg.sequence_parallel ? 1 : 0;
    tp->comm = tp->size > 1 ? moei_mesh_comm(mesh, MOE_AXIS_TP) : NULL;
}

void moei_tp_chunk(int64_t total, int32_t size, int32_t rank, int64_t *start, int64_t *count)
{
    const int64_t base = total / size, extra = total % size;
    *count = base + (rank < extra ? 1 : 0);
    *start = (int64_t)rank * base + (rank < extra ? rank : extra);
}

moe_status moei_tp_region_input(const moei_tp *tp, const float *x, int64_t rows, int64_t d, float *full,
                                const float **in)
{
    if (!tp->sp) {
        *in = x;
        return MOE_OK;
    }
    *in = full;
    return tp->comm->ops->all_gather(tp->comm, x, full, rows * d, MOE_DTYPE_F32);
}

moe_status moei_tp_region_output(const moei_tp *tp, float *partial, int64_t n, int64_t d, float *out, int accumulate,
                                 float *tmp)
{
    moei_comm *c = tp->comm;
    if (!tp->sp) {
        moe_status st = c->ops->all_reduce_sum(c, partial, n * d, MOE_DTYPE_F32);
        if (st != MOE_OK || out == partial) return st;
        if (accumulate)
            for (int64_t i = 0; i < n * d; i++) out[i] += partial[i];
        else
            memcpy(out, partial, (size_t)(n * d) * sizeof(float));
        return MOE_OK;
    }
    const int64_t rows = n / tp->size;
    float *dst = accumulate ? tmp : out;
    moe_status st = c->ops->reduce_scatter_sum(c, partial, dst, rows * d, MOE_DTYPE_F32);
    if (st == MOE_OK && accumulate)
        for (int64_t i = 0; i < rows * d; i++) out[i] += tmp[i];
    return st;
}
