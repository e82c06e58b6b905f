/* See norm_layer.h. */
#include "nn/norm_layer.h"

#include <stdio.h>

#include "cpu/norm.h"
#include "moe/model.h"

moe_status moei_norm_register(moei_norm *nm, moei_params *p, const char *prefix, int32_t type, int32_t d, float eps)
{
    char name[MOEI_PARAM_NAME_CAP];
    int64_t shape[1] = {d};
    nm->type = type;
    nm->d = d;
    nm->eps = eps;
    nm->b = -1;
    snprintf(name, sizeof name, "%s.weight", prefix);
    moe_status st = moei_params_add(p, name, 1, shape, MOEI_PARAM_NORM, &nm->w);
    if (st == MOE_OK && type == MOE_NORM_LAYERNORM) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        st = moei_params_add(p, name, 1, shape, MOEI_PARAM_BIAS, &nm->b);
    }
    if (st == MOE_OK && moei_tp_on(&nm->tp) && nm->tp.sp) {
        moei_params_set_tp(p, nm->w, MOEI_TP_PARTIAL);
        if (nm->b >= 0) moei_params_set_tp(p, nm->b, MOEI_TP_PARTIAL);
    }
    return st;
}

moe_status moei_norm_forward(moe_ctx *ctx, moei_norm *nm, const moei_params *p, const float *x, int64_t n, float *y)
{
    moe_status st = moei_buf_reserve(ctx, &nm->rstd, (uint64_t)n * sizeof(float));
    if (st == MOE_OK && nm->type == MOE_NORM_LAYERNORM) st = moei_buf_reserve(ctx, &nm->mean, (uint64_t)n * sizeof(float));
    if (st != MOE_OK) return st;
    if (nm->type == MOE_NORM_RMSNORM)
        return moei_rmsnorm_fwd(ctx, n, nm->d, nm->eps, x, moei_param_data(p, nm->w), y, MOEI_BUF_F32(nm->rstd));
    return moei_layernorm_fwd(ctx, n, nm->d, nm->eps, x, moei_param_data(p, nm->w), moei_param_data(p, nm->b), y,
                              MOEI_BUF_F32(nm->mean), MOEI_BUF_F32(nm->rstd));
}

moe_status moei_norm_backward(moe_ctx *ctx, moei_norm *nm, const moei_params *p, const float *x, int64_t n,
                              const float *dy, float *dx, int accumulate, float *scratch)
{
    float *out = accumulate ? scratch : dx;
    moe_status st;
    if (nm->type == MOE_NORM_RMSNORM)
        st = moei_rmsnorm_bwd(ctx, n, nm->d, x, moei_param_data(p, nm->w), MOEI_BUF_F32(nm->rstd), dy, out,
                              moei_param_grad(p, nm->w));
    else
        st = moei_layernorm_bwd(ctx, n, nm->d, x, moei_param_data(p, nm->w), MOEI_BUF_F32(nm->mean),
                                MOEI_BUF_F32(nm->rstd), dy, out, moei_param_grad(p, nm->w), moei_param_grad(p, nm->b));
    if (st == MOE_OK && accumulate)
        for (int64_t i = 0; i < n * nm->d; i++) dx[i] += scratch[i];
    return st;
}

void moei_norm_free(moe_ctx *ctx, moei_norm *nm)
{
    moei_buf_free(ctx, &nm->mean);
    moei_buf_free(ctx, &nm->rstd);
}
