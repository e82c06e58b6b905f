/* moe_model: creation (config → parameter registration → one allocation → Philox init), forward,
 * forward+backward of one micro-batch, and parameter access. Saved activations grow with the
 * micro-batch size and are reused across calls. */
#include "nn/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/error.h"
#include "core/ops.h"
#include "cpu/embed.h"
#include "cpu/loss.h"
#include "cpu/optim_kernels.h"
#include "cpu/rope.h"
#include "comm/comm.h"
#include "nn/layer_internal.h"
#include "nn/model_config.h"
#include "nn/tp_model.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"

static moe_status register_block(moe_model *m, int32_t l)
{
    const moe_model_config *c = &m->cfg;
    moei_block *b = &m->blocks[l];
    moei_params *p = &m->params;
    char prefix[96];
    snprintf(prefix, sizeof prefix, "layers.%d.attn_norm", (int)l);
    moe_status st = moei_norm_register(&b->norm1, p, prefix, c->norm, c->d_model, c->norm_eps);
    if (st != MOE_OK) return st;
    snprintf(prefix, sizeof prefix, "layers.%d.attn", (int)l);
    st = moei_attn_register(&b->attn, p, prefix, c->d_model, c->num_heads, c->num_kv_heads, m->head_dim, c->position);
    if (st != MOE_OK) return st;
    snprintf(prefix, sizeof prefix, "layers.%d.ffn_norm", (int)l);
    st = moei_norm_register(&b->norm2, p, prefix, c->norm, c->d_model, c->norm_eps);
    if (st != MOE_OK) return st;
    b->is_moe = moei_model_layer_is_moe(c, l);
    if (!b->is_moe) {
        snprintf(prefix, sizeof prefix, "layers.%d.mlp", (int)l);
        return moei_mlp_register(&b->mlp, p, prefix, c->d_model, c->ffn_hidden, c->ffn_activation);
    }
    moei_moe_settings s = {c->d_model, c->moe_num_experts, c->moe_top_k, c->moe_expert_hidden, c->moe_activation,
                           c->moe_router, c->moe_score_function, c->moe_shared_expert_hidden, c->moe_renormalize,
                           c->moe_capacity_factor, c->moe_jitter, c->moe_aux_loss_coef, c->moe_z_loss_coef,
                           c->moe_bias_update_rate, 1, 0, NULL};
    moei_mesh_expert_settings(m->mesh, &s);
    moei_moe_etp etp;
    moei_mesh_expert_etp(m->mesh, &etp);
    snprintf(prefix, sizeof prefix, "layers.%d.moe", (int)l);
    return moei_moe_register_etp(&b->moe, p, prefix, &s, &etp);
}

