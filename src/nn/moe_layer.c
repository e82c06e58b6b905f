/* See moe_layer.h. Token choice and expert choice share everything after the dispatch plan: the
 * plan's slots index the combine weights (topk_w [N, k] or ec_w [E, C]) either way. */
#include "nn/moe_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "cpu/router.h"
#include "moe/model.h"
#include "nn/tp_moe.h"
#include "parallel/mesh.h"

moe_status moei_moe_register(moei_moe *m, moei_params *p, const char *prefix, const moei_moe_settings *s)
{
    return moei_moe_register_etp(m, p, prefix, s, NULL);
}

moe_status moei_moe_register_etp(moei_moe *m, moei_params *p, const char *prefix, const moei_moe_settings *s,
                                 const moei_moe_etp *etp)
{
    char name[MOEI_PARAM_NAME_CAP];
    memset(m, 0, sizeof *m);
    m->s = *s;
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    const int64_t E = s->num_experts, f = s->hidden, d = s->d;
    const int32_t P = s->ep_size > 0 ? s->ep_size : 1;
    if (P > MOEI_MAX_EP || E % P != 0)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "MoE layer '%s': %lld experts do not divide over ep = %d ranks",
                         prefix, (long long)E, (int)P);
    m->ep_size = P;
    m->ep_rank = s->ep_rank;
    m->ep_comm = s->ep_comm;
    m->local_experts = (int32_t)(E / P);
    const int32_t T = etp && etp->size > 1 ? etp->size : 1;
    if (T > MOEI_MAX_EP || f % T != 0)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG,
                         "MoE layer '%s': expert hidden size %lld does not divide over etp = %d ranks", prefix,
                         (long long)f, (int)T);
    m->etp_size = T;
    m->etp_rank = T > 1 ? etp->rank : 0;
    m->etp_comm = T > 1 ? etp->comm : NULL;
    const int64_t El = m->local_experts, e0 = (int64_t)m->ep_rank * El, fl = f / T, f0 = (int64_t)m->etp_rank * fl;
    /* experts split over ep (dimension 0), each expert's hidden units over etp (w1/w3 rows, w2 columns) */
    const int64_t rshape[2] = {E, d}, inshape[3] = {El, fl, d}, outshape[3] = {El, d, fl};
    const int64_t infull[3] = {E, f, d}, outfull[3] = {E, d, f}, instart[3] = {e0, f0, 0}, outstart[3] = {e0, 0, f0};
    m->w3 = -1;
    snprintf(name, sizeof name, "%s.router", prefix);
    moe_status st = moei_params_add(p, name, 2, rshape, MOEI_PARAM_MATRIX, &m->router_w);
    if (st == MOE_OK) {
        snprintf(name, sizeof name, "%s.experts.w1", prefix);
        st = moei_params_add_slice(p, name, 3, inshape, infull, instart, MOEI_PARAM_MATRIX, MOEI_GROUP_EXPERT, &m->w1);
    }
    if (st == MOE_OK && s->activation == MOE_ACTIVATION_SWIGLU) {
        snprintf(name, sizeof name, "%s.experts.w3", prefix);
        st = moei_params_add_slice(p, name, 3, inshape, infull, instart, MOEI_PARAM_MATRIX, MOEI_GROUP_EXPERT, &m->w3);
    }
    if (st == MOE_OK) {
        snprintf(name, sizeof name, "%s.experts.w2", prefix);
        st = moei_params_add_slice(p, name, 3, outshape, outfull, outstart, MOEI_PARAM_MATRIX, MOEI_GROUP_EXPERT,
                                   &m->w2);
    }
    if (st != MOE_OK) return st;
    /* Only top_k of the E experts are active per token (expert choice: k = capacity share). */
    int32_t expert_params[3] = {m->w1, m->w3, m->w2};
    for (int i = 0; i < 3; i++)
        if (expert_params[i] >= 0) {
            moei_param *e = &p->entries[expert_params[i]];
            e->active_numel = e->numel / El * s->top_k; /* per token, of the full expert set */
        }
    if (s->shared_hidden > 0) {
        snprintf(name, sizeof name, "%s.shared_expert", prefix);
        st = moei_mlp_register(&m->shared, p, name, s->d, s->shared_hidden, s->activation);
        if (st != MOE_OK) return st;
        m->has_shared = 1;
    }
    m->bias = calloc((size_t)E, sizeof *m->bias);
    m->step_counts = calloc((size_t)E, sizeof *m->step_counts);
    m->problems = calloc((size_t)E, sizeof *m->problems);
    m->ecount = calloc((size_t)E + 1, sizeof *m->ecount);
    m->eoffset = calloc((size_t)E + 1, sizeof *m->eoffset);
    m->ep_cursor = calloc((size_t)E + 1, sizeof *m->ep_cursor);
    m->all_counts = calloc((size_t)E * (size_t)P, sizeof *m->all_counts);
    m->ep_ecount = calloc((size_t)E + 1, sizeof *m->ep_ecount);
    m->ep_eoffset = calloc((size_t)E + 1, sizeof *m->ep_eoffset);
    m->own_count = calloc((size_t)E, sizeof *m->own_count);
    m->etp_counts = calloc((size_t)E * (size_t)T, sizeof *m->etp_counts);
    if (!m->bias || !m->step_counts || !m->problems || !m->ecount || !m->eoffset || !m->ep_cursor || !m->all_counts ||
        !m->ep_ecount || !m->ep_eoffset || !m->own_count || !m->etp_counts)
        return moei_fail(p->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory creating MoE layer '%s'", prefix);
    return MOE_OK;
}

