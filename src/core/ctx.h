/* The ctx as the library sees it. Every allocation of tensor memory goes through moei_ctx_alloc()
 * so the ctx can account bytes (moe_ctx_memory) and choose host or device memory. The mutex guards
 * only that bookkeeping: it is what makes destroy-from-any-thread safe. */
#ifndef MOEI_CORE_CTX_H
#define MOEI_CORE_CTX_H

#include <pthread.h>

#include "moe/ctx.h"

struct moe_ctx {
    int32_t device_type;
    int32_t device_index;
    int32_t num_threads; /* 0 = leave the OpenMP default alone */
    uint64_t seed;
    moe_log_fn log_fn;
    void *log_user_data;
    int32_t log_level;

    pthread_mutex_t lock; /* guards the fields below */
    uint64_t mem_current;
    uint64_t mem_peak;
    int64_t live_objects;
    char last_error[1024];
};

/* Allocate `nbytes` of the ctx's memory space (64-byte aligned host memory, or device memory),
 * zero-filled. nbytes == 0 gives *out == NULL and MOE_OK. */
moe_status moei_ctx_alloc(moe_ctx *ctx, uint64_t nbytes, void **out);
void moei_ctx_free(moe_ctx *ctx, void *ptr, uint64_t nbytes);

/* Count objects made from the ctx, so destroying a ctx that still has children is reported. */
void moei_ctx_retain(moe_ctx *ctx);
void moei_ctx_release(moe_ctx *ctx);

void moei_ctx_set_error(moe_ctx *ctx, const char *msg);

/* Run library work with the ctx's thread count: OpenMP's (and so OpenBLAS-OpenMP's) thread count
 * is a per-thread setting of the caller, so it is set on entry and restored on exit. */
int moei_threads_enter(const moe_ctx *ctx);
void moei_threads_leave(int saved);

#endif
