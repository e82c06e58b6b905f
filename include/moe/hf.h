/**
 * @file moe/hf.h
 * @brief Hugging Face Transformers checkpoints: Mixtral config.json + safetensors into a model.
 *
 * Both tensor layouts are read: the classic per-expert one that published Mixtral checkpoints use
 * (`model.layers.N.block_sparse_moe.gate.weight`, `...experts.E.w1/w2/w3.weight`) and the fused one
 * (`model.layers.N.mlp.gate.weight`, `...mlp.experts.gate_up_proj`, `...mlp.experts.down_proj`).
 * Single-file (`model.safetensors`) and sharded (`model.safetensors.index.json`) checkpoints are read.
 * Every file is fully bounds-checked; anything malformed is MOE_ERR_FORMAT with a message.
 * Thread-safety: as the ctx.
 */
#ifndef MOE_HF_H
#define MOE_HF_H

#include "moe/common.h"
#include "moe/model.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_hf Hugging Face import
 * @brief Load Mixtral checkpoints.
 * @{
 */

/**
 * @brief Read a Mixtral config.json into a model config.
 *
 * Fields Mixtral does not have keep the values already in @p cfg (fill it with
 * moe_model_config_init() first); the router is softmax top-k with renormalisation, dropless, RoPE,
 * RMSNorm and SwiGLU, as Mixtral computes it. router_aux_loss_coef becomes moe_aux_loss_coef and
 * moe_z_loss_coef is set to 0.
 * @param dir Directory holding config.json (UTF-8 path).
 * @param cfg The config to update; its struct_size must be set.
 * @return MOE_OK; MOE_ERR_IO if the file cannot be read; MOE_ERR_FORMAT for malformed JSON, a
 *         model_type other than "mixtral" or a missing/invalid field (named); MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_hf_read_config(const char *dir, moe_model_config *cfg);

/**
 * @brief Load a Mixtral checkpoint's weights into a model of the matching shape.
 * @param model A model whose config matches the checkpoint (e.g. from moe_hf_read_config()).
 * @param dir Directory holding model.safetensors or model.safetensors.index.json and its shards.
 * @return MOE_OK; MOE_ERR_IO; MOE_ERR_FORMAT for a malformed file, a missing tensor or a shape that
 *         does not match (named). On failure the model's weights may be partly overwritten.
 */
MOE_API moe_status moe_model_import_hf(moe_model *model, const char *dir);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_HF_H */
