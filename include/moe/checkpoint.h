/**
 * @file moe/checkpoint.h
 * @brief Training checkpoints (save, resume) and Hugging Face Mixtral export.
 *
 * A checkpoint is a directory `<root>/step-<step>/` holding one safetensors file per rank
 * (`shard-<rank>-of-<world>.safetensors`: the slices of parameters and optimizer moments that rank
 * holds, replicated tensors written once) and `index.json`, which names every logical tensor, its
 * full shape, the slice each shard file holds and the xxHash64 of those bytes, plus the model
 * config, step, optimizer state, RNG state, data position, library version and optional trainer
 * text. `<root>/latest` names the newest complete checkpoint. A save is crash-safe: it is written to
 * a temporary directory, made durable (files and directories fsync'd) and renamed into place before
 * `latest` moves, so a crash at any moment leaves the previous or the new checkpoint, never a
 * partial one that loads. On a mesh of several ranks, save and load are collective over the world:
 * every rank calls them, all ranks agree on success before the index is committed, and a failure on
 * one rank is an error on all. Loading works on any mesh (resharding): each rank reads exactly the
 * slices it holds from whichever shards contain them. Loading verifies every checksum, shape and
 * config field before it changes anything. The format is in docs/file-formats.md ("Checkpoints").
 *
 * Thread-safety: as the model's ctx (one thread at a time). One save into a given root directory
 * at a time (one process, one thread); any number of loads may read a root no one is saving into.
 */
#ifndef MOE_CHECKPOINT_H
#define MOE_CHECKPOINT_H