static moe_status reserve(moe_ctx *ctx, moei_buf *b, int64_t count, size_t esize)
{
    return moei_buf_reserve(ctx, b, (uint64_t)count * esize);
}

/* Describe one grouped GEMM over the local experts' row blocks (expert-major rows: expert e has
 * ecount[e] rows at row offset eoffset[e]): A_e = a + o_e·a_row + e·a_mat, likewise B and C. */
typedef struct group_desc {
    int64_t m_rows_from_plan; /* 1: m = rows of the expert, 0: m fixed */
    int64_t m, n, k;
    const float *a;
    int64_t lda, a_row, a_mat;
    const float *b;
    int64_t ldb, b_row, b_mat;
    float *c;
    int64_t ldc, c_row, c_mat;
} group_desc;

static moe_status run_grouped(moe_ctx *ctx, moei_moe *m, int32_t ta, int32_t tb, float beta, const group_desc *g,
                              int k_from_plan)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    for (int32_t e = 0; e < m->local_experts; e++) {
        int64_t rows = m->ecount[e], off = m->eoffset[e];
        moei_gemm_problem *pr = &m->problems[e];
        pr->m = g->m_rows_from_plan ? rows : g->m;
        pr->n = g->n;
        pr->k = k_from_plan ? rows : g->k;
        pr->a = g->a + off * g->a_row + e * g->a_mat;
        pr->lda = g->lda;
        pr->b = g->b + off * g->b_row + e * g->b_mat;
        pr->ldb = g->ldb;
        pr->c = g->c + off * g->c_row + e * g->c_mat;
        pr->ldc = g->ldc;
    }
    return ops->grouped_gemm(ctx, ta, tb, 1.0f, beta, m->problems, m->local_experts);
}

/* ---- expert parallelism: rows travel to the rank that owns their expert and back ---------------
 * After the exchange, rows arrive grouped by source rank, each source's rows in local-expert order;
 * the expert GEMMs want them grouped by expert, so a reorder runs on each side (Megatron-Core's
 * "sort chunks by index"). With ep = 1 every step below is skipped and the plan's rows are used as
 * they are. */

/* Exchange every rank's per-expert row counts and derive the send/receive layouts. */
static moe_status ep_layout(moe_ctx *ctx, moei_moe *m)
{
    (void)ctx;
    const int32_t P = m->ep_size, E = m->s.num_experts, El = m->local_experts, me = m->ep_rank;
    moe_status st = m->ep_comm->ops->all_gather(m->ep_comm, m->plan.counts, m->all_counts, E, MOE_DTYPE_I32);
    m->ep_count_exchanges++;
    if (st != MOE_OK) return st;
    int64_t recv_total = 0;
    for (int32_t r = 0; r < P; r++) {
        m->send_count[r] = 0;
        for (int32_t e = r * El; e < (r + 1) * El; e++) m->send_count[r] += m->plan.counts[e];
        m->send_offset[r] = m->plan.offsets[r * El];
        m->recv_count[r] = 0;
        for (int32_t e = 0; e < El; e++) m->recv_count[r] += m->all_counts[(int64_t)r * E + me * El + e];
        m->recv_offset[r] = recv_total;
        recv_total += m->recv_count[r];
    }
    int64_t off = 0;
    for (int32_t e = 0; e < El; e++) {
        m->ep_eoffset[e] = off;
        m->ep_ecount[e] = 0;
        for (int32_t r = 0; r < P; r++) m->ep_ecount[e] += m->all_counts[(int64_t)r * E + me * El + e];
        off += m->ep_ecount[e];
    }
    m->ep_eoffset[El] = off;
    m->recv_rows = recv_total;
    return MOE_OK;
}

/* Rows [source][expert] <-> [expert][source], source r holding counts[r·stride + e] rows of local
 * expert e and expert e starting at eoffset[e] in the expert-major order. to_expert_major = 1
 * reads src in source-major order. */
