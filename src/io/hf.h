/* Hugging Face Mixtral naming: the map between libmoe's logical tensor names and HF's, shared by
 * import and export. */
#ifndef MOEI_IO_HF_H
#define MOEI_IO_HF_H

#include <stddef.h>
#include <stdint.h>

/* HF name (classic per-expert layout) of libmoe tensor `ours`; for expert tensors
 * ("layers.N.moe.experts.wX") `expert` selects the expert. Returns 1 and writes `out`, or 0 when the
 * tensor has no HF counterpart or `out` is too small. */
int moei_hf_classic_name(const char *ours, int32_t expert, char *out, size_t cap);

/* Read a whole small text file (config.json, an index) with a size limit; *out is malloc'ed and
 * NUL-terminated. ctx may be NULL. */
struct moe_ctx;
int32_t moei_read_text_file(struct moe_ctx *ctx, const char *path, uint64_t max_bytes, char **out);

#endif
