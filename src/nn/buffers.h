/* Saved-activation buffers that grow with the token count: a sub-layer asks for room for n tokens
 * before its forward; memory is reallocated only when n exceeds what was seen before (never per
 * step on the hot path). Memory is counted on the ctx. */
#ifndef MOEI_NN_BUFFERS_H
#define MOEI_NN_BUFFERS_H

#include <stdint.h>

#include "moe/ctx.h"

typedef struct moei_buf {
    void *ptr;
    uint64_t bytes;
} moei_buf;

/* Make buf hold at least `bytes` (contents not preserved when it grows). */
moe_status moei_buf_reserve(moe_ctx *ctx, moei_buf *buf, uint64_t bytes);
void moei_buf_free(moe_ctx *ctx, moei_buf *buf);

#define MOEI_BUF_F32(b) ((float *)(b).ptr)
#define MOEI_BUF_I32(b) ((int32_t *)(b).ptr)

#endif