static void block_reorder(const moei_moe *m, int32_t P, const int32_t *counts, int64_t stride, const int64_t *eoffset,
                          const float *src, float *dst, int64_t d, int to_expert_major)
{
    const int32_t El = m->local_experts;
    int64_t src_row = 0;
    int64_t *cursor = m->ep_cursor;
    for (int32_t e = 0; e < El; e++) cursor[e] = eoffset[e];
    for (int32_t r = 0; r < P; r++)
        for (int32_t e = 0; e < El; e++) {
            int64_t rows = counts[(int64_t)r * stride + e];
            const float *a = to_expert_major ? src + src_row * d : src + cursor[e] * d;
            float *b = to_expert_major ? dst + cursor[e] * d : dst + src_row * d;
            memcpy(b, a, (size_t)(rows * d) * sizeof(float));
            cursor[e] += rows;
            src_row += rows;
        }
}

static void ep_reorder(const moei_moe *m, const float *src, float *dst, int64_t d, int to_expert_major)
{
    const int32_t E = m->s.num_experts;
    block_reorder(m, m->ep_size, m->all_counts + (int64_t)m->ep_rank * m->local_experts, E, m->ep_eoffset, src, dst, d,
                  to_expert_major);
}

/* Send plan-ordered rows `xp` [S, d] to the expert owners; they arrive in xe expert-major. */
static moe_status ep_dispatch(moe_ctx *ctx, moei_moe *m, const float *xp, float *xe, int64_t d)
{
    (void)ctx;
    const int32_t P = m->ep_size;
    int64_t sc[MOEI_MAX_EP], so[MOEI_MAX_EP], rc[MOEI_MAX_EP], ro[MOEI_MAX_EP];
    for (int32_t r = 0; r < P; r++) {
        sc[r] = m->send_count[r] * d;
        so[r] = m->send_offset[r] * d;
        rc[r] = m->recv_count[r] * d;
        ro[r] = m->recv_offset[r] * d;
    }
    float *stage = MOEI_BUF_F32(m->ep_stage);
    for (int32_t r = 0; r < P; r++) /* rows this rank hands to others and receives from them */
        if (r != m->ep_rank) m->ep_rows_offrank += (uint64_t)(m->send_count[r] + m->recv_count[r]);
    moe_status st = m->ep_comm->ops->all_to_all_v(m->ep_comm, xp, sc, so, stage, rc, ro, MOE_DTYPE_F32);
    if (st == MOE_OK) ep_reorder(m, stage, xe, d, 1);
    return st;
}

/* The reverse: expert-major rows `ye` go back to their source ranks, landing plan-ordered in yp. */
static moe_status ep_return(moe_ctx *ctx, moei_moe *m, const float *ye, float *yp, int64_t d)
{
    (void)ctx;
    const int32_t P = m->ep_size;
    int64_t sc[MOEI_MAX_EP], so[MOEI_MAX_EP], rc[MOEI_MAX_EP], ro[MOEI_MAX_EP];
    for (int32_t r = 0; r < P; r++) {
        sc[r] = m->recv_count[r] * d;
        so[r] = m->recv_offset[r] * d;
        rc[r] = m->send_count[r] * d;
        ro[r] = m->send_offset[r] * d;
    }
    float *stage = MOEI_BUF_F32(m->ep_stage);
    ep_reorder(m, ye, stage, d, 0);
    return m->ep_comm->ops->all_to_all_v(m->ep_comm, stage, sc, so, yp, rc, ro, MOE_DTYPE_F32);
}

/* ---- expert tensor parallelism: the etp group shares its local experts, each rank one slice of
 * their hidden units. The group's rows are gathered (expert-major over the concatenation, sources
 * in etp-rank order inside each expert), every rank applies its slice to all of them, and the
 * partial outputs — sums over the slice's hidden units — are reduce-scattered back to each row's
 * owner, summed in etp-rank order so every owner adds the same terms in the same order. */

/* Exchange the ranks' rows per local expert and lay out the gathered rows (ecount/eoffset). */
static moe_status etp_layout(moei_moe *m)
{
    const int32_t T = m->etp_size, El = m->local_experts;
    moe_status st = m->etp_comm->ops->all_gather(m->etp_comm, m->own_count, m->etp_counts, El, MOE_DTYPE_I32);
    m->etp_count_exchanges++;
    if (st != MOE_OK) return st;
    int64_t off = 0;
    for (int32_t q = 0; q < T; q++) {
        m->etp_src_off[q] = off;
        for (int32_t e = 0; e < El; e++) off += m->etp_counts[(int64_t)q * El + e];
    }
    m->etp_src_off[T] = off;
    off = 0;
    for (int32_t e = 0; e < El; e++) {
        m->eoffset[e] = off;
        m->ecount[e] = 0;
        for (int32_t q = 0; q < T; q++) m->ecount[e] += m->etp_counts[(int64_t)q * El + e];
        off += m->ecount[e];
    }
    m->eoffset[El] = off;
    return MOE_OK;
}

static int64_t etp_own_rows(const moei_moe *m)
{
    return m->etp_src_off[m->etp_rank + 1] - m->etp_src_off[m->etp_rank];
}

