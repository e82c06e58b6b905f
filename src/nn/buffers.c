/* See buffers.h. */
#include "nn/buffers.h"

#include "core/ctx.h"

moe_status moei_buf_reserve(moe_ctx *ctx, moei_buf *buf, uint64_t bytes)
{
    if (bytes <= buf->bytes) return MOE_OK;
    void *p = NULL;
    moe_status st = moei_ctx_alloc(ctx, bytes, &p);
    if (st != MOE_OK) return st;
    moei_buf_free(ctx, buf);
    buf->ptr = p;
    buf->bytes = bytes;
    return MOE_OK;
}

void moei_buf_free(moe_ctx *ctx, moei_buf *buf)
{
    if (buf->ptr) moei_ctx_free(ctx, buf->ptr, buf->bytes);
    buf->ptr = NULL;
    buf->bytes = 0;
}
