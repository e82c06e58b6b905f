/* Dispatch plan by stable counting sort (per-chunk histograms, prefix sums, scatter) and the
 * permute / unpermute-combine ops. The sort's output is unique (expert, then token, then slot), so the
 * chunking never shows in it; the data ops gather per output row (no atomics, no scatter-add), so
 * every sum has a fixed order and results repeat bit for bit at any thread count. */
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "cpu/dispatch.h"

/* The counting sort splits tokens into at most this many chunks (each gets an E-histogram). */
#define DISPATCH_CHUNKS 64
/* Tokens per chunk below which more chunks do not pay. */
#define DISPATCH_CHUNK_MIN_TOKENS 512
/* Elements moved below which a data op runs on one thread. */
#define DISPATCH_PAR_MIN 16384
#define DISPATCH_ALIGN 64

#define CHECK_PTR(ctx, fn, ptr, needed)                                                                    \
    do {                                                                                                   \
        if ((needed) && (ptr) == NULL)                                                                     \
            return moei_fail((ctx), MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", (fn), #ptr);        \
    } while (0)

static size_t round_up(size_t v) { return (v + DISPATCH_ALIGN - 1) / DISPATCH_ALIGN * DISPATCH_ALIGN; }

size_t moei_dispatch_plan_bytes(int64_t max_tokens, int32_t n_experts, int64_t max_slots)
{
    if (max_tokens < 0 || n_experts < 1 || max_slots < 0 || max_tokens >= INT32_MAX || max_slots > INT32_MAX)
        return 0;
    size_t e = (size_t)n_experts, t = (size_t)max_tokens, s = (size_t)max_slots, i = sizeof(int32_t);
    return DISPATCH_ALIGN /* slack for aligning the start */ + 2 * round_up(e * i) + round_up((e + 1) * i) +
           4 * round_up(s * i) + round_up((t + 1) * i) + round_up(e * DISPATCH_CHUNKS * i);
}

moe_status moei_dispatch_plan_bind(moe_ctx *ctx, moei_dispatch_plan *plan, int64_t max_tokens, int32_t n_experts,
                                   int64_t max_slots, void *buffer, size_t buffer_bytes)
{
    static const char fn[] = "moei_dispatch_plan_bind";
    CHECK_PTR(ctx, fn, plan, 1);
    CHECK_PTR(ctx, fn, buffer, 1);
    if (n_experts < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_experts' = %d must be >= 1", fn, (int)n_experts);
    if (max_tokens < 0 || max_tokens >= INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'max_tokens' = %lld is outside [0, 2^31 - 1)", fn,
                         (long long)max_tokens);
    if (max_slots < 0 || max_slots > INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'max_slots' = %lld is outside [0, 2^31 - 1]", fn,
                         (long long)max_slots);
    size_t need = moei_dispatch_plan_bytes(max_tokens, n_experts, max_slots);
    if (buffer_bytes < need)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'buffer_bytes' = %zu is below the %zu needed", fn,
                         buffer_bytes, need);
    uintptr_t p = ((uintptr_t)buffer + DISPATCH_ALIGN - 1) / DISPATCH_ALIGN * DISPATCH_ALIGN;
    size_t e = (size_t)n_experts, t = (size_t)max_tokens, s = (size_t)max_slots, i = sizeof(int32_t);
#define CARVE(field, count)                                                                                \
    do {                                                                                                   \
        plan->field = (int32_t *)p;                                                                        \
        p += round_up((count) * i);                                                                        \
    } while (0)
    memset(plan, 0, sizeof *plan);
    CARVE(counts_pre_drop, e);
    CARVE(counts, e);
    CARVE(offsets, e + 1);
    CARVE(row_token, s);
    CARVE(row_slot, s);
    CARVE(slot_row, s);
    CARVE(token_slots, s);
    CARVE(token_offsets, t + 1);
    CARVE(scratch, e * DISPATCH_CHUNKS);
#undef CARVE
    plan->max_tokens = max_tokens;
    plan->max_slots = max_slots;
    plan->n_experts = n_experts;
    plan->mode = MOEI_PLAN_EMPTY;
    return MOE_OK;
}

static moe_status check_bound(moe_ctx *ctx, const char *fn, const moei_dispatch_plan *plan)
{
    CHECK_PTR(ctx, fn, plan, 1);
    if (plan->n_experts < 1 || !plan->counts || !plan->scratch)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'plan' is not bound (call moei_dispatch_plan_bind)",
                         fn);
    return MOE_OK;
}

static moe_status check_capacity(moe_ctx *ctx, const char *fn, int64_t capacity)
{
    if (capacity < 0 || capacity > INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'capacity' = %lld is outside [0, 2^31 - 1]", fn,
                         (long long)capacity);
    return MOE_OK;
}

/* counts/offsets from the prefix-summed histograms; turns scratch[c][e] into the position of chunk
 * c's first slot among expert e's slots. Returns the number of kept rows. */
static int64_t plan_prefix(moei_dispatch_plan *plan, int nch, int64_t capacity)
{
    const int32_t E = plan->n_experts;
    int32_t *h = plan->scratch;
    int64_t rows = 0;
    plan->offsets[0] = 0;
    for (int32_t e = 0; e < E; e++) {
        int32_t run = 0;
        for (int c = 0; c < nch; c++) {
            int32_t v = h[(int64_t)c * E + e];
            h[(int64_t)c * E + e] = run;
            run += v;
        }
        int32_t kept = capacity > 0 && run > capacity ? (int32_t)capacity : run;
        plan->counts_pre_drop[e] = run;
        plan->counts[e] = kept;
        rows += kept;
        plan->offsets[e + 1] = (int32_t)rows;
    }
    return rows;
}

moe_status moei_dispatch_plan_token_choice(moe_ctx *ctx, moei_dispatch_plan *plan, int64_t n_tokens, int32_t top_k,
                                           const int32_t *topk_idx, int64_t capacity)
{
    static const char fn[] = "moei_dispatch_plan_token_choice";
    moe_status st = check_bound(ctx, fn, plan);
    if (st != MOE_OK) return st;
    const int32_t E = plan->n_experts;
    if (n_tokens < 0 || n_tokens > plan->max_tokens)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_tokens' = %lld is outside [0, max_tokens = %lld]",
                         fn, (long long)n_tokens, (long long)plan->max_tokens);
    if (top_k < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'top_k' = %d must be >= 1", fn, (int)top_k);
    if (top_k > E)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'top_k' = %d exceeds the plan's n_experts = %d", fn,
                         (int)top_k, (int)E);
    if (n_tokens * top_k > plan->max_slots)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: n_tokens * top_k = %lld exceeds the plan's max_slots = %lld (argument 'top_k')", fn,
                         (long long)(n_tokens * top_k), (long long)plan->max_slots);
    st = check_capacity(ctx, fn, capacity);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, topk_idx, n_tokens > 0);

    const int64_t K = top_k, S = n_tokens * K;
    int nch = (int)(n_tokens / DISPATCH_CHUNK_MIN_TOKENS);
    if (nch > DISPATCH_CHUNKS) nch = DISPATCH_CHUNKS;
    if (nch < 1) nch = 1;
    int32_t *h = plan->scratch;
    int64_t bad[DISPATCH_CHUNKS];

    /* 1: histogram of each chunk of tokens; also finds the first out-of-range expert id. */