/* Reserve the gathered-row buffers for width `w` (d, or the slice's activation width). */
static moe_status etp_reserve(moe_ctx *ctx, moei_moe *m, int64_t d)
{
    const int64_t G = m->eoffset[m->local_experts], R = etp_own_rows(m);
    moe_status st = reserve(ctx, &m->etp_x, G * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->etp_y, G * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->etp_stage, G * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->etp_recv, (int64_t)m->etp_size * R * d, sizeof(float));
    return st;
}

/* own [R, d] expert-major (this rank's rows) -> all [G, d] expert-major over the group's rows. */
static moe_status etp_gather(moei_moe *m, const float *own, float *all, int64_t d)
{
    const int32_t T = m->etp_size, El = m->local_experts;
    const int64_t R = etp_own_rows(m);
    int64_t sc[MOEI_MAX_EP], so[MOEI_MAX_EP], rc[MOEI_MAX_EP], ro[MOEI_MAX_EP];
    for (int32_t q = 0; q < T; q++) {
        sc[q] = R * d; /* the same rows to every peer */
        so[q] = 0;
        rc[q] = (m->etp_src_off[q + 1] - m->etp_src_off[q]) * d;
        ro[q] = m->etp_src_off[q] * d;
    }
    m->etp_rows_own += (uint64_t)R;
    m->etp_rows_all += (uint64_t)m->etp_src_off[T];
    float *stage = MOEI_BUF_F32(m->etp_stage);
    moe_status st = m->etp_comm->ops->all_to_all_v(m->etp_comm, own, sc, so, stage, rc, ro, MOE_DTYPE_F32);
    if (st == MOE_OK) block_reorder(m, T, m->etp_counts, El, m->eoffset, stage, all, d, 1);
    return st;
}

/* all [G, d] expert-major partial sums -> own [R, d]: the sum over the group of each own row. */
static moe_status etp_reduce_scatter(moei_moe *m, const float *all, float *own, int64_t d)
{
    const int32_t T = m->etp_size, El = m->local_experts;
    const int64_t R = etp_own_rows(m);
    int64_t sc[MOEI_MAX_EP], so[MOEI_MAX_EP], rc[MOEI_MAX_EP], ro[MOEI_MAX_EP];
    for (int32_t q = 0; q < T; q++) {
        sc[q] = (m->etp_src_off[q + 1] - m->etp_src_off[q]) * d;
        so[q] = m->etp_src_off[q] * d;
        rc[q] = R * d;
        ro[q] = (int64_t)q * R * d;
    }
    float *stage = MOEI_BUF_F32(m->etp_stage), *recv = MOEI_BUF_F32(m->etp_recv);
    block_reorder(m, T, m->etp_counts, El, m->eoffset, all, stage, d, 0);
    moe_status st = m->etp_comm->ops->all_to_all_v(m->etp_comm, stage, sc, so, recv, rc, ro, MOE_DTYPE_F32);
    if (st != MOE_OK) return st;
    const int64_t n = R * d;
    if (n > 0) memcpy(own, recv, (size_t)n * sizeof(float));
    for (int32_t q = 1; q < T; q++) {
        const float *part = recv + (int64_t)q * n;
        for (int64_t i = 0; i < n; i++) own[i] += part[i];
    }
    return MOE_OK;
}

