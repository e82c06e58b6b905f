/**
 * @file moe/train.h
 * @brief One training step in one call: micro-batches, gradient accumulation, clipping, update.
 *
 * Thread-safety: as the model's ctx.
 */
#ifndef MOE_TRAIN_H
#define MOE_TRAIN_H

#include "moe/common.h"
#include "moe/model.h"
#include "moe/optim.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_train Training step
 * @brief moe_train_step(): the call the parallel schedules live behind.
 * @{
 */

/** @brief Pipeline schedule of a training step on a mesh with pp > 1 (ignored when pp = 1). */
typedef enum moe_pipeline_schedule {
    MOE_PIPELINE_GPIPE = 0,       /**< All forwards, then all backwards: every micro-batch in flight at once. */
    MOE_PIPELINE_ONE_F_ONE_B = 1, /**< 1F1B (PipeDream-flush): at most pp - stage micro-batches in flight. */
    MOE_PIPELINE_INTERLEAVED = 2, /**< Interleaved 1F1B over the model's moe_model_config.pipeline_virtual_stages chunks per stage; num_micro_batches must be a multiple of pp. */
    MOE_PIPELINE_SCHEDULE_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_pipeline_schedule;

/** @brief This data-parallel rank's share of a global batch. Fill with moe_batch_init(). */
typedef struct moe_batch {
    uint32_t struct_size;       /**< sizeof(moe_batch) as compiled by the caller. */
    const int32_t *tokens;      /**< num_micro_batches * micro_batch_size * seq_len input ids; read during the call only. */
    const int32_t *targets;     /**< Same shape as tokens; -100 marks a position that is not counted. Read during the call only. */
    int32_t micro_batch_size;   /**< Sequences per micro-batch, >= 1. Default 1. */
    int32_t seq_len;            /**< Tokens per sequence, >= 1. Default 1. */
    int32_t num_micro_batches;  /**< Micro-batches accumulated into one update, >= 1. Default 1. */
    int32_t pipeline_schedule;  /**< A ::moe_pipeline_schedule, used when the mesh has pp > 1. A model with pipeline_virtual_stages > 1 needs MOE_PIPELINE_INTERLEAVED. Default MOE_PIPELINE_ONE_F_ONE_B. */
} moe_batch;

/** @brief What one training step did. */
typedef struct moe_step_stats {
    uint32_t struct_size;   /**< sizeof(moe_step_stats) as compiled by the caller; set it before the call. */
    double loss;            /**< Mean cross-entropy over every counted target of the batch. */
    double aux_loss;        /**< Router losses (aux + z), averaged over micro-batches. */
    double grad_norm;       /**< Global gradient norm before clipping. */
    double lr;              /**< Learning rate used. */
    int64_t tokens;         /**< Targets counted. */
    int64_t dropped;        /**< (token, expert) assignments dropped by capacity, all layers and micro-batches. */
    double max_load;        /**< Largest (max expert load / mean expert load) over MoE layers and micro-batches; 1 = balanced. */
    uint32_t skipped;       /**< 1 if the gradients were not finite and no update was applied. */
    int64_t step;           /**< Updates applied so far. */
} moe_step_stats;

/**
 * @brief Fill a batch description with its defaults (no data).
 * @param batch The batch; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_batch) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p batch is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_batch_init(moe_batch *batch, uint32_t struct_size);

/**
 * @brief Run a batch's micro-batches, accumulate gradients, clip and update.
 *
 * Gradients are zeroed first. The loss is the mean over every counted target of the batch, whatever
 * the micro-batch split, so one step on 4 micro-batches equals one step on one micro-batch of 4x size.
 * On a mesh with pp > 1 the micro-batches run under @p batch's pipeline_schedule, the same on every
 * pipeline stage, and every rank returns the same statistics.
 * @param model The model.
 * @param opt An optimizer created for @p model.
 * @param batch The data; read during the call only.
 * @param stats Receives what happened; may be NULL (else set its struct_size first).
 * @return MOE_OK; MOE_ERR_INVALID_ARG for bad sizes, ids or an optimizer of another model.
 */
MOE_API moe_status moe_train_step(moe_model *model, moe_optimizer *opt, const moe_batch *batch, moe_step_stats *stats);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_TRAIN_H */
