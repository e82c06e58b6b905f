/* safetensors files: a validating reader (from a file, mapped, or from a caller's buffer) and an
 * atomic writer. A reader handle exists only for a file that passed every check (header bounds,
 * JSON, fields, dtypes, shapes, byte sizes, offsets tiling the data region exactly, unique names,
 * string metadata), so its users may trust every tensor view without checking again.
 * Thread-safety: a handle is used by one thread at a time; distinct handles are independent. */
#ifndef MOEI_IO_SAFETENSORS_H
#define MOEI_IO_SAFETENSORS_H

#include <stdint.h>

#include "moe/ctx.h"
#include "moe/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest header accepted (and written), as in the reference implementation. */
#define MOEI_ST_MAX_HEADER 100000000ull

/* Value of moei_st_tensor.dtype for a valid safetensors dtype that has no moe_dtype (F64, I8,
 * U16, BOOL, F8_E4M3, ...): such tensors are listed and their bytes readable, but not convertible. */
#define MOEI_ST_DTYPE_OTHER (-1)

/* One tensor of an open file. Every pointer is owned by the file handle, valid until moei_st_close(). */
typedef struct moei_st_tensor {
    const char *name;       /* the header key (UTF-8) */
    const char *dtype_name; /* the safetensors spelling: "F32", "BF16", "F64", ... */
    int32_t dtype;          /* a moe_dtype, or MOEI_ST_DTYPE_OTHER */
    int32_t ndim;           /* 0 for a scalar */
    const int64_t *shape;   /* ndim sizes, each >= 0; NULL when ndim == 0 */
    int64_t numel;          /* product of shape (1 for a scalar, 0 when a size is 0) */
    uint32_t elem_size;     /* bytes per element */
    uint64_t offset;        /* first byte, counted from the start of the data region */
    uint64_t nbytes;        /* numel * elem_size */
    const void *data;       /* nbytes bytes, little-endian, no alignment promised; NULL when nbytes == 0 */
} moei_st_tensor;

typedef struct moei_st_file moei_st_file;

/* Open and validate the file at `path` (memory-mapped read-only, or read when mapping fails).
 * *out receives a handle the caller frees with moei_st_close().
 * Returns MOE_OK; MOE_ERR_IO (cannot open/stat/read: the message carries strerror);
 * MOE_ERR_FORMAT (the message names the tensor or field and what is wrong);
 * MOE_ERR_OUT_OF_MEMORY; MOE_ERR_INVALID_ARG (NULL arguments). On failure *out is untouched.
 * The file must not be truncated while open: a mapped file that shrinks faults on access. */
moe_status moei_st_open(moe_ctx *ctx, const char *path, moei_st_file **out);

/* Same, parsing `size` bytes at `buf`, which stay borrowed (unchanged, alive) until moei_st_close();
 * tensor data pointers point into it. */
moe_status moei_st_open_memory(moe_ctx *ctx, const void *buf, uint64_t size, moei_st_file **out);

/* Free a handle (and unmap its file). NULL is a no-op. */
void moei_st_close(moei_st_file *f);

/* Number of tensors. */
int64_t moei_st_count(const moei_st_file *f);

/* Tensor i (0 <= i < count), in data-region order (ascending offset; at one offset empty tensors
 * first, then by name); NULL when out of range. */
const moei_st_tensor *moei_st_at(const moei_st_file *f, int64_t i);

/* The tensor named `name`, or NULL when there is none (O(log count)). */
const moei_st_tensor *moei_st_find(const moei_st_file *f, const char *name);

/* Same, as a status for callers that need the tensor: MOE_ERR_FORMAT "... has no tensor named ..."
 * when absent, MOE_ERR_INVALID_ARG for NULL arguments. */
moe_status moei_st_get(moe_ctx *ctx, const moei_st_file *f, const char *name, const moei_st_tensor **out);

