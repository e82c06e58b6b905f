/**
 * @file moe/ctx.h
 * @brief The library context: device, threads, seed, logging and memory accounting.
 *
 * Thread-safety: a ctx and every object made from it are used by one thread at a time.
 * Destroy functions are the exception: any object may be destroyed from any thread (Go and Julia
 * finalizers), even while another thread uses the same ctx; the ctx guards its shared bookkeeping.
 * Distinct ctxs are independent.
 */
#ifndef MOE_CTX_H
#define MOE_CTX_H

#include "moe/common.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_ctx Context
 * @brief Where libmoe computes and whom it tells.
 * @{
 */

/** @brief An opaque library context. Created by moe_ctx_create(), freed by moe_ctx_destroy(). */
typedef struct moe_ctx moe_ctx;

/** @brief Kind of device a ctx computes on. */
typedef enum moe_device_type {
    MOE_DEVICE_CPU = 0,  /**< Host CPU: BLAS + OpenMP, fp32. */
    MOE_DEVICE_CUDA = 1, /**< NVIDIA GPU through CUDA; needs a build with MOE_CUDA and a visible GPU. */
    MOE_DEVICE_TYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_device_type;

/** @brief Severity of a log message; a ctx forwards messages at or below its configured level. */
typedef enum moe_log_level {
    MOE_LOG_ERROR = 0, /**< Failures; every failed call logs one. */
    MOE_LOG_WARN = 1,  /**< Something suspicious that does not fail the call. */
    MOE_LOG_INFO = 2,  /**< Progress worth showing a user. */
    MOE_LOG_DEBUG = 3, /**< Detail for developers. */
    MOE_LOG_LEVEL_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_log_level;

/**
 * @brief Log callback.
 * @param level A ::moe_log_level value.
 * @param message UTF-8 text, borrowed for the duration of the call only.
 * @param user_data The pointer given in ::moe_ctx_config::log_user_data.
 *
 * Called on the thread that made the libmoe call. It must not call back into the same ctx.
 */
typedef void (*moe_log_fn)(int32_t level, const char *message, void *user_data);

/**
 * @brief Options for moe_ctx_create(). Fill with moe_ctx_config_init() before setting fields.
 */
typedef struct moe_ctx_config {
    uint32_t struct_size;  /**< sizeof(moe_ctx_config) as compiled by the caller; set by moe_ctx_config_init(). */
    int32_t device_type;   /**< A ::moe_device_type. Default MOE_DEVICE_CPU. */
    int32_t device_index;  /**< Which GPU for MOE_DEVICE_CUDA; must be 0 for the CPU. Default 0. */
    int32_t num_threads;   /**< OpenMP/BLAS threads used by this ctx; 0 = the OpenMP default. Default 0. */
    uint64_t seed;         /**< Seed of every random stream derived from this ctx. Default 1234. */
    moe_log_fn log_fn;     /**< Log callback, kept until the ctx is destroyed; NULL = no logging. Default NULL. */
    void *log_user_data;   /**< Passed back to log_fn; kept, never dereferenced. Default NULL. */
    int32_t log_level;     /**< Highest ::moe_log_level forwarded to log_fn. Default MOE_LOG_WARN. */
} moe_ctx_config;

/**
 * @brief Fill a ctx config with its defaults.
 * @param cfg The config to fill; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_ctx_config) as the caller compiled it; must cover at least the
 *        struct_size field.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_ctx_config_init(moe_ctx_config *cfg, uint32_t struct_size);

/**
 * @brief Create a ctx.
 * @param cfg Options, filled by moe_ctx_config_init(); NULL means all defaults. Copied; not kept.
 * @param out Receives the new ctx; the caller owns it and frees it with moe_ctx_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad field (named in moe_last_error());
 *         MOE_ERR_UNSUPPORTED for MOE_DEVICE_CUDA in a build without CUDA; MOE_ERR_DEVICE when the
 *         requested GPU does not exist or cannot be initialised; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_ctx_create(const moe_ctx_config *cfg, moe_ctx **out);

/**
 * @brief Destroy a ctx. Every object created from it must have been destroyed first.
 * @param ctx The ctx; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_ctx_destroy(moe_ctx *ctx);

/**
 * @brief Message of the last failed call made with this ctx (or an object made from it).
 * @param ctx The ctx; NULL gives moe_last_error().
 * @return Text owned by the ctx, valid until its next failing call or its destruction; "" if none.
 *         Never NULL.
 */
MOE_API const char *moe_ctx_last_error(const moe_ctx *ctx);

/**
 * @brief The device a ctx computes on.
 * @param ctx The ctx.
 * @param device_type Receives a ::moe_device_type.
 * @param device_index Receives the GPU index (0 for the CPU); may be NULL.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL ctx or @p device_type.
 */
MOE_API moe_status moe_ctx_device(const moe_ctx *ctx, int32_t *device_type, int32_t *device_index);

/**
 * @brief Bytes of tensor memory the ctx currently holds and the most it has held at once.
 * @param ctx The ctx.
 * @param current_bytes Receives the bytes now allocated; may be NULL.
 * @param peak_bytes Receives the high-water mark; may be NULL.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL ctx.
 */
MOE_API moe_status moe_ctx_memory(const moe_ctx *ctx, uint64_t *current_bytes, uint64_t *peak_bytes);

/**
 * @brief Number of CUDA devices visible to this process.
 * @param count Receives the count; 0 in a build without CUDA or on a machine without a GPU.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for a NULL @p count. Thread-safe.
 */
MOE_API moe_status moe_cuda_device_count(int32_t *count);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_CTX_H */
