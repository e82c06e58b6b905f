/* See mlp.h. Forward saves pre-activations and activations; backward recomputes nothing. */
#include "nn/mlp.h"

#include <stdio.h>

#include "core/error.h"
#include "core/ops.h"
#include "cpu/activation.h"
#include "moe/model.h"

moe_status moei_mlp_register(moei_mlp *m, moei_params *p, const char *prefix, int32_t d, int32_t f, int32_t activation)
{
    char name[MOEI_PARAM_NAME_CAP];
    int64_t in_shape[2] = {f, d}, out_shape[2] = {d, f};
    m->d = d;
    m->f = f;
    m->activation = activation;
    m->w3 = -1;
    snprintf(name, sizeof name, "%s.w1", prefix);
    moe_status st = moei_params_add(p, name, 2, in_shape, MOEI_PARAM_MATRIX, &m->w1);
    if (st == MOE_OK && activation == MOE_ACTIVATION_SWIGLU) {
        snprintf(name, sizeof name, "%s.w3", prefix);
        st = moei_params_add(p, name, 2, in_shape, MOEI_PARAM_MATRIX, &m->w3);
    }
    if (st == MOE_OK) {
        snprintf(name, sizeof name, "%s.w2", prefix);
        st = moei_params_add(p, name, 2, out_shape, MOEI_PARAM_MATRIX, &m->w2);
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
    const int64_t d = m->d, f = m->f, pw = pre_width(m);
    moe_status st = moei_buf_reserve(ctx, &m->pre, (uint64_t)(n * pw) * sizeof(float));
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &m->act, (uint64_t)(n * f) * sizeof(float));
    if (st != MOE_OK) return st;
    float *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act);
    m->n = n;
    m->x = x;
    st = ops->gemm(ctx, 0, 1, n, f, d, 1.0f, x, d, moei_param_data(p, m->w1), d, 0.0f, pre, pw);
    if (st == MOE_OK && m->w3 >= 0)
        st = ops->gemm(ctx, 0, 1, n, f, d, 1.0f, x, d, moei_param_data(p, m->w3), d, 0.0f, pre + f, pw);
    if (st == MOE_OK) st = moei_mlp_activate(ctx, m->activation, n, f, pre, act);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, n, d, f, 1.0f, act, f, moei_param_data(p, m->w2), f, 0.0f, y, d);
    return st;
}

moe_status moei_mlp_backward(moe_ctx *ctx, moei_mlp *m, const moei_params *p, const float *dy, float *dx,
                             int accumulate)
{
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const int64_t n = m->n, d = m->d, f = m->f, pw = pre_width(m);
    float *pre = MOEI_BUF_F32(m->pre), *act = MOEI_BUF_F32(m->act);
    /* dW2 += dyᵀ · act;  d_act = dy · W2 (reuses the act buffer after dW2 has read it) */
    moe_status st = ops->gemm(ctx, 1, 0, d, f, n, 1.0f, dy, d, act, f, 1.0f, moei_param_grad(p, m->w2), f);
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, f, d, 1.0f, dy, d, moei_param_data(p, m->w2), f, 0.0f, act, f);
    /* d_pre overwrites pre in place (the packed SwiGLU backward allows it) */
    if (st == MOE_OK) st = moei_mlp_activate_backward(ctx, m->activation, n, f, pre, act, pre);
    if (st == MOE_OK) st = ops->gemm(ctx, 1, 0, f, d, n, 1.0f, pre, pw, m->x, d, 1.0f, moei_param_grad(p, m->w1), d);
    if (st == MOE_OK && m->w3 >= 0)
        st = ops->gemm(ctx, 1, 0, f, d, n, 1.0f, pre + f, pw, m->x, d, 1.0f, moei_param_grad(p, m->w3), d);
    float beta = accumulate ? 1.0f : 0.0f;
    if (st == MOE_OK) st = ops->gemm(ctx, 0, 0, n, d, f, 1.0f, pre, pw, moei_param_data(p, m->w1), d, beta, dx, d);
    if (st == MOE_OK && m->w3 >= 0)
        st = ops->gemm(ctx, 0, 0, n, d, f, 1.0f, pre + f, pw, moei_param_data(p, m->w3), d, 1.0f, dx, d);
    return st;
}

void moei_mlp_free(moe_ctx *ctx, moei_mlp *m)
{
    moei_buf_free(ctx, &m->pre);
    moei_buf_free(ctx, &m->act);
}
