/* moe_ctx: config defaults and validation, memory accounting, thread-count scoping.
 * Invariant: mem_current equals the bytes of every live allocation made through moei_ctx_alloc(). */
#include "core/ctx.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/device.h"
#include "core/error.h"

char *openblas_get_corename(void);

/* OpenBLAS 0.3.21 runs its AVX2 kernels on AVX-512 CPUs it does not recognise (AMD Zen 4); its
 * AVX-512 kernels are much faster there, but can only be chosen before the program starts. Say so
 * once per ctx, through the log callback (the library never prints). */
static void warn_blas_core(const moe_ctx *ctx)
{
#if defined(__x86_64__) && defined(__GNUC__)
    const char *core = openblas_get_corename();
    if (getenv("OPENBLAS_CORETYPE") || !core || strcmp(core, "Haswell") != 0) return;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq"))
        moei_log(ctx, MOE_LOG_WARN,
                 "OpenBLAS uses its Haswell kernels on this AVX-512 CPU; start the program with "
                 "OPENBLAS_CORETYPE=SKYLAKEX for about 1.7x faster matrix products");
#else
    (void)ctx;
#endif
}

static void ctx_config_defaults(moe_ctx_config *c)
{
    c->device_type = MOE_DEVICE_CPU;
    c->device_index = 0;
    c->num_threads = 0;
    c->seed = 1234;
    c->log_fn = NULL;
    c->log_user_data = NULL;
    c->log_level = MOE_LOG_WARN;
}

MOE_API moe_status moe_ctx_config_init(moe_ctx_config *cfg, uint32_t struct_size)
{
    moe_ctx_config d;
    ctx_config_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_ctx_config_init");
}

MOE_API moe_status moe_ctx_create(const moe_ctx_config *cfg, moe_ctx **out)
{
    static const char *fn = "moe_ctx_create";
    moe_ctx_config c;
    ctx_config_defaults(&c);
    c.struct_size = sizeof c;
    MOEI_CHECK_NOT_NULL(NULL, out, fn);
    if (cfg) {
        moe_status st = moei_config_read(&c, sizeof c, cfg, "moe_ctx_config", fn);
        if (st != MOE_OK) return st;
    }
    if (c.device_type != MOE_DEVICE_CPU && c.device_type != MOE_DEVICE_CUDA)
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: moe_ctx_config.device_type = %d is not a moe_device_type",
                         fn, (int)c.device_type);
    if (c.device_index < 0 || (c.device_type == MOE_DEVICE_CPU && c.device_index != 0))
        return moei_fail(NULL, MOE_ERR_INVALID_ARG,
                         "%s: moe_ctx_config.device_index = %d (must be 0 for the CPU, >= 0 for CUDA)", fn,
                         (int)c.device_index);
    if (c.num_threads < 0 || c.num_threads > 4096)
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: moe_ctx_config.num_threads = %d (must be 0..4096)", fn,
                         (int)c.num_threads);
    if (c.log_level < MOE_LOG_ERROR || c.log_level > MOE_LOG_DEBUG)
        return moei_fail(NULL, MOE_ERR_INVALID_ARG, "%s: moe_ctx_config.log_level = %d is not a moe_log_level", fn,
                         (int)c.log_level);

    moe_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return moei_fail(NULL, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    ctx->device_type = c.device_type;
    ctx->device_index = c.device_index;
    ctx->num_threads = c.num_threads;
    ctx->seed = c.seed;
    ctx->log_fn = c.log_fn;
    ctx->log_user_data = c.log_user_data;
    ctx->log_level = c.log_level;
    if (pthread_mutex_init(&ctx->lock, NULL) != 0) {
        free(ctx);
        return moei_fail(NULL, MOE_ERR_OUT_OF_MEMORY, "%s: cannot initialise the ctx mutex", fn);
    }
    if (ctx->device_type == MOE_DEVICE_CUDA) {
        moe_status st = moei_device_init(ctx, ctx->device_index);
        if (st != MOE_OK) {
            /* the message is on this thread already; the ctx dies with it */
            pthread_mutex_destroy(&ctx->lock);
            free(ctx);
            return st;
        }
    }
    warn_blas_core(ctx);
    moei_log(ctx, MOE_LOG_DEBUG, "ctx created on %s:%d, %d threads", ctx->device_type == MOE_DEVICE_CPU ? "cpu" : "cuda",
             (int)ctx->device_index, (int)ctx->num_threads);
    *out = ctx;
    return MOE_OK;
}