#pragma omp parallel for schedule(static) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        int32_t *hc = h + (int64_t)c * E;
        for (int32_t e = 0; e < E; e++) hc[e] = 0;
        bad[c] = -1;
        int64_t s0 = n_tokens * c / nch * K, s1 = n_tokens * (c + 1) / nch * K;
        for (int64_t s = s0; s < s1; s++) {
            int32_t e = topk_idx[s];
            if (e < 0 || e >= E) {
                bad[c] = s;
                break;
            }
            hc[e]++;
        }
    }
    for (int c = 0; c < nch; c++)
        if (bad[c] >= 0)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: 'topk_idx'[%lld] = %d is not an expert in [0, %d)", fn,
                             (long long)bad[c], (int)topk_idx[bad[c]], (int)E);

    /* 2: prefix sums (serial: E * chunks values). */
    int64_t rows = plan_prefix(plan, nch, capacity);

    /* 3: scatter in slot order within each chunk; chunk c starts after the earlier chunks' slots. */
#pragma omp parallel for schedule(static) if (nch > 1)
    for (int c = 0; c < nch; c++) {
        int32_t *pos = h + (int64_t)c * E;
        int64_t n0 = n_tokens * c / nch, n1 = n_tokens * (c + 1) / nch;
        for (int64_t n = n0; n < n1; n++) {
            plan->token_offsets[n] = (int32_t)(n * K);
            for (int64_t j = 0; j < K; j++) {
                int64_t s = n * K + j;
                int32_t e = topk_idx[s];
                int32_t p = pos[e]++;
                plan->token_slots[s] = (int32_t)s;
                if (capacity == 0 || p < capacity) {
                    int32_t r = plan->offsets[e] + p;
                    plan->row_token[r] = (int32_t)n;
                    plan->row_slot[r] = (int32_t)s;
                    plan->slot_row[s] = r;
                } else {
                    plan->slot_row[s] = -1;
                }
            }
        }
    }
    plan->token_offsets[n_tokens] = (int32_t)S;
    plan->mode = MOEI_PLAN_TOKEN_CHOICE;
    plan->slots_per_token = top_k;
    plan->n_tokens = n_tokens;
    plan->n_slots = S;
    plan->capacity = capacity;
    plan->n_rows = rows;
    plan->n_dropped = S - rows;
    return MOE_OK;
}