MOE_API moe_status moe_model_create(moe_ctx *ctx, const moe_mesh *mesh, const moe_model_config *cfg, moe_model **out)
{
    static const char *fn = "moe_model_create";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, mesh, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    moe_model_config c;
    moe_status st = moei_model_config_load(ctx, cfg, &c, fn);
    if (st != MOE_OK) return st;
    /* Data, tensor (+ sequence), expert, expert-tensor and pipeline parallelism are implemented;
     * etp is verified with dp and ep only, so its combinations with tp or pp are refused. */
    if (mesh->size[MOE_AXIS_ETP] > 1 && (mesh->size[MOE_AXIS_TP] > 1 || mesh->size[MOE_AXIS_PP] > 1))
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                         "%s: the mesh asks for etp = %d with tp = %d, pp = %d; experts split over etp ranks only "
                         "with data and expert parallelism in this version (tp = 1 and pp = 1 with etp > 1)",
                         fn, (int)mesh->size[MOE_AXIS_ETP], (int)mesh->size[MOE_AXIS_TP], (int)mesh->size[MOE_AXIS_PP]);
    if (mesh->size[MOE_AXIS_ETP] > 1 && c.moe_num_experts > 0 && c.moe_expert_hidden % mesh->size[MOE_AXIS_ETP] != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: moe_model_config.moe_expert_hidden = %d does not divide over etp = %d", fn,
                         (int)c.moe_expert_hidden, (int)mesh->size[MOE_AXIS_ETP]);
    st = moei_tp_model_check(ctx, mesh, &c, fn);
    if (st != MOE_OK) return st;
    if (c.moe_num_experts > 0 && c.moe_num_experts % mesh->size[MOE_AXIS_EP] != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.moe_num_experts = %d does not divide over ep = %d",
                         fn, (int)c.moe_num_experts, (int)mesh->size[MOE_AXIS_EP]);
    if (!moei_ctx_ops(ctx)) return MOE_ERR_UNSUPPORTED;

    moe_model *m = calloc(1, sizeof *m);
    if (!m) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    m->ctx = ctx;
    m->mesh = mesh;
    m->cfg = c;
    m->head_dim = moei_model_head_dim(&c);
    m->pos_embed = m->lm_head = -1;
    moei_params_init(&m->params, ctx);
    m->blocks = calloc((size_t)c.num_layers, sizeof *m->blocks);
    if (!m->blocks) {
        free(m);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    moei_ctx_retain(ctx);
    moei_tp_model_pre_register(m); /* sub-layers register their tensor-parallel slices */
    const int64_t embed_shape[2] = {c.vocab_size, c.d_model}, pos_shape[2] = {c.max_seq_len, c.d_model};
    /* Pipeline parallelism: this stage registers only its blocks, the embedding on the first stage
     * and the final norm + LM head on the last (names stay logical, so init matches one rank). */
    m->embed = -1;
    if (mesh->size[MOE_AXIS_PP] > 1) st = moei_pipe_create(ctx, mesh, &c, &m->pipe, fn);
    const int hold_embed = moei_pipe_holds_embed(m->pipe), hold_head = moei_pipe_holds_head(m->pipe);
    if (st == MOE_OK && hold_embed)
        st = moei_params_add(&m->params, "embed.weight", 2, embed_shape, MOEI_PARAM_EMBEDDING, &m->embed);
    if (st == MOE_OK && hold_embed && c.position == MOE_POSITION_LEARNED)
        st = moei_params_add(&m->params, "pos_embed.weight", 2, pos_shape, MOEI_PARAM_EMBEDDING, &m->pos_embed);
    for (int32_t l = 0; st == MOE_OK && l < c.num_layers; l++) {
        m->blocks[l].absent = !moei_pipe_holds_layer(m->pipe, l);
        if (!m->blocks[l].absent) st = register_block(m, l);
    }
    if (st == MOE_OK && hold_head)
        st = moei_norm_register(&m->final_norm, &m->params, "final_norm", c.norm, c.d_model, c.norm_eps);
    if (st == MOE_OK && hold_head && !c.tie_embeddings)
        st = moei_params_add(&m->params, "lm_head.weight", 2, embed_shape, MOEI_PARAM_MATRIX, &m->lm_head);
    if (st == MOE_OK) st = moei_tp_model_post_register(m); /* vocabulary shards, tp-partial gradients */
    /* ZeRO-1 splits each region evenly over the ranks that replicate it (a few floats of padding) */
    m->params.region_align[MOEI_GROUP_DENSE] = mesh->size[MOE_AXIS_DP];
    m->params.region_align[MOEI_GROUP_EXPERT] = mesh->size[MOE_AXIS_EDP];
    if (st == MOE_OK) st = moei_params_alloc(&m->params);
    if (st == MOE_OK && c.position == MOE_POSITION_ROPE) {
        int64_t half = m->head_dim / 2;
        st = moei_buf_reserve(ctx, &m->rope_cos, (uint64_t)(c.max_seq_len * half) * sizeof(float));
        if (st == MOE_OK) st = moei_buf_reserve(ctx, &m->rope_sin, (uint64_t)(c.max_seq_len * half) * sizeof(float));
        if (st == MOE_OK)
            st = moei_rope_table(ctx, c.max_seq_len, m->head_dim, c.rope_theta, MOEI_BUF_F32(m->rope_cos),
                                 MOEI_BUF_F32(m->rope_sin));
    }
    if (st != MOE_OK) {
        moe_model_destroy(m);
        return st;
    }
    for (int32_t l = 0; l < c.num_layers; l++) {
        m->blocks[l].attn.rope_cos = MOEI_BUF_F32(m->rope_cos);
        m->blocks[l].attn.rope_sin = MOEI_BUF_F32(m->rope_sin);
        m->blocks[l].attn.max_seq = c.max_seq_len;
    }
    moei_params_init_values(&m->params, ctx->seed, c.init_std);
    *out = m;
    return MOE_OK;
}

MOE_API void moe_model_destroy(moe_model *m)
{
    if (!m) return;
    moe_ctx *ctx = m->ctx;
    for (int32_t l = 0; m->blocks && l < m->cfg.num_layers; l++) {
        moei_block *b = &m->blocks[l];
        moei_norm_free(ctx, &b->norm1);
        moei_norm_free(ctx, &b->norm2);
        moei_attn_free(ctx, &b->attn);
        if (b->is_moe)
            moei_moe_free(ctx, &b->moe);
        else
            moei_mlp_free(ctx, &b->mlp);
        moei_buf *bufs[] = {&b->x, &b->h1, &b->x2, &b->h2};
        for (size_t i = 0; i < 4; i++) moei_buf_free(ctx, bufs[i]);
        moei_layer_handle_free(b->attn_handle);
        moei_layer_handle_free(b->ffn_handle);
    }
    free(m->blocks);
    moei_norm_free(ctx, &m->final_norm);
    moei_buf *bufs[] = {&m->rope_cos, &m->rope_sin, &m->tokens, &m->positions, &m->x_final,
                        &m->h_final,  &m->logits,   &m->dx,     &m->dh};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(ctx, bufs[i]);
    moei_params_free(&m->params);
    moei_tp_model_free(m);
    moei_pipe_destroy(ctx, m->pipe);
    moei_ctx_release(ctx);
    free(m);
}