MOE_API void moe_ctx_destroy(moe_ctx *ctx)
{
    if (!ctx) return;
    pthread_mutex_lock(&ctx->lock);
    int64_t live = ctx->live_objects;
    uint64_t bytes = ctx->mem_current;
    pthread_mutex_unlock(&ctx->lock);
    if (live != 0 || bytes != 0)
        moei_log(ctx, MOE_LOG_WARN, "moe_ctx_destroy: %lld objects (%llu bytes) made from this ctx are still alive",
                 (long long)live, (unsigned long long)bytes);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

MOE_API const char *moe_ctx_last_error(const moe_ctx *ctx)
{
    if (!ctx) return moe_last_error();
    return ctx->last_error;
}

MOE_API moe_status moe_ctx_device(const moe_ctx *ctx, int32_t *device_type, int32_t *device_index)
{
    MOEI_CHECK_NOT_NULL(NULL, ctx, "moe_ctx_device");
    MOEI_CHECK_NOT_NULL((moe_ctx *)ctx, device_type, "moe_ctx_device");
    *device_type = ctx->device_type;
    if (device_index) *device_index = ctx->device_index;
    return MOE_OK;
}

MOE_API moe_status moe_ctx_memory(const moe_ctx *ctx, uint64_t *current_bytes, uint64_t *peak_bytes)
{
    MOEI_CHECK_NOT_NULL(NULL, ctx, "moe_ctx_memory");
    moe_ctx *m = (moe_ctx *)ctx;
    pthread_mutex_lock(&m->lock);
    if (current_bytes) *current_bytes = m->mem_current;
    if (peak_bytes) *peak_bytes = m->mem_peak;
    pthread_mutex_unlock(&m->lock);
    return MOE_OK;
}

MOE_API moe_status moe_cuda_device_count(int32_t *count)
{
    MOEI_CHECK_NOT_NULL(NULL, count, "moe_cuda_device_count");
    *count = moei_device_count();
    return MOE_OK;
}

void moei_ctx_set_error(moe_ctx *ctx, const char *msg)
{
    pthread_mutex_lock(&ctx->lock);
    size_t n = strlen(msg);
    if (n >= sizeof ctx->last_error) n = sizeof ctx->last_error - 1;
    memcpy(ctx->last_error, msg, n);
    ctx->last_error[n] = '\0';
    pthread_mutex_unlock(&ctx->lock);
}

moe_status moei_ctx_alloc(moe_ctx *ctx, uint64_t nbytes, void **out)
{
    void *p = NULL;
    if (nbytes == 0) {
        *out = NULL;
        return MOE_OK;
    }
    if (nbytes > (uint64_t)SIZE_MAX - 64)
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "allocation of %llu bytes exceeds the address space",
                         (unsigned long long)nbytes);
    if (ctx->device_type == MOE_DEVICE_CUDA) {
        moe_status st = moei_device_alloc(ctx, (size_t)nbytes, &p);
        if (st != MOE_OK) return st;
    } else {
        size_t rounded = ((size_t)nbytes + 63) & ~(size_t)63; /* aligned_alloc wants a multiple */
        p = aligned_alloc(64, rounded);
        if (!p)
            return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory allocating %llu bytes",
                             (unsigned long long)nbytes);
        memset(p, 0, (size_t)nbytes);
    }
    pthread_mutex_lock(&ctx->lock);
    ctx->mem_current += nbytes;
    if (ctx->mem_current > ctx->mem_peak) ctx->mem_peak = ctx->mem_current;
    pthread_mutex_unlock(&ctx->lock);
    *out = p;
    return MOE_OK;
}

void moei_ctx_free(moe_ctx *ctx, void *ptr, uint64_t nbytes)
{
    if (!ptr) return;
    if (ctx->device_type == MOE_DEVICE_CUDA)
        moei_device_free(ctx, ptr);
    else
        free(ptr);
    pthread_mutex_lock(&ctx->lock);
    ctx->mem_current -= nbytes;
    pthread_mutex_unlock(&ctx->lock);
}

void moei_ctx_retain(moe_ctx *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    ctx->live_objects++;
    pthread_mutex_unlock(&ctx->lock);
}

void moei_ctx_release(moe_ctx *ctx)
{
    pthread_mutex_lock(&ctx->lock);
    ctx->live_objects--;
    pthread_mutex_unlock(&ctx->lock);
}

int moei_threads_enter(const moe_ctx *ctx)
{
    int saved = omp_get_max_threads();
    if (ctx && ctx->num_threads > 0) omp_set_num_threads(ctx->num_threads);
    return saved;
}

void moei_threads_leave(int saved) { omp_set_num_threads(saved); }