moe_status moei_dispatch_plan_expert_choice(moe_ctx *ctx, moei_dispatch_plan *plan, int64_t n_tokens,
                                            int64_t capacity, const int32_t *ec_idx)
{
    static const char fn[] = "moei_dispatch_plan_expert_choice";
    moe_status st = check_bound(ctx, fn, plan);
    if (st != MOE_OK) return st;
    const int32_t E = plan->n_experts;
    if (n_tokens < 0 || n_tokens > plan->max_tokens)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_tokens' = %lld is outside [0, max_tokens = %lld]",
                         fn, (long long)n_tokens, (long long)plan->max_tokens);
    if (capacity < 1 || capacity > n_tokens)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'capacity' = %lld must be in [1, n_tokens = %lld]",
                         fn, (long long)capacity, (long long)n_tokens);
    if (capacity * E > plan->max_slots)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: n_experts * capacity = %lld exceeds the plan's max_slots = %lld (argument 'capacity')",
                         fn, (long long)(capacity * E), (long long)plan->max_slots);
    CHECK_PTR(ctx, fn, ec_idx, 1);
    const int64_t C = capacity, S = C * E;
    for (int64_t e = 0; e < E; e++)
        for (int64_t c = 0; c < C; c++) {
            int32_t t = ec_idx[e * C + c];
            if (t < 0 || t >= n_tokens || (c > 0 && t <= ec_idx[e * C + c - 1]))
                return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                                 "%s: 'ec_idx'[%lld, %lld] = %d: tokens must ascend within [0, %lld)", fn,
                                 (long long)e, (long long)c, (int)t, (long long)n_tokens);
        }
    plan->offsets[0] = 0;
    for (int32_t e = 0; e < E; e++) {
        plan->counts_pre_drop[e] = (int32_t)C;
        plan->counts[e] = (int32_t)C;
        plan->offsets[e + 1] = (int32_t)((e + 1) * C);
    }
    /* Expert-major slots already are the row order: rows equal slots. */
#pragma omp parallel for schedule(static) if (S >= DISPATCH_PAR_MIN)
    for (int64_t s = 0; s < S; s++) {
        plan->row_token[s] = ec_idx[s];
        plan->row_slot[s] = (int32_t)s;
        plan->slot_row[s] = (int32_t)s;
    }
    /* Group slots by token: counting sort over tokens, slots visited in ascending order. */
    int32_t *to = plan->token_offsets;
    memset(to, 0, sizeof(int32_t) * (size_t)(n_tokens + 1));
    for (int64_t s = 0; s < S; s++) to[ec_idx[s] + 1]++;
    for (int64_t n = 0; n < n_tokens; n++) to[n + 1] += to[n];
    /* Fill with a moving cursor per token, kept in token_offsets shifted by one, then restore. */
    for (int64_t s = 0; s < S; s++) plan->token_slots[to[ec_idx[s]]++] = (int32_t)s;
    for (int64_t n = n_tokens; n > 0; n--) to[n] = to[n - 1];
    to[0] = 0;
    plan->mode = MOEI_PLAN_EXPERT_CHOICE;
    plan->slots_per_token = 0;
    plan->n_tokens = n_tokens;
    plan->n_slots = S;
    plan->capacity = C;
    plan->n_rows = S;
    plan->n_dropped = 0;
    return MOE_OK;
}

