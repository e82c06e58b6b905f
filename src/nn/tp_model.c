/* See tp_model.h. Collective sizes are functions of the config and the micro-batch, equal on the
 * tp ranks (which all get the same micro-batch), so no agreement step precedes them. */
#include "nn/tp_model.h"

#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/error.h"
#include "core/ops.h"
#include "cpu/embed.h"
#include "cpu/loss.h"
#include "cpu/loss_parallel.h"
#include "cpu/optim_kernels.h"
#include "nn/model_config.h"
#include "nn/tp_moe.h"
#include "parallel/mesh.h"

static int has_moe_layers(const moe_model_config *c)
{
    for (int32_t l = 0; l < c->num_layers; l++)
        if (moei_model_layer_is_moe(c, l)) return 1;
    return 0;
}

moe_status moei_tp_model_check(moe_ctx *ctx, const moe_mesh *mesh, const moe_model_config *c, const char *fn)
{
    const int32_t T = mesh->size[MOE_AXIS_TP];
    if (T <= 1) return MOE_OK;
#define DIVIDES(field)                                                                                          \
    if (c->field % T != 0)                                                                                      \
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.%s = %d does not divide over tp = %d", fn, \
                         #field, (int)c->field, (int)T);
    DIVIDES(num_heads)
    DIVIDES(num_kv_heads)
#undef DIVIDES
    int dense = 0;
    for (int32_t l = 0; l < c->num_layers; l++) dense |= !moei_model_layer_is_moe(c, l);
    if (dense && c->ffn_hidden % T != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.ffn_hidden = %d does not divide over tp = %d",
                         fn, (int)c->ffn_hidden, (int)T);
    if (mesh->cfg.sequence_parallel && mesh->size[MOE_AXIS_PP] > 1)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                         "%s: sequence_parallel with pp = %d: pipeline stages exchange whole [tokens, d_model] "
                         "activations, not the sequence-parallel shares (use sequence_parallel = 0 with pp > 1)",
                         fn, (int)mesh->size[MOE_AXIS_PP]);
    if (c->vocab_size < T)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.vocab_size = %d is smaller than tp = %d", fn,
                         (int)c->vocab_size, (int)T);
    if (has_moe_layers(c)) {
        if (c->moe_router == MOE_ROUTER_EXPERT_CHOICE)
            return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                             "%s: moe_model_config.moe_router = expert choice with tp = %d: each tp rank routes part "
                             "of the micro-batch, and expert choice ranks all of its tokens",
                             fn, (int)T);
        if (c->moe_capacity_factor > 0.0f)
            return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                             "%s: moe_model_config.moe_capacity_factor = %g with tp = %d: capacity dropping needs the "
                             "micro-batch's global token order, which tp splits (use 0 = dropless)",
                             fn, (double)c->moe_capacity_factor, (int)T);
    }
    return MOE_OK;
}

void moei_tp_model_pre_register(moe_model *m)
{
    moei_tp_from_mesh(m->mesh, &m->tp);
    if (!moei_tp_on(&m->tp)) return;
    for (int32_t l = 0; l < m->cfg.num_layers; l++) {
        moei_block *b = &m->blocks[l];
        b->norm1.tp = b->norm2.tp = m->tp;
        b->attn.tp = m->tp;
        b->mlp.tp = m->tp;
    }
    m->final_norm.tp = m->tp;
}

moe_status moei_tp_model_post_register(moe_model *m)
{
    if (!moei_tp_on(&m->tp)) return MOE_OK;
    moei_params *p = &m->params;
    int64_t v0, vl;
    moei_tp_chunk(m->cfg.vocab_size, m->tp.size, m->tp.rank, &v0, &vl);
    const int32_t vocab[2] = {m->embed, m->lm_head};
    for (int i = 0; i < 2; i++) {
        if (vocab[i] < 0) continue;
        moe_status st = moei_params_slice(p, vocab[i], 0, v0, vl);
        if (st != MOE_OK) return st;
        moei_params_set_tp(p, vocab[i], MOEI_TP_SHARDED);
    }
    if (m->pos_embed >= 0 && m->tp.sp) moei_params_set_tp(p, m->pos_embed, MOEI_TP_PARTIAL);
    for (int32_t l = 0; l < m->cfg.num_layers; l++)
        if (m->blocks[l].is_moe) {
            moe_status st = moei_moe_tp_setup(&m->blocks[l].moe, p, &m->tp);
            if (st != MOE_OK) return st;
        }
    return MOE_OK;
}