static moe_status check_tokens(moe_model *m, const int32_t *tokens, int32_t batch, int32_t seq_len, const char *fn)
{
    MOEI_CHECK_NOT_NULL(m->ctx, tokens, fn);
    if (batch < 1) return moei_fail(m->ctx, MOE_ERR_INVALID_ARG, "%s: batch = %d (must be >= 1)", fn, (int)batch);
    if (seq_len < 1 || seq_len > m->cfg.max_seq_len)
        return moei_fail(m->ctx, MOE_ERR_INVALID_ARG, "%s: seq_len = %d (must be 1..max_seq_len = %d)", fn, (int)seq_len,
                         (int)m->cfg.max_seq_len);
    int64_t n = (int64_t)batch * seq_len;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return moei_fail(m->ctx, MOE_ERR_INVALID_ARG, "%s: tokens[%lld] = %d is outside [0, vocab_size = %d)", fn,
                             (long long)i, (int)tokens[i], (int)m->cfg.vocab_size);
    return MOE_OK;
}

static moe_status reserve_f32(moe_ctx *ctx, moei_buf *b, int64_t count)
{
    return moei_buf_reserve(ctx, b, (uint64_t)count * sizeof(float));
}

moe_status moei_model_prepare(moe_model *m, const int32_t *tokens, int64_t batch, int64_t seq, int training)
{
    moe_ctx *ctx = m->ctx;
    const moe_model_config *c = &m->cfg;
    /* rows: of the residual stream this rank keeps (tensor parallel: n / tp with sequence
     * parallelism); V: the vocabulary columns of the logits it computes */
    const int64_t n = batch * seq, rows = moei_tp_rows(&m->tp, n), d = c->d_model;
    int64_t v0 = 0, V = c->vocab_size;
    if (moei_tp_on(&m->tp)) moei_tp_vocab_slice(m, &v0, &V);
    m->has_forward = 0;
    m->forward_count++;
    moe_status st = moei_buf_reserve(ctx, &m->tokens, (uint64_t)n * sizeof(int32_t));
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &m->positions, (uint64_t)n * sizeof(int32_t));
    for (int32_t l = 0; st == MOE_OK && l < c->num_layers; l++) {
        moei_block *b = &m->blocks[l];
        if (b->absent && !moei_pipe_needs_input(m->pipe, l)) continue;
        st = reserve_f32(ctx, &b->x, rows * d);
        if (b->absent) continue; /* another stage's block: only its input, where a chunk of ours ends */
        if (st == MOE_OK) st = reserve_f32(ctx, &b->h1, rows * d);
        if (st == MOE_OK) st = reserve_f32(ctx, &b->x2, rows * d);
        if (st == MOE_OK) st = reserve_f32(ctx, &b->h2, rows * d);
    }
    if (st == MOE_OK && moei_pipe_needs_input(m->pipe, c->num_layers)) st = reserve_f32(ctx, &m->x_final, rows * d);
    if (st == MOE_OK && moei_pipe_holds_head(m->pipe)) st = reserve_f32(ctx, &m->h_final, rows * d);
    if (st == MOE_OK && moei_pipe_holds_head(m->pipe)) st = reserve_f32(ctx, &m->logits, n * V);
    if (st == MOE_OK) st = reserve_f32(ctx, &m->dx, rows * d);
    if (st == MOE_OK) st = reserve_f32(ctx, &m->dh, rows * d);
    if (st == MOE_OK && moei_tp_on(&m->tp)) st = moei_tp_model_prepare(m, n);
    if (st != MOE_OK) return st;
    if (tokens) memcpy(m->tokens.ptr, tokens, (size_t)n * sizeof(int32_t));
    int32_t *pos = MOEI_BUF_I32(m->positions);
    for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(i % seq);
    m->batch = batch;
    m->seq = seq;
    if (training) m->rng_step++;
    return MOE_OK;
}

float *moei_model_block_input(moe_model *m, int32_t l)
{
    return l < m->cfg.num_layers ? MOEI_BUF_F32(m->blocks[l].x) : MOEI_BUF_F32(m->x_final);
}

moe_status moei_model_embed_forward(moe_model *m)
{
    if (moei_tp_on(&m->tp)) return moei_tp_embed_forward(m); /* vocab-parallel */
    const moe_model_config *c = &m->cfg;
    const int64_t n = m->batch * m->seq, d = c->d_model;
    float *x0 = moei_model_block_input(m, 0);
    moe_status st = moei_cpu_embedding_forward(m->ctx, n, c->vocab_size, d, moei_param_data(&m->params, m->embed),
                                               MOEI_BUF_I32(m->tokens), x0);
    if (st == MOE_OK && m->pos_embed >= 0)
        st = moei_cpu_pos_embed_add(m->ctx, n, c->max_seq_len, d, moei_param_data(&m->params, m->pos_embed),
                                    MOEI_BUF_I32(m->positions), x0);
    return st;
}

