/* See attention_layer.h. q and k are saved after RoPE, which is what the attention backward needs;
 * the RoPE backward then rotates dq and dk back. With tensor parallelism the attention itself runs
 * on this rank's heads only (heads are independent), so only the region's edges communicate. */
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
    const int32_t T = moei_tp_on(&a->tp) ? a->tp.size : 1, r = T > 1 ? a->tp.rank : 0;
    if (heads % T != 0 || kv_heads % T != 0)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG,
                         "attention '%s': num_heads = %d and num_kv_heads = %d must both divide over tp = %d", prefix,
                         (int)heads, (int)kv_heads, (int)T);
    a->d = d;
    a->heads = heads / T;
    a->kv_heads = kv_heads / T;
    a->head_dim = head_dim;
    a->position = position;
    if (position == MOE_POSITION_ALIBI) {
        /* this rank's slice of the whole model's slope list */
        moe_status st = moei_alibi_slopes(p->ctx, heads, a->alibi);
        if (st != MOE_OK) return st;
        for (int32_t h = 0; h < a->heads; h++) a->alibi[h] = a->alibi[r * a->heads + h];
    }
    const int64_t qd = (int64_t)heads * head_dim, kvd = (int64_t)kv_heads * head_dim;
    const int64_t qfull[2] = {qd, d}, kvfull[2] = {kvd, d}, ofull[2] = {d, qd};
    /* column-parallel: rows of wq, wk, wv; row-parallel: columns of wo */
    const int64_t qshape[2] = {qd / T, d}, kvshape[2] = {kvd / T, d}, oshape[2] = {d, qd / T};
    const int64_t qstart[2] = {r * (qd / T), 0}, kvstart[2] = {r * (kvd / T), 0}, ostart[2] = {0, r * (qd / T)};
    const struct {
        const char *suffix;
        const int64_t *shape, *full, *start;
        int32_t *index;
    } w[4] = {{"wq", qshape, qfull, qstart, &a->wq},
              {"wk", kvshape, kvfull, kvstart, &a->wk},
              {"wv", kvshape, kvfull, kvstart, &a->wv},
              {"wo", oshape, ofull, ostart, &a->wo}};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "%s.%s", prefix, w[i].suffix);
        moe_status st = moei_params_add_slice(p, name, 2, w[i].shape, w[i].full, w[i].start, MOEI_PARAM_MATRIX,
                                              MOEI_GROUP_DENSE, w[i].index);
        if (st != MOE_OK) return st;
        if (T > 1) moei_params_set_tp(p, *w[i].index, MOEI_TP_SHARDED);
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
    const int tp = moei_tp_on(&a->tp);
    if (tp && a->tp.sp) st = reserve_f32(ctx, &a->xg, n * d);
    if (tp && a->tp.sp && st == MOE_OK) st = reserve_f32(ctx, &a->part, n * d);
    /* tensor parallel: every row of the micro-batch enters (gathered from the tp ranks with SP) */
    if (tp && st == MOE_OK) st = moei_tp_region_input(&a->tp, x, moei_tp_rows(&a->tp, n), d, MOEI_BUF_F32(a->xg), &x);
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
    /* row-parallel wo: this rank's heads give a partial sum of every output row */
    float *out = tp && a->tp.sp ? MOEI_BUF_F32(a->part) : y;
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, n, d, qd, 1.0f, o, qd, moei_param_data(p, a->wo), qd, 0.0f, out, d);
    if (st == MOE_OK && tp) st = moei_tp_region_output(&a->tp, out, n, d, y, 0, NULL);
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
    const int tp = moei_tp_on(&a->tp);
    if (tp && (a->tp.sp || accumulate) && st == MOE_OK) st = reserve_f32(ctx, &a->part, n * d);
    if (tp && a->tp.sp && st == MOE_OK) st = reserve_f32(ctx, &a->dyg, n * d);
    /* the output gradient of every row (gathered with SP: the forward reduce-scattered it) */
    if (tp && st == MOE_OK) st = moei_tp_region_input(&a->tp, dy, moei_tp_rows(&a->tp, n), d, MOEI_BUF_F32(a->dyg), &dy);
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
    /* column-parallel inputs: this rank's heads give a partial input gradient, summed over tp */
    float *out = dx, beta = accumulate ? 1.0f : 0.0f;
    if (tp && (a->tp.sp || accumulate)) {
        out = MOEI_BUF_F32(a->part);
        beta = 0.0f;
    }
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, qd, 1.0f, dq, qd, moei_param_data(p, a->wq), d, beta, out, d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, kvd, 1.0f, dk, kvd, moei_param_data(p, a->wk), d, 1.0f, out, d);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, kvd, 1.0f, dv, kvd, moei_param_data(p, a->wv), d, 1.0f, out, d);
    /* the gathered dy has been read: it serves as the scratch of an accumulating reduce-scatter */
    if (st == MOE_OK && tp) st = moei_tp_region_output(&a->tp, out, n, d, dx, accumulate, MOEI_BUF_F32(a->dyg));
    return st;
}

void moei_attn_free(moe_ctx *ctx, moei_attn *a)
{
    moei_buf *bufs[] = {&a->q,  &a->k,  &a->v,    &a->o,  &a->lse, &a->pos, &a->ws,
                        &a->dq, &a->dk, &a->dv,   &a->dout, &a->xg, &a->part, &a->dyg};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(ctx, bufs[i]);
}
