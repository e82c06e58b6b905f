/* The built-in English corpus: a deterministic generator of text with learnable structure (stories,
 * arithmetic, counting, weather reports, dialogues, definitions, letters), so the project ships
 * training data it wrote itself. The output is a pure function of (seed, target size) on every
 * platform: integer arithmetic only, its own random generator. */
#ifndef MOE_DATASET_GEN_CORPUS_H
#define MOE_DATASET_GEN_CORPUS_H

#include <stddef.h>
#include <stdint.h>

/* Generate paragraphs until at least `target_bytes` bytes exist (the last paragraph is finished).
 * *out receives a malloc'ed buffer (the caller frees it) of *len bytes. Returns 0, or -1 when out of
 * memory. */
int corpus_generate(uint64_t seed, int64_t target_bytes, char **out, size_t *len);

#endif
