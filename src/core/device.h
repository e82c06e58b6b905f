/* The device runtime seen from C: CUDA when built with MOE_CUDA (cuda/runtime.cu), otherwise
 * stubs that report MOE_ERR_UNSUPPORTED (src/core/device_none.c). Everything returns a status and
 * records a message on the ctx; nothing here aborts. */
#ifndef MOEI_CORE_DEVICE_H
#define MOEI_CORE_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "moe/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_ctx;

int32_t moei_device_count(void);
moe_status moei_device_init(struct moe_ctx *ctx, int32_t index);
moe_status moei_device_alloc(struct moe_ctx *ctx, size_t nbytes, void **out);
void moei_device_free(struct moe_ctx *ctx, void *ptr);
moe_status moei_device_copy_h2d(struct moe_ctx *ctx, void *dst, const void *src, size_t nbytes);
moe_status moei_device_copy_d2h(struct moe_ctx *ctx, void *dst, const void *src, size_t nbytes);
/* Fill `count` elements of `elem_size` bytes (1, 2, 4 or 8) with the bit pattern at `pattern`. */
moe_status moei_device_fill(struct moe_ctx *ctx, void *dst, int64_t count, size_t elem_size, const void *pattern);

#ifdef __cplusplus
}
#endif

#endif