moe_status moei_moe_forward(moe_ctx *ctx, moei_moe *m, const moei_params *p, const float *x, int64_t n, int training,
                            uint64_t seed, uint64_t rng_step, float *y)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const moei_moe_settings *s = &m->s;
    const int32_t E = s->num_experts, k = s->top_k;
    /* f: this rank's hidden units of each expert (all of them without etp) */
    const int64_t d = s->d, f = s->hidden / m->etp_size, pw = s->activation == MOE_ACTIVATION_SWIGLU ? 2 * f : f;
    const int expert_choice = s->router == MOE_ROUTER_EXPERT_CHOICE;
    const int ep = m->ep_size > 1, etp = m->etp_size > 1;
    /* tensor parallelism: route this rank's rows only (tp_moe.h); y_caller gets every row back */
    float *const y_caller = y;
    if (moei_tp_on(&m->tp)) {
        moe_status tst = moei_moe_tp_enter(ctx, m, &x, &n, &y);
        if (tst != MOE_OK) return tst;
    }
    int64_t capacity, n_slots;
    if (expert_choice) {
        capacity = moei_router_capacity(n, E, k, s->capacity_factor);
        if (capacity > n) capacity = n;
        if (capacity < 1) capacity = 1;
        n_slots = (int64_t)E * capacity;
    } else {
        capacity = moei_router_capacity(n, E, k, s->capacity_factor);
        n_slots = n * k;
    }
    moe_status st = MOE_OK;
    if (s->jitter > 0.0f && training) st = reserve(ctx, &m->xr, n * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->logits, n * E, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->probs, n * E, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->sel_idx, n_slots, sizeof(int32_t));
    if (st == MOE_OK) st = reserve(ctx, &m->sel_w, n_slots, sizeof(float));
    size_t plan_bytes = moei_dispatch_plan_bytes(n, E, n_slots);
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &m->plan_mem, plan_bytes);
    if (st == MOE_OK && expert_choice)
        st = moei_buf_reserve(ctx, &m->ec_ws, moei_router_expert_choice_workspace_size(n, E));
    if (st == MOE_OK) st = reserve(ctx, &m->xp, n_slots * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->yp, n_slots * d, sizeof(float));
    if (st == MOE_OK && m->has_shared) st = reserve(ctx, &m->shared_y, n * d, sizeof(float));
    if (st != MOE_OK) return st;
    m->n = n;
    m->x = x;
    m->training = training;
    m->capacity = capacity;
    m->has_stats = 0;

    /* Router input, with multiplicative jitter keyed by (seed, layer, step, element). */
    const float *xr = x;
    if (s->jitter > 0.0f && training) {
        float *j = MOEI_BUF_F32(m->xr);
        char name[128];
        snprintf(name, sizeof name, "%s.jitter", m->prefix);
        uint64_t stream = moei_name_hash(name) + rng_step;
        for (int64_t i = 0; i < n * d; i++) {
            float u = moei_rng_uniform_at(seed, stream, (uint64_t)(m->token_base * d + i));
            j[i] = x[i] * (1.0f - s->jitter + 2.0f * s->jitter * u);
        }
        xr = j;
    }
    float *logits = MOEI_BUF_F32(m->logits), *probs = MOEI_BUF_F32(m->probs), *w = MOEI_BUF_F32(m->sel_w);
    int32_t *idx = MOEI_BUF_I32(m->sel_idx);
    st = ops->gemm(ctx, 0, 1, n, E, d, 1.0f, xr, d, moei_param_data(p, m->router_w), d, 0.0f, logits, E);
    if (st == MOE_OK) st = moei_dispatch_plan_bind(ctx, &m->plan, n, E, n_slots, m->plan_mem.ptr, plan_bytes);
    if (st != MOE_OK) return st;
    if (expert_choice) {
        st = moei_router_expert_choice_forward(ctx, n, E, capacity, logits, probs, idx, w, m->ec_ws.ptr, m->ec_ws.bytes);
        if (st == MOE_OK) st = moei_dispatch_plan_expert_choice(ctx, &m->plan, n, capacity, idx);
    } else {
        st = moei_router_topk_forward(ctx, n, E, k, s->score_function, (int32_t)s->renormalize, 1.0f, logits,
                                      s->bias_rate > 0.0f ? m->bias : NULL, probs, idx, w);
        if (st == MOE_OK) st = moei_dispatch_plan_token_choice(ctx, &m->plan, n, k, idx, capacity);
    }
    if (st != MOE_OK) return st;

    float *xp = MOEI_BUF_F32(m->xp), *yp = MOEI_BUF_F32(m->yp);
    st = moei_permute(ctx, &m->plan, d, x, xp);
    if (st != MOE_OK) return st;
    /* The local experts' rows, expert-major: the permuted rows themselves without EP. */
    float *xe = xp, *ye = yp;
    if (ep) {
        st = ep_layout(ctx, m);
        if (st == MOE_OK) st = reserve(ctx, &m->xe, m->recv_rows * d, sizeof(float));
        if (st == MOE_OK) st = reserve(ctx, &m->ye, m->recv_rows * d, sizeof(float));
        int64_t stage_rows = m->recv_rows > m->plan.n_rows ? m->recv_rows : m->plan.n_rows;
        if (st == MOE_OK) st = reserve(ctx, &m->ep_stage, stage_rows * d, sizeof(float));
        if (st != MOE_OK) return st;
        xe = MOEI_BUF_F32(m->xe);
        ye = MOEI_BUF_F32(m->ye);
        st = ep_dispatch(ctx, m, xp, xe, d);
        if (st != MOE_OK) return st;
        memcpy(m->ecount, m->ep_ecount, (size_t)m->local_experts * sizeof *m->ecount);
        memcpy(m->eoffset, m->ep_eoffset, ((size_t)m->local_experts + 1) * sizeof *m->eoffset);
    } else {
        for (int32_t e = 0; e < E; e++) {
            m->ecount[e] = m->plan.counts[e];
            m->eoffset[e] = m->plan.offsets[e];
        }
        m->eoffset[E] = m->plan.offsets[E];
    }
    /* this rank's rows (expert-major), replaced by the etp group's for the expert GEMMs */
    float *const xe_own = xe, *const ye_own = ye;
    if (etp) {
        for (int32_t e = 0; e < m->local_experts; e++) m->own_count[e] = (int32_t)m->ecount[e];
        st = etp_layout(m);
        if (st == MOE_OK) st = etp_reserve(ctx, m, d);
        if (st == MOE_OK) st = etp_gather(m, xe_own, MOEI_BUF_F32(m->etp_x), d);
        if (st != MOE_OK) return st;
        xe = MOEI_BUF_F32(m->etp_x);
        ye = MOEI_BUF_F32(m->etp_y);
    }
    const int64_t rows = m->eoffset[m->local_experts];
    st = reserve(ctx, &m->pre, rows * pw, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->act, rows * f, sizeof(float));
    if (st != MOE_OK) return st;
    float *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act);
    /* gate (and up) projections: pre_e [r_e, f] = xe_e · w1[e]ᵀ */
    group_desc g = {1, 0, f, d, xe, d, d, 0, moei_param_data(p, m->w1), d, 0, f * d, pre, pw, pw, 0};
    st = run_grouped(ctx, m, 0, 1, 0.0f, &g, 0);
    if (st == MOE_OK && m->w3 >= 0) {
        g.b = moei_param_data(p, m->w3);
        g.c = pre + f;
        st = run_grouped(ctx, m, 0, 1, 0.0f, &g, 0);
    }
    if (st == MOE_OK) st = moei_mlp_activate(ctx, s->activation, rows, f, pre, act);
    /* down projection: ye_e [r_e, d] = act_e · w2[e]ᵀ */
    group_desc g2 = {1, 0, d, f, act, f, f, 0, moei_param_data(p, m->w2), f, 0, d * f, ye, d, d, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 1, 0.0f, &g2, 0);
    if (st == MOE_OK && etp) st = etp_reduce_scatter(m, ye, ye_own, d);
    if (st == MOE_OK && ep) st = ep_return(ctx, m, ye_own, yp, d);
    if (st == MOE_OK) st = moei_unpermute_combine(ctx, &m->plan, d, yp, w, y);
    if (st == MOE_OK && m->has_shared) {
        float *sy = MOEI_BUF_F32(m->shared_y);
        st = moei_mlp_forward(ctx, &m->shared, p, x, n, sy);
        for (int64_t i = 0; st == MOE_OK && i < n * d; i++) y[i] += sy[i];
    }
    if (st != MOE_OK) return st;

    /* Statistics and loss values (the gradients are added in the backward). */
    float aux = 0.0f, z = 0.0f;
    st = moei_dispatch_plan_stats(ctx, &m->plan, &m->stats);
    /* with tp: counts and stats of the whole micro-batch, each rank's exact share of the losses */
    if (st == MOE_OK && moei_tp_on(&m->tp)) st = moei_moe_tp_count(ctx, m);
    const int32_t *demand = moei_moe_demand(m);
    const float share = moei_moe_token_share(m);
    if (st == MOE_OK && !expert_choice && s->aux_coef > 0.0f)
        st = moei_router_aux_loss(ctx, n, E, k, s->score_function, s->aux_coef * share * share, probs, demand, &aux,
                                  NULL);
    if (st == MOE_OK && s->z_coef > 0.0f) st = moei_router_z_loss(ctx, n, E, s->z_coef * share, logits, &z, NULL);
    if (st == MOE_OK && moei_tp_on(&m->tp)) st = moei_moe_tp_losses(ctx, m, &aux, &z);
    if (st != MOE_OK) return st;
    m->aux_loss = aux;
    m->z_loss = z;
    m->has_stats = 1;
    if (training)
        for (int32_t e = 0; e < E; e++) m->step_counts[e] += demand[e];
    if (moei_tp_on(&m->tp)) return moei_moe_tp_leave(ctx, m, y, y_caller);
    return MOE_OK;
}

