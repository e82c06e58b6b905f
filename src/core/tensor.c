/* moe_tensor: creation with overflow-checked sizes, host<->tensor copies and fill.
 * Invariant: nbytes == numel * dtype size and data holds exactly nbytes (NULL when 0). */
#include "core/tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/device.h"
#include "core/error.h"
#include "core/half.h"

MOE_API moe_status moe_dtype_size(int32_t dtype, size_t *size)
{
    size_t s;
    switch (dtype) {
    case MOE_DTYPE_F32: s = 4; break;
    case MOE_DTYPE_BF16: s = 2; break;
    case MOE_DTYPE_F16: s = 2; break;
    case MOE_DTYPE_I32: s = 4; break;
    case MOE_DTYPE_I64: s = 8; break;
    case MOE_DTYPE_U8: s = 1; break;
    default: return moei_fail(NULL, MOE_ERR_INVALID_ARG, "moe_dtype_size: dtype %d is not a moe_dtype", (int)dtype);
    }
    MOEI_CHECK_NOT_NULL(NULL, size, "moe_dtype_size");
    *size = s;
    return MOE_OK;
}

MOE_API moe_status moe_tensor_create(moe_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape,
                                     moe_tensor **out)
{
    static const char *fn = "moe_tensor_create";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    size_t esize;
    if (moe_dtype_size(dtype, &esize) != MOE_OK)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: dtype %d is not a moe_dtype", fn, (int)dtype);
    if (ndim < 0 || ndim > MOE_TENSOR_MAX_DIMS)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: ndim = %d (must be 0..%d)", fn, (int)ndim, MOE_TENSOR_MAX_DIMS);
    if (ndim > 0 && !shape) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: shape is NULL but ndim = %d", fn, (int)ndim);
    /* The product is checked against a bound that keeps numel * esize inside int64 and size_t. */
    const uint64_t limit = (uint64_t)INT64_MAX / 8;
    uint64_t numel = 1;
    int empty = 0; /* a zero dimension makes the tensor empty whatever the others are */
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: shape[%d] = %lld is negative", fn, (int)i,
                             (long long)shape[i]);
        empty |= shape[i] == 0;
    }
    for (int32_t i = 0; i < ndim && !empty; i++) {
        if (numel > limit / (uint64_t)shape[i])
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: the element count overflows at shape[%d]", fn, (int)i);
        numel *= (uint64_t)shape[i];
    }
    if (empty) numel = 0;
    moe_tensor *t = calloc(1, sizeof *t);
    if (!t) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    t->ctx = ctx;
    t->dtype = dtype;
    t->ndim = ndim;
    for (int32_t i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->numel = (int64_t)numel;
    t->nbytes = numel * esize;
    moe_status st = moei_ctx_alloc(ctx, t->nbytes, &t->data);
    if (st == MOE_OK && t->data && ctx->device_type == MOE_DEVICE_CUDA) {
        uint8_t zero = 0;
        st = moei_device_fill(ctx, t->data, (int64_t)t->nbytes, 1, &zero);
        if (st != MOE_OK) moei_ctx_free(ctx, t->data, t->nbytes);
    }
    if (st != MOE_OK) {
        free(t);
        return st;
    }
    moei_ctx_retain(ctx);
    *out = t;
    return MOE_OK;
}

MOE_API void moe_tensor_destroy(moe_tensor *t)
{
    if (!t) return;
    moei_ctx_free(t->ctx, t->data, t->nbytes);
    moei_ctx_release(t->ctx);
    free(t);
}

MOE_API moe_status moe_tensor_dtype(const moe_tensor *t, int32_t *dtype)
{
    MOEI_CHECK_NOT_NULL(NULL, t, "moe_tensor_dtype");
    MOEI_CHECK_NOT_NULL(t->ctx, dtype, "moe_tensor_dtype");
    *dtype = t->dtype;
    return MOE_OK;
}

MOE_API moe_status moe_tensor_shape(const moe_tensor *t, int32_t *ndim, int64_t *shape, int32_t shape_capacity)
{
    static const char *fn = "moe_tensor_shape";
    MOEI_CHECK_NOT_NULL(NULL, t, fn);
    MOEI_CHECK_NOT_NULL(t->ctx, ndim, fn);
    if (shape && shape_capacity < t->ndim)
        return moei_fail(t->ctx, MOE_ERR_INVALID_ARG, "%s: shape_capacity = %d but the tensor has %d dimensions", fn,
                         (int)shape_capacity, (int)t->ndim);
    *ndim = t->ndim;
    if (shape)
        for (int32_t i = 0; i < t->ndim; i++) shape[i] = t->shape[i];
    return MOE_OK;
}

MOE_API moe_status moe_tensor_size(const moe_tensor *t, int64_t *numel, uint64_t *nbytes)
{
    MOEI_CHECK_NOT_NULL(NULL, t, "moe_tensor_size");
    if (numel) *numel = t->numel;
    if (nbytes) *nbytes = t->nbytes;
    return MOE_OK;
}

