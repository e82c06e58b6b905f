/**
 * @file moe/generate.h
 * @brief Text generation with a model: KV-cached incremental decoding, greedy decoding, sampling
 *        (temperature, top-k, top-p) and beam search.
 *
 * Decoding keeps the keys and values of every processed token (after RoPE) in a cache, so each new
 * token costs one token's forward instead of a forward over the whole sequence; the logits equal
 * those of moe_model_forward() on the whole sequence up to fp32 rounding. One exception: routing
 * that depends on the other tokens of a micro-batch (expert-choice routing, token-choice capacity
 * with moe_capacity_factor > 0) sees only the tokens of one decoding call, so those models decode
 * differently from their full forward (tokens fed one at a time are never dropped by capacity).
 *
 * Decoding runs the model's layers without gradients, like moe_model_forward(): the routing
 * statistics of the model afterwards describe the last decoding call.
 *
 * Thread-safety: as the model's ctx (one thread at a time; destroy from any thread).
 */
#ifndef MOE_GENERATE_H
#define MOE_GENERATE_H

#include "moe/common.h"
#include "moe/model.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_generate Generation
 * @brief Greedy decoding, sampling and beam search with a KV cache.
 * @{
 */

/** @brief How moe_model_generate() picks tokens. Fill with moe_generate_config_init() before setting fields. */
typedef struct moe_generate_config {
    uint32_t struct_size;   /**< sizeof(moe_generate_config) as compiled by the caller. */
    int32_t max_new_tokens; /**< Most tokens to generate, >= 0. Default 64. */
    float temperature;      /**< Logits are divided by it before sampling, finite and >= 0; 0 = greedy (argmax,
                                 the lowest token id among ties). Default 0. */
    int32_t top_k;          /**< Sample among the top_k most likely tokens (ties broken toward the lower id), >= 0;
                                 0 = off. Default 0. */
    float top_p;            /**< Nucleus sampling: sample among the most likely tokens whose probabilities (after
                                 temperature and top_k) first reach top_p, in (0, 1]; 1 = off. Default 1. */
    int32_t beam_width;     /**< 1 = greedy or sampling; > 1 = beam search with that many beams (deterministic;
                                 temperature, top_k, top_p and seed are then not used). Default 1. */
    float length_penalty;   /**< Beam search: a finished hypothesis scores sum(log-probabilities) /
                                 length^length_penalty, length counting its generated tokens (the stop token
                                 included), as Hugging Face generate(); finite. Default 1. */
    int32_t stop_token;     /**< Generation ends after this token (which is output); -1 = none, else in
                                 [0, vocab_size). Default -1. */
    uint64_t seed;          /**< Sampling draws the uniform number of step s from Philox(seed, s): runs repeat
                                 exactly. Default 0. */
} moe_generate_config;

/**
 * @brief Fill a generation config with its defaults (greedy, 64 tokens, no stop token).
 * @param cfg The config; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_generate_config) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_generate_config_init(moe_generate_config *cfg, uint32_t struct_size);

/**
 * @brief Generate a continuation of a prompt.
 *
 * Generation stops after the stop token (written as the last output token), after
 * cfg->max_new_tokens tokens, or when prompt and continuation fill the model's max_seq_len,
 * whichever comes first. Beam search returns the best finished hypothesis (Hugging Face's
 * early_stopping = false rule decides when no live beam can still beat the finished ones).
 * @param model The model; its parameters are read, its sub-layers' scratch is reused.
 * @param cfg The generation settings; read during the call only.
 * @param prompt @p prompt_len token ids in [0, vocab_size); read during the call only.
 * @param prompt_len Tokens in the prompt, 1..max_seq_len.
 * @param out_tokens Receives the generated tokens (without the prompt); untouched on failure.
 * @param out_capacity Entries @p out_tokens can hold; at least
 *        min(cfg->max_new_tokens, max_seq_len - prompt_len).
 * @param out_len Receives the number of tokens written.
 * @return MOE_OK; MOE_ERR_INVALID_ARG naming a bad config field, a prompt position out of range,
 *         an empty prompt or too small an output buffer; MOE_ERR_NUMERIC if the logits are not
 *         finite; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_model_generate(moe_model *model, const moe_generate_config *cfg, const int32_t *prompt,
                                      int32_t prompt_len, int32_t *out_tokens, int32_t out_capacity,
                                      int32_t *out_len);

/**
 * @brief An opaque incremental decoder: one sequence's KV cache over a model, for custom decoding
 *        loops. Created by moe_decoder_create(), freed by moe_decoder_destroy().
 */
typedef struct moe_decoder moe_decoder;

/**
 * @brief Create a decoder with an empty cache.
 *
 * The cache (2 x num_layers x max_len x num_kv_heads x head_dim floats) is allocated here. It holds
 * keys and values computed with the parameters of the time they were fed: after changing the
 * model's parameters, call moe_decoder_reset().
 * @param model The model; borrowed, and must outlive the decoder.
 * @param max_len Most tokens the decoder will hold, 1..max_seq_len; 0 = max_seq_len.
 * @param out Receives the decoder; the caller owns it and frees it with moe_decoder_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL argument or a bad @p max_len; MOE_ERR_UNSUPPORTED
 *         for a device without decoding kernels; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_decoder_create(moe_model *model, int32_t max_len, moe_decoder **out);

/**
 * @brief Free a decoder and its cache.
 * @param decoder The decoder; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_decoder_destroy(moe_decoder *decoder);

/**
 * @brief Empty the cache, so the next token fed is at position 0.
 * @param decoder The decoder.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_decoder_reset(moe_decoder *decoder);

/**
 * @brief Append tokens to the sequence and compute the logits after the last of them.
 *
 * The tokens take positions length .. length + count - 1 (length = moe_decoder_length()); their
 * keys and values join the cache. Feeding a prompt at once and then one token at a time gives the
 * logits moe_model_forward() gives at those positions.
 * @param decoder The decoder.
 * @param tokens @p count token ids in [0, vocab_size); read during the call only.
 * @param count Tokens to append, >= 1, with length + count <= max_len.
 * @param logits Receives vocab_size floats: the logits predicting the token after the last one fed;
 *        may be NULL (only the cache is updated).
 * @param logits_capacity Floats @p logits can hold (>= vocab_size when @p logits is not NULL).
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a NULL argument, a token out of range (its position
 *         named), a full cache or too small a buffer (nothing is appended then);
 *         MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_decoder_feed(moe_decoder *decoder, const int32_t *tokens, int32_t count, float *logits,
                                    uint64_t logits_capacity);

/**
 * @brief Tokens the decoder holds.
 * @param decoder The decoder.
 * @param length Receives the count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_decoder_length(const moe_decoder *decoder, int32_t *length);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_GENERATE_H */
