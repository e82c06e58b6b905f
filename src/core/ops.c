/* Op-table selection by the ctx's device. */
#include "core/ops.h"

#include "core/ctx.h"
#include "core/error.h"

const moei_ops *moei_ctx_ops(moe_ctx *ctx)
{
    if (ctx->device_type == MOE_DEVICE_CPU) return &moei_cpu_ops;
    moei_fail(ctx, MOE_ERR_UNSUPPORTED, "the CUDA backend has no op table yet; layers run on MOE_DEVICE_CPU only");
    return NULL;
}
