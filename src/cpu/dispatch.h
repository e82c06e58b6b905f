/* Dispatch plan (stable counting sort of token slots by expert, with optional capacity) and the
 * permute / unpermute-combine ops and their backwards, on the CPU in fp32. One plan structure serves
 * token choice (slot n*k + j) and expert choice (slot e*C + c), so both routing modes share the ops.
 * Results are bitwise identical for any OpenMP thread count: every output row is written by one
 * iteration and every sum runs in slot order. */
#ifndef MOEI_CPU_DISPATCH_H
#define MOEI_CPU_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum moei_plan_mode {
    MOEI_PLAN_EMPTY = 0,        /* bound, not built */
    MOEI_PLAN_TOKEN_CHOICE = 1, /* slot s = n * k + j: token n's j-th choice */
    MOEI_PLAN_EXPERT_CHOICE = 2 /* slot s = e * C + c: expert e's c-th token */
} moei_plan_mode;

/* Terms: a slot is one (token, expert) assignment and owns the combine weight w[slot]; a row is a
 * kept slot's place in the permuted (expert-major) activations xp / yp [n_rows, d]. Rows of expert e
 * are offsets[e] .. offsets[e+1]-1, ordered by token index, then slot (stable). All arrays are
 * int32 and live in one caller buffer attached by moei_dispatch_plan_bind(). */
typedef struct moei_dispatch_plan {
    /* limits, set by bind */
    int64_t max_tokens;
    int64_t max_slots;
    int32_t n_experts;
    /* set by a build */
    int32_t mode;            /* moei_plan_mode */
    int32_t slots_per_token; /* k (token choice); 0 for expert choice (0..E slots per token) */
    int64_t n_tokens;        /* N */
    int64_t n_slots;         /* N * k, or E * C */
    int64_t capacity;        /* rows kept per expert at most; 0 = dropless */
    int64_t n_rows;          /* S = offsets[E] = kept slots */
    int64_t n_dropped;       /* n_slots - n_rows */
    int32_t *counts_pre_drop; /* [E] slots routed to e (the demand; what the aux loss uses) */
    int32_t *counts;          /* [E] rows kept for e = min(counts_pre_drop, capacity) */
    int32_t *offsets;         /* [E + 1] exclusive prefix sum of counts */
    int32_t *row_token;       /* [n_rows] row -> token */
    int32_t *row_slot;        /* [n_rows] row -> slot */
    int32_t *slot_row;        /* [n_slots] slot -> row, or -1 if dropped */
    int32_t *token_offsets;   /* [N + 1] slots of token n: token_slots[token_offsets[n] .. [n+1]-1] */
    int32_t *token_slots;     /* [n_slots] slots grouped by token, ascending slot id within a token */
    int32_t *scratch;         /* internal: per-chunk histograms of the counting sort */
} moei_dispatch_plan;

/* Load statistics of a built plan (for the per-step stats: tokens per expert, drops, imbalance). */
typedef struct moei_dispatch_stats {
    int64_t n_slots;      /* assignments requested */
    int64_t n_rows;       /* assignments kept */
    int64_t n_dropped;    /* assignments dropped by capacity */
    int32_t max_load;     /* max_e counts_pre_drop[e] */
    int32_t min_load;     /* min_e counts_pre_drop[e] */
    double mean_load;     /* n_slots / E */
    int32_t max_kept;     /* max_e counts[e] */
    int32_t n_idle;       /* experts with no slot */
} moei_dispatch_stats;

/* Bytes of the buffer a plan needs for up to max_tokens tokens and max_slots slots (token choice:
 * max_tokens * k; expert choice: E * C). 0 for invalid sizes. */
size_t moei_dispatch_plan_bytes(int64_t max_tokens, int32_t n_experts, int64_t max_slots);

/* Attach `buffer` (caller-owned, at least moei_dispatch_plan_bytes() bytes, kept by the plan until the
 * caller drops the plan; any alignment) and set the limits. The plan is then EMPTY. */
moe_status moei_dispatch_plan_bind(moe_ctx *ctx, moei_dispatch_plan *plan, int64_t max_tokens, int32_t n_experts,
                                   int64_t max_slots, void *buffer, size_t buffer_bytes);

/* Build from token-choice routing topk_idx [n_tokens, top_k] (experts in [0, E); a repeated expert in
 * one row is kept as two slots). capacity 0 = dropless; otherwise each expert keeps its first
 * `capacity` rows in token order and drops the rest (token-order priority: later tokens drop first,
 * the policy Megatron-Core calls "position"). Overwrites every plan field. */
moe_status moei_dispatch_plan_token_choice(moe_ctx *ctx, moei_dispatch_plan *plan, int64_t n_tokens, int32_t top_k,
                                           const int32_t *topk_idx, int64_t capacity);

/* Build from expert-choice selection ec_idx [E, capacity] (tokens strictly ascending per expert, as
 * moei_router_expert_choice_forward writes them). Rows equal slots; nothing is dropped. */
moe_status moei_dispatch_plan_expert_choice(moe_ctx *ctx, moei_dispatch_plan *plan, int64_t n_tokens,
                                            int64_t capacity, const int32_t *ec_idx);

/* Overwrites *stats from a built plan. */
moe_status moei_dispatch_plan_stats(moe_ctx *ctx, const moei_dispatch_plan *plan, moei_dispatch_stats *stats);

/* ---- data movement. x, y, d_x, dy: [n_tokens, d]; xp, yp, d_xp, d_yp: [n_rows, d]; w, d_w:
 * [n_slots] (token choice: topk_w [N, k]; expert choice: ec_w [E, C]). Rows are contiguous. */

/* xp[r] = x[row_token[r]]. Overwrites xp. */
moe_status moei_permute(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *x, float *xp);

/* d_x[n] (=, or += when accumulate != 0) sum over token n's kept slots, in slot order, of
 * d_xp[slot_row]. A token with no kept slot gets 0 (or is left as is when accumulating). */
moe_status moei_permute_backward(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *d_xp,
                                 int32_t accumulate, float *d_x);

/* y[n] = sum over token n's slots, in slot order, of w[slot] * yp[slot_row]; dropped slots add
 * nothing. Overwrites every row of y (a token with no kept slot gets zeros). */
moe_status moei_unpermute_combine(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *yp,
                                  const float *w, float *y);

/* d_yp[r] = w[row_slot[r]] * dy[row_token[r]] (overwrites; d_yp may be NULL to skip);
 * d_w[s] = <dy[token of s], yp[slot_row[s]]>, 0 for a dropped slot (overwrites all n_slots; NULL to
 * skip; yp then may be NULL). */
moe_status moei_unpermute_combine_backward(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *dy,
                                           const float *yp, const float *w, float *d_yp, float *d_w);

#ifdef __cplusplus
}
#endif

#endif
