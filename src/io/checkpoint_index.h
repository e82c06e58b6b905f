/* The checkpoint index (index.json): its in-memory form, a strict parser from memory and the
 * writer. A parsed index has passed every check that needs no other file: types, ranges, names,
 * versions, shapes, and slices that tile each logical tensor exactly; its users trust it as is.
 * The format is documented in docs/file-formats.md ("Checkpoints"). */
#ifndef MOEI_IO_CHECKPOINT_INDEX_H
#define MOEI_IO_CHECKPOINT_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "moe/model.h"
#include "moe/optim.h"
#include "moe/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MOEI_CKPT_FORMAT "libmoe-checkpoint"
#define MOEI_CKPT_FORMAT_VERSION 1
#define MOEI_CKPT_INDEX_MAX (64ull << 20)     /* largest index.json read */
#define MOEI_CKPT_USER_MAX (16u << 20)        /* largest trainer text */
#define MOEI_CKPT_NAME_MAX 255                /* longest tensor or file name */
#define MOEI_CKPT_MAX_TENSORS (1 << 20)
#define MOEI_CKPT_MAX_SHARDS 4096             /* slices of one logical tensor */
#define MOEI_CKPT_INT_MAX 9007199254740992.0  /* 2^53: integers JSON numbers hold exactly */

/* Mesh sizes recorded with the checkpoint (the layout that wrote it). */
enum { MOEI_CKPT_MESH_WORLD, MOEI_CKPT_MESH_DP, MOEI_CKPT_MESH_TP, MOEI_CKPT_MESH_PP, MOEI_CKPT_MESH_EP,
       MOEI_CKPT_MESH_ETP, MOEI_CKPT_MESH_COUNT };
extern const char *const moei_ckpt_mesh_keys[MOEI_CKPT_MESH_COUNT];

/* One slice of a logical tensor, held by tensor `tensor` of shard file `file` (a plain file name in
 * the checkpoint directory); that tensor's shape is end - start per dimension. */
typedef struct moei_ckpt_shard {
    char *file;
    char *tensor;
    int64_t start[MOE_TENSOR_MAX_DIMS], end[MOE_TENSOR_MAX_DIMS];
    uint64_t xxh64; /* of the slice's bytes as stored (little-endian, row-major) */
} moei_ckpt_shard;

typedef struct moei_ckpt_tensor {
    char *name;  /* logical name */
    int32_t dtype; /* a moe_dtype; MOE_DTYPE_F32 in format version 1 */
    int32_t ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];
    int64_t numel;
    int32_t nshards;
    moei_ckpt_shard *shards;
} moei_ckpt_tensor;

typedef struct moei_ckpt_index {
    int32_t format_version;
    int32_t lib_major, lib_minor, lib_patch;
    int64_t step, data_position;
    uint64_t rng_seed, rng_step;
    moe_model_config config;
    int has_optimizer;
    int32_t opt_type; /* a moe_optimizer_type */
    int64_t opt_step, opt_skipped;
    moe_optimizer_config opt_config;
    int32_t mesh[MOEI_CKPT_MESH_COUNT];
    int64_t ntensors;
    moei_ckpt_tensor *tensors; /* sorted by name (strcmp) after parsing; any order for writing */
    char *user;                /* trainer text, or NULL */
} moei_ckpt_index;

/* Parse and validate `len` bytes of index JSON (need not be NUL-terminated). `origin` names the
 * source in messages (a path). *out receives an index the caller frees with moei_ckpt_index_free().
 * Returns MOE_OK; MOE_ERR_FORMAT naming the key and what is wrong; MOE_ERR_UNSUPPORTED for a newer
 * format_version or another library major version; MOE_ERR_OUT_OF_MEMORY. *out untouched on failure. */
moe_status moei_ckpt_index_parse(moe_ctx *ctx, const char *text, size_t len, const char *origin,
                                 moei_ckpt_index **out);
void moei_ckpt_index_free(moei_ckpt_index *ix);

/* The tensor of a parsed index named `name`, or NULL (binary search). */
const moei_ckpt_tensor *moei_ckpt_index_find(const moei_ckpt_index *ix, const char *name);

