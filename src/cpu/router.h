/* MoE router ops on the CPU (fp32, row-major): score function + top-k (token choice), expert-choice
 * selection, their backwards into the router logits, and the router losses. Every op works on one
 * micro-batch, writes only caller-provided buffers, never allocates, and gives bitwise identical
 * results for any OpenMP thread count (per-token work is independent; reductions run in fixed chunks). */
#ifndef MOEI_CPU_ROUTER_H
#define MOEI_CPU_ROUTER_H

#include <stddef.h>
#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Score function applied to each token's logits. */
typedef enum moei_score_fn {
    MOEI_SCORE_SOFTMAX = 0, /* softmax over all experts of the token */
    MOEI_SCORE_SIGMOID = 1  /* independent sigmoid per expert (DeepSeek-V3) */
} moei_score_fn;

/* Added to the sum of the selected scores before renormalising, so an all-underflowed sigmoid row
 * gives zeros instead of NaN (the value DeepSeek-V3 and Megatron-Core use). */
#define MOEI_ROUTER_RENORM_EPS 1e-20f

/* ---- token choice -------------------------------------------------------------------------------
 * Shapes: logits, probs, d_logits, d_probs [n_tokens, n_experts]; bias [n_experts];
 * topk_idx, topk_w, d_topk_w [n_tokens, top_k]. Requires 1 <= top_k <= n_experts, n_tokens >= 0,
 * n_tokens * max(top_k, n_experts) < 2^31. A pointer may be NULL only where its array is empty (or
 * where it is documented optional). */

/* probs = score_fn(logits) (saved for backward). Selection key = probs + bias (bias NULL = none; the
 * bias only steers selection, as in aux-loss-free balancing). topk_idx[n, :] lists the top_k experts
 * by descending key, ties to the lower expert index. topk_w[n, j] = scale * probs[n, idx] (unbiased),
 * divided by (sum of the token's selected probs + MOEI_ROUTER_RENORM_EPS) when renorm != 0.
 * Overwrites probs, topk_idx, topk_w. MOE_ERR_NUMERIC when a logit or bias is not finite. */
moe_status moei_router_topk_forward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                    int32_t score_fn, int32_t renorm, float scale, const float *logits,
                                    const float *bias, float *probs, int32_t *topk_idx, float *topk_w);

/* d_logits = d(loss)/d(logits) through renormalisation and the score function, given d_topk_w and an
 * optional extra gradient w.r.t. probs (d_probs, NULL = none). The selection itself carries no
 * gradient. Overwrites d_logits (the losses below then add into it). */
moe_status moei_router_topk_backward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                     int32_t score_fn, int32_t renorm, float scale, const float *probs,
                                     const int32_t *topk_idx, const float *d_topk_w, const float *d_probs,
                                     float *d_logits);

/* counts[e] = number of (token, slot) pairs of topk_idx routed to expert e (before any capacity).
 * Overwrites counts [n_experts]. */
moe_status moei_router_count_experts(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                     const int32_t *topk_idx, int32_t *counts);

/* Capacity for `factor` (capacity_factor): ceil(factor * n_tokens * top_k / n_experts), at least 1;
 * factor <= 0 gives 0 (dropless). The same formula serves as C for expert choice (clip it to
 * n_tokens there). Negative sizes or n_experts < 1 give 0. */
int64_t moei_router_capacity(int64_t n_tokens, int32_t n_experts, int32_t top_k, double factor);

/* ---- losses --------------------------------------------------------------------------------------
 * Each writes its value to *loss and, when d_logits is not NULL, ADDS coef-scaled gradient into
 * d_logits. n_tokens == 0 gives loss 0. */

/* Switch/GShard load-balancing loss as Megatron-Core computes it per layer:
 *   loss = coef * E / (N * N * k) * sum_e (sum_n P[n, e]) * counts[e]
 * counts = assignments per expert BEFORE capacity dropping (the router's demand, what the balance
 * loss is meant to flatten; the plan's counts_pre_drop). P = probs for softmax; for sigmoid,
 * P = probs / (row sum + 1e-20) when top_k > 1, else probs (Megatron-Core's choice). The gradient
 * flows only through P (counts are piecewise constant). */
moe_status moei_router_aux_loss(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                int32_t score_fn, float coef, const float *probs, const int32_t *counts,
                                float *loss, float *d_logits);

/* Router z-loss (ST-MoE): loss = coef * mean_n (logsumexp_e logits[n, e])^2. MOE_ERR_NUMERIC when
 * a logit is not finite. */
moe_status moei_router_z_loss(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, float coef,
                              const float *logits, float *loss, float *d_logits);

/* Pieces of HF Mixtral's load_balancing_loss_func, so a model can sum them over layers:
 * tokens_fraction[e] = (assignments of topk_idx to e) / n_tokens, prob_mean[e] = mean_n probs[n, e].
 * HF's loss over L layers of equal N is E * sum_e mean_l(tokens_fraction) * mean_l(prob_mean).
 * Overwrites both [n_experts] arrays (zeros when n_tokens == 0). */
moe_status moei_router_balance_stats(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                     const float *probs, const int32_t *topk_idx, float *tokens_fraction,
                                     float *prob_mean);

/* Backward of prob_mean above: adds d(prob_mean)/d(logits)^T * d_prob_mean [n_experts] into d_logits,
 * through the score function (probs = score_fn(logits)). */
moe_status moei_router_prob_mean_backward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t score_fn,
                                          const float *probs, const float *d_prob_mean, float *d_logits);

/* Aux-loss-free balancing (DeepSeek-V3): bias[e] += rate * sign(mean_e' counts[e'] - counts[e]), from
 * the counts of the whole global batch, once per step. Updates bias [n_experts] in place. */
moe_status moei_router_bias_update(moe_ctx *ctx, int32_t n_experts, const int64_t *counts, float rate,
                                   float *bias);

/* ---- expert choice -------------------------------------------------------------------------------
 * probs = softmax over experts per token [n_tokens, n_experts]; each expert e takes its `capacity`
 * (C) highest-scoring tokens, ties to the lower token index: ec_idx [n_experts, C] holds them in
 * ascending token order, ec_w [n_experts, C] their scores probs[token, e]. A token may be taken by
 * 0..E experts. Requires 1 <= C <= n_tokens. Slot e*C + c is (expert e, position c): build the
 * dispatch plan with moei_dispatch_plan_expert_choice(). */

/* Bytes of workspace moei_router_expert_choice_forward needs. */
size_t moei_router_expert_choice_workspace_size(int64_t n_tokens, int32_t n_experts);

/* Overwrites probs, ec_idx, ec_w. MOE_ERR_NUMERIC when a logit is not finite. */
moe_status moei_router_expert_choice_forward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int64_t capacity,
                                             const float *logits, float *probs, int32_t *ec_idx, float *ec_w,
                                             void *workspace, size_t workspace_bytes);

/* d_logits from d_ec_w [n_experts, C] (and optional d_probs, NULL = none) through the softmax.
 * Overwrites d_logits. */
moe_status moei_router_expert_choice_backward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int64_t capacity,
                                              const float *probs, const int32_t *ec_idx, const float *d_ec_w,
                                              const float *d_probs, float *d_logits);

#ifdef __cplusplus
}
#endif

#endif
