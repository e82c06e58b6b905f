/* The self communicator: a world of one rank. Collectives reduce to copies (or nothing), and
 * point-to-point has no peer, so it is an error rather than a silent no-op. */
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/ctx.h"
#include "core/device.h"
#include "core/error.h"
#include "moe/tensor.h"

static moe_status self_copy(moei_comm *c, void *dst, const void *src, int64_t count, int32_t dtype)
{
    size_t esize;
    if (moe_dtype_size(dtype, &esize) != MOE_OK)
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(self): unknown dtype %d", (int)dtype);
    if (count < 0) return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(self): negative count %lld", (long long)count);
    if (dst == src || count == 0) return MOE_OK;
    if (c->ctx->device_type == MOE_DEVICE_CUDA)
        return moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(self): device buffers need the NCCL backend");
    memmove(dst, src, (size_t)count * esize);
    return MOE_OK;
}

static moe_status self_all_reduce(moei_comm *c, void *buf, int64_t count, int32_t dtype)
{
    return self_copy(c, buf, buf, count, dtype);
}

static moe_status self_reduce_scatter(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype)
{
    return self_copy(c, out, in, count, dtype);
}

static moe_status self_all_gather(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype)
{
    return self_copy(c, out, in, count, dtype);
}

static moe_status self_all_to_all_v(moei_comm *c, const void *in, const int64_t *send_counts,
                                    const int64_t *send_offsets, void *out, const int64_t *recv_counts,
                                    const int64_t *recv_offsets, int32_t dtype)
{
    if (send_counts[0] != recv_counts[0])
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(self): all_to_all_v sends %lld but receives %lld elements",
                         (long long)send_counts[0], (long long)recv_counts[0]);
    size_t esize;
    if (moe_dtype_size(dtype, &esize) != MOE_OK)
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(self): unknown dtype %d", (int)dtype);
    return self_copy(c, (uint8_t *)out + (size_t)recv_offsets[0] * esize,
                     (const uint8_t *)in + (size_t)send_offsets[0] * esize, send_counts[0], dtype);
}

static moe_status self_broadcast(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t root)
{
    if (root != 0) return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(self): broadcast root %d in a world of 1", (int)root);
    return self_copy(c, buf, buf, count, dtype);
}

static moe_status self_send(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag)
{
    (void)buf; (void)count; (void)dtype; (void)tag;
    return moei_fail(c->ctx, MOE_ERR_COMM, "comm(self): send to rank %d in a world of 1 rank", (int)peer);
}

static moe_status self_recv(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag)
{
    (void)buf; (void)count; (void)dtype; (void)tag;
    return moei_fail(c->ctx, MOE_ERR_COMM, "comm(self): recv from rank %d in a world of 1 rank", (int)peer);
}

static moe_status self_barrier(moei_comm *c)
{
    (void)c;
    return MOE_OK;
}

static moe_status self_split(moei_comm *c, int32_t color, int32_t key, moei_comm **out)
{
    (void)color; (void)key;
    return moei_comm_self_create(c->ctx, out);
}

static void self_destroy(moei_comm *c) { free(c); }

static moe_status self_isend(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag,
                             moei_comm_request *req)
{
    (void)req;
    return self_send(c, buf, count, dtype, peer, tag);
}

/* No send is ever posted here, so every request is inactive: done. */
static moe_status self_test(moei_comm *c, moei_comm_request *req, int32_t *done)
{
    (void)c;
    req->active = 0;
    *done = 1;
    return MOE_OK;
}

static moe_status self_wait(moei_comm *c, moei_comm_request *req)
{
    (void)c;
    req->active = 0;
    return MOE_OK;
}

static const moei_comm_ops self_ops = {
    "self", self_all_reduce, self_reduce_scatter, self_all_gather, self_all_to_all_v, self_broadcast,
    self_send, self_recv, self_barrier, self_split, self_destroy, self_isend, self_test, self_wait,
};

moe_status moei_comm_self_create(moe_ctx *ctx, moei_comm **out)
{
    moei_comm *c = calloc(1, sizeof *c);
    if (!c) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "comm(self): out of host memory");
    c->ops = &self_ops;
    c->ctx = ctx;
    c->rank = 0;
    c->size = 1;
    *out = c;
    return MOE_OK;
}