moe_status moei_block_forward(moe_model *m, int32_t l, int training)
{
    moe_ctx *ctx = m->ctx;
    /* norms and residuals run on this rank's rows (a tp share with sequence parallelism) */
    const int64_t n = moei_tp_rows(&m->tp, m->batch * m->seq), d = m->cfg.d_model;
    const moei_params *p = &m->params;
    moei_block *b = &m->blocks[l];
    float *x = MOEI_BUF_F32(b->x), *h1 = MOEI_BUF_F32(b->h1), *x2 = MOEI_BUF_F32(b->x2), *h2 = MOEI_BUF_F32(b->h2);
    float *x3 = moei_model_block_input(m, l + 1);
    moe_status st = moei_norm_forward(ctx, &b->norm1, p, x, n, h1);
    if (st == MOE_OK) st = moei_attn_forward(ctx, &b->attn, p, h1, m->batch, m->seq, x2);
    if (st != MOE_OK) return st;
    for (int64_t i = 0; i < n * d; i++) x2[i] += x[i];
    st = moei_norm_forward(ctx, &b->norm2, p, x2, n, h2);
    if (st != MOE_OK) return st;
    if (b->is_moe)
        st = moei_moe_forward(ctx, &b->moe, p, h2, n, training, ctx->seed, m->rng_step, x3);
    else
        st = moei_mlp_forward(ctx, &b->mlp, p, h2, n, x3);
    if (st != MOE_OK) return st;
    for (int64_t i = 0; i < n * d; i++) x3[i] += x2[i];
    return MOE_OK;
}

moe_status moei_model_head_forward(moe_model *m)
{
    if (moei_tp_on(&m->tp)) return moei_tp_head_forward(m); /* vocab-parallel */
    const moei_ops *ops = moei_ctx_ops(m->ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t n = m->batch * m->seq, d = m->cfg.d_model, V = m->cfg.vocab_size;
    const moei_params *p = &m->params;
    float *hf = MOEI_BUF_F32(m->h_final);
    moe_status st = moei_norm_forward(m->ctx, &m->final_norm, p, MOEI_BUF_F32(m->x_final), n, hf);
    const float *w_head = moei_param_data(p, m->lm_head >= 0 ? m->lm_head : m->embed);
    if (st == MOE_OK) st = ops->gemm(m->ctx, 0, 1, n, V, d, 1.0f, hf, d, w_head, d, 0.0f, MOEI_BUF_F32(m->logits), V);
    return st;
}

moe_status moei_model_forward(moe_model *m, const int32_t *tokens, int64_t batch, int64_t seq, int training)
{
    if (!moei_ctx_ops(m->ctx)) return MOE_ERR_UNSUPPORTED;
    moe_status st = moei_model_prepare(m, tokens, batch, seq, training);
    if (st == MOE_OK) st = moei_model_embed_forward(m);
    for (int32_t l = 0; st == MOE_OK && l < m->cfg.num_layers; l++) st = moei_block_forward(m, l, training);
    if (st == MOE_OK) st = moei_model_head_forward(m);
    if (st == MOE_OK) m->has_forward = 1;
    return st;
}

MOE_API moe_status moe_model_forward(moe_model *model, const int32_t *tokens, int32_t batch, int32_t seq_len,
                                     float *logits, uint64_t logits_capacity)
{
    static const char *fn = "moe_model_forward";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    if (model->pipe)
        return moei_fail(model->ctx, MOE_ERR_UNSUPPORTED, "%s: the model is split over pp = %d pipeline stages", fn,
                         (int)model->mesh->size[MOE_AXIS_PP]);
    moe_status st = check_tokens(model, tokens, batch, seq_len, fn);
    if (st != MOE_OK) return st;
    uint64_t need = (uint64_t)batch * (uint64_t)seq_len * (uint64_t)model->cfg.vocab_size;
    if (logits && logits_capacity < need)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: logits_capacity = %llu but %llu floats are needed", fn,
                         (unsigned long long)logits_capacity, (unsigned long long)need);
    int saved = moei_threads_enter(model->ctx);
    st = moei_model_forward(model, tokens, batch, seq_len, 0);
    moei_threads_leave(saved);
    if (st == MOE_OK && logits && moei_tp_on(&model->tp)) return moei_tp_gather_logits(model, logits);
    if (st == MOE_OK && logits) memcpy(logits, model->logits.ptr, (size_t)need * sizeof(float));
    return st;
}

