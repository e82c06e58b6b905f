/**
 * @file moe/common.h
 * @brief Export macro, status codes and last-error access shared by every libmoe header.
 *
 * Thread-safety: moe_status_string() and moe_last_error() may be called from any thread;
 * moe_last_error() reports the last failure of the calling thread only.
 */
#ifndef MOE_COMMON_H
#define MOE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(MOE_BUILDING_LIBRARY)
#define MOE_API __declspec(dllexport)
#elif defined(_WIN32)
#define MOE_API __declspec(dllimport)
#elif defined(__GNUC__)
#define MOE_API __attribute__((visibility("default")))
#else
#define MOE_API
#endif

#ifdef __cplusplus
#define MOE_EXTERN_C_BEGIN extern "C" {
#define MOE_EXTERN_C_END }
#else
#define MOE_EXTERN_C_BEGIN
#define MOE_EXTERN_C_END
#endif

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_common Status codes and errors
 * @brief How every libmoe call reports success and failure.
 * @{
 */

/**
 * @brief Result of every fallible libmoe call: 0 on success, a negative ::moe_status_code on failure.
 *
 * A failing call leaves its out-parameters untouched and records a message, readable with
 * moe_last_error() on the calling thread and moe_ctx_last_error() on the ctx involved.
 */
typedef int32_t moe_status;

/** @brief The status classes. Values are fixed forever and never reused. */
typedef enum moe_status_code {
    MOE_OK = 0,                  /**< Success. */
    MOE_ERR_INVALID_ARG = -1,    /**< An argument or config field is invalid; the message names it. */
    MOE_ERR_OUT_OF_MEMORY = -2,  /**< An allocation (host or device) failed. */
    MOE_ERR_IO = -3,             /**< A file could not be opened, read, written, synced or renamed. */
    MOE_ERR_FORMAT = -4,         /**< A file or buffer is malformed (bad header, out-of-bounds offset, ...). */
    MOE_ERR_UNSUPPORTED = -5,    /**< The request is valid but not available in this build or on this device. */
    MOE_ERR_COMM = -6,           /**< A collective or point-to-point communication failed. */
    MOE_ERR_DEVICE = -7,         /**< The accelerator runtime reported an error. */
    MOE_ERR_NUMERIC = -8,        /**< A non-finite value was found where a finite one is required. */
    MOE_ERR_STATE = -9,          /**< The call is not valid in the object's current state. */
    MOE_ERR_TIMEOUT = -10,       /**< An operation did not complete within its time limit. */
    MOE_STATUS_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum; never returned. */
} moe_status_code;

/**
 * @brief Short constant name of a status, e.g. "MOE_ERR_INVALID_ARG".
 * @param status Any value; unknown values give "MOE_ERR_UNKNOWN".
 * @return A static string owned by the library, never NULL. Thread-safe.
 */
MOE_API const char *moe_status_string(moe_status status);

/**
 * @brief Message of the last failed libmoe call on the calling thread.
 *
 * Use it for failures that happen before a ctx exists (moe_ctx_create()) or when no ctx is at hand.
 * @return A thread-local string owned by the library, valid until the next libmoe call on this
 *         thread; "" if no call has failed on this thread. Never NULL.
 */
MOE_API const char *moe_last_error(void);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_COMMON_H */
