/**
 * @file moe/tensor.h
 * @brief Typed n-dimensional buffers in a ctx's memory space, for data in and out of the library.
 *
 * A tensor is dense and row-major. It lives where its ctx computes (host memory for the CPU,
 * device memory for CUDA); callers move data with moe_tensor_copy_from() / moe_tensor_copy_to()
 * through their own host buffers, which the library never keeps.
 * Thread-safety: as its ctx (one thread at a time; destroy from any thread).
 */
#ifndef MOE_TENSOR_H
#define MOE_TENSOR_H

#include "moe/common.h"
#include "moe/ctx.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_tensor Tensors
 * @brief Typed buffers owned by the library.
 * @{
 */

/** @brief An opaque tensor. Created by moe_tensor_create(), freed by moe_tensor_destroy(). */
typedef struct moe_tensor moe_tensor;

/** @brief Element types. */
typedef enum moe_dtype {
    MOE_DTYPE_F32 = 0,  /**< IEEE-754 binary32. */
    MOE_DTYPE_BF16 = 1, /**< bfloat16 (upper half of binary32), round-to-nearest-even on conversion. */
    MOE_DTYPE_F16 = 2,  /**< IEEE-754 binary16, round-to-nearest-even on conversion. */
    MOE_DTYPE_I32 = 3,  /**< Signed 32-bit integer. */
    MOE_DTYPE_I64 = 4,  /**< Signed 64-bit integer. */
    MOE_DTYPE_U8 = 5,   /**< Unsigned 8-bit integer. */
    MOE_DTYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_dtype;

/** @brief Most dimensions a tensor may have. */
#define MOE_TENSOR_MAX_DIMS 8

/**
 * @brief Size in bytes of one element of a dtype.
 * @param dtype A ::moe_dtype.
 * @param size Receives the element size.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for an unknown dtype or NULL @p size. Thread-safe.
 */
MOE_API moe_status moe_dtype_size(int32_t dtype, size_t *size);

/**
 * @brief Create a zero-filled tensor.
 * @param ctx The ctx whose memory space holds the tensor.
 * @param dtype A ::moe_dtype.
 * @param ndim Number of dimensions, 0 (a scalar) to MOE_TENSOR_MAX_DIMS.
 * @param shape @p ndim sizes, each >= 0 (a dimension of 0 gives an empty tensor); copied, not kept.
 *        May be NULL when @p ndim is 0.
 * @param out Receives the tensor; the caller owns it and frees it with moe_tensor_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad dtype, ndim or shape, or a byte size that overflows;
 *         MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_tensor_create(moe_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape,
                                     moe_tensor **out);

/**
 * @brief Free a tensor and its memory.
 * @param t The tensor; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_tensor_destroy(moe_tensor *t);

/**
 * @brief The element type of a tensor.
 * @param t The tensor.
 * @param dtype Receives a ::moe_dtype.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for NULL arguments.
 */
MOE_API moe_status moe_tensor_dtype(const moe_tensor *t, int32_t *dtype);

/**
 * @brief The shape of a tensor.
 * @param t The tensor.
 * @param ndim Receives the number of dimensions.
 * @param shape Receives the sizes; may be NULL to query @p ndim only.
 * @param shape_capacity Number of entries @p shape can hold; must be >= the tensor's ndim when
 *        @p shape is not NULL.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for NULL arguments or too small a @p shape_capacity.
 */
MOE_API moe_status moe_tensor_shape(const moe_tensor *t, int32_t *ndim, int64_t *shape, int32_t shape_capacity);

/**
 * @brief Number of elements and bytes of a tensor.
 * @param t The tensor.
 * @param numel Receives the element count; may be NULL.
 * @param nbytes Receives the byte size; may be NULL.
 * @return MOE_OK or MOE_ERR_INVALID_ARG for a NULL tensor.
 */
MOE_API moe_status moe_tensor_size(const moe_tensor *t, int64_t *numel, uint64_t *nbytes);

/**
 * @brief Copy a caller's host buffer into the whole tensor.
 * @param t The tensor.
 * @param src Host memory holding exactly the tensor's bytes in its dtype; read during the call only.
 *        May be NULL only when @p nbytes is 0.
 * @param nbytes Size of @p src; must equal the tensor's byte size.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for NULL arguments or a size mismatch; MOE_ERR_DEVICE.
 */
MOE_API moe_status moe_tensor_copy_from(moe_tensor *t, const void *src, uint64_t nbytes);

/**
 * @brief Copy the whole tensor into a caller's host buffer.
 * @param t The tensor.
 * @param dst Host memory of at least @p nbytes; written during the call only.
 *        May be NULL only when the tensor is empty.
 * @param nbytes Capacity of @p dst; must be at least the tensor's byte size.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for NULL arguments or too small a buffer; MOE_ERR_DEVICE.
 */
MOE_API moe_status moe_tensor_copy_to(const moe_tensor *t, void *dst, uint64_t nbytes);

/**
 * @brief Set every element to one value.
 * @param t The tensor.
 * @param value The value, converted to the tensor's dtype (rounded to nearest even for bf16/f16).
 *        For integer dtypes it must be a whole number within the dtype's range.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL tensor, a non-finite value for an integer dtype,
 *         a fractional or out-of-range integer; MOE_ERR_DEVICE.
 */
MOE_API moe_status moe_tensor_fill(moe_tensor *t, double value);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_TENSOR_H */