moe_status moei_model_head_backward(moe_model *m, const int32_t *targets, float loss_weight, double *loss_sum,
                                    int64_t *counted_out)
{
    if (moei_tp_on(&m->tp)) return moei_tp_head_backward(m, targets, loss_weight, loss_sum, counted_out);
    moe_ctx *ctx = m->ctx;
    const moei_ops *ops = moei_ctx_ops(ctx);
    const int64_t n = m->batch * m->seq, d = m->cfg.d_model, V = m->cfg.vocab_size;
    moei_params *p = &m->params;
    float *dx = MOEI_BUF_F32(m->dx), *dh = MOEI_BUF_F32(m->dh), *logits = MOEI_BUF_F32(m->logits);
    int64_t counted = 0;
    for (int64_t i = 0; i < n; i++) counted += targets[i] != -100;
    float scale = counted > 0 ? loss_weight / (float)counted : 0.0f;
    moe_status st = moei_cpu_cross_entropy(ctx, n, V, logits, targets, scale, logits, NULL, loss_sum, NULL);
    if (st != MOE_OK) return st;
    /* LM head: d_hf = d_logits · W ; dW += d_logitsᵀ · hf (into the embedding when tied) */
    int32_t head = m->lm_head >= 0 ? m->lm_head : m->embed;
    const float *hf = MOEI_BUF_F32(m->h_final);
    st = ops->gemm(ctx, 1, 0, V, d, n, 1.0f, logits, V, hf, d, 1.0f, moei_param_grad(p, head), d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, V, 1.0f, logits, V, moei_param_data(p, head), d, 0.0f, dh, d);
    if (st == MOE_OK) st = moei_norm_backward(ctx, &m->final_norm, p, MOEI_BUF_F32(m->x_final), n, dh, dx, 0, NULL);
    if (counted_out) *counted_out = counted;
    return st;
}

moe_status moei_block_backward(moe_model *m, int32_t l, float loss_weight)
{
    moe_ctx *ctx = m->ctx;
    const int64_t n = moei_tp_rows(&m->tp, m->batch * m->seq); /* this rank's rows, as in the forward */
    const moei_params *p = &m->params;
    moei_block *b = &m->blocks[l];
    float *dx = MOEI_BUF_F32(m->dx), *dh = MOEI_BUF_F32(m->dh);
    /* Norm backwards that add into dx need an [n, d] scratch: the block's own h2 and h1 serve,
     * since the FFN and attention backwards that read them have finished by then. */
    moe_status st;
    if (b->is_moe)
        st = moei_moe_backward(ctx, &b->moe, p, dx, dh, 0, loss_weight);
    else
        st = moei_mlp_backward(ctx, &b->mlp, p, dx, dh, 0);
    if (st == MOE_OK) st = moei_norm_backward(ctx, &b->norm2, p, MOEI_BUF_F32(b->x2), n, dh, dx, 1, MOEI_BUF_F32(b->h2));
    if (st == MOE_OK) st = moei_attn_backward(ctx, &b->attn, p, dx, dh, 0);
    if (st == MOE_OK) st = moei_norm_backward(ctx, &b->norm1, p, MOEI_BUF_F32(b->x), n, dh, dx, 1, MOEI_BUF_F32(b->h1));
    return st;
}

moe_status moei_model_embed_backward(moe_model *m)
{
    if (moei_tp_on(&m->tp)) return moei_tp_embed_backward(m); /* vocab-parallel */
    const moe_model_config *c = &m->cfg;
    const int64_t n = m->batch * m->seq, d = c->d_model;
    moei_params *p = &m->params;
    const float *dx = MOEI_BUF_F32(m->dx);
    moe_status st = moei_cpu_embedding_backward(m->ctx, n, c->vocab_size, d, dx, MOEI_BUF_I32(m->tokens),
                                                moei_param_grad(p, m->embed));
    if (st == MOE_OK && m->pos_embed >= 0)
        st = moei_cpu_pos_embed_backward(m->ctx, n, c->max_seq_len, d, dx, MOEI_BUF_I32(m->positions),
                                         moei_param_grad(p, m->pos_embed));
    return st;
}

double moei_model_router_losses(const moe_model *m)
{
    double aux = 0.0;
    for (int32_t l = 0; l < m->cfg.num_layers; l++)
        if (m->blocks[l].is_moe) aux += m->blocks[l].moe.aux_loss + m->blocks[l].moe.z_loss;
    return aux;
}

/* Backward of the saved forward with targets; gradients are added into the parameter store. */
static moe_status model_backward(moe_model *m, const int32_t *targets, float loss_weight, double *lm_loss,
                                 double *aux_loss)
{
    double loss_sum = 0.0;
    int64_t counted = 0;
    moe_status st = moei_model_head_backward(m, targets, loss_weight, &loss_sum, &counted);
    for (int32_t l = m->cfg.num_layers - 1; st == MOE_OK && l >= 0; l--) st = moei_block_backward(m, l, loss_weight);
    if (st == MOE_OK) st = moei_model_embed_backward(m);
    if (st != MOE_OK) return st;
    if (lm_loss) *lm_loss = counted > 0 ? loss_sum / (double)counted : 0.0;
    if (aux_loss) *aux_loss = moei_model_router_losses(m);
    return MOE_OK;
}

