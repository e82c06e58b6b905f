/**
 * @file moe/model.h
 * @brief Decoder-only Mixture-of-Experts transformer: configuration, creation, forward and backward.
 *
 * A model is created on a mesh from a ::moe_model_config. Its parameters are initialised so that
 * element i of the logical tensor named n is drawn from Philox(seed, hash(n), i): every mesh, and
 * every reshard, holds the same logical weights. Parameters and gradients live in one contiguous
 * buffer each; moe_model_param_info() lists them by name.
 *
 * Thread-safety: as its ctx (one thread at a time; destroy from any thread).
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include "moe/common.h"
#include "moe/ctx.h"
#include "moe/mesh.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_model Model
 * @brief A Mixture-of-Experts transformer language model.
 * @{
 */

/** @brief An opaque model. Created by moe_model_create(), freed by moe_model_destroy(). */
typedef struct moe_model moe_model;

/** @brief Normalisation layer. */
typedef enum moe_norm_type {
    MOE_NORM_RMSNORM = 0,   /**< x / sqrt(mean(x^2) + eps) * w. */
    MOE_NORM_LAYERNORM = 1, /**< (x - mean) / sqrt(var + eps) * w + b. */
    MOE_NORM_TYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_norm_type;

/** @brief Position encoding. */
typedef enum moe_position_type {
    MOE_POSITION_ROPE = 0,    /**< Rotary embeddings on q and k (rotate-half pairing, as HF Llama/Mixtral). */
    MOE_POSITION_ALIBI = 1,   /**< Linear attention biases per head. */
    MOE_POSITION_LEARNED = 2, /**< A learned absolute position embedding added to the token embedding. */
    MOE_POSITION_TYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_position_type;

/** @brief MLP activation, for dense MLPs and experts. */
typedef enum moe_activation {
    MOE_ACTIVATION_SWIGLU = 0, /**< w2(silu(w1 x) * w3 x). */
    MOE_ACTIVATION_GELU = 1,   /**< w2(gelu(w1 x)), exact erf form. */
    MOE_ACTIVATION_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_activation;

/** @brief How tokens and experts are matched. */
typedef enum moe_router_type {
    MOE_ROUTER_TOKEN_CHOICE = 0,  /**< Each token picks its top-k experts. */
    MOE_ROUTER_EXPERT_CHOICE = 1, /**< Each expert picks its top-capacity tokens. */
    MOE_ROUTER_TYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_router_type;

/** @brief Router score function. */
typedef enum moe_score_function {
    MOE_SCORE_SOFTMAX = 0, /**< Softmax over all experts. */
    MOE_SCORE_SIGMOID = 1, /**< Independent sigmoid per expert. */
    MOE_SCORE_FUNCTION_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_score_function;

/** @brief Model architecture. Fill with moe_model_config_init() before setting fields. */
typedef struct moe_model_config {
    uint32_t struct_size;        /**< sizeof(moe_model_config) as compiled by the caller. */
    int32_t vocab_size;          /**< Tokens in the vocabulary, >= 1. Default 256 (bytes). */
    int32_t max_seq_len;         /**< Longest sequence, >= 1. Default 256. */
    int32_t d_model;             /**< Hidden size, >= 1. Default 128. */
    int32_t num_layers;          /**< Transformer blocks, >= 1. Default 4. */
    int32_t num_heads;           /**< Query heads, >= 1. Default 4. */
    int32_t num_kv_heads;        /**< Key/value heads; divides num_heads (MHA = num_heads, MQA = 1). Default 4. */
    int32_t head_dim;            /**< Size of one head; 0 = d_model / num_heads (which must divide). Default 0. */
    int32_t position;            /**< A ::moe_position_type. Default MOE_POSITION_ROPE. */
    float rope_theta;            /**< RoPE base, > 0. Default 10000. */
    int32_t norm;                /**< A ::moe_norm_type. Default MOE_NORM_RMSNORM. */
    float norm_eps;              /**< Epsilon inside the norm, > 0. Default 1e-5. */
    uint32_t tie_embeddings;     /**< 1 = the LM head reuses the token embedding. Default 0. */
    float init_std;              /**< Standard deviation of the normal init of weight matrices, > 0. Default 0.02. */
    int32_t ffn_hidden;          /**< Hidden size of dense MLP layers, >= 1. Default 4 * d_model rounded. Default 512. */
    int32_t ffn_activation;      /**< A ::moe_activation for dense MLP layers. Default MOE_ACTIVATION_SWIGLU. */
    int32_t moe_num_experts;     /**< Routed experts per MoE layer; 0 = no MoE layers. Default 8. */
    int32_t moe_top_k;           /**< Experts per token (token choice), 1..moe_num_experts. Default 2. */
    int32_t moe_expert_hidden;   /**< Hidden size of one expert (small = fine-grained experts), >= 1. Default 256. */
    int32_t moe_activation;      /**< A ::moe_activation for experts. Default MOE_ACTIVATION_SWIGLU. */
    int32_t moe_layer_freq;      /**< Every moe_layer_freq-th layer is MoE (1 = all), counted after the dense ones. Default 1. */
    int32_t moe_first_dense;     /**< The first moe_first_dense layers are dense MLPs. Default 0. */
    int32_t moe_shared_expert_hidden; /**< Hidden size of an always-on shared expert; 0 = none. Default 0. */
    int32_t moe_router;          /**< A ::moe_router_type. Default MOE_ROUTER_TOKEN_CHOICE. */
    int32_t moe_score_function;  /**< A ::moe_score_function. Default MOE_SCORE_SOFTMAX. */
    uint32_t moe_renormalize;    /**< 1 = the top-k weights of a token are renormalised to sum to 1. Default 1. */
    float moe_capacity_factor;   /**< Expert capacity = factor * tokens * k / experts; 0 = dropless. Required > 0 for expert choice. Default 0. */
    float moe_jitter;            /**< Multiplicative router-input jitter amplitude during training; 0 = off. Default 0. */
    float moe_aux_loss_coef;     /**< Load-balancing (Switch/GShard) loss coefficient, >= 0. Default 0.01. */
    float moe_z_loss_coef;       /**< Router z-loss coefficient, >= 0. Default 0.001. */
    float moe_bias_update_rate;  /**< Aux-loss-free balancing: per-expert bias step per update; 0 = off. Default 0. */
    int32_t pipeline_virtual_stages; /**< Model chunks per pipeline stage on a mesh with pp > 1 (interleaved 1F1B: chunk c of stage s is virtual stage c * pp + s); 0 or 1 = one contiguous chunk. At most 1024. Default 1. */
    int32_t pipeline_layers[64];  /**< Explicit layers per virtual stage (index c * pp + s), for pp * virtual stages <= 64 (entries past that 0); all 0 = even split with the extra layers on the first stages. Default all 0. */
} moe_model_config;

/** @brief Routing statistics of one MoE layer for the last forward pass. */
typedef struct moe_routing_stats {
    uint32_t struct_size;    /**< sizeof(moe_routing_stats) as compiled by the caller; set it before the call. */
    int32_t num_experts;     /**< Experts in the layer. */
    int64_t tokens;          /**< Tokens routed. */
    int64_t assignments;     /**< (token, expert) pairs kept after capacity. */
    int64_t dropped;         /**< (token, expert) pairs dropped by capacity. */
    int64_t max_load;        /**< Most assignments kept by one expert. */
    double mean_load;        /**< assignments / num_experts. */
    double aux_loss;         /**< Load-balancing loss value (with its coefficient). */
    double z_loss;           /**< Router z-loss value (with its coefficient). */
} moe_routing_stats;

/**
 * @brief Fill a model config with its defaults (a small byte-level MoE model).
 * @param cfg The config; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_model_config) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_model_config_init(moe_model_config *cfg, uint32_t struct_size);

/**
 * @brief Check a model config without creating anything.
 * @param cfg The config.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG naming the first invalid field in moe_last_error().
 */
MOE_API moe_status moe_model_config_validate(const moe_model_config *cfg);

/**
 * @brief Create a model with freshly initialised parameters and zero gradients.
 * @param ctx The ctx; must outlive the model.
 * @param mesh The parallel layout; must outlive the model. Layers take their shard sizes from it.
 *        With pp > 1 the model holds only its pipeline stage's layers (see pipeline_virtual_stages
 *        and pipeline_layers), the embedding on the first stage and the LM head on the last.
 * @param cfg The architecture; copied, not kept.
 * @param out Receives the model; the caller owns it and frees it with moe_model_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad field (named) or a mesh the model does not divide
 *         over; MOE_ERR_UNSUPPORTED for a device without an op table or tied embeddings with pp > 1;
 *         MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_model_create(moe_ctx *ctx, const moe_mesh *mesh, const moe_model_config *cfg, moe_model **out);

/**
 * @brief Free a model and everything it owns (its layers included).
 * @param model The model; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_model_destroy(moe_model *model);

/**
 * @brief The config a model was created with (after defaults were applied).
 * @param model The model.
 * @param cfg Receives the config; its struct_size must be set by the caller (moe_model_config_init()).
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_model_get_config(const moe_model *model, moe_model_config *cfg);

/**
 * @brief Parameter counts.
 * @param model The model.
 * @param total Receives the number of parameters; may be NULL.
 * @param active Receives the parameters used per token (top-k experts only); may be NULL.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_model_num_params(const moe_model *model, int64_t *total, int64_t *active);

/**
 * @brief Training FLOPs per token (forward + backward: 6 x active matmul parameters + attention).
 * @param model The model.
 * @param seq_len Sequence length the attention term is computed for, 1..max_seq_len.
 * @param flops Receives the FLOPs.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_model_flops_per_token(const moe_model *model, int32_t seq_len, double *flops);

/**
 * @brief Forward pass without gradients.
 * @param model The model.
 * @param tokens batch * seq_len token ids in [0, vocab_size), row-major [batch][seq_len]; read during the call.
 * @param batch Sequences, >= 1.
 * @param seq_len Tokens per sequence, 1..max_seq_len.
 * @param logits Receives batch * seq_len * vocab_size floats; may be NULL to run for routing statistics only.
 * @param logits_capacity Number of floats @p logits can hold.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for bad sizes, a token out of range (its position named) or too small a buffer.
 */
MOE_API moe_status moe_model_forward(moe_model *model, const int32_t *tokens, int32_t batch, int32_t seq_len,
                                     float *logits, uint64_t logits_capacity);

/**
 * @brief Forward and backward of one micro-batch; gradients are accumulated (added) into the model.
 *
 * The loss is the mean cross-entropy over the counted targets of this micro-batch plus the router
 * losses; the gradient added is that of @p loss_weight times it (use 1 for a single micro-batch, or
 * tokens_in_this_micro_batch / tokens_in_the_batch for accumulation whose result equals one big batch).
 * @param model The model.
 * @param tokens batch * seq_len input ids.
 * @param targets batch * seq_len target ids; -100 marks a position that is not counted.
 * @param batch Sequences, >= 1.
 * @param seq_len Tokens per sequence, 1..max_seq_len.
 * @param loss_weight Scale of the gradient added, finite.
 * @param lm_loss Receives the mean cross-entropy of the micro-batch; may be NULL.
 * @param aux_loss Receives the sum over MoE layers of the aux and z losses; may be NULL.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for bad sizes or ids.
 */
MOE_API moe_status moe_model_forward_backward(moe_model *model, const int32_t *tokens, const int32_t *targets,
                                              int32_t batch, int32_t seq_len, float loss_weight, double *lm_loss,
                                              double *aux_loss);

/**
 * @brief Set every gradient to zero.
 * @param model The model.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_model_zero_grad(moe_model *model);

/**
 * @brief Number of named parameter tensors.
 * @param model The model.
 * @param count Receives the count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_model_param_count(const moe_model *model, int32_t *count);

/**
 * @brief Name and shape of one parameter tensor.
 * @param model The model.
 * @param index 0..count-1, in a fixed order.
 * @param name Receives the NUL-terminated name (e.g. "layers.0.moe.experts.w1"); may be NULL.
 * @param name_capacity Bytes @p name can hold (names are shorter than 128 bytes).
 * @param ndim Receives the number of dimensions; may be NULL.
 * @param shape Receives up to 8 sizes (the logical, unsharded shape); may be NULL.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for a bad index or too small a name buffer.
 */
MOE_API moe_status moe_model_param_info(const moe_model *model, int32_t index, char *name, uint32_t name_capacity,
                                        int32_t *ndim, int64_t *shape);

/**
 * @brief Copy a parameter (or its gradient) out, by name.
 * @param model The model.
 * @param name The parameter's name.
 * @param gradient 0 for the parameter, 1 for its accumulated gradient.
 * @param dst Receives @p count floats.
 * @param count Must equal the parameter's element count.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for an unknown name or a wrong count.
 */
MOE_API moe_status moe_model_param_read(const moe_model *model, const char *name, uint32_t gradient, float *dst,
                                        int64_t count);

/**
 * @brief Overwrite a parameter, by name.
 * @param model The model.
 * @param name The parameter's name.
 * @param src @p count floats; read during the call only.
 * @param count Must equal the parameter's element count.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for an unknown name or a wrong count.
 */
MOE_API moe_status moe_model_param_write(moe_model *model, const char *name, const float *src, int64_t count);

/**
 * @brief Routing statistics of one MoE layer from the last forward pass.
 * @param model The model.
 * @param layer Transformer block index; it must be an MoE layer.
 * @param stats Receives the statistics; set its struct_size first.
 * @param tokens_per_expert Receives the kept assignments per expert; may be NULL.
 * @param capacity Entries @p tokens_per_expert can hold (>= num_experts when not NULL).
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad layer or buffer; MOE_ERR_STATE before any forward.
 */
MOE_API moe_status moe_model_routing_stats(const moe_model *model, int32_t layer, moe_routing_stats *stats,
                                           int64_t *tokens_per_expert, int32_t capacity);

/**
 * @brief Initialise every MoE layer's experts from the dense MLPs of a trained dense model (upcycling).
 *
 * @p dense must have the same config except that it has no MoE layers (moe_num_experts = 0) and its
 * ffn_hidden equals this model's moe_expert_hidden with the same activation. Every non-MLP parameter
 * is copied; each expert of layer i becomes a copy of the dense MLP of layer i; routers keep their
 * fresh initialisation.
 * @param model The MoE model to initialise.
 * @param dense The dense source model; not modified.
 * @return MOE_OK; MOE_ERR_INVALID_ARG naming the first mismatch.
 */
MOE_API moe_status moe_model_upcycle(moe_model *model, const moe_model *dense);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_MODEL_H */
