/**
 * @file moe/optim.h
 * @brief Optimizers (AdamW, SGD with momentum), learning-rate schedules and gradient clipping.
 *
 * An optimizer is bound to one model at creation and updates it from the model's accumulated
 * gradients. Steps whose gradients are not finite are skipped (nothing changes, the counter rises).
 * Thread-safety: as its ctx (one thread at a time; destroy from any thread).
 */
#ifndef MOE_OPTIM_H
#define MOE_OPTIM_H

#include "moe/common.h"
#include "moe/model.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_optim Optimizer
 * @brief Parameter updates.
 * @{
 */

/** @brief An opaque optimizer. Created by moe_optimizer_create(), freed by moe_optimizer_destroy(). */
typedef struct moe_optimizer moe_optimizer;

/** @brief Update rule. */
typedef enum moe_optimizer_type {
    MOE_OPTIMIZER_ADAMW = 0, /**< Adam with decoupled weight decay (as torch.optim.AdamW). */
    MOE_OPTIMIZER_SGD = 1,   /**< SGD with momentum (as torch.optim.SGD). */
    MOE_OPTIMIZER_TYPE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_optimizer_type;

/** @brief Learning-rate decay after warm-up. */
typedef enum moe_lr_decay {
    MOE_LR_CONSTANT = 0, /**< Stay at lr. */
    MOE_LR_COSINE = 1,   /**< Cosine from lr to min_lr over decay_steps. */
    MOE_LR_LINEAR = 2,   /**< Linear from lr to min_lr over decay_steps. */
    MOE_LR_DECAY_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_lr_decay;

/** @brief Optimizer settings. Fill with moe_optimizer_config_init() before setting fields. */
typedef struct moe_optimizer_config {
    uint32_t struct_size;    /**< sizeof(moe_optimizer_config) as compiled by the caller. */
    int32_t type;            /**< A ::moe_optimizer_type. Default MOE_OPTIMIZER_ADAMW. */
    float lr;                /**< Peak learning rate, >= 0. Default 1e-3. */
    float min_lr;            /**< Floor reached at the end of the decay, 0..lr. Default 1e-4. */
    int64_t warmup_steps;    /**< Linear warm-up from lr/warmup_steps to lr, >= 0. Default 0. */
    int64_t decay_steps;     /**< Steps from the end of warm-up to min_lr, >= 0; ignored for MOE_LR_CONSTANT. Default 0. */
    int32_t decay;           /**< A ::moe_lr_decay. Default MOE_LR_CONSTANT. */
    float beta1;             /**< AdamW first-moment decay, [0, 1). Default 0.9. */
    float beta2;             /**< AdamW second-moment decay, [0, 1). Default 0.95. */
    float eps;               /**< AdamW denominator epsilon, > 0. Default 1e-8. */
    float weight_decay;      /**< Decoupled weight decay (AdamW) or L2 added to the gradient (SGD), >= 0. Default 0.1. */
    float momentum;          /**< SGD momentum, [0, 1). Default 0.9. */
    uint32_t nesterov;       /**< 1 = SGD with Nesterov momentum. Default 0. */
    float clip_grad_norm;    /**< Clip the global gradient norm to this value; 0 = no clipping. Default 1.0. */
    uint32_t decay_norms_and_biases; /**< 1 = apply weight decay to norm weights and biases too. Default 0. */
    uint32_t decay_embeddings;       /**< 1 = apply weight decay to embeddings too. Default 0. */
    uint32_t zero_stage;     /**< 0 = replicated optimizer state: every data-parallel replica all-reduces the gradients and updates every parameter it holds; 1 = ZeRO-1: gradients are reduce-scattered over the replicas (dense parameters over dp, experts over edp), each replica keeps the AdamW moments (or SGD momentum) of its 1/replicas share only and updates that share, then the parameters are all-gathered. Both give the same training run (within fp32 rounding of the gradient norm); checkpoints load into either. Default 0. */
} moe_optimizer_config;

/** @brief What one optimizer step did. */
typedef struct moe_optimizer_stats {
    uint32_t struct_size;  /**< sizeof(moe_optimizer_stats) as compiled by the caller; set it before the call. */
    double grad_norm;      /**< Global gradient L2 norm before clipping (NaN/Inf when the step was skipped). */
    double lr;             /**< Learning rate used. */
    uint32_t skipped;      /**< 1 if the gradients were not finite and nothing was updated. */
    int64_t step;          /**< Updates applied so far (skipped steps not counted). */
    int64_t skipped_total; /**< Steps skipped so far. */
} moe_optimizer_stats;

/**
 * @brief Fill an optimizer config with its defaults.
 * @param cfg The config; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_optimizer_config) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_optimizer_config_init(moe_optimizer_config *cfg, uint32_t struct_size);

/**
 * @brief Create an optimizer for a model (state zero-initialised).
 * @param model The model to update; must outlive the optimizer.
 * @param cfg Settings; copied, not kept.
 * @param out Receives the optimizer; the caller owns it and frees it with moe_optimizer_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG naming a bad field; MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_optimizer_create(moe_model *model, const moe_optimizer_config *cfg, moe_optimizer **out);

/**
 * @brief Free an optimizer.
 * @param opt The optimizer; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_optimizer_destroy(moe_optimizer *opt);

/**
 * @brief Sum the model's gradients over its data-parallel replicas, clip them by their global norm
 *        and apply one update.
 *
 * On a mesh with dp or edp > 1 this is collective over the model's mesh (every rank calls it): the
 * accumulated gradients of each rank are summed over the replicas first (moe_train_step() calls it
 * for you). Afterwards the model's gradient buffers hold the summed gradients with zero_stage 0;
 * with zero_stage 1 only this rank's share of them is summed.
 * @param opt The optimizer.
 * @param stats Receives what happened; may be NULL (else set its struct_size first).
 * @return MOE_OK (also when a non-finite step was skipped: see stats->skipped); MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_optimizer_step(moe_optimizer *opt, moe_optimizer_stats *stats);

/**
 * @brief The learning rate the schedule gives at an update index.
 * @param opt The optimizer.
 * @param step Update index, >= 0 (0 = the first update).
 * @param lr Receives the learning rate.
 * @return MOE_OK or MOE_ERR_INVALID_ARG.
 */
MOE_API moe_status moe_optimizer_lr_at(const moe_optimizer *opt, int64_t step, double *lr);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_OPTIM_H */
