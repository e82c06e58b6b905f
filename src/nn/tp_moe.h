/* Tensor parallelism around an MoE layer. The routed experts do not split over tp (etp = 1):
 * instead each tp rank routes a distinct 1/tp of the micro-batch's rows — with sequence
 * parallelism the rows it holds, without it rows [r·n/tp, (r+1)·n/tp) of the replicated input,
 * whose outputs (and input gradients) are all-gathered again. Experts then see every row once
 * over the tp ranks, which belong to the expert fold (edp × ep), so expert gradients are summed by
 * the usual edp reduction. The router and the shared expert are replicated over tp and see 1/tp
 * of the rows: their gradients are MOEI_TP_PARTIAL. Routing statistics that depend on the whole
 * micro-batch — the demand counts of the aux loss, the z-loss mean, the bias-update counts, the
 * load statistics — are summed over tp, so they equal a single rank's. Capacity dropping and
 * expert choice need the global token order and are refused with tp > 1 (moei_tp_model_check). */
#ifndef MOEI_NN_TP_MOE_H
#define MOEI_NN_TP_MOE_H

#include "nn/moe_layer.h"

/* After moei_moe_register and before moei_params_alloc: give layer `m` the tp layout, mark its
 * router and shared expert MOEI_TP_PARTIAL and allocate the count buffer. No-op for tp <= 1. */
moe_status moei_moe_tp_setup(moei_moe *m, moei_params *p, const moei_tp *tp);
void moei_moe_tp_free(moe_ctx *ctx, moei_moe *m);

/* Forward entry: point *x, *n, *y at the rows this rank routes (and sets the jitter's global token
 * base). Without sequence parallelism *y becomes a layer buffer that moei_moe_tp_leave gathers. */
moe_status moei_moe_tp_enter(moe_ctx *ctx, moei_moe *m, const float **x, int64_t *n, float **y);
/* After the dispatch plan: sum the per-expert demand and kept counts over tp into m->tp_counts,
 * replace the plan's demand counts (counts_pre_drop) by the whole micro-batch's and rewrite m->stats
 * from them. The plan's kept counts and offsets stay this rank's. */
moe_status moei_moe_tp_count(moe_ctx *ctx, moei_moe *m);
/* Sum this rank's shares of the aux and z losses over tp (each computed with moei_moe_demand and
 * the coefficients scaled by moei_moe_token_share). */
moe_status moei_moe_tp_losses(moe_ctx *ctx, moei_moe *m, float *aux, float *z);
/* Forward exit: gather the routed rows of every tp rank into y (no-op with SP). */
moe_status moei_moe_tp_leave(moe_ctx *ctx, moei_moe *m, const float *y_rows, float *y);
/* Backward entry/exit, mirroring the forward: dy and dx are pointed at this rank's rows (without
 * SP *dx becomes a layer buffer and *accumulate 0), and the exit gathers them into the caller's dx
 * (added when the caller asked to accumulate). */
moe_status moei_moe_tp_enter_backward(moe_ctx *ctx, moei_moe *m, const float **dy, float **dx, int *accumulate);
moe_status moei_moe_tp_leave_backward(moe_ctx *ctx, moei_moe *m, const float *dx_rows, float *dx, int accumulate);

/* Per-expert demand over the whole micro-batch (the plan's counts_pre_drop; with tp valid after
 * moei_moe_tp_count). */
const int32_t *moei_moe_demand(const moei_moe *m);
/* This rank's share of the micro-batch's rows (1/tp, or 1). The router losses are means over the
 * micro-batch: with tp the aux coefficient is scaled by share² (its form is a product of two means
 * over rows) and the z coefficient by share, which makes each rank's value and gradient its exact
 * part of the whole micro-batch's. */
float moei_moe_token_share(const moei_moe *m);

#endif
