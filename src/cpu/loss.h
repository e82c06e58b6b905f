/* CPU softmax cross-entropy over logits [n, vocab] with int32 targets, HF/torch conventions: a target
 * equal to MOEI_IGNORE_INDEX (-100) contributes neither loss nor gradient nor count. The loss is
 * returned as a SUM with the count of counted tokens, so a caller can divide by the token count of
 * a whole global batch. Sums are taken in double over a fixed partition of the rows, so the result
 * is the same bits for any thread count. */
#ifndef MOEI_CPU_LOSS_H
#define MOEI_CPU_LOSS_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Targets equal to this are ignored (torch.nn.CrossEntropyLoss default, HF label padding). */
#define MOEI_IGNORE_INDEX (-100)

/* For each row i with targets[i] != -100:
 *   loss_i = logsumexp(logits[i, :]) - logits[i, targets[i]]   (max-subtracted, summed in double)
 * Outputs (all OVERWRITTEN, never accumulated):
 *   *loss_sum  = sum of loss_i over counted rows (double; required)
 *   *count     = number of counted rows (may be NULL)
 *   row_loss   = [n] per-row loss as float, 0 for ignored rows (may be NULL)
 *   d_logits   = [n, vocab] grad_scale * (softmax(logits[i]) - onehot(targets[i])), all-zero rows
 *                for ignored targets (may be NULL: forward only). With grad_scale = 1 / (global
 *                count) this is the gradient of the mean loss over the global batch.
 * d_logits may be the same pointer as logits (in place, to save an [n, vocab] buffer): each row is
 * fully read before it is overwritten, so the result is identical, but the logits are then gone.
 * Any other overlap is not allowed.
 * A target outside [0, vocab) that is not -100 fails with MOE_ERR_INVALID_ARG naming the first such
 * position and value, before anything is written. vocab = 0 is allowed only if every target is -100. */
moe_status moei_cpu_cross_entropy(moe_ctx *ctx, int64_t n, int64_t vocab, const float *logits,
                                  const int32_t *targets, float grad_scale, float *d_logits, float *row_loss,
                                  double *loss_sum, int64_t *count);

#ifdef __cplusplus
}
#endif

#endif