/* Serialise an index (as filled by a writer: every field meaningful, names valid) to JSON text;
 * *out is malloc'ed and NUL-terminated, *len its length without the NUL. The library version written
 * is this library's. Returns MOE_OK, MOE_ERR_INVALID_ARG (a field the parser would refuse), or
 * MOE_ERR_OUT_OF_MEMORY. */
moe_status moei_ckpt_index_write(moe_ctx *ctx, const moei_ckpt_index *ix, char **out, size_t *len);

/* 1 if `s` is a valid tensor name: 1..MOEI_CKPT_NAME_MAX bytes of [A-Za-z0-9_.-]. */
int moei_ckpt_valid_name(const char *s);
/* 1 if `s` is a valid shard file name: a valid name, not starting with '.', ending ".safetensors". */
int moei_ckpt_valid_file(const char *s);

/* 1 if `s` is valid UTF-8 of at most MOEI_CKPT_USER_MAX bytes (trainer text). */
int moei_ckpt_valid_text(const char *s);

/* The config structs, field by field, as the index stores them (name, offset, kind). */
typedef enum moei_ckpt_kind { MOEI_CKPT_I32 = 0, MOEI_CKPT_U32 = 1, MOEI_CKPT_F32 = 2, MOEI_CKPT_I64 = 3 } moei_ckpt_kind;
typedef struct moei_ckpt_field {
    const char *name;
    size_t offset;
    int32_t kind;
} moei_ckpt_field;
const moei_ckpt_field *moei_ckpt_model_fields(size_t *count);
const moei_ckpt_field *moei_ckpt_optimizer_fields(size_t *count);
/* Size in bytes of a field kind. */
size_t moei_ckpt_kind_size(int32_t kind);
/* Format a field's value for messages ("8", "0.0199999996"). */
void moei_ckpt_field_format(const moei_ckpt_field *f, const void *base, char *buf, size_t cap);

/* Shortest decimal text that reads back as exactly `v` (a finite float), "." as decimal point. */
void moei_ckpt_format_float(float v, char *buf, size_t cap);

/* ---- slice geometry ------------------------------------------------------------------------------
 * A rank holds a box of a logical tensor (its shard: start[d] + [0, shape[d]) per dimension), and
 * of that box, in its row-major order, a window of elements [first, first + count): the whole box
 * for parameters, a flat ZeRO-1 chunk's share for optimizer moments. Saving cuts a window into boxes
 * of the logical tensor (the slices of the index); loading copies from any slices the elements that
 * fall in a window. Both work for slices along any dimensions. */

/* Most boxes a window of an n-dimensional box is cut into: 2n - 1 (n >= 1), 1 for a scalar. */
#define MOEI_CKPT_WINDOW_BOXES (2 * MOE_TENSOR_MAX_DIMS)

typedef struct moei_ckpt_box {
    int64_t start[MOE_TENSOR_MAX_DIMS], end[MOE_TENSOR_MAX_DIMS]; /* relative to the box cut */
    int64_t first; /* row-major index (in the box cut) of this box's first element */
} moei_ckpt_box;

/* Cut the window [first, first + count) of a row-major box of `shape` into the fewest boxes whose
 * elements are each contiguous in that order, in increasing order, into out[] (capacity
 * MOEI_CKPT_WINDOW_BOXES); returns how many (0 for an empty window). The window must lie inside the
 * box. A box's elements in its own row-major order are the window's elements from its `first` on. */
int32_t moei_ckpt_window_boxes(int32_t ndim, const int64_t *shape, int64_t first, int64_t count, moei_ckpt_box *out);

/* Copy into a window the elements a slice holds. The destination box starts at dst_start with
 * dst_shape (logical coordinates), its window is [first, first + count) of its row-major order and
 * dst points at the window's first element; the slice is [src_start, src_end) with its elements
 * row-major at src (F32, any alignment). Returns the number of window elements the slice holds;
 * with dst == NULL nothing is copied (a query). */
int64_t moei_ckpt_copy_window(int32_t ndim, const int64_t *dst_start, const int64_t *dst_shape, int64_t first,
                              int64_t count, float *dst, const int64_t *src_start, const int64_t *src_end,
                              const void *src);

#ifdef __cplusplus
}
#endif

#endif
