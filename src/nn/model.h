/* The model as the library sees it: config, one parameter store, the blocks, and the saved
 * activations of the last forward. A block computes
 *     x2 = x + attn(norm1(x));   x3 = x2 + ffn(norm2(x2))
 * where ffn is a dense MLP or an MoE layer (chosen by the layer pattern). */
#ifndef MOEI_NN_MODEL_H
#define MOEI_NN_MODEL_H

#include "moe/layer.h"
#include "moe/model.h"
#include "nn/attention_layer.h"
#include "nn/buffers.h"
#include "nn/mlp.h"
#include "nn/moe_layer.h"
#include "nn/norm_layer.h"
#include "nn/params.h"

typedef struct moei_block {
    moei_norm norm1, norm2;
    moei_attn attn;
    int is_moe;
    moei_mlp mlp;
    moei_moe moe;
    /* saved forward: block input x, norm outputs, mid residual */
    moei_buf x, h1, x2, h2;
    struct moe_layer *attn_handle, *ffn_handle; /* borrowed handles, created on demand */
    int absent; /* pipeline parallelism: another stage holds this block (nothing registered here) */
} moei_block;

struct moe_model {
    moe_ctx *ctx;
    const moe_mesh *mesh;
    moe_model_config cfg;
    int32_t head_dim;
    moei_params params;
    int32_t embed, pos_embed, lm_head; /* parameter indices; pos_embed/lm_head -1 when absent */
    moei_norm final_norm;
    moei_block *blocks;
    moei_buf rope_cos, rope_sin;
    uint64_t rng_step; /* advances per training forward, keys router jitter */
    int has_forward;
    uint64_t forward_count; /* every forward through the blocks (model, decoder or borrowed layer) */
    /* saved forward of the last micro-batch */
    int64_t batch, seq;
    moei_buf tokens, positions, x_final, h_final, logits, dx, dh;
    struct moei_pipe *pipe; /* pp > 1: this stage's layers and the schedule executor (parallel/pipeline.h) */
    /* tensor/sequence parallelism (nn/tp_model.h): the layout, and buffers for the gathered final
     * hidden state (SP), an [n, d] scratch, the vocab-parallel loss statistics, logits gathering */
    moei_tp tp;
    moei_buf tp_hf, tp_full, tp_stats, tp_aux;
};

/* Sum the gradients over the ranks that hold copies: dense tensors over dp, expert tensors over
 * edp (no-op on a world of one). Called once per step, after the micro-batches. */
moe_status moei_model_reduce_grads(moe_model *m);
/* Global squared gradient norm counting every parameter once over the mesh (replicated ones once,
 * expert shards summed over ep), the same value on every rank; *finite = 0 if any rank saw a
 * non-finite gradient. */
moe_status moei_model_grad_sumsq(moe_model *m, double *sumsq, int32_t *finite);

/* Forward of one micro-batch through every block into m->logits. */
moe_status moei_model_forward(moe_model *m, const int32_t *tokens, int64_t batch, int64_t seq, int training);

/* The pieces of one micro-batch's forward and backward, so schedules (pipeline stages) can run a
 * subset of the blocks. The activation between pieces lives in moei_model_block_input(m, l)
 * (block l's input; l = num_layers is the final hidden state) and the gradient flowing backward
 * in m->dx (with respect to the output of the block about to run its backward).
 *   prepare: size buffers for batch x seq, copy tokens (may be NULL on stages without embedding)
 *   embed_forward: tokens -> block 0 input        block_forward(l): input l -> input l+1
 *   head_forward: final hidden -> m->logits       head_backward: cross-entropy + head -> m->dx
 *   block_backward(l): m->dx (d output of l) -> m->dx (d input of l), weights' grads added
 *   embed_backward: m->dx -> embedding grads */
moe_status moei_model_prepare(moe_model *m, const int32_t *tokens, int64_t batch, int64_t seq, int training);
float *moei_model_block_input(moe_model *m, int32_t l);
moe_status moei_model_embed_forward(moe_model *m);
moe_status moei_block_forward(moe_model *m, int32_t l, int training);
moe_status moei_model_head_forward(moe_model *m);
moe_status moei_model_head_backward(moe_model *m, const int32_t *targets, float loss_weight, double *loss_sum,
                                    int64_t *counted);
moe_status moei_block_backward(moe_model *m, int32_t l, float loss_weight);
moe_status moei_model_embed_backward(moe_model *m);
/* Sum of the MoE layers' aux and z losses of the last forward. */
double moei_model_router_losses(const moe_model *m);

#endif