static moe_status reserve_f32(moe_ctx *ctx, moei_buf *b, int64_t count)
{
    return moei_buf_reserve(ctx, b, (uint64_t)count * sizeof(float));
}

/* tp_stats layout: this rank's [n, 3] CE stats, every rank's [T, n, 3], then [n, 2] doubles. */
static float *stats_local(moe_model *m) { return MOEI_BUF_F32(m->tp_stats); }
static float *stats_all(moe_model *m, int64_t n) { return MOEI_BUF_F32(m->tp_stats) + 3 * n; }
static int64_t stats_floats(const moe_model *m, int64_t n) /* even, so the doubles stay aligned */
{
    return (3 * n * (1 + (int64_t)m->tp.size) + 1) / 2 * 2;
}
static double *stats_rows(moe_model *m, int64_t n) { return (double *)(void *)(MOEI_BUF_F32(m->tp_stats) + stats_floats(m, n)); }

moe_status moei_tp_model_prepare(moe_model *m, int64_t n)
{
    const int32_t T = m->tp.size;
    if ((m->tp.sp || has_moe_layers(&m->cfg)) && n % T != 0)
        return moei_fail(m->ctx, MOE_ERR_INVALID_ARG,
                         "moe_model: a micro-batch of %lld tokens (micro_batch_size * seq_len) does not divide over "
                         "tp = %d (%s splits the tokens over tp)",
                         (long long)n, (int)T, m->tp.sp ? "sequence parallelism" : "an MoE layer");
    const int64_t d = m->cfg.d_model;
    moe_status st = reserve_f32(m->ctx, &m->tp_stats, stats_floats(m, n) + 4 * n);
    /* with SP: the partial embedding rows, the partial LM-head input gradient, the gathered rows of
     * the embedding gradient (one [n, d] scratch), and the gathered final hidden rows */
    if (st == MOE_OK && m->tp.sp) st = reserve_f32(m->ctx, &m->tp_full, n * d);
    if (st == MOE_OK && m->tp.sp) st = reserve_f32(m->ctx, &m->tp_hf, n * d);
    return st;
}

void moei_tp_model_free(moe_model *m)
{
    moei_buf_free(m->ctx, &m->tp_hf);
    moei_buf_free(m->ctx, &m->tp_full);
    moei_buf_free(m->ctx, &m->tp_stats);
    moei_buf_free(m->ctx, &m->tp_aux);
}

void moei_tp_vocab_slice(const moe_model *m, int64_t *v0, int64_t *count)
{
    moei_tp_chunk(m->cfg.vocab_size, m->tp.size, m->tp.rank, v0, count);
}

/* The first residual row this rank holds (its sequence-parallel share, else 0). */
static int64_t first_row(const moe_model *m, int64_t n) { return m->tp.sp ? (int64_t)m->tp.rank * (n / m->tp.size) : 0; }

moe_status moei_tp_embed_forward(moe_model *m)
{
    const moe_model_config *c = &m->cfg;
    const int64_t n = m->batch * m->seq, rows = moei_tp_rows(&m->tp, n), d = c->d_model;
    const moei_param *e = &m->params.entries[m->embed];
    float *x0 = moei_model_block_input(m, 0);
    /* vocab-parallel lookup: the shard that holds a token gives its row, the others 0; summed */
    float *part = m->tp.sp ? MOEI_BUF_F32(m->tp_full) : x0;
    moe_status st = moei_cpu_embedding_forward_shard(m->ctx, n, c->vocab_size, e->start[0], e->shape[0], d,
                                                     moei_param_data(&m->params, m->embed), MOEI_BUF_I32(m->tokens),
                                                     part);
    if (st == MOE_OK) st = moei_tp_region_output(&m->tp, part, n, d, x0, 0, NULL);
    if (st == MOE_OK && m->pos_embed >= 0)
        st = moei_cpu_pos_embed_add(m->ctx, rows, c->max_seq_len, d, moei_param_data(&m->params, m->pos_embed),
                                    MOEI_BUF_I32(m->positions) + first_row(m, n), x0);
    return st;
}

