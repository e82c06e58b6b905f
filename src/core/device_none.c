/* Device runtime for builds without CUDA: no devices, and every request says why. */
#include "core/device.h"
#include "core/error.h"

#define MOEI_NO_CUDA "libmoe was built without CUDA (configure with -DMOE_CUDA=ON and a CUDA toolkit)"

int32_t moei_device_count(void) { return 0; }

moe_status moei_device_init(struct moe_ctx *ctx, int32_t index)
{
    (void)index;
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s", MOEI_NO_CUDA);
}

moe_status moei_device_alloc(struct moe_ctx *ctx, size_t nbytes, void **out)
{
    (void)nbytes; (void)out;
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s", MOEI_NO_CUDA);
}

void moei_device_free(struct moe_ctx *ctx, void *ptr) { (void)ctx; (void)ptr; }

moe_status moei_device_copy_h2d(struct moe_ctx *ctx, void *dst, const void *src, size_t nbytes)
{
    (void)dst; (void)src; (void)nbytes;
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s", MOEI_NO_CUDA);
}

moe_status moei_device_copy_d2h(struct moe_ctx *ctx, void *dst, const void *src, size_t nbytes)
{
    (void)dst; (void)src; (void)nbytes;
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s", MOEI_NO_CUDA);
}

moe_status moei_device_fill(struct moe_ctx *ctx, void *dst, int64_t count, size_t elem_size, const void *pattern)
{
    (void)dst; (void)count; (void)elem_size; (void)pattern;
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s", MOEI_NO_CUDA);
}
