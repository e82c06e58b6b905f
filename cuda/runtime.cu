/* CUDA runtime glue behind src/core/device.h: device discovery, memory, copies. Every CUDA error
 * becomes MOE_ERR_DEVICE with the runtime's own message; nothing aborts. */
#include <cuda_runtime.h>
#ifdef MOE_HAVE_NCCL
#include <nccl.h>
#endif

#include "core/ctx.h"
#include "core/device.h"
#include "core/error.h"

static moe_status cuda_check(struct moe_ctx *ctx, cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return MOE_OK;
    cudaGetLastError(); /* clear the sticky-free error so the next call starts clean */
    moe_status code = err == cudaErrorMemoryAllocation ? MOE_ERR_OUT_OF_MEMORY : MOE_ERR_DEVICE;
    return moei_fail(ctx, code, "%s: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

/* Device calls run on the ctx's GPU whatever the calling thread last selected. */
static moe_status select_device(struct moe_ctx *ctx)
{
    return cuda_check(ctx, cudaSetDevice(ctx->device_index), "cudaSetDevice");
}

extern "C" int32_t moei_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return (int32_t)n;
}

extern "C" moe_status moei_device_init(struct moe_ctx *ctx, int32_t index)
{
    int32_t n = moei_device_count();
    if (index >= n)
        return moei_fail(ctx, MOE_ERR_DEVICE, "moe_ctx_create: CUDA device %d requested but %d device(s) are visible",
                         (int)index, (int)n);
    cudaDeviceProp prop;
    moe_status st = cuda_check(ctx, cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
    if (st != MOE_OK) return st;
    if (prop.major < 8)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "moe_ctx_create: %s is compute capability %d.%d; libmoe needs 8.0+",
                         prop.name, prop.major, prop.minor);
    st = cuda_check(ctx, cudaSetDevice(index), "cudaSetDevice");
    if (st != MOE_OK) return st;
    st = cuda_check(ctx, cudaFree(0), "CUDA context creation"); /* forces the primary context now */
    if (st != MOE_OK) return st;
#ifdef MOE_HAVE_NCCL
    int nccl_version = 0;
    ncclGetVersion(&nccl_version);
    moei_log(ctx, MOE_LOG_DEBUG, "CUDA device %d: %s (sm_%d%d, %.1f GiB), NCCL %d", (int)index, prop.name, prop.major,
             prop.minor, (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), nccl_version);
#else
    moei_log(ctx, MOE_LOG_DEBUG, "CUDA device %d: %s (sm_%d%d)", (int)index, prop.name, prop.major, prop.minor);
#endif
    return MOE_OK;
}

extern "C" moe_status moei_device_alloc(struct moe_ctx *ctx, size_t nbytes, void **out)
{
    moe_status st = select_device(ctx);
    if (st != MOE_OK) return st;
    return cuda_check(ctx, cudaMalloc(out, nbytes), "cudaMalloc");
}

extern "C" void moei_device_free(struct moe_ctx *ctx, void *ptr)
{
    if (!ptr) return;
    cudaSetDevice(ctx->device_index);
    cudaFree(ptr);
}

extern "C" moe_status moei_device_copy_h2d(struct moe_ctx *ctx, void *dst, const void *src, size_t nbytes)
{
    moe_status st = select_device(ctx);
    if (st != MOE_OK) return st;
    return cuda_check(ctx, cudaMemcpy(dst, src, nbytes, cudaMemcpyHostToDevice), "cudaMemcpy host to device");
}

extern "C" moe_status moei_device_copy_d2h(struct moe_ctx *ctx, void *dst, const void *src, size_t nbytes)
{
    moe_status st = select_device(ctx);
    if (st != MOE_OK) return st;
    return cuda_check(ctx, cudaMemcpy(dst, src, nbytes, cudaMemcpyDeviceToHost), "cudaMemcpy device to host");
}
