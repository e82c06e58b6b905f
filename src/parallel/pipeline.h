/* Pipeline parallelism: which layers each pipeline stage holds (the layout, fixed when the model is
 * made) and the executor that runs one training step's micro-batches under a schedule from
 * parallel/schedule.h. Invariants: every virtual stage v = chunk * pp + pp_rank holds the layers
 * [first[v], first[v+1]); the embedding lives on pp rank 0, the final norm and LM head on rank pp-1;
 * a step computes what the single-rank micro-batch loop computes, bit for bit per micro-batch. */
#ifndef MOEI_PARALLEL_PIPELINE_H
#define MOEI_PARALLEL_PIPELINE_H

#include <stdint.h>

#include "moe/model.h"
#include "moe/train.h"
#include "parallel/schedule.h"

typedef struct moei_pipe moei_pipe;

/* The layer partition over pp * v virtual stages from the config's pipeline fields
 * (pipeline_virtual_stages, pipeline_layers) and the pipeline size: first[] receives pp * v + 1
 * entries. Checks the fields against pp and num_layers (MOE_ERR_INVALID_ARG naming the field);
 * tied embeddings with pp > 1 are MOE_ERR_UNSUPPORTED. Pure: no mesh, no allocation. `*chunks`
 * receives v. `fn` names the caller in messages. */
moe_status moei_pipe_layout(moe_ctx *ctx, const moe_model_config *cfg, int32_t pp, int32_t *chunks, int32_t *first,
                            const char *fn);

/* This rank's layout on a mesh with pp > 1 (a model on pp = 1 keeps a NULL pipe): validates the
 * config as moei_pipe_layout does. The pipe borrows the mesh's pp communicator. */
moe_status moei_pipe_create(moe_ctx *ctx, const moe_mesh *mesh, const moe_model_config *cfg, moei_pipe **out,
                            const char *fn);
void moei_pipe_destroy(moe_ctx *ctx, moei_pipe *p);

/* Layout queries. A NULL pipe is the single-stage model: it holds everything. */
int moei_pipe_holds_layer(const moei_pipe *p, int32_t layer);
int moei_pipe_holds_embed(const moei_pipe *p);
int moei_pipe_holds_head(const moei_pipe *p);
/* 1 when block `layer`'s input buffer is used on this rank: the block is held, or it is the first
 * layer after one of this rank's chunks (the chunk's output lands there). */
int moei_pipe_needs_input(const moei_pipe *p, int32_t layer);
/* This rank's chunk c holds layers [*begin, *end); MOE_ERR_INVALID_ARG for a chunk out of range. */
moe_status moei_pipe_chunk_layers(const moei_pipe *p, int32_t chunk, int32_t *begin, int32_t *end);

/* What a pipelined step reports back to the train step, combined over the pipeline stages so every
 * rank holds the same values (as the single-rank micro-batch loop computes them). */
typedef struct moei_pipe_stats {
    double loss;     /* sum over micro-batches of (mean loss of the micro-batch) * (its counted targets) */
    double aux;      /* router losses weighted by each micro-batch's share of the counted targets */
    int64_t dropped; /* capacity drops over all layers and micro-batches */
    double max_load; /* largest max/mean expert load over layers and micro-batches */
    int numeric;     /* a micro-batch met a non-finite value on some stage: skip the update */
} moei_pipe_stats;

/* Run the micro-batches of `b` (already checked by the caller) through this rank's chunks under
 * b->pipeline_schedule: forwards and backwards with activation recomputation, activations and
 * gradients exchanged over the pp communicator (isend + blocking recv), gradients accumulated into
 * the model. `total` is the global count of targets (over dp), `rng_base` the rng_step of this
 * rank's first micro-batch minus the one prepare adds, `global_micro` the number of micro-batches of
 * the global batch. Collective over the pp group; every rank of it returns the same status. */
moe_status moei_pipe_train(moe_model *m, const moe_batch *b, int64_t total, uint64_t rng_base, int64_t global_micro,
                           moei_pipe_stats *out);

/* The actions the last moei_pipe_train executed on this rank, in order (borrowed; valid until the
 * next step or the model's destroy). */
moe_status moei_pipe_executed(const moe_model *m, const moei_pp_action **actions, int64_t *count);

#endif
