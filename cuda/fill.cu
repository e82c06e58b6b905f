/* The first kernel: fill a buffer with one element's bit pattern (1, 2, 4 or 8 bytes), so fills of
 * any dtype (bf16 and f16 included) are exact copies of what the CPU path encodes. */
#include <cuda_runtime.h>
#include <string.h>

#include "core/ctx.h"
#include "core/device.h"
#include "core/error.h"

/* One grid-stride kernel per element width (written as plain CUDA C, no templates). */
#define MOEI_FILL_KERNEL(NAME, T)                                                                      \
    __global__ void NAME(T *dst, int64_t count, T value)                                               \
    {                                                                                                  \
        for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count;                   \
             i += (int64_t)gridDim.x * blockDim.x)                                                     \
            dst[i] = value;                                                                            \
    }
MOEI_FILL_KERNEL(fill_u8, uint8_t)
MOEI_FILL_KERNEL(fill_u16, uint16_t)
MOEI_FILL_KERNEL(fill_u32, uint32_t)
MOEI_FILL_KERNEL(fill_u64, uint64_t)

static unsigned fill_blocks(int64_t count)
{
    int64_t blocks = (count + 255) / 256;
    return (unsigned)(blocks > 65535 ? 65535 : blocks); /* the grid-stride loop covers the rest */
}

extern "C" moe_status moei_device_fill(struct moe_ctx *ctx, void *dst, int64_t count, size_t elem_size,
                                       const void *pattern)
{
    if (count == 0) return MOE_OK;
    cudaError_t err = cudaSetDevice(ctx->device_index);
    if (err == cudaSuccess) {
        unsigned blocks = fill_blocks(count);
        uint8_t v1;
        uint16_t v2;
        uint32_t v4;
        uint64_t v8;
        switch (elem_size) {
        case 1: memcpy(&v1, pattern, 1); fill_u8<<<blocks, 256>>>((uint8_t *)dst, count, v1); break;
        case 2: memcpy(&v2, pattern, 2); fill_u16<<<blocks, 256>>>((uint16_t *)dst, count, v2); break;
        case 4: memcpy(&v4, pattern, 4); fill_u32<<<blocks, 256>>>((uint32_t *)dst, count, v4); break;
        case 8: memcpy(&v8, pattern, 8); fill_u64<<<blocks, 256>>>((uint64_t *)dst, count, v8); break;
        default: return moei_fail(ctx, MOE_ERR_INVALID_ARG, "device fill: element size %zu", elem_size);
        }
        err = cudaGetLastError();
        if (err == cudaSuccess) err = cudaDeviceSynchronize();
    }
    if (err != cudaSuccess) {
        cudaGetLastError();
        return moei_fail(ctx, MOE_ERR_DEVICE, "fill kernel: %s", cudaGetErrorString(err));
    }
    return MOE_OK;
}
