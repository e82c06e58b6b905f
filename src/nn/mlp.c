/* See mlp.h. Forward saves pre-activations and activations; backward recomputes nothing. The
 * activation is elementwise per hidden unit, so a tp rank's slice of f runs it on its own. */
#include "nn/mlp.h"

#include <stdio.h>

#include "core/error.h"
#include "core/ops.h"
#include "cpu/activation.h"
#include "moe/model.h"

moe_status moei_mlp_register(moei_mlp *m, moei_params *p, const char *prefix, int32_t d, int32_t f, int32_t activation)
{
    char name[MOEI_PARAM_NAME_CAP];
    const int32_t T = moei_tp_on(&m->tp) ? m->tp.size : 1, r = T > 1 ? m->tp.rank : 0;
    if (f % T != 0)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "MLP '%s': ffn_hidden = %d does not divide over tp = %d", prefix,
                         (int)f, (int)T);
    const int64_t fl = f / T;
    const int64_t in_full[2] = {f, d}, out_full[2] = {d, f}, in_shape[2] = {fl, d}, out_shape[2] = {d, fl};
    const int64_t in_start[2] = {r * fl, 0}, out_start[2] = {0, r * fl};
    m->d = d;
    m->f = (int32_t)fl;
    m->activation = activation;
    m->w3 = -1;
    snprintf(name, sizeof name, "%s.w1", prefix);
    moe_status st = moei_params_add_slice(p, name, 2, in_shape, in_full, in_start, MOEI_PARAM_MATRIX, MOEI_GROUP_DENSE,
                                          &m->w1);
    if (st == MOE_OK && activation == MOE_ACTIVATION_SWIGLU) {
        snprintf(name, sizeof name, "%s.w3", prefix);
        st = moei_params_add_slice(p, name, 2, in_shape, in_full, in_start, MOEI_PARAM_MATRIX, MOEI_GROUP_DENSE, &m->w3);
    }
    if (st == MOE_OK) {
        snprintf(name, sizeof name, "%s.w2", prefix);
        st = moei_params_add_slice(p, name, 2, out_shape, out_full, out_start, MOEI_PARAM_MATRIX, MOEI_GROUP_DENSE,
                                   &m->w2);
    }
    if (st == MOE_OK && T > 1) {
        moei_params_set_tp(p, m->w1, MOEI_TP_SHARDED);
        if (m->w3 >= 0) moei_params_set_tp(p, m->w3, MOEI_TP_SHARDED);
        moei_params_set_tp(p, m->w2, MOEI_TP_SHARDED);
    }
    return st;
}

moe_status moei_mlp_activate(moe_ctx *ctx, int32_t activation, int64_t n, int64_t f, const float *pre, float *act)
{
    if (activation == MOE_ACTIVATION_SWIGLU) return moei_cpu_swiglu_forward(ctx, n, f, pre, act);
    return moei_cpu_gelu_forward(ctx, n * f, MOEI_GELU_EXACT, pre, act);
}

moe_status moei_mlp_activate_backward(moe_ctx *ctx, int32_t activation, int64_t n, int64_t f, const float *pre,
                                      const float *d_act, float *d_pre)
{
    if (activation == MOE_ACTIVATION_SWIGLU) return moei_cpu_swiglu_backward(ctx, n, f, pre, d_act, d_pre);
    return moei_cpu_gelu_backward(ctx, n * f, MOEI_GELU_EXACT, pre, d_act, d_pre);
}

static int64_t pre_width(const moei_mlp *m) { return m->activation == MOE_ACTIVATION_SWIGLU ? 2 * (int64_t)m->f : m->f; }

