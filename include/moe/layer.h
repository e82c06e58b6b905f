/**
 * @file moe/layer.h
 * @brief Single layers for custom trainers: an MoE (or dense MLP) layer on its own, or a layer borrowed from a model.
 *
 * A layer computes y = f(x) on [tokens, d_model] rows. moe_layer_backward() uses the state saved by
 * the last moe_layer_forward(), adds the parameter gradients into the layer (including the router's
 * aux and z losses with their coefficients) and writes dx.
 * A layer borrowed from a model (moe_model_layer()) is the block's sub-layer f(norm(x)), without the
 * residual add; it belongs to the model and moe_layer_destroy() on it does nothing.
 * Thread-safety: as its ctx (one thread at a time; destroy from any thread).
 */
#ifndef MOE_LAYER_H
#define MOE_LAYER_H

#include "moe/common.h"
#include "moe/ctx.h"
#include "moe/mesh.h"
#include "moe/model.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_layer Layers
 * @brief Forward, backward and parameters of one layer.
 * @{
 */

/** @brief An opaque layer. Created by moe_layer_create() or borrowed with moe_model_layer(). */
typedef struct moe_layer moe_layer;

/** @brief What a layer computes. */
typedef enum moe_layer_kind {
    MOE_LAYER_ATTENTION = 0, /**< norm + causal self-attention (borrowed from a model only). */
    MOE_LAYER_DENSE_MLP = 1, /**< A dense MLP (standalone: no norm). */
    MOE_LAYER_MOE = 2,       /**< Router + experts (+ shared expert) (standalone: no norm). */
    MOE_LAYER_KIND_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_layer_kind;

/** @brief A standalone layer's settings. Fill with moe_layer_config_init() before setting fields. */
typedef struct moe_layer_config {
    uint32_t struct_size;        /**< sizeof(moe_layer_config) as compiled by the caller. */
    int32_t kind;                /**< MOE_LAYER_MOE or MOE_LAYER_DENSE_MLP. Default MOE_LAYER_MOE. */
    int32_t d_model;             /**< Input and output width, >= 1. Default 128. */
    int32_t hidden;              /**< Hidden size of the dense MLP or of one expert, >= 1. Default 256. */
    int32_t activation;          /**< A ::moe_activation. Default MOE_ACTIVATION_SWIGLU. */
    int32_t num_experts;         /**< Routed experts (MoE), >= 1. Default 8. */
    int32_t top_k;               /**< Experts per token (token choice), 1..num_experts. Default 2. */
    int32_t shared_expert_hidden; /**< Hidden size of an always-on shared expert; 0 = none. Default 0. */
    int32_t router;              /**< A ::moe_router_type. Default MOE_ROUTER_TOKEN_CHOICE. */
    int32_t score_function;      /**< A ::moe_score_function. Default MOE_SCORE_SOFTMAX. */
    uint32_t renormalize;        /**< 1 = renormalise the top-k weights. Default 1. */
    float capacity_factor;       /**< 0 = dropless (token choice); > 0 required for expert choice. Default 0. */
    float jitter;                /**< Router-input jitter amplitude in training; 0 = off. Default 0. */
    float aux_loss_coef;         /**< Load-balancing loss coefficient, >= 0. Default 0.01. */
    float z_loss_coef;           /**< Router z-loss coefficient, >= 0. Default 0.001. */
    float bias_update_rate;      /**< Aux-loss-free balancing bias step; 0 = off. Default 0. */
    float init_std;              /**< Normal init standard deviation, > 0. Default 0.02. */
} moe_layer_config;

/**
 * @brief Fill a layer config with its defaults.
 * @param cfg The config; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_layer_config) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_layer_config_init(moe_layer_config *cfg, uint32_t struct_size);

/**
 * @brief Create a standalone layer with freshly initialised parameters (tensor names "layer.*").
 * @param ctx The ctx; must outlive the layer.
 * @param mesh The parallel layout; must outlive the layer.
 * @param cfg Settings; copied, not kept.
 * @param out Receives the layer; the caller owns it and frees it with moe_layer_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG naming a bad field; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_layer_create(moe_ctx *ctx, const moe_mesh *mesh, const moe_layer_config *cfg, moe_layer **out);

/**
 * @brief Free a standalone layer. A borrowed layer is left alone (its model owns it).
 * @param layer The layer; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_layer_destroy(moe_layer *layer);

/**
 * @brief Borrow one sub-layer of a model.
 * @param model The model.
 * @param block Transformer block index, 0..num_layers-1.
 * @param kind MOE_LAYER_ATTENTION for the block's attention, or the block's FFN kind
 *        (MOE_LAYER_DENSE_MLP or MOE_LAYER_MOE, whichever the block has).
 * @param out Receives the layer, owned by the model and valid until the model is destroyed.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a bad block or a kind the block does not have.
 */
MOE_API moe_status moe_model_layer(moe_model *model, int32_t block, int32_t kind, moe_layer **out);

/**
 * @brief What a layer computes.
 * @param layer The layer.
 * @param kind Receives a ::moe_layer_kind.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_layer_kind_of(const moe_layer *layer, int32_t *kind);

/**
 * @brief Forward pass; saves what the backward needs.
 * @param layer The layer.
 * @param x batch * seq_len * d_model inputs, row-major; read during the call only.
 * @param batch Sequences, >= 1 (attention uses it; other kinds see batch * seq_len tokens).
 * @param seq_len Tokens per sequence, >= 1.
 * @param y Receives batch * seq_len * d_model outputs.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for NULL buffers or bad sizes.
 */
MOE_API moe_status moe_layer_forward(moe_layer *layer, const float *x, int32_t batch, int32_t seq_len, float *y);

/**
 * @brief Backward pass of the last forward: dx is written, parameter gradients are added.
 * @param layer The layer.
 * @param dy Gradient of the loss with respect to y (same shape); read during the call only.
 * @param dx Receives the gradient with respect to x.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for NULL buffers; MOE_ERR_STATE without a preceding forward.
 */
MOE_API moe_status moe_layer_backward(moe_layer *layer, const float *dy, float *dx);

/**
 * @brief Set the layer's parameter gradients to zero.
 * @param layer The layer.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_layer_zero_grad(moe_layer *layer);

/**
 * @brief Number of named parameter tensors of the layer.
 * @param layer The layer.
 * @param count Receives the count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_layer_param_count(const moe_layer *layer, int32_t *count);

/**
 * @brief Name and shape of one of the layer's parameter tensors.
 * @param layer The layer.
 * @param index 0..count-1.
 * @param name Receives the NUL-terminated name; may be NULL.
 * @param name_capacity Bytes @p name can hold.
 * @param ndim Receives the number of dimensions; may be NULL.
 * @param shape Receives up to 8 sizes; may be NULL.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for a bad index or too small a name buffer.
 */
MOE_API moe_status moe_layer_param_info(const moe_layer *layer, int32_t index, char *name, uint32_t name_capacity,
                                        int32_t *ndim, int64_t *shape);

/**
 * @brief Copy one of the layer's parameters (or its gradient) out, by index.
 * @param layer The layer.
 * @param index 0..count-1.
 * @param gradient 0 for the parameter, 1 for its gradient.
 * @param dst Receives @p count floats.
 * @param count Must equal the tensor's element count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_layer_param_read(const moe_layer *layer, int32_t index, uint32_t gradient, float *dst,
                                        int64_t count);

/**
 * @brief Overwrite one of the layer's parameters, by index.
 * @param layer The layer.
 * @param index 0..count-1.
 * @param src @p count floats; read during the call only.
 * @param count Must equal the tensor's element count.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_layer_param_write(moe_layer *layer, int32_t index, const float *src, int64_t count);

/**
 * @brief Routing statistics of an MoE layer's last forward.
 * @param layer An MoE layer.
 * @param stats Receives the statistics; set its struct_size first.
 * @param tokens_per_expert Receives kept assignments per expert; may be NULL.
 * @param capacity Entries @p tokens_per_expert can hold.
 * @return MOE_OK; MOE_ERR_INVALID_ARG for another kind of layer; MOE_ERR_STATE before any forward.
 */
MOE_API moe_status moe_layer_routing_stats(const moe_layer *layer, moe_routing_stats *stats,
                                           int64_t *tokens_per_expert, int32_t capacity);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_LAYER_H */
