/* Naive fp64 references for the MoE router, its losses, expert choice and the dispatch/combine path,
 * written from the definitions (no shared code with the library) so tests can compare against them and
 * take finite differences on them. Row-major; score_fn 0 = softmax, 1 = sigmoid. */
#ifndef MOE_TESTS_REF_MOE_H
#define MOE_TESTS_REF_MOE_H

#include <stdint.h>

/* Deterministic test RNG (splitmix64). */
typedef struct refmoe_rng {
    uint64_t s;
} refmoe_rng;
uint64_t refmoe_rng_next(refmoe_rng *r);
double refmoe_rng_uniform(refmoe_rng *r, double lo, double hi);
void refmoe_fill_uniform(refmoe_rng *r, double *a, int64_t count, double lo, double hi);

/* a (double) -> f (float) and back. */
void refmoe_to_float(const double *a, float *f, int64_t count);
void refmoe_to_double(const float *f, double *a, int64_t count);

/* ||a - b|| / ||b|| (0/0 = 0; b = 0 with a != 0 gives +inf). */
double refmoe_rel_err_fd(const float *a, const double *b, int64_t count);

/* probs = score_fn(logits) per row. */
void refmoe_scores(int64_t n, int e, int score_fn, const double *logits, double *probs);

/* Top-k by repeated argmax over the unpicked experts, first (lowest) index on ties; idx [n, k]
 * in descending key order. */
void refmoe_topk_select(int64_t n, int e, int k, const double *keys, int *idx);

/* Smallest gap between consecutive keys among each token's top min(k + 1, e) keys: when it is large,
 * a small perturbation changes neither the selected set nor its order. */
double refmoe_topk_margin(int64_t n, int e, int k, const double *keys);

/* The token-choice router: probs, idx [n, k], w [n, k] (scale * p, renormalised by sum + 1e-20). */
void refmoe_router_topk(int64_t n, int e, int k, int score_fn, int renorm, double scale, const double *logits,
                     const double *bias, double *probs, int *idx, double *w);

/* Megatron-Core load-balancing loss from logits with fixed counts (see the library's contract). */
double refmoe_aux_loss(int64_t n, int e, int k, int score_fn, double coef, const double *logits, const int *counts);

/* coef * mean_n logsumexp(logits[n])^2 */
double refmoe_z_loss(int64_t n, int e, double coef, const double *logits);

/* HF Mixtral pieces: tokens_fraction[e], prob_mean[e]. */
void refmoe_balance_stats(int64_t n, int e, int k, const double *probs, const int *idx, double *tokens_fraction,
                       double *prob_mean);

/* Expert choice: softmax probs; per expert the top-c tokens (repeated argmax, lowest token index on
 * ties), listed ascending; w = their scores. */
void refmoe_expert_choice(int64_t n, int e, int64_t c, const double *logits, double *probs, int *idx, double *w);

/* Smallest gap, over experts, between the c-th and (c+1)-th highest score of the column (inf if c == n). */
double refmoe_expert_choice_margin(int64_t n, int e, int64_t c, const double *probs);

/* Dense gates [n, e] of token-choice routing with capacity (0 = none): expert e keeps its first
 * `capacity` assignments in token order; gates of dropped assignments are 0. dropped[n * k + j] is
 * set to 1 for a dropped slot (may be NULL). */
void refmoe_gates_token_choice(int64_t n, int e, int k, const int *idx, const double *w, int64_t capacity,
                            double *gates, int *dropped);

/* Dense gates [n, e] of expert choice. */
void refmoe_gates_expert_choice(int64_t n, int e, int64_t c, const int *idx, const double *w, double *gates);

/* y[n] = sum_e gates[n, e] * (W_e x[n] + b_e); W [e, dout, din], b [e, dout]. */
void refmoe_dense_moe(int64_t n, int e, int64_t din, int64_t dout, const double *x, const double *gates,
                   const double *W, const double *b, double *y);

#endif
