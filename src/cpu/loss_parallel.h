/* Vocabulary-parallel softmax cross-entropy (Megatron's vocab-parallel loss). The vocabulary
 * [0, vocab) is split over p ranks; a rank holds columns [v0, v0 + v_local) of the logits as
 * logits [n, v_local]. The loss equals moei_cpu_cross_entropy on the whole logits (targets equal
 * to MOEI_IGNORE_INDEX ignored), in three steps around one all-gather of 3 floats per row:
 *   1. moei_cpu_ce_shard_stats   per row: this shard's max m, sum of exp(l - m), the target's logit
 *                                (0 when the target is in another shard)
 *   2. the caller all-gathers the stats of every shard (rank-major, [p][n][3])
 *   3. moei_cpu_ce_shard_combine per row: the global max M = max m_r, the global sum
 *                                S = sum_r s_r exp(m_r - M) (in double, rank order), the loss
 *                                log S + M - l_target; the sum over counted rows
 *   4. moei_cpu_ce_shard_backward d_logits = scale (exp(l - M) / S - onehot) on this shard's columns.
 * Every rank of the group computes the same loss sum (the same inputs in the same order). */
#ifndef MOEI_CPU_LOSS_PARALLEL_H
#define MOEI_CPU_LOSS_PARALLEL_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* stats [n, 3] (overwritten) = {max, sum of exp(l - max) (computed in double, stored as float),
 * logit of the target when v0 <= target < v0 + v_local else 0}; rows with an ignored target get
 * {0, 0, 0}. Targets must lie in [0, vocab) or be MOEI_IGNORE_INDEX (MOE_ERR_INVALID_ARG naming the
 * first bad one, before anything is written). v_local >= 1. */
moe_status moei_cpu_ce_shard_stats(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t v0, int64_t v_local,
                                   const float *logits, const int32_t *targets, float *stats);

/* all_stats [p, n, 3] from every shard in rank order -> row_ms [n, 2] (overwritten) = {M, S} per
 * row (0 for ignored rows), *loss_sum = sum over counted rows of log S + M - l_target
 * (double, row order), *count = counted rows (may be NULL). */
moe_status moei_cpu_ce_shard_combine(moe_ctx *ctx, int64_t n, int32_t p, const float *all_stats,
                                     const int32_t *targets, double *row_ms, double *loss_sum, int64_t *count);

/* d_logits [n, v_local] = scale * (exp(l - M) / S - onehot(target)) for this shard's columns; zero
 * rows for ignored targets. d_logits may equal logits (in place). row_ms from the combine step. */
moe_status moei_cpu_ce_shard_backward(moe_ctx *ctx, int64_t n, int64_t v0, int64_t v_local, const float *logits,
                                      const int32_t *targets, const double *row_ms, float scale, float *d_logits);

#ifdef __cplusplus
}
#endif

#endif