static moe_status check_built(moe_ctx *ctx, const char *fn, const moei_dispatch_plan *plan)
{
    moe_status st = check_bound(ctx, fn, plan);
    if (st != MOE_OK) return st;
    if (plan->mode != MOEI_PLAN_TOKEN_CHOICE && plan->mode != MOEI_PLAN_EXPERT_CHOICE)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'plan' has not been built", fn);
    return MOE_OK;
}

moe_status moei_dispatch_plan_stats(moe_ctx *ctx, const moei_dispatch_plan *plan, moei_dispatch_stats *stats)
{
    static const char fn[] = "moei_dispatch_plan_stats";
    moe_status st = check_built(ctx, fn, plan);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, stats, 1);
    moei_dispatch_stats s = {0};
    s.n_slots = plan->n_slots;
    s.n_rows = plan->n_rows;
    s.n_dropped = plan->n_dropped;
    s.max_load = plan->counts_pre_drop[0];
    s.min_load = plan->counts_pre_drop[0];
    s.max_kept = plan->counts[0];
    for (int32_t e = 0; e < plan->n_experts; e++) {
        int32_t v = plan->counts_pre_drop[e];
        if (v > s.max_load) s.max_load = v;
        if (v < s.min_load) s.min_load = v;
        if (plan->counts[e] > s.max_kept) s.max_kept = plan->counts[e];
        if (v == 0) s.n_idle++;
    }
    s.mean_load = (double)plan->n_slots / (double)plan->n_experts;
    *stats = s;
    return MOE_OK;
}

/* ---- data movement ------------------------------------------------------------------------------ */

/* <a, b> over 16 interleaved fp32 partial sums, combined in double in a fixed order: the loop
 * vectorises, and the summation order depends on d only (not on alignment or thread count). */
static double dot_fixed(const float *a, const float *b, int64_t d)
{
    float acc[16] = {0};
    int64_t i = 0;
    for (; i + 16 <= d; i += 16)
        for (int u = 0; u < 16; u++) acc[u] += a[i + u] * b[i + u];
    double s = 0.0;
    for (int u = 0; u < 16; u++) s += acc[u];
    for (; i < d; i++) s += (double)a[i] * b[i];
    return s;
}

static moe_status check_d(moe_ctx *ctx, const char *fn, int64_t d)
{
    if (d < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'd' = %lld is negative", fn, (long long)d);
    return MOE_OK;
}

moe_status moei_permute(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *x, float *xp)
{
    static const char fn[] = "moei_permute";
    moe_status st = check_built(ctx, fn, plan);
    if (st == MOE_OK) st = check_d(ctx, fn, d);
    if (st != MOE_OK) return st;
    const int64_t R = plan->n_rows;
    CHECK_PTR(ctx, fn, x, R > 0 && d > 0);
    CHECK_PTR(ctx, fn, xp, R > 0 && d > 0);
    if (d == 0) return MOE_OK;
    const int32_t *rt = plan->row_token;
#pragma omp parallel for schedule(static) if (R * d >= DISPATCH_PAR_MIN)
    for (int64_t r = 0; r < R; r++) memcpy(xp + r * d, x + (int64_t)rt[r] * d, sizeof(float) * (size_t)d);
    return MOE_OK;
}

moe_status moei_permute_backward(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *d_xp,
                                 int32_t accumulate, float *d_x)
{
    static const char fn[] = "moei_permute_backward";
    moe_status st = check_built(ctx, fn, plan);
    if (st == MOE_OK) st = check_d(ctx, fn, d);
    if (st != MOE_OK) return st;
    const int64_t N = plan->n_tokens;
    CHECK_PTR(ctx, fn, d_xp, plan->n_rows > 0 && d > 0);
    CHECK_PTR(ctx, fn, d_x, N > 0 && d > 0);
    if (d == 0) return MOE_OK;
    const int32_t *to = plan->token_offsets, *ts = plan->token_slots, *sr = plan->slot_row;
#pragma omp parallel for schedule(static) if (N * d >= DISPATCH_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float *o = d_x + n * d;
        if (!accumulate)
            for (int64_t i = 0; i < d; i++) o[i] = 0.0f;
        for (int32_t q = to[n]; q < to[n + 1]; q++) {
            int32_t r = sr[ts[q]];
            if (r < 0) continue;
            const float *g = d_xp + (int64_t)r * d;
#pragma omp simd
            for (int64_t i = 0; i < d; i++) o[i] += g[i];
        }
    }
    return MOE_OK;
}