MOE_API moe_status moe_tensor_copy_from(moe_tensor *t, const void *src, uint64_t nbytes)
{
    static const char *fn = "moe_tensor_copy_from";
    MOEI_CHECK_NOT_NULL(NULL, t, fn);
    if (nbytes != t->nbytes)
        return moei_fail(t->ctx, MOE_ERR_INVALID_ARG, "%s: nbytes = %llu but the tensor holds %llu bytes", fn,
                         (unsigned long long)nbytes, (unsigned long long)t->nbytes);
    if (nbytes == 0) return MOE_OK;
    MOEI_CHECK_NOT_NULL(t->ctx, src, fn);
    if (t->ctx->device_type == MOE_DEVICE_CUDA) return moei_device_copy_h2d(t->ctx, t->data, src, (size_t)nbytes);
    memcpy(t->data, src, (size_t)nbytes);
    return MOE_OK;
}

MOE_API moe_status moe_tensor_copy_to(const moe_tensor *t, void *dst, uint64_t nbytes)
{
    static const char *fn = "moe_tensor_copy_to";
    MOEI_CHECK_NOT_NULL(NULL, t, fn);
    if (nbytes < t->nbytes)
        return moei_fail(t->ctx, MOE_ERR_INVALID_ARG, "%s: nbytes = %llu is smaller than the tensor's %llu bytes", fn,
                         (unsigned long long)nbytes, (unsigned long long)t->nbytes);
    if (t->nbytes == 0) return MOE_OK;
    MOEI_CHECK_NOT_NULL(t->ctx, dst, fn);
    if (t->ctx->device_type == MOE_DEVICE_CUDA) return moei_device_copy_d2h(t->ctx, dst, t->data, (size_t)t->nbytes);
    memcpy(dst, t->data, (size_t)t->nbytes);
    return MOE_OK;
}

/* double -> float rounded to odd: the last bit records inexactness, so a second rounding to a
 * narrower format (bf16, f16: at least 2 fewer significand bits) gives the correctly rounded
 * result of the original double instead of a double-rounding error. */
static float round_to_odd_f32(double v)
{
    float f = (float)v;
    if (!isfinite(f) || (double)f == v) return f;
    /* truncate toward zero, then set the lowest bit */
    if (fabs((double)f) > fabs(v)) f = nextafterf(f, 0.0f);
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u |= 1u;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Encode `value` as one element of `dtype` into `pattern`; integer dtypes must get a whole number
 * in range, since silently truncating a fill value hides caller bugs. */
static moe_status encode_value(moe_ctx *ctx, int32_t dtype, double value, uint8_t pattern[8])
{
    static const char *fn = "moe_tensor_fill";
    switch (dtype) {
    case MOE_DTYPE_F32: {
        float f = (float)value;
        memcpy(pattern, &f, 4);
        return MOE_OK;
    }
    case MOE_DTYPE_BF16: {
        uint16_t h = moei_f32_to_bf16(round_to_odd_f32(value));
        memcpy(pattern, &h, 2);
        return MOE_OK;
    }
    case MOE_DTYPE_F16: {
        uint16_t h = moei_f32_to_f16(round_to_odd_f32(value));
        memcpy(pattern, &h, 2);
        return MOE_OK;
    }
    default: break;
    }
    double lo, hi;
    switch (dtype) {
    case MOE_DTYPE_I32: lo = -2147483648.0; hi = 2147483647.0; break;
    case MOE_DTYPE_I64: lo = -9223372036854775808.0; hi = 9223372036854774784.0; break; /* largest double < 2^63 */
    case MOE_DTYPE_U8: lo = 0.0; hi = 255.0; break;
    default: return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: unknown dtype %d", fn, (int)dtype);
    }
    if (!isfinite(value) || value != floor(value) || value < lo || value > hi)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: value %g is not a whole number in [%g, %g] for this integer dtype",
                         fn, value, lo, hi);
    if (dtype == MOE_DTYPE_I32) {
        int32_t v = (int32_t)value;
        memcpy(pattern, &v, 4);
    } else if (dtype == MOE_DTYPE_I64) {
        int64_t v = (int64_t)value;
        memcpy(pattern, &v, 8);
    } else {
        pattern[0] = (uint8_t)value;
    }
    return MOE_OK;
}

MOE_API moe_status moe_tensor_fill(moe_tensor *t, double value)
{
    MOEI_CHECK_NOT_NULL(NULL, t, "moe_tensor_fill");
    uint8_t pattern[8];
    moe_status st = encode_value(t->ctx, t->dtype, value, pattern);
    if (st != MOE_OK) return st;
    size_t esize;
    moe_dtype_size(t->dtype, &esize);
    if (t->numel == 0) return MOE_OK;
    if (t->ctx->device_type == MOE_DEVICE_CUDA) return moei_device_fill(t->ctx, t->data, t->numel, esize, pattern);
    uint8_t *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) memcpy(p + (size_t)i * esize, pattern, esize);
    return MOE_OK;
}
