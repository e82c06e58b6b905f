/* Tensor and sequence parallelism at the model level: which configs a tp mesh can train, how the
 * parameters are laid out over tp, the vocabulary-parallel embedding and LM head with the
 * vocabulary-parallel cross-entropy, and the tp parts of the gradient reduction and global norm.
 * model.c calls these in place of its single-rank pieces when tp > 1.
 *
 * Layout over the tp group (rank r of T; every tp rank gets the same micro-batch):
 *   embed.weight, lm_head.weight   rows [v0_r, v0_r + V_r) of the vocabulary (near-equal chunks,
 *                                  the larger first; tied embeddings share the slice)  SHARDED
 *   attention, dense MLP           column-/row-parallel slices (attention_layer.h, mlp.h)  SHARDED
 *   norms, pos_embed               whole; REPLICATED, or PARTIAL with sequence parallelism
 *   MoE router, shared expert      whole; PARTIAL (tp_moe.h)
 *   experts                        the expert fold (ep over dp·tp ranks, edp the rest)
 * The residual stream holds all n rows of the micro-batch on every tp rank, or with sequence
 * parallelism rows [r·n/T, (r+1)·n/T) (moei_tp_rows). */
#ifndef MOEI_NN_TP_MODEL_H
#define MOEI_NN_TP_MODEL_H

#include "nn/model.h"

/* Configs a mesh with tp > 1 cannot train exactly, refused with the field named:
 * num_heads / num_kv_heads / ffn_hidden (dense layers) not divisible by tp, vocab_size < tp
 * (MOE_ERR_INVALID_ARG); MoE layers with capacity dropping (moe_capacity_factor > 0) or expert
 * choice routing (MOE_ERR_UNSUPPORTED: both need the micro-batch's global token order); sequence
 * parallelism with pp > 1 (MOE_ERR_UNSUPPORTED: the stages exchange whole activations). */
moe_status moei_tp_model_check(moe_ctx *ctx, const moe_mesh *mesh, const moe_model_config *c, const char *fn);

/* Before any parameter is registered: set m->tp from the mesh and hand it to every norm,
 * attention and dense MLP sub-layer, so their registration takes their tp slices. */
void moei_tp_model_pre_register(moe_model *m);
/* After registration, before moei_params_alloc: slice the embedding and LM head over the
 * vocabulary, mark pos_embed PARTIAL with sequence parallelism, set up the MoE layers. */
moe_status moei_tp_model_post_register(moe_model *m);
/* During moei_model_prepare: the tp buffers for a micro-batch of n tokens; fails when n does not
 * divide over tp where rows are split (sequence parallelism or MoE layers). */
moe_status moei_tp_model_prepare(moe_model *m, int64_t n);
void moei_tp_model_free(moe_model *m);

/* The vocabulary columns of the logits this rank holds: [*v0, *v0 + *count). */
void moei_tp_vocab_slice(const moe_model *m, int64_t *v0, int64_t *count);

/* The model pieces (model.h) under tp. */
moe_status moei_tp_embed_forward(moe_model *m);
moe_status moei_tp_head_forward(moe_model *m);
moe_status moei_tp_head_backward(moe_model *m, const int32_t *targets, float loss_weight, double *loss_sum,
                                 int64_t *counted);
moe_status moei_tp_embed_backward(moe_model *m);

/* Sum the MOEI_TP_PARTIAL gradients over tp (one all-reduce; before the dp reduction). */
moe_status moei_tp_reduce_partial_grads(moe_model *m);
/* The dense region's squared gradient norm over the tp group: SHARDED tensors summed over tp,
 * every other tensor counted once; *finite = 0 if any tp rank saw a non-finite dense gradient. */
moe_status moei_tp_dense_sumsq(moe_model *m, double *sumsq, int32_t *finite);
/* The last forward's logits of every vocabulary column, [n, vocab], into out (gathered over tp). */
moe_status moei_tp_gather_logits(moe_model *m, float *out);

#endif
