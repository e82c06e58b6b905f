/* Per-thread and per-ctx last-error text. The thread-local buffer makes moe_last_error() usable
 * before any ctx exists; the ctx copy serves callers (Go) that cannot pin a thread. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/ctx.h"

#define MOEI_MSG_CAP 1024

static _Thread_local char tl_last_error[MOEI_MSG_CAP];

MOE_API const char *moe_last_error(void) { return tl_last_error; }

MOE_API const char *moe_status_string(moe_status status)
{
    switch (status) {
    case MOE_OK: return "MOE_OK";
    case MOE_ERR_INVALID_ARG: return "MOE_ERR_INVALID_ARG";
    case MOE_ERR_OUT_OF_MEMORY: return "MOE_ERR_OUT_OF_MEMORY";
    case MOE_ERR_IO: return "MOE_ERR_IO";
    case MOE_ERR_FORMAT: return "MOE_ERR_FORMAT";
    case MOE_ERR_UNSUPPORTED: return "MOE_ERR_UNSUPPORTED";
    case MOE_ERR_COMM: return "MOE_ERR_COMM";
    case MOE_ERR_DEVICE: return "MOE_ERR_DEVICE";
    case MOE_ERR_NUMERIC: return "MOE_ERR_NUMERIC";
    case MOE_ERR_STATE: return "MOE_ERR_STATE";
    case MOE_ERR_TIMEOUT: return "MOE_ERR_TIMEOUT";
    default: return "MOE_ERR_UNKNOWN";
    }
}

moe_status moei_fail_msg(struct moe_ctx *ctx, moe_status code, const char *msg)
{
    /* msg may alias tl_last_error (moei_fail formats into it), so copy with memmove semantics. */
    if (msg != tl_last_error) {
        size_t n = strlen(msg);
        if (n >= MOEI_MSG_CAP) n = MOEI_MSG_CAP - 1;
        memmove(tl_last_error, msg, n);
        tl_last_error[n] = '\0';
    }
    if (ctx) {
        moei_ctx_set_error(ctx, tl_last_error);
        moei_log(ctx, 0, "%s: %s", moe_status_string(code), tl_last_error);
    }
    return code;
}

moe_status moei_fail(struct moe_ctx *ctx, moe_status code, const char *fmt, ...)
{
    char buf[MOEI_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return moei_fail_msg(ctx, code, buf);
}

void moei_log(const struct moe_ctx *ctx, int32_t level, const char *fmt, ...)
{
    if (!ctx || !ctx->log_fn || level > ctx->log_level) return;
    char buf[MOEI_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    ctx->log_fn(level, buf, ctx->log_user_data);
}