MOE_API moe_status moe_model_forward_backward(moe_model *model, const int32_t *tokens, const int32_t *targets,
                                              int32_t batch, int32_t seq_len, float loss_weight, double *lm_loss,
                                              double *aux_loss)
{
    static const char *fn = "moe_model_forward_backward";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    if (model->pipe)
        return moei_fail(model->ctx, MOE_ERR_UNSUPPORTED,
                         "%s: the model is split over pp = %d pipeline stages; moe_train_step runs its schedule", fn,
                         (int)model->mesh->size[MOE_AXIS_PP]);
    moe_status st = check_tokens(model, tokens, batch, seq_len, fn);
    if (st != MOE_OK) return st;
    MOEI_CHECK_NOT_NULL(model->ctx, targets, fn);
    if (!isfinite(loss_weight))
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: loss_weight is not finite", fn);
    int64_t n = (int64_t)batch * seq_len;
    for (int64_t i = 0; i < n; i++)
        if (targets[i] != -100 && (targets[i] < 0 || targets[i] >= model->cfg.vocab_size))
            return moei_fail(model->ctx, MOE_ERR_INVALID_ARG,
                             "%s: targets[%lld] = %d is outside [0, vocab_size = %d) and is not -100", fn, (long long)i,
                             (int)targets[i], (int)model->cfg.vocab_size);
    int saved = moei_threads_enter(model->ctx);
    st = moei_model_forward(model, tokens, batch, seq_len, 1);
    if (st == MOE_OK) st = model_backward(model, targets, loss_weight, lm_loss, aux_loss);
    moei_threads_leave(saved);
    return st;
}

MOE_API moe_status moe_model_zero_grad(moe_model *model)
{
    MOEI_CHECK_NOT_NULL(NULL, model, "moe_model_zero_grad");
    moei_params_zero_grad(&model->params);
    return MOE_OK;
}

MOE_API moe_status moe_model_get_config(const moe_model *model, moe_model_config *cfg)
{
    static const char *fn = "moe_model_get_config";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, cfg, fn);
    uint32_t size = cfg->struct_size;
    if (size < sizeof(uint32_t))
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: cfg->struct_size = %u; call moe_model_config_init first",
                         fn, (unsigned)size);
    size_t nbytes = size < sizeof model->cfg ? size : sizeof model->cfg;
    memcpy(cfg, &model->cfg, nbytes);
    cfg->struct_size = size;
    return MOE_OK;
}

/* Parameter counts of the logical (unsharded) model, from its config alone, so every rank of every
 * mesh reports the same numbers. matmul_active counts the weights multiplied per token (the
 * experts' top_k share; the embedding only when it doubles as the LM head). */
static void count_params(const moe_model_config *c, int32_t head_dim, double *total, double *active,
                         double *matmul_active)
{
    const double d = c->d_model, V = c->vocab_size, qd = (double)c->num_heads * head_dim,
                 kvd = (double)c->num_kv_heads * head_dim, norm = c->norm == MOE_NORM_LAYERNORM ? 2.0 * d : d;
    double t = V * d + norm, mm = 0.0, act_extra = 0.0;
    if (c->position == MOE_POSITION_LEARNED) t += (double)c->max_seq_len * d;
    if (!c->tie_embeddings) t += V * d;
    mm += V * d; /* the LM head, whether tied or not */
    for (int32_t l = 0; l < c->num_layers; l++) {
        const double attn = 2.0 * qd * d + 2.0 * kvd * d;
        t += 2.0 * norm + attn;
        mm += attn;
        if (moei_model_layer_is_moe(c, l)) {
            const double nw = c->moe_activation == MOE_ACTIVATION_SWIGLU ? 3.0 : 2.0;
            const double expert = nw * c->moe_expert_hidden * d, router = (double)c->moe_num_experts * d;
            const double shared = nw * c->moe_shared_expert_hidden * d;
            t += router + c->moe_num_experts * expert + shared;
            mm += router + c->moe_top_k * expert + shared;
            act_extra += (double)(c->moe_num_experts - c->moe_top_k) * expert; /* not active per token */
        } else {
            const double nw = c->ffn_activation == MOE_ACTIVATION_SWIGLU ? 3.0 : 2.0, mlp = nw * c->ffn_hidden * d;
            t += mlp;
            mm += mlp;
        }
    }
    *total = t;
    *active = t - act_extra;
    *matmul_active = mm;
}

MOE_API moe_status moe_model_num_params(const moe_model *model, int64_t *total, int64_t *active)
{
    MOEI_CHECK_NOT_NULL(NULL, model, "moe_model_num_params");
    double t, a, mm;
    count_params(&model->cfg, model->head_dim, &t, &a, &mm);
    if (total) *total = (int64_t)t;
    if (active) *active = (int64_t)a;
    return MOE_OK;
}

