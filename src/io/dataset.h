/* Token datasets (public API in moe/data.h): the Megatron .idx parser, datasets over caller memory
 * (for the fuzzer and white-box tests), and the stateless sample permutation. Invariant: a
 * moe_dataset exists only over a token stream that passed every check, so sampling never checks
 * bounds again. */
#ifndef MOEI_IO_DATASET_H
#define MOEI_IO_DATASET_H

#include <stdint.h>

#include "moe/data.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Size of the fixed .idx header: magic (9) + version (8) + dtype code (1) + two counts (8 + 8). */
#define MOEI_IDX_HEADER_SIZE 34u

/* The .idx magic, "MMIDIDX\0\0". */
extern const unsigned char moei_idx_magic[9];

/* What a valid .idx says. The token stream is bytes [0, num_tokens * itemsize) of the .bin. */
typedef struct moei_idx_info {
    int32_t dtype;          /* a moe_dataset_dtype, integer only */
    uint32_t itemsize;      /* bytes per token */
    uint64_t num_sequences; /* the sequence count field */
    uint64_t num_documents; /* documents = document count field - 1 (Megatron stores a leading 0) */
    int64_t num_tokens;     /* sum of the sequence sizes */
    uint32_t has_modes;     /* 1 when a per-sequence mode array (int8) follows the document indices */
} moei_idx_info;

/* Bytes per token of a Megatron dtype code (floats included), or 0 for an unknown code. */
uint32_t moei_dataset_dtype_size(int32_t code);

/* Lower-case name of a dtype code ("uint8", "float64", ...), or NULL for an unknown code. */
const char *moei_dataset_dtype_name(int32_t code);

/* Check `idx_size` bytes of an .idx against a .bin of `bin_size` bytes. Messages start with
 * "<fn>: '<origin>': ". On success fills *out. Fails with MOE_ERR_FORMAT naming the field (and
 * index) that is wrong; reads nothing outside [idx, idx + idx_size). */
moe_status moei_idx_parse(moe_ctx *ctx, const char *fn, const char *origin, const void *idx, uint64_t idx_size,
                          uint64_t bin_size, moei_idx_info *out);

/* A dataset over caller memory, which stays borrowed (alive, unchanged) until moe_dataset_destroy().
 * cfg->kind must be MOE_DATASET_KIND_TEXT (data holds the text; idx is ignored) or
 * MOE_DATASET_KIND_INDEXED (idx + data = .idx + .bin); cfg->path is ignored. Otherwise as
 * moe_dataset_open(). */
moe_status moei_dataset_open_memory(moe_ctx *ctx, const moe_dataset_config *cfg, const void *idx, uint64_t idx_size,
                                    const void *data, uint64_t data_size, moe_dataset **out);

/* The permutation used for the split and for every epoch: a bijection of [0, n) (n >= 1) that is a
 * pure function of (seed, stream, x): a balanced Feistel network over the smallest even number of
 * bits that covers n, with Philox4x32-10 round functions, cycle-walked back into [0, n). */
uint64_t moei_dataset_permute(uint64_t seed, uint64_t stream, uint64_t n, uint64_t x);

#ifdef __cplusplus
}
#endif

#endif