moe_status moei_unpermute_combine(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *yp,
                                  const float *w, float *y)
{
    static const char fn[] = "moei_unpermute_combine";
    moe_status st = check_built(ctx, fn, plan);
    if (st == MOE_OK) st = check_d(ctx, fn, d);
    if (st != MOE_OK) return st;
    const int64_t N = plan->n_tokens;
    CHECK_PTR(ctx, fn, yp, plan->n_rows > 0 && d > 0);
    CHECK_PTR(ctx, fn, w, plan->n_slots > 0);
    CHECK_PTR(ctx, fn, y, N > 0 && d > 0);
    if (d == 0) return MOE_OK;
    const int32_t *to = plan->token_offsets, *ts = plan->token_slots, *sr = plan->slot_row;
#pragma omp parallel for schedule(static) if (N * d >= DISPATCH_PAR_MIN)
    for (int64_t n = 0; n < N; n++) {
        float *o = y + n * d;
        for (int64_t i = 0; i < d; i++) o[i] = 0.0f;
        for (int32_t q = to[n]; q < to[n + 1]; q++) {
            int32_t s = ts[q], r = sr[s];
            if (r < 0) continue;
            const float ws = w[s], *v = yp + (int64_t)r * d;
#pragma omp simd
            for (int64_t i = 0; i < d; i++) o[i] += ws * v[i];
        }
    }
    return MOE_OK;
}

moe_status moei_unpermute_combine_backward(moe_ctx *ctx, const moei_dispatch_plan *plan, int64_t d, const float *dy,
                                           const float *yp, const float *w, float *d_yp, float *d_w)
{
    static const char fn[] = "moei_unpermute_combine_backward";
    moe_status st = check_built(ctx, fn, plan);
    if (st == MOE_OK) st = check_d(ctx, fn, d);
    if (st != MOE_OK) return st;
    const int64_t N = plan->n_tokens, R = plan->n_rows;
    CHECK_PTR(ctx, fn, dy, N > 0 && d > 0);
    CHECK_PTR(ctx, fn, w, d_yp != NULL && R > 0);
    CHECK_PTR(ctx, fn, yp, d_w != NULL && R > 0 && d > 0);
    if (d == 0) { /* empty rows: every dot product is 0 */
        if (d_w) memset(d_w, 0, sizeof(float) * (size_t)plan->n_slots);
        return MOE_OK;
    }
    /* One pass over the kept rows serves both outputs while dy[token] and yp[row] are in cache;
     * each row owns its d_yp row and its slot's d_w element. */
    const int32_t *rt = plan->row_token, *rs = plan->row_slot, *sr = plan->slot_row;
#pragma omp parallel for schedule(static) if (R * d >= DISPATCH_PAR_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *g = dy + (int64_t)rt[r] * d;
        if (d_yp) {
            const float ws = w[rs[r]];
            float *o = d_yp + r * d;
#pragma omp simd
            for (int64_t i = 0; i < d; i++) o[i] = ws * g[i];
        }
        if (d_w) d_w[rs[r]] = (float)dot_fixed(g, yp + r * d, d);
    }
    if (d_w) /* dropped slots: no row, no gradient */
        for (int64_t s = 0; s < plan->n_slots; s++)
            if (sr[s] < 0) d_w[s] = 0.0f;
    return MOE_OK;
}