/* Convert elements [first, first + count) of a F32, BF16 or F16 tensor (row-major flat order) to
 * float into out[0 .. count). Returns MOE_OK; MOE_ERR_INVALID_ARG for NULL pointers (out may be NULL
 * when count == 0) or a range outside [0, numel); MOE_ERR_UNSUPPORTED for other dtypes. */
moe_status moei_st_read_f32(moe_ctx *ctx, const moei_st_tensor *t, int64_t first, int64_t count, float *out);

/* Number of "__metadata__" entries. */
int64_t moei_st_metadata_count(const moei_st_file *f);

/* Metadata entry i in ascending key order (strcmp); *key and *value are owned by the handle.
 * Returns 0, or -1 (outputs untouched) when i is out of range. */
int moei_st_metadata_at(const moei_st_file *f, int64_t i, const char **key, const char **value);

/* The metadata value for `key`, owned by the handle, or NULL when absent. */
const char *moei_st_metadata_find(const moei_st_file *f, const char *key);

/* What the handle was opened from, for messages: the path, or "(memory)". */
const char *moei_st_origin(const moei_st_file *f);

/* Size of the data region (everything after the header). */
uint64_t moei_st_data_size(const moei_st_file *f);

/* safetensors spelling of a moe_dtype ("F32", ...), or NULL for a value that is not a moe_dtype. */
const char *moei_st_dtype_name(int32_t dtype);

/*
 * Writer: collect tensors and metadata, then write one file atomically. Layout (readable by the
 * reference implementation): u64 little-endian header length N, N bytes of JSON padded with spaces so
 * that the data starts at a multiple of 8, then the data. The header lists "__metadata__" first
 * (keys sorted), then the tensors in data order: element size descending, then name ascending, so
 * every tensor starts at a multiple of its element size.
 */
typedef struct moei_st_writer moei_st_writer;

/* *out receives a writer the caller frees with moei_st_writer_destroy(). */
moe_status moei_st_writer_create(moe_ctx *ctx, moei_st_writer **out);
void moei_st_writer_destroy(moei_st_writer *w);

/* Add a tensor. `name` (non-empty UTF-8, not "__metadata__", unique in this writer) and `shape`
 * (ndim in 0..MOE_TENSOR_MAX_DIMS, sizes >= 0; may be NULL when ndim == 0) are copied. `data` is
 * BORROWED: it must stay alive and unchanged until the last write/serialize call; `nbytes` must equal
 * numel * dtype size (data may be NULL when it is 0). dtype is a moe_dtype.
 * Returns MOE_OK, MOE_ERR_INVALID_ARG (the message names the argument), MOE_ERR_OUT_OF_MEMORY. */
moe_status moei_st_writer_add(moei_st_writer *w, const char *name, int32_t dtype, int32_t ndim, const int64_t *shape,
                              const void *data, uint64_t nbytes);

/* Set (or replace) a metadata entry; key and value are copied, both valid UTF-8. */
moe_status moei_st_writer_set_metadata(moei_st_writer *w, const char *key, const char *value);

/* Write the file atomically: to "<path>.tmp.<pid>", fsync, close, rename over `path`, fsync the
 * directory, every call through io/fsio.h. On failure before the rename the temp file is removed and
 * `path` is untouched (absent, or its previous content); a failure of the final directory fsync
 * leaves the new complete file at `path` but reports the error, since durability is not assured.
 * Returns MOE_OK; MOE_ERR_IO (message with the call, the path and strerror); MOE_ERR_INVALID_ARG;
 * MOE_ERR_OUT_OF_MEMORY. The temp name is per process: one write to a given path at a time. */
moe_status moei_st_writer_write(moei_st_writer *w, const char *path);

/* The same bytes into memory: *out receives a malloc'ed buffer (caller frees with free()) of *size bytes. */
moe_status moei_st_writer_serialize(moei_st_writer *w, void **out, uint64_t *size);

#ifdef __cplusplus
}
#endif

#endif