#include "moe/common.h"
#include "moe/model.h"
#include "moe/optim.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_checkpoint Checkpoints
 * @brief Save and resume training, bit for bit.
 * @{
 */

/**
 * @brief What a checkpoint records besides tensors. Fill with moe_checkpoint_info_init().
 *
 * moe_checkpoint_save() reads it; moe_checkpoint_load() and moe_checkpoint_read_info() fill it.
 */
typedef struct moe_checkpoint_info {
    uint32_t struct_size;  /**< sizeof(moe_checkpoint_info) as compiled by the caller. */
    int64_t step;          /**< Training step the checkpoint belongs to, 0..2^53; names the directory `step-<step>`. Default 0. */
    int64_t data_position; /**< The trainer's data cursor (opaque to the library), |value| <= 2^53. Default 0. */
    int32_t keep_last;     /**< Save: keep only this many newest checkpoints (older complete ones are deleted); 0 = keep all. Default 0. Load: set to 0. */
    const char *user_json; /**< Save: optional trainer text (e.g. its flags as JSON), UTF-8, at most 16 MiB, stored verbatim; copied, not kept; NULL = none. Load: set to NULL (the text goes to the caller's buffer). Default NULL. */
    uint64_t rng_seed;     /**< Load: the seed of the ctx that saved (it keys router jitter; create the ctx with it for a bit-exact resume). Ignored by save, which stores the model's ctx seed. Default 0. */
} moe_checkpoint_info;

/**
 * @brief Fill checkpoint info with its defaults.
 * @param info The info; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_checkpoint_info) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p info is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_checkpoint_info_init(moe_checkpoint_info *info, uint32_t struct_size);

/**
 * @brief Save the model (and optimizer) as `<root_dir>/step-<info->step>/`, then point `latest` at it.
 *
 * Writes the parameters, the optimizer state (AdamW moments m and v, or SGD momentum m, as
 * `optim.m.<param>` / `optim.v.<param>`; its step and skipped counters), every MoE layer's expert
 * selection bias, the RNG state and @p info into a temporary directory `<root_dir>/.tmp-step-...`,
 * fsyncs every file and the directory, renames it to `step-<step>` (an existing `step-<step>` is
 * replaced: moved aside first, removed once the new one is in place), fsyncs @p root_dir, then
 * replaces `<root_dir>/latest` the same way. Leftovers of interrupted saves are cleaned first.
 * Then, when info->keep_last > 0, complete checkpoints older than this step are deleted until
 * keep_last remain (this one included); the checkpoint `latest` names and newer ones are never
 * deleted, nor anything in @p root_dir that is not a checkpoint. A failed rotation or cleanup is
 * logged as a warning and does not fail the save.
 * @param model The model; not modified.
 * @param opt Its optimizer, or NULL to save the model alone; must belong to @p model.
 * @param root_dir Directory of the run's checkpoints (UTF-8 path); created if missing (not its parents).
 * @param info Step, data position, rotation and trainer text; read during the call only.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad argument or field (named); MOE_ERR_IO when a file
 *         call fails (the call, path and system error are named): then @p root_dir still holds the
 *         previous checkpoint, or the new one when only a final fsync failed; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_checkpoint_save(moe_model *model, const moe_optimizer *opt, const char *root_dir,
                                       const moe_checkpoint_info *info);

/**
 * @brief Load a checkpoint into a model (and optimizer) of the same config.
 *
 * Before anything changes, verifies the index (format and library major version, every field),
 * that every model config field equals the checkpoint's, every tensor's shape and slices, and the
 * xxHash64 of every tensor it loads. Then restores the parameters, the optimizer's moments and its
 * step and skipped counters, every MoE layer's expert selection bias and the model's RNG step, so
 * that training continues exactly as if it had not stopped (with a ctx of the same seed: see
 * moe_checkpoint_info::rng_seed). Gradients are not restored (every training step zeroes them).
 * @param model A model created with the checkpoint's config (moe_checkpoint_read_config()).
 * @param opt An optimizer of @p model with the checkpoint's optimizer type, or NULL to load the
 *        model alone (a checkpoint saved without an optimizer can only be loaded with NULL).
 *        Its settings (learning rate, ...) are the caller's; only its state is loaded.
 * @param dir A checkpoint directory (`.../step-<n>`), or a root directory: then the checkpoint its
 *        `latest` file names is loaded.
 * @param info_out Receives step, data position and seed (set its struct_size first); may be NULL.
 * @param user_json_out Receives the trainer text as a NUL-terminated string ("" when none was
 *        saved); may be NULL when @p user_json_capacity is 0.
 * @param user_json_capacity Bytes @p user_json_out can hold; moe_checkpoint_read_info() tells the size.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad argument, a model config field that differs from the
 *         checkpoint's (named), an optimizer of another type, or too small a text buffer;
 *         MOE_ERR_IO when a file cannot be read; MOE_ERR_FORMAT for a malformed, truncated or
 *         inconsistent file or a checksum that does not match (the tensor is named);
 *         MOE_ERR_UNSUPPORTED for a newer format or another library major version. On failure
 *         the model and optimizer are unchanged.
 */
MOE_API moe_status moe_checkpoint_load(moe_model *model, moe_optimizer *opt, const char *dir,
                                       moe_checkpoint_info *info_out, char *user_json_out,
                                       uint32_t user_json_capacity);

/**
 * @brief Read the model config stored in a checkpoint, to create the model before loading.
 * @param dir A checkpoint directory, or a root directory (its `latest` is followed).
 * @param cfg Receives the config; set its struct_size first (moe_model_config_init()).
 * @return MOE_OK; MOE_ERR_INVALID_ARG; MOE_ERR_IO; MOE_ERR_FORMAT (the key is named);
 *         MOE_ERR_UNSUPPORTED for a newer format. The message is in moe_last_error().
 */
MOE_API moe_status moe_checkpoint_read_config(const char *dir, moe_model_config *cfg);

/**
 * @brief Read a checkpoint's step, data position, seed and trainer text without loading tensors.
 * @param dir A checkpoint directory, or a root directory (its `latest` is followed).
 * @param info_out Receives step, data position and seed (set its struct_size first); may be NULL.
 * @param user_json_out Receives the trainer text, NUL-terminated ("" when none); may be NULL.
 * @param user_json_capacity Bytes @p user_json_out can hold; ignored when it is NULL.
 * @param user_json_size Receives the bytes the text needs, its NUL included (1 when none); may be NULL.
 * @return MOE_OK; MOE_ERR_INVALID_ARG (also when the text does not fit, after @p user_json_size is
 *         set); MOE_ERR_IO; MOE_ERR_FORMAT; MOE_ERR_UNSUPPORTED. The message is in moe_last_error().
 */
MOE_API moe_status moe_checkpoint_read_info(const char *dir, moe_checkpoint_info *info_out, char *user_json_out,
                                            uint32_t user_json_capacity, uint32_t *user_json_size);

/** @} */

/**
 * @defgroup moe_hf_export Hugging Face export
 * @brief Write a model as a Mixtral checkpoint that transformers' from_pretrained loads.
 * @{
 */

/**
 * @brief Export a model in the Hugging Face Mixtral layout.
 *
 * Writes `config.json` (model_type "mixtral", MixtralForCausalLM, torch_dtype float32) and the
 * weights under their HF names in the classic per-expert layout
 * (`model.layers.N.block_sparse_moe.experts.E.w1.weight`, ...): one `model.safetensors`, or, when
 * they exceed @p max_shard_bytes, `model-0000i-of-0000n.safetensors` plus
 * `model.safetensors.index.json` (metadata.total_size and weight_map). Everything is written into a
 * temporary sibling directory, made durable and renamed to @p out_dir. An existing @p out_dir that
 * is empty or holds only a previous export (config.json, generation_config.json, model*.safetensors,
 * model.safetensors.index.json) is replaced; any other existing @p out_dir is refused.
 * moe_model_import_hf() reads the result back bit for bit.
 * @param model The model; only Mixtral-compatible ones: RoPE, RMSNorm, SwiGLU experts, token-choice
 *        softmax top-k with renormalisation, every layer MoE, no shared expert, no expert selection
 *        bias in use.
 * @param out_dir Directory to create (UTF-8 path); its parent must exist.
 * @param max_shard_bytes Largest shard file's tensor bytes (a larger tensor gets a shard of its
 *        own); 0 = one file.
 * @return MOE_OK; MOE_ERR_UNSUPPORTED naming the config setting Mixtral lacks; MOE_ERR_INVALID_ARG;
 *         MOE_ERR_IO (the call and path are named; @p out_dir is then unchanged); MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_model_export_hf(const moe_model *model, const char *out_dir, uint64_t max_shard_bytes);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_CHECKPOINT_H */
