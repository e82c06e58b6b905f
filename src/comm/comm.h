/* The communicator interface every parallel mode is written against. A communicator is a group
 * of ranks; backends (self: a world of one; MPI, NCCL later) fill the vtable. All buffers are in
 * the ctx's memory space; counts are elements of `dtype` (a moe_dtype). Reductions are sums.
 * Every call returns a status and records a message on the ctx. */
#ifndef MOEI_COMM_COMM_H
#define MOEI_COMM_COMM_H

#include <stdint.h>

#include "moe/ctx.h"

typedef struct moei_comm moei_comm;

typedef struct moei_comm_ops {
    const char *name;
    moe_status (*all_reduce_sum)(moei_comm *c, void *buf, int64_t count, int32_t dtype);
    /* in: size*count elements; out: count elements (this rank's block) */
    moe_status (*reduce_scatter_sum)(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype);
    /* in: count elements; out: size*count elements, rank-major */
    moe_status (*all_gather)(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype);
    moe_status (*all_to_all_v)(moei_comm *c, const void *in, const int64_t *send_counts, const int64_t *send_offsets,
                               void *out, const int64_t *recv_counts, const int64_t *recv_offsets, int32_t dtype);
    moe_status (*broadcast)(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t root);
    moe_status (*send)(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag);
    moe_status (*recv)(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag);
    moe_status (*barrier)(moei_comm *c);
    /* Ranks with the same color form a new communicator, ordered by key then old rank. */
    moe_status (*split)(moei_comm *c, int32_t color, int32_t key, moei_comm **out);
    void (*destroy)(moei_comm *c);
} moei_comm_ops;

struct moei_comm {
    const moei_comm_ops *ops;
    moe_ctx *ctx;
    int32_t rank;
    int32_t size;
    uint64_t bytes_sent; /* counted by every backend, so tests can check communication volume */
    void *impl;
};

/* A world of one rank. */
moe_status moei_comm_self_create(moe_ctx *ctx, moei_comm **out);

static inline void moei_comm_destroy(moei_comm *c)
{
    if (c) c->ops->destroy(c);
}

#endif
