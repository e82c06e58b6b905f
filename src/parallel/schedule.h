/* Pipeline-parallel schedules as pure functions: the ordered action list of each pipeline rank
 * (forward, backward, and the sends/receives between stages) for GPipe, 1F1B and interleaved 1F1B,
 * the layer partition over stages, and a validator that runs every rank's list together.
 * Invariant: lists depend only on (kind, stages, micro-batches, chunks, rank); no allocation. */
#ifndef MOEI_PARALLEL_SCHEDULE_H
#define MOEI_PARALLEL_SCHEDULE_H

#include <stdint.h>

#include "moe/ctx.h"

typedef enum moei_pp_kind {
    MOEI_PP_GPIPE = 0,      /* all forwards, then all backwards */
    MOEI_PP_1F1B = 1,       /* PipeDream-flush: warm-up forwards, one-forward-one-backward, cool-down */
    MOEI_PP_INTERLEAVED = 2 /* Megatron's virtual pipeline: `chunks` model chunks per rank */
} moei_pp_kind;

typedef enum moei_pp_op {
    MOEI_PP_FORWARD = 0,
    MOEI_PP_BACKWARD = 1,
    MOEI_PP_SEND_ACT = 2,  /* send the output activation of (microbatch, chunk) to the next stage */
    MOEI_PP_RECV_ACT = 3,  /* receive the input activation of (microbatch, chunk) from the previous stage */
    MOEI_PP_SEND_GRAD = 4, /* send the input gradient of (microbatch, chunk) to the previous stage */
    MOEI_PP_RECV_GRAD = 5  /* receive the output gradient of (microbatch, chunk) from the next stage */
} moei_pp_op;

/* One step of a rank's list. `chunk` is always this rank's model chunk the data belongs to (the
 * producer's for a send, the consumer's for a receive); virtual stage = chunk * stages + rank.
 * `peer` is the pipeline rank at the other end of a send/receive, -1 for compute. */
typedef struct moei_pp_action {
    int32_t op;
    int32_t microbatch;
    int32_t chunk;
    int32_t peer;
} moei_pp_action;

/* The action list of pipeline rank `rank`. With actions == NULL only *count is written (the size
 * query); otherwise at most `capacity` actions are written and *count is the full length
 * (MOE_ERR_INVALID_ARG if it exceeds capacity). Rules: stages, microbatches, chunks >= 1;
 * chunks > 1 only for MOEI_PP_INTERLEAVED, which also needs microbatches % stages == 0.
 * Neighbouring virtual stages on the same rank (stages == 1) hand over without send/receive. */
moe_status moei_pp_schedule(moe_ctx *ctx, int32_t kind, int32_t stages, int32_t microbatches, int32_t chunks,
                            int32_t rank, moei_pp_action *actions, int64_t capacity, int64_t *count);

/* Layers per (virtual) stage: stage s holds layers [first[s], first[s+1]); `first` has
 * num_stages + 1 entries. counts == NULL: even split, the num_layers % num_stages extra layers go
 * to the first stages (the last stage also runs the LM head and the loss); every stage then needs
 * a layer. counts != NULL: an explicit list of num_stages counts (>= 0) that must sum to
 * num_layers. With interleaving, num_stages = stages * chunks and virtual stage v = chunk*stages+rank. */
moe_status moei_pp_partition(moe_ctx *ctx, int32_t num_layers, int32_t num_stages, const int32_t *counts,
                             int32_t *first);

/* What the validator measured. Times are in the units of fwd_cost / bwd_cost (per chunk). */
typedef struct moei_pp_report {
    int64_t makespan;          /* time at which the last rank finishes; all start at 0 */
    int64_t busy;              /* compute time summed over ranks */
    double bubble;             /* idle fraction: 1 - busy / (stages * makespan) */
    int32_t peak_inflight;     /* max over ranks and time of forwards whose backward has not run */
    int32_t max_pending_sends; /* max over ranks of sends posted and not yet received */
} moei_pp_report;

/* Run all ranks' lists together and check them: every (microbatch, chunk) runs forward and
 * backward exactly once per rank; a forward runs after its input arrived (received, or produced by
 * the previous virtual stage on this rank), a backward after its forward and its output gradient;
 * a send carries data this rank has produced to the neighbour that consumes it; each channel
 * (ordered pair of ranks, activation or gradient) delivers in order and every receive gets exactly
 * the item it names; nothing is left unsent or unreceived; no deadlock. Semantics assumed: a send
 * is posted without waiting (an MPI_Isend whose buffer stays alive until the step ends), a receive
 * blocks until its item has been sent; compute takes fwd_cost / bwd_cost, communication takes no
 * time. lists[r] / counts[r] is rank r's list. peak_per_rank (NULL or `stages` entries) receives
 * each rank's peak in-flight count. Returns MOE_ERR_INVALID_ARG naming the rank, the action index
 * and the rule when the schedule is not valid. */
moe_status moei_pp_validate(moe_ctx *ctx, int32_t stages, int32_t microbatches, int32_t chunks,
                            const moei_pp_action *const *lists, const int64_t *counts, int64_t fwd_cost,
                            int64_t bwd_cost, int32_t *peak_per_rank, moei_pp_report *report);

/* "FORWARD", "SEND_ACT", ...; "?" for an unknown op. */
const char *moei_pp_op_name(int32_t op);

#endif