MOE_API moe_status moe_model_flops_per_token(const moe_model *model, int32_t seq_len, double *flops)
{
    static const char *fn = "moe_model_flops_per_token";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, flops, fn);
    if (seq_len < 1 || seq_len > model->cfg.max_seq_len)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: seq_len = %d (must be 1..max_seq_len)", fn, (int)seq_len);
    /* 6 FLOPs per active matmul weight (forward 2, backward 4); a tied embedding is the LM head's
     * matmul. Causal attention: scores and values, 2 matmuls of (T/2 average keys) x qd, x3 for backward. */
    double t, a, matmul;
    count_params(&model->cfg, model->head_dim, &t, &a, &matmul);
    double qd = (double)model->cfg.num_heads * model->head_dim;
    double attn = 6.0 * model->cfg.num_layers * qd * (double)seq_len; /* = 3 x 2 x 2 x qd x T/2 */
    *flops = 6.0 * matmul + attn;
    return MOE_OK;
}

static int32_t find_param(const moe_model *model, const char *name, const char *fn)
{
    int32_t i = moei_params_find(&model->params, name);
    if (i < 0) moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: no parameter named '%s'", fn, name);
    return i;
}

MOE_API moe_status moe_model_param_count(const moe_model *model, int32_t *count)
{
    MOEI_CHECK_NOT_NULL(NULL, model, "moe_model_param_count");
    MOEI_CHECK_NOT_NULL(model->ctx, count, "moe_model_param_count");
    *count = model->params.count;
    return MOE_OK;
}

MOE_API moe_status moe_model_param_info(const moe_model *model, int32_t index, char *name, uint32_t name_capacity,
                                        int32_t *ndim, int64_t *shape)
{
    MOEI_CHECK_NOT_NULL(NULL, model, "moe_model_param_info");
    return moei_params_info(&model->params, index, name, name_capacity, ndim, shape, "moe_model_param_info");
}

MOE_API moe_status moe_model_param_read(const moe_model *model, const char *name, uint32_t gradient, float *dst,
                                        int64_t count)
{
    static const char *fn = "moe_model_param_read";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, name, fn);
    int32_t i = find_param(model, name, fn);
    if (i < 0) return MOE_ERR_INVALID_ARG;
    return moei_params_copy_out(&model->params, i, gradient, dst, count, fn);
}

MOE_API moe_status moe_model_param_write(moe_model *model, const char *name, const float *src, int64_t count)
{
    static const char *fn = "moe_model_param_write";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, name, fn);
    int32_t i = find_param(model, name, fn);
    if (i < 0) return MOE_ERR_INVALID_ARG;
    return moei_params_copy_in(&model->params, i, src, count, fn);
}

MOE_API moe_status moe_model_routing_stats(const moe_model *model, int32_t layer, moe_routing_stats *stats,
                                           int64_t *tokens_per_expert, int32_t capacity)
{
    static const char *fn = "moe_model_routing_stats";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    if (layer < 0 || layer >= model->cfg.num_layers)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: layer %d is not in [0, %d)", fn, (int)layer,
                         (int)model->cfg.num_layers);
    if (model->blocks[layer].absent)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: layer %d lives on another pipeline stage", fn, (int)layer);
    if (!model->blocks[layer].is_moe)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: layer %d is a dense MLP layer", fn, (int)layer);
    return moei_moe_stats(model->ctx, &model->blocks[layer].moe, stats, tokens_per_expert, capacity, fn);
}

MOE_API moe_status moe_model_upcycle(moe_model *model, const moe_model *dense)
{
    static const char *fn = "moe_model_upcycle";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, dense, fn);
    const moe_model_config *a = &model->cfg, *b = &dense->cfg;
    if (b->moe_num_experts != 0)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: the source model has MoE layers (moe_num_experts = %d)", fn,
                         (int)b->moe_num_experts);
    if (a->moe_num_experts == 0)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: the target model has no MoE layers", fn);
    if (b->ffn_hidden != a->moe_expert_hidden || b->ffn_activation != a->moe_activation)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG,
                         "%s: dense ffn_hidden/ffn_activation (%d/%d) must equal the experts' moe_expert_hidden/"
                         "moe_activation (%d/%d)",
                         fn, (int)b->ffn_hidden, (int)b->ffn_activation, (int)a->moe_expert_hidden,
                         (int)a->moe_activation);
#define SAME(field)                                                                                    \
    if (a->field != b->field)                                                                          \
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.%s differs (%g here, %g in the source)", \
                         fn, #field, (double)a->field, (double)b->field);
    SAME(vocab_size) SAME(max_seq_len) SAME(d_model) SAME(num_layers) SAME(num_heads) SAME(num_kv_heads)
    SAME(head_dim) SAME(position) SAME(rope_theta) SAME(norm) SAME(norm_eps) SAME(tie_embeddings)
