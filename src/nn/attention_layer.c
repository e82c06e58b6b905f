/* See attention_layer.h. q and k are saved after RoPE, which is what the attention backward needs;
 * the RoPE backward then rotates dq and dk back. */
#include "nn/attention_layer.h"

#include <stdio.h>

#include "core/error.h"
#include "core/ops.h"
#include "cpu/attention.h"
#include "cpu/rope.h"
#include "moe/model.h"

moe_status moei_attn_register(moei_attn *a, moei_params *p, const char *prefix, int32_t d, int32_t heads,
                              int32_t kv_heads, int32_t head_dim, int32_t position)
{
    char name[MOEI_PARAM_NAME_CAP];
    a->d = d;
    a->heads = heads;
    a->kv_heads = kv_heads;
    a->head_dim = head_dim;
    a->position = position;
    if (position == MOE_POSITION_ALIBI) {
        moe_status st = moei_alibi_slopes(p->ctx, heads, a->alibi);
        if (st != MOE_OK) return st;
    }
    const int64_t qshape[2] = {(int64_t)heads * head_dim, d}, kvshape[2] = {(int64_t)kv_heads * head_dim, d},
                  oshape[2] = {d, (int64_t)heads * head_dim};
    const struct {
        const char *suffix;
        const int64_t *shape;
        int32_t *index;
    } w[4] = {{"wq", qshape, &a->wq}, {"wk", kvshape, &a->wk}, {"wv", kvshape, &a->wv}, {"wo", oshape, &a->wo}};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%s.%s", prefix, w[i].suffix);
        moe_status st = moei_params_add(p, name, 2, w[i].shape, MOEI_PARAM_MATRIX, w[i].index);
        if (st != MOE_OK) return st;
    }
    return MOE_OK;
}

static moe_status reserve_f32(moe_ctx *ctx, moei_buf *b, int64_t count)
{
    return moei_buf_reserve(ctx, b, (uint64_t)count * sizeof(float));
}

moe_status moei_attn_forward(moe_ctx *ctx, moei_attn *a, const moei_params *p, const float *x, int64_t batch,
                             int64_t seq, float *y)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t n = batch * seq, d = a->d, qd = (int64_t)a->heads * a->head_dim,
                  kvd = (int64_t)a->kv_heads * a->head_dim;
    size_t ws_bytes = 0;
    moe_status st = moei_attention_workspace_size(ctx, batch, seq, a->heads, 0, &ws_bytes);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->q, n * qd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->k, n * kvd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->v, n * kvd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->o, n * qd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->lse, batch * a->heads * seq);
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &a->pos, (uint64_t)n * sizeof(int32_t));
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &a->ws, ws_bytes);
    if (st != MOE_OK) return st;
    float *q = MOEI_BUF_F32(a->q), *k = MOEI_BUF_F32(a->k), *v = MOEI_BUF_F32(a->v), *o = MOEI_BUF_F32(a->o);
    a->batch = batch;
    a->seq = seq;
    a->x = x;
    st = ops->gemm(ctx, 0, 1, n, qd, d, 1.0f, x, d, moei_param_data(p, a->wq), d, 0.0f, q, qd);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, n, kvd, d, 1.0f, x, d, moei_param_data(p, a->wk), d, 0.0f, k, kvd);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, n, kvd, d, 1.0f, x, d, moei_param_data(p, a->wv), d, 0.0f, v, kvd);
    if (st == MOE_OK && a->position == MOE_POSITION_ROPE) {
        int32_t *pos = MOEI_BUF_I32(a->pos);
        for (int64_t i = 0; i < n; i++) pos[i] = (int32_t)(i % seq);
        st = moei_rope_fwd(ctx, n, a->heads, a->kv_heads, a->head_dim, pos, a->max_seq, a->rope_cos, a->rope_sin, q, k);
    }
    const float *alibi = a->position == MOE_POSITION_ALIBI ? a->alibi : NULL;
    if (st == MOE_OK)
        st = moei_attention_fwd(ctx, batch, seq, a->heads, a->kv_heads, a->head_dim, 0.0f, alibi, q, k, v, o,
                                MOEI_BUF_F32(a->lse), a->ws.ptr, ws_bytes);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, n, d, qd, 1.0f, o, qd, moei_param_data(p, a->wo), qd, 0.0f, y, d);
    return st;
}

moe_status moei_attn_backward(moe_ctx *ctx, moei_attn *a, const moei_params *p, const float *dy, float *dx,
                              int accumulate)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t batch = a->batch, seq = a->seq, n = batch * seq, d = a->d,
                  qd = (int64_t)a->heads * a->head_dim, kvd = (int64_t)a->kv_heads * a->head_dim;
    moe_status st = reserve_f32(ctx, &a->dq, n * qd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->dk, n * kvd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->dv, n * kvd);
    if (st == MOE_OK) st = reserve_f32(ctx, &a->dout, n * qd);
    if (st != MOE_OK) return st;
    float *q = MOEI_BUF_F32(a->q), *k = MOEI_BUF_F32(a->k), *v = MOEI_BUF_F32(a->v), *o = MOEI_BUF_F32(a->o);
    float *dq = MOEI_BUF_F32(a->dq), *dk = MOEI_BUF_F32(a->dk), *dv = MOEI_BUF_F32(a->dv),
          *dout = MOEI_BUF_F32(a->dout);
    st = ops->gemm(ctx, 1, 0, d, qd, n, 1.0f, dy, d, o, qd, 1.0f, moei_param_grad(p, a->wo), qd);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, qd, d, 1.0f, dy, d, moei_param_data(p, a->wo), qd, 0.0f, dout, qd);
    const float *alibi = a->position == MOE_POSITION_ALIBI ? a->alibi : NULL;
    if (st == MOE_OK)
        st = moei_attention_bwd(ctx, batch, seq, a->heads, a->kv_heads, a->head_dim, 0.0f, alibi, q, k, v, o,
                                MOEI_BUF_F32(a->lse), dout, dq, dk, dv, a->ws.ptr, a->ws.bytes);
    if (st == MOE_OK && a->position == MOE_POSITION_ROPE)
        st = moei_rope_bwd(ctx, n, a->heads, a->kv_heads, a->head_dim, MOEI_BUF_I32(a->pos), a->max_seq, a->rope_cos,
                           a->rope_sin, dq, dk);
    const float *x = a->x;
    if (st == MOE_OK) st = ops->gemm(ctx, 1, 0, qd, d, n, 1.0f, dq, qd, x, d, 1.0f, moei_param_grad(p, a->wq), d);
    if (st == MOE_OK) st = ops->gemm(ctx, 1, 0, kvd, d, n, 1.0f, dk, kvd, x, d, 1.0f, moei_param_grad(p, a->wk), d);
    if (st == MOE_OK) st = ops->gemm(ctx, 1, 0, kvd, d, n, 1.0f, dv, kvd, x, d, 1.0f, moei_param_grad(p, a->wv), d);
    float beta = accumulate ? 1.0f : 0.0f;
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, qd, 1.0f, dq, qd, moei_param_data(p, a->wq), d, beta, dx, d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, kvd, 1.0f, dk, kvd, moei_param_data(p, a->wk), d, 1.0f, dx, d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, kvd, 1.0f, dv, kvd, moei_param_data(p, a->wv), d, 1.0f, dx, d);
    return st;
}

void moei_attn_free(moe_ctx *ctx, moei_attn *a)
{
    moei_buf *bufs[] = {&a->q, &a->k, &a->v, &a->o, &a->lse, &a->pos, &a->ws, &a->dq, &a->dk, &a->dv, &a->dout};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(ctx, bufs[i]);
}
