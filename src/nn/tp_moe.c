/* See tp_moe.h. All sizes here come from the config and the micro-batch, equal on the tp ranks,
 * so the collectives need no agreement step. */
#include "nn/tp_moe.h"

#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/error.h"

moe_status moei_moe_tp_setup(moei_moe *m, moei_params *p, const moei_tp *tp)
{
    if (!moei_tp_on(tp)) return MOE_OK;
    m->tp = *tp;
    m->tp_counts = calloc(2 * (size_t)m->s.num_experts, sizeof *m->tp_counts);
    if (!m->tp_counts) return moei_fail(p->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory creating MoE layer '%s'", m->prefix);
    moei_params_set_tp(p, m->router_w, MOEI_TP_PARTIAL);
    if (m->has_shared) {
        moei_params_set_tp(p, m->shared.w1, MOEI_TP_PARTIAL);
        if (m->shared.w3 >= 0) moei_params_set_tp(p, m->shared.w3, MOEI_TP_PARTIAL);
        moei_params_set_tp(p, m->shared.w2, MOEI_TP_PARTIAL);
    }
    return MOE_OK;
}

void moei_moe_tp_free(moe_ctx *ctx, moei_moe *m)
{
    free(m->tp_counts);
    m->tp_counts = NULL;
    moei_buf_free(ctx, &m->tp_y);
    moei_buf_free(ctx, &m->tp_dx);
    moei_buf_free(ctx, &m->tp_full);
}

const int32_t *moei_moe_demand(const moei_moe *m) { return m->plan.counts_pre_drop; }

float moei_moe_token_share(const moei_moe *m) { return moei_tp_on(&m->tp) ? 1.0f / (float)m->tp.size : 1.0f; }

moe_status moei_moe_tp_enter(moe_ctx *ctx, moei_moe *m, const float **x, int64_t *n, float **y)
{
    const int32_t T = m->tp.size;
    const int64_t d = m->s.d;
    if (m->tp.sp) {
        m->token_base = (int64_t)m->tp.rank * *n; /* the rows this rank holds of the micro-batch */
        return MOE_OK;
    }
    if (*n % T != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "MoE layer '%s': %lld rows do not split over tp = %d", m->prefix,
                         (long long)*n, (int)T);
    const int64_t rows = *n / T, first = (int64_t)m->tp.rank * rows;
    moe_status st = moei_buf_reserve(ctx, &m->tp_y, (uint64_t)(rows * d) * sizeof(float));
    if (st != MOE_OK) return st;
    m->token_base = first;
    *x += first * d;
    *n = rows;
    *y = MOEI_BUF_F32(m->tp_y);
    return MOE_OK;
}

moe_status moei_moe_tp_count(moe_ctx *ctx, moei_moe *m)
{
    (void)ctx;
    const int32_t E = m->s.num_experts;
    int32_t *c = m->tp_counts;
    memcpy(c, m->plan.counts_pre_drop, (size_t)E * sizeof *c);
    memcpy(c + E, m->plan.counts, (size_t)E * sizeof *c);
    moei_comm *comm = m->tp.comm;
    moe_status st = comm->ops->all_reduce_sum(comm, c, 2 * (int64_t)E, MOE_DTYPE_I32);
    if (st != MOE_OK) return st;
    /* From here on the plan's demand counts are the whole micro-batch's: every reader of them (the
     * aux loss, the bias-update counts, a pipeline that takes a recomputed forward's counts back)
     * wants those. The kept counts and offsets stay this rank's: they lay out its rows. */
    memcpy(m->plan.counts_pre_drop, c, (size_t)E * sizeof *c);
    /* the load statistics of the whole micro-batch, as moei_dispatch_plan_stats defines them */
    moei_dispatch_stats s;
    memset(&s, 0, sizeof s);
    s.min_load = E > 0 ? c[0] : 0;
    for (int32_t e = 0; e < E; e++) {
        s.n_slots += c[e];
        s.n_rows += c[E + e];
        if (c[e] > s.max_load) s.max_load = c[e];
        if (c[e] < s.min_load) s.min_load = c[e];
        if (c[E + e] > s.max_kept) s.max_kept = c[E + e];
        if (c[e] == 0) s.n_idle++;
    }
    s.n_dropped = s.n_slots - s.n_rows;
    s.mean_load = E > 0 ? (double)s.n_slots / (double)E : 0.0;
    m->stats = s;
    return MOE_OK;
}

moe_status moei_moe_tp_losses(moe_ctx *ctx, moei_moe *m, float *aux, float *z)
{
    (void)ctx;
    float v[2] = {*aux, *z};
    moei_comm *comm = m->tp.comm;
    moe_status st = comm->ops->all_reduce_sum(comm, v, 2, MOE_DTYPE_F32);
    if (st != MOE_OK) return st;
    *aux = v[0];
    *z = v[1];
    return MOE_OK;
}

moe_status moei_moe_tp_leave(moe_ctx *ctx, moei_moe *m, const float *y_rows, float *y)
{
    (void)ctx;
    if (m->tp.sp) return MOE_OK;
    return m->tp.comm->ops->all_gather(m->tp.comm, y_rows, y, m->n * m->s.d, MOE_DTYPE_F32);
}

moe_status moei_moe_tp_enter_backward(moe_ctx *ctx, moei_moe *m, const float **dy, float **dx, int *accumulate)
{
    if (m->tp.sp) return MOE_OK;
    const int64_t rows = m->n, d = m->s.d;
    moe_status st = moei_buf_reserve(ctx, &m->tp_dx, (uint64_t)(rows * d) * sizeof(float));
    if (st != MOE_OK) return st;
    *dy += m->token_base * d;
    *dx = MOEI_BUF_F32(m->tp_dx);
    *accumulate = 0;
    return MOE_OK;
}

moe_status moei_moe_tp_leave_backward(moe_ctx *ctx, moei_moe *m, const float *dx_rows, float *dx, int accumulate)
{
    if (m->tp.sp) return MOE_OK;
    const int64_t rows = m->n, d = m->s.d, all = rows * m->tp.size * d;
    moei_comm *comm = m->tp.comm;
    if (!accumulate) return comm->ops->all_gather(comm, dx_rows, dx, rows * d, MOE_DTYPE_F32);
    moe_status st = moei_buf_reserve(ctx, &m->tp_full, (uint64_t)all * sizeof(float));
    if (st == MOE_OK) st = comm->ops->all_gather(comm, dx_rows, MOEI_BUF_F32(m->tp_full), rows * d, MOE_DTYPE_F32);
    if (st != MOE_OK) return st;
    const float *g = MOEI_BUF_F32(m->tp_full);
    for (int64_t i = 0; i < all; i++) dx[i] += g[i];
    return MOE_OK;
}