#undef SAME
    /* Check every tensor before copying any, so a failure changes nothing. */
    const moei_params *src = &dense->params;
    moei_params *dst = &model->params;
    for (int pass = 0; pass < 2; pass++) {
        for (int32_t i = 0; i < src->count; i++) {
            const moei_param *e = &src->entries[i];
            int layer = -1;
            char kind[16] = "";
            if (sscanf(e->name, "layers.%d.mlp.%15s", &layer, kind) == 2 && layer >= 0 && layer < a->num_layers &&
                model->blocks[layer].is_moe) {
                const moei_moe *mo = &model->blocks[layer].moe;
                int32_t target = strcmp(kind, "w1") == 0 ? mo->w1 : strcmp(kind, "w3") == 0 ? mo->w3 : mo->w2;
                if (target < 0 || dst->entries[target].numel != e->numel * mo->local_experts)
                    return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: dense '%s' does not fit the experts", fn,
                                     e->name);
                if (pass == 1)
                    for (int32_t x = 0; x < mo->local_experts; x++)
                        memcpy(moei_param_data(dst, target) + (int64_t)x * e->numel, moei_param_data(src, i),
                               (size_t)e->numel * sizeof(float));
                continue;
            }
            int32_t j = moei_params_find(dst, e->name);
            if (j < 0 || dst->entries[j].numel != e->numel)
                return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: dense tensor '%s' has no same-shaped counterpart",
                                 fn, e->name);
            if (pass == 1) memcpy(moei_param_data(dst, j), moei_param_data(src, i), (size_t)e->numel * sizeof(float));
        }
    }
    return MOE_OK;
}

moe_status moei_model_reduce_grads(moe_model *m)
{
    const moei_params *p = &m->params;
    /* tensors replicated over tp whose gradients cover part of the tokens: sum over tp first */
    moe_status tst = moei_tp_reduce_partial_grads(m);
    if (tst != MOE_OK) return tst;
    const int32_t axes[MOEI_GROUP_COUNT] = {MOE_AXIS_DP, MOE_AXIS_EDP};
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        if (m->mesh->size[axes[g]] <= 1 || p->region_size[g] == 0) continue;
        moei_comm *c = moei_mesh_comm(m->mesh, axes[g]);
        moe_status st = c->ops->all_reduce_sum(c, p->grad + p->region_offset[g], p->region_size[g], MOE_DTYPE_F32);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

moe_status moei_model_grad_sumsq(moe_model *m, double *sumsq, int32_t *finite)
{
    const moei_params *p = &m->params;
    double part[MOEI_GROUP_COUNT] = {0.0, 0.0};
    int32_t ok[MOEI_GROUP_COUNT] = {1, 1};
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        moe_status st = moei_cpu_all_finite(m->ctx, p->region_size[g], p->grad + p->region_offset[g], &ok[g], NULL);
        if (st == MOE_OK) st = moei_cpu_sum_squares(m->ctx, p->region_size[g], p->grad + p->region_offset[g], &part[g]);
        if (st != MOE_OK) return st;
    }
    /* Tensor parallelism: dense slices differ over tp (their squares are summed over it), the
     * other dense tensors are identical over tp (counted once). */
    if (moei_tp_on(&m->tp)) {
        moe_status st = moei_tp_dense_sumsq(m, &part[0], &ok[0]);
        if (st != MOE_OK) return st;
    }
    /* After the reduction dense gradients are identical on every rank: count them once. Expert
     * gradients are identical within an edp group and differ across ep ranks and across etp ranks
     * (each holds its slice of hidden units): sum over ep, then over etp. */
    const int32_t eaxes[2] = {MOE_AXIS_EP, MOE_AXIS_ETP};
    for (int32_t a = 0; a < 2; a++) {
        const int32_t size = m->mesh->size[eaxes[a]];
        if (size <= 1) continue;
        moei_comm *c = moei_mesh_comm(m->mesh, eaxes[a]);
        double all[MOEI_MAX_EP];
        int32_t oks[MOEI_MAX_EP];
        moe_status st = moei_comm_host_all_gather(c, &part[1], all, sizeof(double));
        if (st == MOE_OK) st = moei_comm_host_all_gather(c, &ok[1], oks, sizeof(int32_t));
        if (st != MOE_OK) return st;
        part[1] = 0.0;
        for (int32_t r = 0; r < size; r++) { /* rank order: the same sum everywhere */
            part[1] += all[r];
            ok[1] &= oks[r];
        }
    }
    /* Pipeline stages hold disjoint parameters: add the stages' sums in rank order. */
    const int32_t pp = m->mesh->size[MOE_AXIS_PP];
    if (pp > 1) {
        double mine[3] = {part[0], part[1], (double)(ok[0] && ok[1])};
        double *all = malloc((size_t)pp * sizeof mine);
        if (!all) return moei_fail(m->ctx, MOE_ERR_OUT_OF_MEMORY, "moe_optimizer_step: out of host memory");
        moe_status st = moei_comm_host_all_gather(moei_mesh_comm(m->mesh, MOE_AXIS_PP), mine, all, sizeof mine);
        if (st == MOE_OK) {
            part[0] = part[1] = 0.0;
            for (int32_t r = 0; r < pp; r++) {
                part[0] += all[3 * r];
                part[1] += all[3 * r + 1];
                ok[0] &= all[3 * r + 2] != 0.0;
            }
        }
        free(all);
        if (st != MOE_OK) return st;
    }
    *sumsq = part[0] + part[1];
    *finite = ok[0] && ok[1];
    return MOE_OK;
}
