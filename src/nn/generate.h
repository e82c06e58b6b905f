/* Generation internals: a KV-cached decoder over a model's blocks for `cap` sequences that advance
 * together (one for moe_decoder, one per beam for beam search), and the token sampler.
 * Invariant: every sequence of a decoder holds `len` tokens; cache rows >= len are garbage. */
#ifndef MOEI_NN_GENERATE_H
#define MOEI_NN_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include "moe/generate.h"
#include "nn/buffers.h"

typedef struct moei_decoder {
    moe_model *model;
    moe_ctx *ctx;
    int32_t max_len; /* cache rows per sequence */
    int32_t cap;     /* sequences the cache holds */
    int32_t len;     /* tokens every sequence holds */
    int64_t kvd;     /* kv_heads * head_dim */
    /* [num_layers][2 (k, v)][cap][max_len][kvd]; `spare` is the same size, for beam reordering */
    moei_buf cache, spare;
    /* per-call scratch, grown with the tokens of a call */
    moei_buf x, h, q, k, v, o, x2, pos, last, hf, attn_ws;
} moei_decoder;

/* Allocate the cache for `cap` sequences of up to max_len tokens (1..max_seq_len). `with_spare`
 * allocates the second cache moei_decoder_reorder needs. */
moe_status moei_decoder_init(moei_decoder *d, moe_model *model, int32_t max_len, int32_t cap, int with_spare);
void moei_decoder_release(moei_decoder *d);

/* Append `n` tokens to each of the first `batch` sequences (tokens [batch][n], already validated)
 * and write the logits after each sequence's last token into logits [batch, vocab] (may be NULL).
 * Sequences batch..cap-1 are left behind: only reorder them away afterwards. */
moe_status moei_decoder_forward(moei_decoder *d, const int32_t *tokens, int32_t batch, int32_t n, float *logits);

/* New sequence b (b < batch) becomes a copy of old sequence parent[b] (its `len` cached rows). */
moe_status moei_decoder_reorder(moei_decoder *d, const int32_t *parent, int32_t batch);

/* The two search loops behind moe_model_generate, on a validated config (full-size struct), a
 * validated prompt and need = the most tokens to generate (>= 1, prompt_len + need <= max_seq_len).
 * gen [need] receives the tokens, *count their number. The sample loop serves beam_width 1 (greedy
 * when temperature is 0); the beam loop runs any width >= 1 (width 1 reproduces greedy decoding). */
moe_status moei_generate_sample(moe_model *m, const moe_generate_config *c, const int32_t *prompt, int32_t prompt_len,
                                int32_t need, int32_t *gen, int32_t *count);
moe_status moei_generate_beam(moe_model *m, const moe_generate_config *c, const int32_t *prompt, int32_t prompt_len,
                              int32_t need, int32_t *gen, int32_t *count);

/* Bytes of scratch moei_sample needs for a vocabulary of `vocab` tokens. */
size_t moei_sample_workspace_size(int32_t vocab);

/* The uniform number in [0, 1) of sampling step `step`: 53 bits of Philox(seed, stream
 * "generate.sample", block step) words 0 and 1. */
double moei_sample_uniform(uint64_t seed, uint64_t step);

/* Pick a token from logits [vocab] with uniform number u in [0, 1):
 *   temperature == 0 (or top_k == 1): the argmax, lowest id among ties (u unused);
 *   otherwise z = logits / temperature; with top_k > 0 only the top_k largest z stay (ties toward
 *   the lower id); with top_p < 1 only the shortest prefix of the rest, ordered by probability
 *   (ties toward the lower id), whose renormalised mass reaches top_p stays; then the token whose
 *   cumulative-probability interval (over the kept tokens, in that order) holds u.
 * Fails with MOE_ERR_NUMERIC on a NaN or +inf logit. ws: moei_sample_workspace_size(vocab) bytes. */
moe_status moei_sample(moe_ctx *ctx, const float *logits, int32_t vocab, float temperature, int32_t top_k,
                       float top_p, double u, void *ws, size_t ws_bytes, int32_t *token);

#endif