moe_status moei_mlp_forward(moe_ctx *ctx, moei_mlp *m, const moei_params *p, const float *x, int64_t n, float *y)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int tp = moei_tp_on(&m->tp);
    const int64_t rows = n; /* this rank's rows; n becomes every row of the region */
    if (tp && m->tp.sp) n *= m->tp.size;
    const int64_t d = m->d, f = m->f, pw = pre_width(m);
    moe_status st = moei_buf_reserve(ctx, &m->pre, (uint64_t)(n * pw) * sizeof(float));
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &m->act, (uint64_t)(n * f) * sizeof(float));
    if (tp && m->tp.sp && st == MOE_OK) st = moei_buf_reserve(ctx, &m->xg, (uint64_t)(n * d) * sizeof(float));
    if (tp && m->tp.sp && st == MOE_OK) st = moei_buf_reserve(ctx, &m->part, (uint64_t)(n * d) * sizeof(float));
    if (tp && st == MOE_OK) st = moei_tp_region_input(&m->tp, x, rows, d, MOEI_BUF_F32(m->xg), &x);
    if (st != MOE_OK) return st;
    float *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act);
    m->n = n;
    m->x = x;
    st = ops->gemm(ctx, 0, 1, n, f, d, 1.0f, x, d, moei_param_data(p, m->w1), d, 0.0f, pre, pw);
    if (st == MOE_OK && m->w3 >= 0)
        st = ops->gemm(ctx, 0, 1, n, f, d, 1.0f, x, d, moei_param_data(p, m->w3), d, 0.0f, pre + f, pw);
    if (st == MOE_OK) st = moei_mlp_activate(ctx, m->activation, n, f, pre, act);
    float *out = tp && m->tp.sp ? MOEI_BUF_F32(m->part) : y; /* row-parallel w2: partial sums */
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, n, d, f, 1.0f, act, f, moei_param_data(p, m->w2), f, 0.0f, out, d);
    if (st == MOE_OK && tp) st = moei_tp_region_output(&m->tp, out, n, d, y, 0, NULL);
    return st;
}

moe_status moei_mlp_backward(moe_ctx *ctx, moei_mlp *m, const moei_params *p, const float *dy, float *dx,
                             int accumulate)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t n = m->n, d = m->d, f = m->f, pw = pre_width(m);
    float *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act);
    const int tp = moei_tp_on(&m->tp);
    moe_status st = MOE_OK;
    if (tp && (m->tp.sp || accumulate)) st = moei_buf_reserve(ctx, &m->part, (uint64_t)(n * d) * sizeof(float));
    if (tp && m->tp.sp && st == MOE_OK) st = moei_buf_reserve(ctx, &m->dyg, (uint64_t)(n * d) * sizeof(float));
    if (tp && st == MOE_OK) st = moei_tp_region_input(&m->tp, dy, moei_tp_rows(&m->tp, n), d, MOEI_BUF_F32(m->dyg), &dy);
    if (st != MOE_OK) return st;
    /* dW2 += dyᵀ · act;  d_act = dy · W2 (reuses the act buffer after dW2 has read it) */
    st = ops->gemm(ctx, 1, 0, d, f, n, 1.0f, dy, d, act, f, 1.0f, moei_param_grad(p, m->w2), f);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, f, d, 1.0f, dy, d, moei_param_data(p, m->w2), f, 0.0f, act, f);
    /* d_pre overwrites pre in place (the packed SwiGLU backward allows it) */
    if (st == MOE_OK) st = moei_mlp_activate_backward(ctx, m->activation, n, f, pre, act, pre);
    if (st == MOE_OK) st = ops->gemm(ctx, 1, 0, f, d, n, 1.0f, pre, pw, m->x, d, 1.0f, moei_param_grad(p, m->w1), d);
    if (st == MOE_OK && m->w3 >= 0)
        st = ops->gemm(ctx, 1, 0, f, d, n, 1.0f, pre + f, pw, m->x, d, 1.0f, moei_param_grad(p, m->w3), d);
    /* column-parallel w1/w3: a partial input gradient, summed over tp */
    float *out = dx, beta = accumulate ? 1.0f : 0.0f;
    if (tp && (m->tp.sp || accumulate)) {
        out = MOEI_BUF_F32(m->part);
        beta = 0.0f;
    }
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, f, 1.0f, pre, pw, moei_param_data(p, m->w1), d, beta, out, d);
    if (st == MOE_OK && m->w3 >= 0)
        st = ops->gemm(ctx, 0, 0, n, d, f, 1.0f, pre + f, pw, moei_param_data(p, m->w3), d, 1.0f, out, d);
    if (st == MOE_OK && tp) st = moei_tp_region_output(&m->tp, out, n, d, dx, accumulate, MOEI_BUF_F32(m->dyg));
    return st;
}

void moei_mlp_free(moe_ctx *ctx, moei_mlp *m)
{
    moei_buf *bufs[] = {&m->pre, &m->act, &m->xg, &m->part, &m->dyg};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(ctx, bufs[i]);
}
