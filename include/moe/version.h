/**
 * @file moe/version.h
 * @brief Compile-time and run-time library version.
 *
 * The SONAME carries the ABI major version (libmoe.so.MAJOR). Thread-safety: any thread.
 */
#ifndef MOE_VERSION_H
#define MOE_VERSION_H

#include "moe/common.h"

/** @brief Major version of the headers; a change breaks the ABI. */
#define MOE_VERSION_MAJOR 0
/** @brief Minor version of the headers; additions only. */
#define MOE_VERSION_MINOR 1
/** @brief Patch version of the headers. */
#define MOE_VERSION_PATCH 0

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_version Version
 * @brief Which libmoe is linked at run time.
 * @{
 */

/**
 * @brief Version of the library linked at run time.
 * @param major Receives the major version; may be NULL.
 * @param minor Receives the minor version; may be NULL.
 * @param patch Receives the patch version; may be NULL.
 * @return The version string "MAJOR.MINOR.PATCH", static, owned by the library. Thread-safe.
 */
MOE_API const char *moe_version(int32_t *major, int32_t *minor, int32_t *patch);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_VERSION_H */
