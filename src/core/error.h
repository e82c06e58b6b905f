/* Failure reporting: every public entry point that fails goes through moei_fail(), which records
 * the message on the calling thread, on the ctx when there is one, and forwards it to the ctx's log
 * callback. The library never prints, aborts or exits. */
#ifndef MOEI_CORE_ERROR_H
#define MOEI_CORE_ERROR_H

#include "moe/common.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_ctx;

/* Record a failure and return `code`, so call sites read `return moei_fail(ctx, ...)`.
 * `ctx` may be NULL (create-time failures). */
moe_status moei_fail(struct moe_ctx *ctx, moe_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Same, for code that must format first and report later. */
moe_status moei_fail_msg(struct moe_ctx *ctx, moe_status code, const char *msg);

/* Log a non-error message through the ctx's callback, if its level admits it. */
void moei_log(const struct moe_ctx *ctx, int32_t level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#ifdef __cplusplus
}
#endif

/* Common argument checks; they name the argument and the function in the message. */
#define MOEI_CHECK_ARG(ctx, cond, fn, what)                                                           \
    do {                                                                                              \
        if (!(cond)) return moei_fail((ctx), MOE_ERR_INVALID_ARG, "%s: %s", (fn), (what));          \
    } while (0)

#define MOEI_CHECK_NOT_NULL(ctx, ptr, fn)                                                             \
    MOEI_CHECK_ARG((ctx), (ptr) != NULL, (fn), "argument '" #ptr "' is NULL")

#endif