moe_status moei_tp_head_forward(moe_model *m)
{
    const moei_ops *ops = moei_ctx_ops(m->ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t n = m->batch * m->seq, rows = moei_tp_rows(&m->tp, n), d = m->cfg.d_model;
    const moei_params *p = &m->params;
    int64_t v0, vl;
    moei_tp_vocab_slice(m, &v0, &vl);
    float *hf = MOEI_BUF_F32(m->h_final);
    moe_status st = moei_norm_forward(m->ctx, &m->final_norm, p, MOEI_BUF_F32(m->x_final), rows, hf);
    /* the LM head reads every row (gathered with SP) and writes this rank's vocabulary columns */
    const float *hin = hf;
    if (st == MOE_OK) st = moei_tp_region_input(&m->tp, hf, rows, d, MOEI_BUF_F32(m->tp_hf), &hin);
    const float *w_head = moei_param_data(p, m->lm_head >= 0 ? m->lm_head : m->embed);
    if (st == MOE_OK) st = ops->gemm(m->ctx, 0, 1, n, vl, d, 1.0f, hin, d, w_head, d, 0.0f, MOEI_BUF_F32(m->logits), vl);
    return st;
}

moe_status moei_tp_head_backward(moe_model *m, const int32_t *targets, float loss_weight, double *loss_sum,
                                 int64_t *counted_out)
{
    moe_ctx *ctx = m->ctx;
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t n = m->batch * m->seq, rows = moei_tp_rows(&m->tp, n), d = m->cfg.d_model, V = m->cfg.vocab_size;
    moei_params *p = &m->params;
    int64_t v0, vl;
    moei_tp_vocab_slice(m, &v0, &vl);
    float *logits = MOEI_BUF_F32(m->logits), *dh = MOEI_BUF_F32(m->dh);
    int64_t counted = 0;
    for (int64_t i = 0; i < n; i++) counted += targets[i] != MOEI_IGNORE_INDEX;
    const float scale = counted > 0 ? loss_weight / (float)counted : 0.0f;
    /* vocab-parallel cross-entropy: per-row max, sum of exponentials and target logit of every shard */
    moe_status st = moei_cpu_ce_shard_stats(ctx, n, V, v0, vl, logits, targets, stats_local(m));
    if (st == MOE_OK)
        st = m->tp.comm->ops->all_gather(m->tp.comm, stats_local(m), stats_all(m, n), 3 * n, MOE_DTYPE_F32);
    if (st == MOE_OK) st = moei_cpu_ce_shard_combine(ctx, n, m->tp.size, stats_all(m, n), targets, stats_rows(m, n),
                                                     loss_sum, NULL);
    if (st == MOE_OK) st = moei_cpu_ce_shard_backward(ctx, n, v0, vl, logits, targets, stats_rows(m, n), scale, logits);
    if (st != MOE_OK) return st;
    /* LM head: dW (this rank's vocabulary rows) += d_logitsᵀ · h ; d_h = d_logits · W summed over tp */
    const int32_t head = m->lm_head >= 0 ? m->lm_head : m->embed;
    const float *hf = m->tp.sp ? MOEI_BUF_F32(m->tp_hf) : MOEI_BUF_F32(m->h_final);
    float *part = m->tp.sp ? MOEI_BUF_F32(m->tp_full) : dh;
    st = ops->gemm(ctx, 1, 0, vl, d, n, 1.0f, logits, vl, hf, d, 1.0f, moei_param_grad(p, head), d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, vl, 1.0f, logits, vl, moei_param_data(p, head), d, 0.0f, part, d);
    if (st == MOE_OK) st = moei_tp_region_output(&m->tp, part, n, d, dh, 0, NULL);
    if (st == MOE_OK)
        st = moei_norm_backward(ctx, &m->final_norm, p, MOEI_BUF_F32(m->x_final), rows, dh, MOEI_BUF_F32(m->dx), 0,
                                NULL);
    if (counted_out) *counted_out = counted;
    return st;
}

moe_status moei_tp_embed_backward(moe_model *m)
{
    const moe_model_config *c = &m->cfg;
    const int64_t n = m->batch * m->seq, rows = moei_tp_rows(&m->tp, n), d = c->d_model;
    moei_params *p = &m->params;
    const moei_param *e = &p->entries[m->embed];
    const float *dx = MOEI_BUF_F32(m->dx);
    moe_status st = MOE_OK;
    if (m->pos_embed >= 0)
        st = moei_cpu_pos_embed_backward(m->ctx, rows, c->max_seq_len, d, dx, MOEI_BUF_I32(m->positions) + first_row(m, n),
                                         moei_param_grad(p, m->pos_embed));
    /* every row's gradient reaches this rank's vocabulary rows (gathered with SP) */
    if (st == MOE_OK) st = moei_tp_region_input(&m->tp, dx, rows, d, MOEI_BUF_F32(m->tp_full), &dx);
    if (st == MOE_OK)
        st = moei_cpu_embedding_backward_shard(m->ctx, n, c->vocab_size, e->start[0], e->shape[0], d, dx,
                                               MOEI_BUF_I32(m->tokens), moei_param_grad(p, m->embed));
    return st;
}

moe_status moei_tp_reduce_partial_grads(moe_model *m)
{
    const moei_params *p = &m->params;
    if (!moei_tp_on(&m->tp) || p->tp_partial_size == 0) return MOE_OK;
    return m->tp.comm->ops->all_reduce_sum(m->tp.comm, p->grad + p->tp_partial_offset, p->tp_partial_size,
                                           MOE_DTYPE_F32);
}

moe_status moei_tp_dense_sumsq(moe_model *m, double *sumsq, int32_t *finite)
{
    const moei_params *p = &m->params;
    double once = 0.0, sharded = 0.0;
    int32_t ok = 1;
    for (int32_t i = 0; i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        if (e->group != MOEI_GROUP_DENSE) continue;
        double ss = 0.0;
        int32_t fin = 1;
        moe_status st = moei_cpu_all_finite(m->ctx, e->numel, moei_param_grad(p, i), &fin, NULL);
        if (st == MOE_OK) st = moei_cpu_sum_squares(m->ctx, e->numel, moei_param_grad(p, i), &ss);
        if (st != MOE_OK) return st;
        ok &= fin;
        if (e->tp == MOEI_TP_SHARDED)
            sharded += ss;
        else
            once += ss;
    }
    /* slices differ over tp: add every rank's share, in rank order so all ranks agree bit for bit */
    double mine[2] = {sharded, (double)ok}, all[2 * 64];
    double *buf = m->tp.size <= 64 ? all : malloc((size_t)m->tp.size * sizeof mine);
    if (!buf) return moei_fail(m->ctx, MOE_ERR_OUT_OF_MEMORY, "moe_optimizer_step: out of host memory");
    moe_status st = moei_comm_host_all_gather(m->tp.comm, mine, buf, sizeof mine);
    if (st == MOE_OK) {
        sharded = 0.0;
        for (int32_t r = 0; r < m->tp.size; r++) {
            sharded += buf[2 * r];
            ok &= buf[2 * r + 1] != 0.0;
        }
        *sumsq = once + sharded;
        *finite = ok;
    }
    if (buf != all) free(buf);
    return st;
}

moe_status moei_tp_gather_logits(moe_model *m, float *out)
{
    const int32_t T = m->tp.size;
    const int64_t n = m->batch * m->seq, V = m->cfg.vocab_size, width = (V + T - 1) / T;
    int64_t v0, vl;
    moei_tp_vocab_slice(m, &v0, &vl);
    /* equal blocks for the all-gather: each rank's columns padded to the widest shard */
    moe_status st = reserve_f32(m->ctx, &m->tp_aux, n * width * (1 + (int64_t)T));
    if (st != MOE_OK) return st;
    float *mine = MOEI_BUF_F32(m->tp_aux), *all = mine + n * width;
    const float *logits = MOEI_BUF_F32(m->logits);
    for (int64_t i = 0; i < n; i++) {
        memcpy(mine + i * width, logits + i * vl, (size_t)vl * sizeof(float));
        for (int64_t j = vl; j < width; j++) mine[i * width + j] = 0.0f;
    }
    st = m->tp.comm->ops->all_gather(m->tp.comm, mine, all, n * width, MOE_DTYPE_F32);
    if (st != MOE_OK) return st;
    for (int32_t r = 0; r < T; r++) {
        int64_t r0, rl;
        moei_tp_chunk(V, T, r, &r0, &rl);
        for (int64_t i = 0; i < n; i++)
            memcpy(out + i * V + r0, all + ((int64_t)r * n + i) * width, (size_t)rl * sizeof(float));
    }
    return MOE_OK;
}
