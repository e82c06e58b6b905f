/* Optimizer internals shared with the train step and checkpoints. The optimizer owns the gradient
 * reduction of a step (all-reduce, or ZeRO-1 reduce-scatter + all-gather) and its state layout:
 * for each parameter region g it updates elements [own_start[g], own_start[g] + own_len[g]) of the
 * region, whose moments live from state_offset[g] of m, v and decay_mask. Stage 0: the whole region
 * at its own offset (state mirrors the parameter buffer); stage 1: chunk `group rank` of the region
 * split evenly over its replica group (dp for dense, edp for experts). */
#ifndef MOEI_OPTIM_OPTIMIZER_H
#define MOEI_OPTIM_OPTIMIZER_H

#include "comm/comm.h"
#include "moe/optim.h"
#include "nn/params.h"

struct moe_optimizer {
    moe_ctx *ctx;
    moe_model *model;
    moe_optimizer_config cfg;
    int64_t count;      /* elements of each state buffer (m, v, decay_mask) */
    float *m, *v;       /* AdamW moments, or SGD momentum in m (v unused) */
    uint8_t *decay_mask;
    int64_t step;       /* updates applied */
    int64_t skipped_total;
    int64_t own_start[MOEI_GROUP_COUNT], own_len[MOEI_GROUP_COUNT], state_offset[MOEI_GROUP_COUNT];
    double *gather; /* ZeRO-1 norm agreement: 2 doubles per world rank (host memory) */
};

/* moe_optimizer_step; force_skip != 0 skips the update as if the gradients were not finite (the
 * forward hit a non-finite value and stopped). Reduces the gradients first (collective). */
moe_status moei_optimizer_step(moe_optimizer *opt, int force_skip, moe_optimizer_stats *stats);
double moei_optimizer_lr(const moe_optimizer_config *c, int64_t step);

/* The mesh axis over whose ranks region g is replicated (MOE_AXIS_DP dense, MOE_AXIS_EDP experts). */
int32_t moei_optimizer_group_axis(int32_t g);

/* The elements of parameter `e` whose optimizer state this rank holds: [*first, *first + *count)
 * of e's local slice in row-major order, stored from element *state of m, v and decay_mask.
 * *count may be 0 (ZeRO-1: another replica holds that part). */
void moei_optimizer_param_state(const moe_optimizer *opt, const moei_param *e, int64_t *first, int64_t *count,
                                int64_t *state);

#endif
