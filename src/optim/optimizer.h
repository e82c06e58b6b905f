/* Optimizer internals shared with the train step. */
#ifndef MOEI_OPTIM_OPTIMIZER_H
#define MOEI_OPTIM_OPTIMIZER_H

#include "moe/optim.h"

struct moe_optimizer {
    moe_ctx *ctx;
    moe_model *model;
    moe_optimizer_config cfg;
    int64_t count;      /* elements updated: the model's parameter count */
    float *m, *v;       /* AdamW moments, or SGD momentum in m (v unused) */
    uint8_t *decay_mask;
    int64_t step;       /* updates applied */
    int64_t skipped_total;
};

/* moe_optimizer_step; force_skip != 0 skips the update as if the gradients were not finite (the
 * forward hit a non-finite value and stopped). */
moe_status moei_optimizer_step(moe_optimizer *opt, int force_skip, moe_optimizer_stats *stats);
double moei_optimizer_lr(const moe_optimizer_config *c, int64_t step);

#endif