moe_status moei_moe_backward(moe_ctx *ctx, moei_moe *m, const moei_params *p, const float *dy, float *dx,
                             int accumulate, float loss_weight)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const moei_moe_settings *s = &m->s;
    const int32_t E = s->num_experts, k = s->top_k;
    const int64_t n = m->n, d = s->d, f = s->hidden / m->etp_size, pw = s->activation == MOE_ACTIVATION_SWIGLU ? 2 * f : f;
    const int64_t n_slots = m->plan.n_slots, rows = m->eoffset[m->local_experts];
    const int expert_choice = s->router == MOE_ROUTER_EXPERT_CHOICE;
    const int ep = m->ep_size > 1, etp = m->etp_size > 1;
    /* tensor parallelism: this rank's rows, as in the forward (tp_moe.h) */
    float *const dx_caller = dx;
    const int accumulate_caller = accumulate;
    if (moei_tp_on(&m->tp)) {
        moe_status tst = moei_moe_tp_enter_backward(ctx, m, &dy, &dx, &accumulate);
        if (tst != MOE_OK) return tst;
    }
    moe_status st = reserve(ctx, &m->d_yp, m->plan.n_rows * d, sizeof(float));
    if (st == MOE_OK && ep) st = reserve(ctx, &m->d_ye, m->recv_rows * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->d_w, n_slots, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->d_logits, n * E, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->d_xr, n * d, sizeof(float));
    if (st != MOE_OK) return st;
    float *xp = MOEI_BUF_F32(m->xp), *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act),
          *yp = MOEI_BUF_F32(m->yp), *w = MOEI_BUF_F32(m->sel_w), *d_yp = MOEI_BUF_F32(m->d_yp),
          *d_w = MOEI_BUF_F32(m->d_w), *d_logits = MOEI_BUF_F32(m->d_logits), *d_xr = MOEI_BUF_F32(m->d_xr);
    const float *logits = MOEI_BUF_F32(m->logits), *probs = MOEI_BUF_F32(m->probs);
    /* expert-major views: the plan-ordered buffers themselves without EP */
    float *xe = ep ? MOEI_BUF_F32(m->xe) : xp, *d_ye = ep ? MOEI_BUF_F32(m->d_ye) : d_yp;
    /* with etp: this rank's rows, and the group's (the forward's gathered input; d_ye gathered) */
    float *const xe_own = xe, *const d_ye_own = d_ye;
    if (etp) {
        xe = MOEI_BUF_F32(m->etp_x);
        d_ye = MOEI_BUF_F32(m->etp_y);
    }

    st = moei_unpermute_combine_backward(ctx, &m->plan, d, dy, yp, w, d_yp, d_w);
    if (st == MOE_OK && ep) st = ep_dispatch(ctx, m, d_yp, d_ye_own, d);
    if (st == MOE_OK && etp) st = etp_gather(m, d_ye_own, d_ye, d);
    /* dW2[e] += d_ye_eᵀ · act_e  ([d, f]) */
    group_desc gw2 = {0, d, f, 0, d_ye, d, d, 0, act, f, f, 0, moei_param_grad(p, m->w2), f, 0, d * f};
    if (st == MOE_OK) st = run_grouped(ctx, m, 1, 0, 1.0f, &gw2, 1);
    /* d_act_e = d_ye_e · w2[e]  ([r_e, f]), written over act (already consumed) */
    group_desc gda = {1, 0, f, d, d_ye, d, d, 0, moei_param_data(p, m->w2), f, 0, d * f, act, f, f, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 0, 0.0f, &gda, 0);
    if (st == MOE_OK) st = moei_mlp_activate_backward(ctx, s->activation, rows, f, pre, act, pre);
    /* dW1[e] += d_gate_eᵀ · xe_e ; dW3 likewise with d_up */
    group_desc gw1 = {0, f, d, 0, pre, pw, pw, 0, xe, d, d, 0, moei_param_grad(p, m->w1), d, 0, f * d};
    if (st == MOE_OK) st = run_grouped(ctx, m, 1, 0, 1.0f, &gw1, 1);
    if (st == MOE_OK && m->w3 >= 0) {
        gw1.a = pre + f;
        gw1.c = moei_param_grad(p, m->w3);
        st = run_grouped(ctx, m, 1, 0, 1.0f, &gw1, 1);
    }
    /* d_xe_e = d_gate_e · w1[e] (+ d_up_e · w3[e]), written over xe (already consumed) */
    group_desc gdx = {1, 0, d, f, pre, pw, pw, 0, moei_param_data(p, m->w1), d, 0, f * d, xe, d, d, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 0, 0.0f, &gdx, 0);
    if (st == MOE_OK && m->w3 >= 0) {
        gdx.a = pre + f;
        gdx.b = moei_param_data(p, m->w3);
        st = run_grouped(ctx, m, 0, 0, 1.0f, &gdx, 0);
    }
    if (st == MOE_OK && etp) st = etp_reduce_scatter(m, xe, xe_own, d);
    if (st == MOE_OK && ep) st = ep_return(ctx, m, xe_own, xp, d);
    if (st == MOE_OK) st = moei_permute_backward(ctx, &m->plan, d, xp, accumulate, dx);

    /* Router: combine-weight gradients through the score function, plus the losses. */
    if (st == MOE_OK) {
        if (expert_choice)
            st = moei_router_expert_choice_backward(ctx, n, E, m->capacity, probs, MOEI_BUF_I32(m->sel_idx), d_w, NULL,
                                                    d_logits);
        else
            st = moei_router_topk_backward(ctx, n, E, k, s->score_function, (int32_t)s->renormalize, 1.0f, probs,
                                           MOEI_BUF_I32(m->sel_idx), d_w, NULL, d_logits);
    }
    float unused;
    const float share = moei_moe_token_share(m);
    if (st == MOE_OK && !expert_choice && s->aux_coef > 0.0f)
        st = moei_router_aux_loss(ctx, n, E, k, s->score_function, s->aux_coef * share * share * loss_weight, probs,
                                  moei_moe_demand(m), &unused, d_logits);
    if (st == MOE_OK && s->z_coef > 0.0f)
        st = moei_router_z_loss(ctx, n, E, s->z_coef * share * loss_weight, logits, &unused, d_logits);
    const float *xr = (s->jitter > 0.0f && m->training) ? MOEI_BUF_F32(m->xr) : m->x;
    if (st == MOE_OK)
        st = ops->gemm(ctx, 1, 0, E, d, n, 1.0f, d_logits, E, xr, d, 1.0f, moei_param_grad(p, m->router_w), d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, E, 1.0f, d_logits, E, moei_param_data(p, m->router_w), d, 0.0f,
                                     d_xr, d);
    if (st != MOE_OK) return st;
    if (s->jitter > 0.0f && m->training) {
        /* xr = x ⊙ noise, so dx += d_xr ⊙ noise = d_xr ⊙ xr / x */
        const float *xrj = MOEI_BUF_F32(m->xr);
        for (int64_t i = 0; i < n * d; i++) dx[i] += m->x[i] != 0.0f ? d_xr[i] * (xrj[i] / m->x[i]) : 0.0f;
    } else {
        for (int64_t i = 0; i < n * d; i++) dx[i] += d_xr[i];
    }
    if (m->has_shared) st = moei_mlp_backward(ctx, &m->shared, p, dy, dx, 1);
    if (st == MOE_OK && moei_tp_on(&m->tp)) st = moei_moe_tp_leave_backward(ctx, m, dx, dx_caller, accumulate_caller);
    return st;
}

