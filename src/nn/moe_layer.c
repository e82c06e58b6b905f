/* See moe_layer.h. Token choice and expert choice share everything after the dispatch plan: the
 * plan's slots index the combine weights (topk_w [N, k] or ec_w [E, C]) either way. */
#include "nn/moe_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"
#include "cpu/router.h"
#include "moe/model.h"

moe_status moei_moe_register(moei_moe *m, moei_params *p, const char *prefix, const moei_moe_settings *s)
{
    char name[MOEI_PARAM_NAME_CAP];
    memset(m, 0, sizeof *m);
    m->s = *s;
    snprintf(m->prefix, sizeof m->prefix, "%s", prefix);
    const int64_t E = s->num_experts, f = s->hidden, d = s->d;
    const int64_t rshape[2] = {E, d}, inshape[3] = {E, f, d}, outshape[3] = {E, d, f};
    m->w3 = -1;
    snprintf(name, sizeof name, "%s.router", prefix);
    moe_status st = moei_params_add(p, name, 2, rshape, MOEI_PARAM_MATRIX, &m->router_w);
    if (st == MOE_OK) {
        snprintf(name, sizeof name, "%s.experts.w1", prefix);
        st = moei_params_add(p, name, 3, inshape, MOEI_PARAM_MATRIX, &m->w1);
    }
    if (st == MOE_OK && s->activation == MOE_ACTIVATION_SWIGLU) {
        snprintf(name, sizeof name, "%s.experts.w3", prefix);
        st = moei_params_add(p, name, 3, inshape, MOEI_PARAM_MATRIX, &m->w3);
    }
    if (st == MOE_OK) {
        snprintf(name, sizeof name, "%s.experts.w2", prefix);
        st = moei_params_add(p, name, 3, outshape, MOEI_PARAM_MATRIX, &m->w2);
    }
    if (st != MOE_OK) return st;
    /* Only top_k of the E experts are active per token (expert choice: k = capacity share). */
    int32_t expert_params[3] = {m->w1, m->w3, m->w2};
    for (int i = 0; i < 3; i++)
        if (expert_params[i] >= 0) {
            moei_param *e = &p->entries[expert_params[i]];
            e->active_numel = e->numel / E * s->top_k;
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
    if (!m->bias || !m->step_counts || !m->problems)
        return moei_fail(p->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory creating MoE layer '%s'", prefix);
    return MOE_OK;
}

static moe_status reserve(moe_ctx *ctx, moei_buf *b, int64_t count, size_t esize)
{
    return moei_buf_reserve(ctx, b, (uint64_t)count * esize);
}

/* Describe one grouped GEMM over the experts' row blocks of the plan. Per expert e with r_e rows at
 * row offset o_e: A_e = a + o_e·a_row (or a + e·a_mat), B_e = b + e·b_mat, C_e likewise. */
typedef struct group_desc {
    int64_t m_rows_from_plan; /* 1: m = r_e (rows), 0: m fixed */
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
    const moei_dispatch_plan *plan = &m->plan;
    for (int32_t e = 0; e < m->s.num_experts; e++) {
        int64_t rows = plan->counts[e], off = plan->offsets[e];
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
    return ops->grouped_gemm(ctx, ta, tb, 1.0f, beta, m->problems, m->s.num_experts);
}

moe_status moei_moe_forward(moe_ctx *ctx, moei_moe *m, const moei_params *p, const float *x, int64_t n, int training,
                            uint64_t seed, uint64_t rng_step, float *y)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const moei_moe_settings *s = &m->s;
    const int32_t E = s->num_experts, k = s->top_k;
    const int64_t d = s->d, f = s->hidden, pw = s->activation == MOE_ACTIVATION_SWIGLU ? 2 * f : f;
    const int expert_choice = s->router == MOE_ROUTER_EXPERT_CHOICE;
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
    const int64_t max_rows = n_slots;
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
    if (st == MOE_OK) st = reserve(ctx, &m->xp, max_rows * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->pre, max_rows * pw, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->act, max_rows * f, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->yp, max_rows * d, sizeof(float));
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
            float u = moei_rng_uniform_at(seed, stream, (uint64_t)i);
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

    float *xp = MOEI_BUF_F32(m->xp), *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act),
          *yp = MOEI_BUF_F32(m->yp);
    const int64_t rows = m->plan.n_rows;
    st = moei_permute(ctx, &m->plan, d, x, xp);
    /* gate (and up) projections: pre_e [r_e, f] = xp_e · w1[e]ᵀ */
    group_desc g = {1, 0, f, d, xp, d, d, 0, moei_param_data(p, m->w1), d, 0, f * d, pre, pw, pw, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 1, 0.0f, &g, 0);
    if (st == MOE_OK && m->w3 >= 0) {
        g.b = moei_param_data(p, m->w3);
        g.c = pre + f;
        st = run_grouped(ctx, m, 0, 1, 0.0f, &g, 0);
    }
    if (st == MOE_OK) st = moei_mlp_activate(ctx, s->activation, rows, f, pre, act);
    /* down projection: yp_e [r_e, d] = act_e · w2[e]ᵀ */
    group_desc g2 = {1, 0, d, f, act, f, f, 0, moei_param_data(p, m->w2), f, 0, d * f, yp, d, d, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 1, 0.0f, &g2, 0);
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
    if (st == MOE_OK && !expert_choice && s->aux_coef > 0.0f)
        st = moei_router_aux_loss(ctx, n, E, k, s->score_function, s->aux_coef, probs, m->plan.counts_pre_drop, &aux,
                                  NULL);
    if (st == MOE_OK && s->z_coef > 0.0f) st = moei_router_z_loss(ctx, n, E, s->z_coef, logits, &z, NULL);
    if (st != MOE_OK) return st;
    m->aux_loss = aux;
    m->z_loss = z;
    m->has_stats = 1;
    if (training)
        for (int32_t e = 0; e < E; e++) m->step_counts[e] += m->plan.counts_pre_drop[e];
    return MOE_OK;
}

moe_status moei_moe_backward(moe_ctx *ctx, moei_moe *m, const moei_params *p, const float *dy, float *dx,
                             int accumulate, float loss_weight)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const moei_moe_settings *s = &m->s;
    const int32_t E = s->num_experts, k = s->top_k;
    const int64_t n = m->n, d = s->d, f = s->hidden, pw = s->activation == MOE_ACTIVATION_SWIGLU ? 2 * f : f;
    const int64_t rows = m->plan.n_rows, n_slots = m->plan.n_slots;
    const int expert_choice = s->router == MOE_ROUTER_EXPERT_CHOICE;
    moe_status st = reserve(ctx, &m->d_yp, rows * d, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->d_w, n_slots, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->d_logits, n * E, sizeof(float));
    if (st == MOE_OK) st = reserve(ctx, &m->d_xr, n * d, sizeof(float));
    if (st != MOE_OK) return st;
    float *xp = MOEI_BUF_F32(m->xp), *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act),
          *yp = MOEI_BUF_F32(m->yp), *w = MOEI_BUF_F32(m->sel_w), *d_yp = MOEI_BUF_F32(m->d_yp),
          *d_w = MOEI_BUF_F32(m->d_w), *d_logits = MOEI_BUF_F32(m->d_logits), *d_xr = MOEI_BUF_F32(m->d_xr);
    const float *logits = MOEI_BUF_F32(m->logits), *probs = MOEI_BUF_F32(m->probs);

    st = moei_unpermute_combine_backward(ctx, &m->plan, d, dy, yp, w, d_yp, d_w);
    /* dW2[e] += d_yp_eᵀ · act_e  ([d, f]) */
    group_desc gw2 = {0, d, f, 0, d_yp, d, d, 0, act, f, f, 0, moei_param_grad(p, m->w2), f, 0, d * f};
    if (st == MOE_OK) st = run_grouped(ctx, m, 1, 0, 1.0f, &gw2, 1);
    /* d_act_e = d_yp_e · w2[e]  ([r_e, f]), written over act (already consumed) */
    group_desc gda = {1, 0, f, d, d_yp, d, d, 0, moei_param_data(p, m->w2), f, 0, d * f, act, f, f, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 0, 0.0f, &gda, 0);
    if (st == MOE_OK) st = moei_mlp_activate_backward(ctx, s->activation, rows, f, pre, act, pre);
    /* dW1[e] += d_gate_eᵀ · xp_e ; dW3 likewise with d_up */
    group_desc gw1 = {0, f, d, 0, pre, pw, pw, 0, xp, d, d, 0, moei_param_grad(p, m->w1), d, 0, f * d};
    if (st == MOE_OK) st = run_grouped(ctx, m, 1, 0, 1.0f, &gw1, 1);
    if (st == MOE_OK && m->w3 >= 0) {
        gw1.a = pre + f;
        gw1.c = moei_param_grad(p, m->w3);
        st = run_grouped(ctx, m, 1, 0, 1.0f, &gw1, 1);
    }
    /* d_xp_e = d_gate_e · w1[e] (+ d_up_e · w3[e]), written over xp (already consumed) */
    group_desc gdx = {1, 0, d, f, pre, pw, pw, 0, moei_param_data(p, m->w1), d, 0, f * d, xp, d, d, 0};
    if (st == MOE_OK) st = run_grouped(ctx, m, 0, 0, 0.0f, &gdx, 0);
    if (st == MOE_OK && m->w3 >= 0) {
        gdx.a = pre + f;
        gdx.b = moei_param_data(p, m->w3);
        st = run_grouped(ctx, m, 0, 0, 1.0f, &gdx, 0);
    }
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
    if (st == MOE_OK && !expert_choice && s->aux_coef > 0.0f)
        st = moei_router_aux_loss(ctx, n, E, k, s->score_function, s->aux_coef * loss_weight, probs,
                                  m->plan.counts_pre_drop, &unused, d_logits);
    if (st == MOE_OK && s->z_coef > 0.0f)
        st = moei_router_z_loss(ctx, n, E, s->z_coef * loss_weight, logits, &unused, d_logits);
    const float *xr = (s->jitter > 0.0f && m->training) ? MOEI_BUF_F32(m->xr) : m->x;
    if (st == MOE_OK)
        st = ops->gemm(ctx, 1, 0, E, d, n, 1.0f, d_logits, E, xr, d, 1.0f, moei_param_grad(p, m->router_w), d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, E, 1.0f, d_logits, E, moei_param_data(p, m->router_w), d, 0.0f,
                                     d_xr, d);
    if (st != MOE_OK) return st;
    if (s->jitter > 0.0f && m->training) {
        /* xr = x ⊙ noise, so dx += d_xr ⊙ noise = d_xr ⊙ xr / x; recompute noise instead of dividing */
        const float *xrj = MOEI_BUF_F32(m->xr);
        for (int64_t i = 0; i < n * d; i++) dx[i] += m->x[i] != 0.0f ? d_xr[i] * (xrj[i] / m->x[i]) : 0.0f;
    } else {
        for (int64_t i = 0; i < n * d; i++) dx[i] += d_xr[i];
    }
    if (m->has_shared) st = moei_mlp_backward(ctx, &m->shared, p, dy, dx, 1);
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
    moei_buf *bufs[] = {&m->xr, &m->logits, &m->probs, &m->sel_idx, &m->sel_w, &m->plan_mem, &m->ec_ws, &m->xp,
                        &m->pre, &m->act, &m->yp, &m->shared_y, &m->d_yp, &m->d_w, &m->d_logits, &m->d_xr};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(ctx, bufs[i]);
    if (m->has_shared) moei_mlp_free(ctx, &m->shared);
    free(m->bias);
    free(m->step_counts);
    free(m->problems);
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
    r.tokens = m->n;
    r.assignments = m->stats.n_rows;
    r.dropped = m->stats.n_dropped;
    r.max_load = m->stats.max_kept;
    r.mean_load = (double)m->stats.n_rows / (double)m->s.num_experts;
    r.aux_loss = m->aux_loss;
    r.z_loss = m->z_loss;
    size_t n = stats->struct_size < sizeof r ? stats->struct_size : sizeof r;
    memcpy(stats, &r, n);
    if (tokens_per_expert)
        for (int32_t e = 0; e < m->s.num_experts; e++) tokens_per_expert[e] = m->plan.counts[e];
    return MOE_OK;
}
