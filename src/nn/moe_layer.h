/* The MoE sub-layer (DESIGN.md §5): router logits = x·Wrᵀ → scores → top-k (or expert choice) →
 * dispatch plan (stable counting sort, capacity) → permute → grouped GEMMs over experts (SwiGLU or
 * GELU) → weighted unpermute, plus an optional always-on shared expert and the router losses.
 * The backward is the exact reverse, including the router-logit gradients of the combine weights,
 * the aux loss and the z-loss. Expert weights are [E, out, in] (HF layout per expert). */
#ifndef MOEI_NN_MOE_LAYER_H
#define MOEI_NN_MOE_LAYER_H

#include "cpu/dispatch.h"
#include "moe/model.h"
#include "core/ops.h"
#include "nn/buffers.h"
#include "nn/mlp.h"
#include "nn/params.h"
#include "nn/tp.h"

/* Most expert-parallel ranks one layer spans (sizes fixed-size exchange arrays). */
#define MOEI_MAX_EP 1024

struct moei_comm;

typedef struct moei_moe_settings {
    int32_t d, num_experts, top_k, hidden, activation, router, score_function, shared_hidden;
    uint32_t renormalize;
    float capacity_factor, jitter, aux_coef, z_coef, bias_rate;
    /* expert parallelism: this rank holds experts [ep_rank·E/ep_size, (ep_rank+1)·E/ep_size) */
    int32_t ep_size, ep_rank;
    struct moei_comm *ep_comm; /* NULL when ep_size is 1 */
} moei_moe_settings;

/* Expert tensor parallelism: this rank holds hidden units [rank·f/size, (rank+1)·f/size) of each of
 * its experts. size <= 1 = off. */
typedef struct moei_moe_etp {
    int32_t size, rank;
    struct moei_comm *comm; /* NULL when size <= 1 */
} moei_moe_etp;

typedef struct moei_moe {
    moei_moe_settings s;
    char prefix[96];
    int32_t router_w, w1, w3, w2; /* parameter indices; w3 = -1 for GELU experts */
    int has_shared;
    moei_mlp shared;
    float *bias;           /* [E] aux-loss-free selection bias (state, not a parameter) */
    int64_t *step_counts;  /* [E] routed assignments summed over the micro-batches of this step */
    moei_gemm_problem *problems; /* [E] grouped GEMM descriptors, rebuilt per call */
    int32_t ep_size, ep_rank, local_experts;
    struct moei_comm *ep_comm;
    int64_t *ecount, *eoffset;   /* rows per local expert and their offsets, expert-major [El + 1] */
    int64_t *ep_cursor;          /* scratch for the reorders */
    int32_t *all_counts;         /* [ep][E] every ep rank's rows per expert (EP only) */
    int64_t send_count[MOEI_MAX_EP], send_offset[MOEI_MAX_EP], recv_count[MOEI_MAX_EP], recv_offset[MOEI_MAX_EP];
    int64_t recv_rows;
    int64_t *ep_ecount, *ep_eoffset; /* [El + 1] the ep exchange's expert-major layout (this rank's rows) */
    int64_t token_base;          /* global index of this rank's first token (keys jitter) */
    /* EP traffic, for the volume formula in docs/parallelism.md: each dispatch/return pair moves
     * (rows sent to other ranks + rows received from them) rows of d floats each way */
    uint64_t ep_rows_offrank, ep_count_exchanges;
    /* saved forward */
    int64_t n;
    int training;
    const float *x;
    moei_buf xr, logits, probs, sel_idx, sel_w, plan_mem, ec_ws, xp, pre, act, yp, shared_y;
    moei_buf xe, ye, ep_stage; /* EP: local experts' rows, expert-major, and the exchange staging */
    moei_dispatch_plan plan;
    int64_t capacity;
    /* backward scratch */
    moei_buf d_yp, d_w, d_logits, d_xr, d_ye;
    /* last forward's statistics */
    int has_stats;
    double aux_loss, z_loss;
    moei_dispatch_stats stats;
    /* expert tensor parallelism: every rank of the etp group (same local experts, distinct rows)
     * gathers the group's expert-major rows, runs its hidden-unit slice of each expert over all of
     * them and reduce-scatters the partial outputs back to the rows' owners. ecount/eoffset then
     * describe the gathered layout; own_count the rows this rank brought. */
    int32_t etp_size, etp_rank;
    struct moei_comm *etp_comm;
    int32_t *own_count;          /* [El] this rank's rows per local expert */
    int32_t *etp_counts;         /* [etp][El] every etp rank's rows per local expert */
    int64_t etp_src_off[MOEI_MAX_EP + 1]; /* rows of etp rank q start at etp_src_off[q] of the gathered rows */
    moei_buf etp_x, etp_y, etp_stage, etp_recv;
    /* etp traffic, for the volume formula in docs/parallelism.md: summed over every gather (forward
     * and backward), this rank's rows R and the group's gathered rows G; each gather and its
     * reduce-scatter send ((etp-1)·R + G - R) rows of d floats, each forward (etp-1)·El counts */
    uint64_t etp_rows_own, etp_rows_all, etp_count_exchanges;
    /* tensor parallelism (nn/tp_moe.c): each tp rank routes its 1/tp of the micro-batch's rows;
     * counts, stats and router losses cover the whole micro-batch. Zeroed = off. */
    moei_tp tp;
    int32_t *tp_counts;        /* [2E] demand, then kept rows, per expert over the whole micro-batch */
    moei_buf tp_y, tp_dx, tp_full; /* without SP: this rank's rows before the gather, and a gather scratch */
} moei_moe;

moe_status moei_moe_register(moei_moe *m, moei_params *p, const char *prefix, const moei_moe_settings *s);
/* As moei_moe_register, with each expert's hidden units split over `etp` (NULL = not split). */
moe_status moei_moe_register_etp(moei_moe *m, moei_params *p, const char *prefix, const moei_moe_settings *s,
                                 const moei_moe_etp *etp);
/* y [n, d] = moe(x). training != 0 applies jitter (keyed by seed, rng_step and token index) and
 * accumulates step_counts for the bias update. x must stay unchanged until the backward. */
moe_status moei_moe_forward(moe_ctx *ctx, moei_moe *m, const moei_params *p, const float *x, int64_t n, int training,
                            uint64_t seed, uint64_t rng_step, float *y);
/* dx (overwritten, or accumulated when accumulate != 0); weight gradients accumulated. The router
 * losses' gradients are added with weight loss_weight (dy carries the same weight already). */
moe_status moei_moe_backward(moe_ctx *ctx, moei_moe *m, const moei_params *p, const float *dy, float *dx,
                             int accumulate, float loss_weight);
/* Apply the aux-loss-free bias update from step_counts, then clear them (once per optimizer step). */
moe_status moei_moe_end_step(moe_ctx *ctx, moei_moe *m);
/* Public routing statistics of the last forward (struct_size-versioned copy). */
moe_status moei_moe_stats(moe_ctx *ctx, const moei_moe *m, moe_routing_stats *stats, int64_t *tokens_per_expert,
                          int32_t capacity, const char *fn);
/* Fill the expert-parallel fields of `s` from a mesh (ep size, rank and communicator). */
struct moe_mesh;
void moei_mesh_expert_settings(const struct moe_mesh *mesh, moei_moe_settings *s);
/* The etp split of a mesh (size, rank and communicator). */
void moei_mesh_expert_etp(const struct moe_mesh *mesh, moei_moe_etp *etp);
void moei_moe_free(moe_ctx *ctx, moei_moe *m);

#endif