moe_status moei_moe_end_step(moe_ctx *ctx, moei_moe *m)
{
    moe_status st = MOE_OK;
    if (m->s.bias_rate > 0.0f) st = moei_router_bias_update(ctx, m->s.num_experts, m->step_counts, m->s.bias_rate, m->bias);
    memset(m->step_counts, 0, (size_t)m->s.num_experts * sizeof *m->step_counts);
    return st;
}

void moei_moe_free(moe_ctx *ctx, moei_moe *m)
{
    moei_buf *bufs[] = {&m->xr,  &m->logits, &m->probs,    &m->sel_idx, &m->sel_w, &m->plan_mem,
                        &m->ec_ws, &m->xp,   &m->pre,      &m->act,     &m->yp,    &m->shared_y,
                        &m->d_yp, &m->d_w,   &m->d_logits, &m->d_xr,    &m->xe,    &m->ye,
                        &m->d_ye, &m->ep_stage, &m->etp_x, &m->etp_y, &m->etp_stage, &m->etp_recv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(ctx, bufs[i]);
    if (m->has_shared) moei_mlp_free(ctx, &m->shared);
    free(m->bias);
    free(m->step_counts);
    free(m->problems);
    free(m->ecount);
    free(m->eoffset);
    free(m->ep_cursor);
    free(m->all_counts);
    free(m->ep_ecount);
    free(m->ep_eoffset);
    free(m->own_count);
    free(m->etp_counts);
    moei_moe_tp_free(ctx, m);
}

moe_status moei_moe_stats(moe_ctx *ctx, const moei_moe *m, moe_routing_stats *stats, int64_t *tokens_per_expert,
                          int32_t capacity, const char *fn)
{
    MOEI_CHECK_NOT_NULL(ctx, stats, fn);
    if (stats->struct_size < sizeof(uint32_t))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: stats->struct_size = %u; set it to sizeof(moe_routing_stats)",
                         fn, (unsigned)stats->struct_size);
    if (tokens_per_expert && capacity < m->s.num_experts)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: capacity = %d but the layer has %d experts", fn, (int)capacity,
                         (int)m->s.num_experts);
    if (!m->has_stats) return moei_fail(ctx, MOE_ERR_STATE, "%s: no forward pass has run on this layer yet", fn);
    moe_routing_stats r;
    memset(&r, 0, sizeof r);
    r.struct_size = stats->struct_size;
    r.num_experts = m->s.num_experts;
    r.tokens = moei_tp_on(&m->tp) ? m->n * m->tp.size : m->n; /* the whole micro-batch */
    r.assignments = m->stats.n_rows;
    r.dropped = m->stats.n_dropped;
    r.max_load = m->stats.max_kept;
    r.mean_load = (double)m->stats.n_rows / (double)m->s.num_experts;
    r.aux_loss = m->aux_loss;
    r.z_loss = m->z_loss;
    size_t n = stats->struct_size < sizeof r ? stats->struct_size : sizeof r;
    memcpy(stats, &r, n);
    if (tokens_per_expert)
        for (int32_t e = 0; e < m->s.num_experts; e++)
            tokens_per_expert[e] = moei_tp_on(&m->tp) ? m->tp_counts[m->s.num_experts + e] : m->plan.counts[e];
    return MOE_OK;
}

void moei_mesh_expert_settings(const struct moe_mesh *mesh, moei_moe_settings *s)
{
    s->ep_size = mesh->size[MOE_AXIS_EP];
    s->ep_rank = mesh->rank[MOE_AXIS_EP];
    s->ep_comm = s->ep_size > 1 ? moei_mesh_comm(mesh, MOE_AXIS_EP) : NULL;
}

void moei_mesh_expert_etp(const struct moe_mesh *mesh, moei_moe_etp *etp)
{
    etp->size = mesh->size[MOE_AXIS_ETP];
    etp->rank = mesh->rank[MOE_AXIS_ETP];
    etp->comm = etp->size > 1 ? moei_mesh_comm(mesh, MOE_AXIS_ETP) : NULL;
}
