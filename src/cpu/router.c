/* Router ops on the CPU: scores, token-choice top-k, expert-choice selection, their backwards and the
 * router losses. Per-token loops run in parallel with every output element written by exactly one
 * iteration; sums over tokens go through a fixed number of chunks added in order, so the results do
 * not depend on the thread count. Selection uses a strict total order (key, then index). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "cpu/router.h"

/* Below this many elements a loop runs on one thread: the fork costs more than the work. */
#define ROUTER_PAR_MIN 8192
/* Token sums are split into this many fixed chunks (independent of the thread count). */
#define ROUTER_RED_CHUNKS 64

/* ---- argument checks -------------------------------------------------------------------------- */

static moe_status check_sizes(moe_ctx *ctx, const char *fn, int64_t n_tokens, int32_t n_experts)
{
    if (n_tokens < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_tokens' = %lld is negative", fn,
                         (long long)n_tokens);
    if (n_experts < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_experts' = %d must be >= 1", fn, (int)n_experts);
    if (n_tokens > INT32_MAX / n_experts)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: argument 'n_tokens' = %lld times 'n_experts' = %d exceeds the int32 index range", fn,
                         (long long)n_tokens, (int)n_experts);
    return MOE_OK;
}

static moe_status check_topk_sizes(moe_ctx *ctx, const char *fn, int64_t n_tokens, int32_t n_experts, int32_t top_k)
{
    moe_status st = check_sizes(ctx, fn, n_tokens, n_experts);
    if (st != MOE_OK) return st;
    if (top_k < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'top_k' = %d must be >= 1", fn, (int)top_k);
    if (top_k > n_experts)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'top_k' = %d exceeds 'n_experts' = %d", fn,
                         (int)top_k, (int)n_experts);
    return MOE_OK;
}

static moe_status check_score_fn(moe_ctx *ctx, const char *fn, int32_t score_fn)
{
    if (score_fn != MOEI_SCORE_SOFTMAX && score_fn != MOEI_SCORE_SIGMOID)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'score_fn' = %d is not a moei_score_fn", fn,
                         (int)score_fn);
    return MOE_OK;
}

#define CHECK_PTR(ctx, fn, ptr, needed)                                                                    \
    do {                                                                                                   \
        if ((needed) && (ptr) == NULL)                                                                     \
            return moei_fail((ctx), MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", (fn), #ptr);        \
    } while (0)

/* First non-finite element of a[0..count), or -1. Chunks find their first offender in parallel; the
 * smallest index wins, so the message does not depend on the thread count. */
static int64_t first_non_finite(const float *a, int64_t count)
{
    int64_t first[ROUTER_RED_CHUNKS];
#pragma omp parallel for schedule(static) if (count >= ROUTER_PAR_MIN)
    for (int c = 0; c < ROUTER_RED_CHUNKS; c++) {
        int64_t lo = count * c / ROUTER_RED_CHUNKS, hi = count * (c + 1) / ROUTER_RED_CHUNKS;
        first[c] = -1;
        for (int64_t i = lo; i < hi; i++)
            if (!isfinite(a[i])) {
                first[c] = i;
                break;
            }
    }
    for (int c = 0; c < ROUTER_RED_CHUNKS; c++)
        if (first[c] >= 0) return first[c];
    return -1;
}

static moe_status check_finite(moe_ctx *ctx, const char *fn, const char *name, const float *a, int64_t rows,
                               int64_t cols)
{
    int64_t bad = first_non_finite(a, rows * cols);
    if (bad >= 0)
        return moei_fail(ctx, MOE_ERR_NUMERIC, "%s: '%s'[%lld, %lld] = %g is not finite", fn, name,
                         (long long)(bad / cols), (long long)(bad % cols), (double)a[bad]);
    return MOE_OK;
}

/* ---- score functions (one row) ---------------------------------------------------------------- */

static void softmax_row(const float *l, float *p, int32_t e)
{
    float m = l[0];
    for (int32_t i = 1; i < e; i++) m = l[i] > m ? l[i] : m;
    double s = 0.0;
    for (int32_t i = 0; i < e; i++) {
        p[i] = expf(l[i] - m);
        s += p[i];
    }
    float inv = (float)(1.0 / s);
    for (int32_t i = 0; i < e; i++) p[i] *= inv;
}

static float sigmoidf_stable(float x)
{
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float z = expf(x);
    return z / (1.0f + z);
}

static void scores_row(int32_t score_fn, const float *l, float *p, int32_t e)
{
    if (score_fn == MOEI_SCORE_SOFTMAX) {
        softmax_row(l, p, e);
    } else {
        for (int32_t i = 0; i < e; i++) p[i] = sigmoidf_stable(l[i]);
    }
}

/* d_l (+)= J^T g for one row, where J is the score function's Jacobian at p. softmax:
 * d_l = p .* (g - <g, p>); sigmoid: d_l = g .* p .* (1 - p). `add` selects += over =. */
static void score_backward_row(int32_t score_fn, const float *p, const float *g, float *dl, int32_t e, int add)
{
    if (score_fn == MOEI_SCORE_SOFTMAX) {
        double dot = 0.0;
        for (int32_t i = 0; i < e; i++) dot += (double)g[i] * p[i];
        float fdot = (float)dot;
        for (int32_t i = 0; i < e; i++) {
            float v = p[i] * (g[i] - fdot);
            dl[i] = add ? dl[i] + v : v;
        }
    } else {
        for (int32_t i = 0; i < e; i++) {
            float v = g[i] * p[i] * (1.0f - p[i]);
            dl[i] = add ? dl[i] + v : v;
        }
    }
}

/* ---- token choice ----------------------------------------------------------------------------- */

moe_status moei_router_topk_forward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                    int32_t score_fn, int32_t renorm, float scale, const float *logits,
                                    const float *bias, float *probs, int32_t *topk_idx, float *topk_w)
{
    static const char fn[] = "moei_router_topk_forward";
    moe_status st = check_topk_sizes(ctx, fn, n_tokens, n_experts, top_k);
    if (st == MOE_OK) st = check_score_fn(ctx, fn, score_fn);
    if (st != MOE_OK) return st;
    int has = n_tokens > 0;
    CHECK_PTR(ctx, fn, logits, has);
    CHECK_PTR(ctx, fn, probs, has);
    CHECK_PTR(ctx, fn, topk_idx, has);
    CHECK_PTR(ctx, fn, topk_w, has);
    if (!isfinite(scale))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'scale' = %g is not finite", fn, (double)scale);
    if (bias) {
        st = check_finite(ctx, fn, "bias", bias, 1, n_experts);
        if (st != MOE_OK) return st;
    }
    if (!has) return MOE_OK;
    st = check_finite(ctx, fn, "logits", logits, n_tokens, n_experts);
    if (st != MOE_OK) return st;

    const int64_t E = n_experts, K = top_k;
#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int64_t n = 0; n < n_tokens; n++) {
        const float *l = logits + n * E;
        float *p = probs + n * E;
        int32_t *idx = topk_idx + n * K;
        float *key = topk_w + n * K; /* holds the selection keys until the weights replace them */
        scores_row(score_fn, l, p, n_experts);
        /* Insertion into a list sorted by descending key: an equal key never moves ahead of an
         * earlier (lower-index) expert, and a new one enters a full list only when strictly greater. */
        int64_t cnt = 0;
        for (int32_t e = 0; e < n_experts; e++) {
            float kv = bias ? p[e] + bias[e] : p[e];
            int64_t pos;
            if (cnt < K) {
                pos = cnt++;
            } else if (kv > key[K - 1]) {
                pos = K - 1;
            } else {
                continue;
            }
            while (pos > 0 && kv > key[pos - 1]) {
                key[pos] = key[pos - 1];
                idx[pos] = idx[pos - 1];
                pos--;
            }
            key[pos] = kv;
            idx[pos] = e;
        }
        double sum = 0.0;
        for (int64_t j = 0; j < K; j++) {
            topk_w[n * K + j] = p[idx[j]];
            sum += p[idx[j]];
        }
        float mul = renorm ? (float)(scale / (sum + (double)MOEI_ROUTER_RENORM_EPS)) : scale;
        for (int64_t j = 0; j < K; j++) topk_w[n * K + j] *= mul;
    }
    return MOE_OK;
}

static moe_status check_topk_idx(moe_ctx *ctx, const char *fn, const int32_t *topk_idx, int64_t count,
                                 int32_t n_experts)
{
    for (int64_t i = 0; i < count; i++)
        if (topk_idx[i] < 0 || topk_idx[i] >= n_experts)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: 'topk_idx'[%lld] = %d is not an expert in [0, %d)", fn,
                             (long long)i, (int)topk_idx[i], (int)n_experts);
    return MOE_OK;
}

moe_status moei_router_topk_backward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                     int32_t score_fn, int32_t renorm, float scale, const float *probs,
                                     const int32_t *topk_idx, const float *d_topk_w, const float *d_probs,
                                     float *d_logits)
{
    static const char fn[] = "moei_router_topk_backward";
    moe_status st = check_topk_sizes(ctx, fn, n_tokens, n_experts, top_k);
    if (st == MOE_OK) st = check_score_fn(ctx, fn, score_fn);
    if (st != MOE_OK) return st;
    int has = n_tokens > 0;
    CHECK_PTR(ctx, fn, probs, has);
    CHECK_PTR(ctx, fn, topk_idx, has);
    CHECK_PTR(ctx, fn, d_topk_w, has);
    CHECK_PTR(ctx, fn, d_logits, has);
    if (!has) return MOE_OK;
    const int64_t E = n_experts, K = top_k;
    st = check_topk_idx(ctx, fn, topk_idx, n_tokens * K, n_experts);
    if (st != MOE_OK) return st;

#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int64_t n = 0; n < n_tokens; n++) {
        const float *p = probs + n * E;
        const int32_t *idx = topk_idx + n * K;
        const float *dw = d_topk_w + n * K;
        float *dl = d_logits + n * E;
        /* Gradient w.r.t. the selected probs. With w_j = s p_j / T, T = sum_sel p + eps:
         * dL/dp_i = (s / T) (dw_i - sum_j dw_j p_j / T). Stored temporarily in dl (zeroed first). */
        double sum = 0.0, wdot = 0.0;
        for (int64_t j = 0; j < K; j++) {
            sum += p[idx[j]];
            wdot += (double)dw[j] * p[idx[j]];
        }
        double t = sum + (double)MOEI_ROUTER_RENORM_EPS;
        for (int32_t e = 0; e < n_experts; e++) dl[e] = d_probs ? d_probs[n * E + e] : 0.0f;
        for (int64_t j = 0; j < K; j++) {
            double g = renorm ? scale / t * (dw[j] - wdot / t) : (double)scale * dw[j];
            dl[idx[j]] += (float)g;
        }
        /* dl holds g = dL/dp; turn it into dL/dl in place (score_backward_row reads g[i] before
         * writing dl[i], and the softmax dot is taken before any write). */
        score_backward_row(score_fn, p, dl, dl, n_experts, 0);
    }
    return MOE_OK;
}

moe_status moei_router_count_experts(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                     const int32_t *topk_idx, int32_t *counts)
{
    static const char fn[] = "moei_router_count_experts";
    moe_status st = check_topk_sizes(ctx, fn, n_tokens, n_experts, top_k);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, topk_idx, n_tokens > 0);
    CHECK_PTR(ctx, fn, counts, 1);
    st = check_topk_idx(ctx, fn, topk_idx, n_tokens * top_k, n_experts);
    if (st != MOE_OK) return st;
    memset(counts, 0, sizeof(int32_t) * (size_t)n_experts);
    for (int64_t i = 0; i < n_tokens * top_k; i++) counts[topk_idx[i]]++;
    return MOE_OK;
}

int64_t moei_router_capacity(int64_t n_tokens, int32_t n_experts, int32_t top_k, double factor)
{
    if (!(factor > 0.0) || n_tokens < 0 || n_experts < 1 || top_k < 0) return 0;
    double c = ceil(factor * (double)n_tokens * (double)top_k / (double)n_experts);
    if (c < 1.0) c = 1.0;
    if (c > (double)INT32_MAX) c = (double)INT32_MAX;
    return (int64_t)c;
}

/* ---- losses ------------------------------------------------------------------------------------ */

moe_status moei_router_aux_loss(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                int32_t score_fn, float coef, const float *probs, const int32_t *counts,
                                float *loss, float *d_logits)
{
    static const char fn[] = "moei_router_aux_loss";
    moe_status st = check_topk_sizes(ctx, fn, n_tokens, n_experts, top_k);
    if (st == MOE_OK) st = check_score_fn(ctx, fn, score_fn);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, loss, 1);
    CHECK_PTR(ctx, fn, counts, 1);
    CHECK_PTR(ctx, fn, probs, n_tokens > 0);
    if (n_tokens == 0) {
        *loss = 0.0f;
        return MOE_OK;
    }
    const int64_t E = n_experts;
    /* dL/dP[n, e] = c * counts[e] for every token: the loss is linear in P. */
    const double c = (double)coef * (double)E / ((double)n_tokens * (double)n_tokens * (double)top_k);
    const int normalise = score_fn == MOEI_SCORE_SIGMOID && top_k > 1;
    double part[ROUTER_RED_CHUNKS];
#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int ch = 0; ch < ROUTER_RED_CHUNKS; ch++) {
        int64_t lo = n_tokens * ch / ROUTER_RED_CHUNKS, hi = n_tokens * (ch + 1) / ROUTER_RED_CHUNKS;
        double acc = 0.0;
        for (int64_t n = lo; n < hi; n++) {
            const float *p = probs + n * E;
            double rs = 1.0, pc = 0.0;
            if (normalise) {
                rs = 1e-20;
                for (int32_t e = 0; e < n_experts; e++) rs += p[e];
            }
            for (int32_t e = 0; e < n_experts; e++) pc += (double)p[e] * counts[e];
            acc += pc / rs; /* sum_e P[n, e] counts[e] */
            if (!d_logits) continue;
            float *dl = d_logits + n * E;
            if (score_fn == MOEI_SCORE_SOFTMAX) {
                /* p .* (g - <g, p>) with g_e = c counts[e] */
                for (int32_t e = 0; e < n_experts; e++) dl[e] += (float)(c * p[e] * (counts[e] - pc));
            } else if (normalise) {
                /* q = s / S: dL/ds_i = (g_i - <g, q>) / S, then times s (1 - s) */
                double gq = c * pc / rs;
                for (int32_t e = 0; e < n_experts; e++)
                    dl[e] += (float)((c * counts[e] - gq) / rs * p[e] * (1.0 - p[e]));
            } else {
                for (int32_t e = 0; e < n_experts; e++) dl[e] += (float)(c * counts[e] * p[e] * (1.0 - p[e]));
            }
        }
        part[ch] = acc;
    }
    double total = 0.0;
    for (int ch = 0; ch < ROUTER_RED_CHUNKS; ch++) total += part[ch];
    *loss = (float)(c * total);
    return MOE_OK;
}

moe_status moei_router_z_loss(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, float coef,
                              const float *logits, float *loss, float *d_logits)
{
    static const char fn[] = "moei_router_z_loss";
    moe_status st = check_sizes(ctx, fn, n_tokens, n_experts);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, loss, 1);
    CHECK_PTR(ctx, fn, logits, n_tokens > 0);
    if (n_tokens == 0) {
        *loss = 0.0f;
        return MOE_OK;
    }
    st = check_finite(ctx, fn, "logits", logits, n_tokens, n_experts);
    if (st != MOE_OK) return st;
    const int64_t E = n_experts;
    const double gscale = 2.0 * (double)coef / (double)n_tokens;
    double part[ROUTER_RED_CHUNKS];
#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int ch = 0; ch < ROUTER_RED_CHUNKS; ch++) {
        int64_t lo = n_tokens * ch / ROUTER_RED_CHUNKS, hi = n_tokens * (ch + 1) / ROUTER_RED_CHUNKS;
        double acc = 0.0;
        for (int64_t n = lo; n < hi; n++) {
            const float *l = logits + n * E;
            float m = l[0];
            for (int32_t e = 1; e < n_experts; e++) m = l[e] > m ? l[e] : m;
            double s = 0.0;
            for (int32_t e = 0; e < n_experts; e++) s += exp((double)l[e] - m);
            double lse = m + log(s);
            acc += lse * lse;
            if (!d_logits) continue;
            /* d/dl (lse^2) = 2 lse softmax(l) */
            float *dl = d_logits + n * E;
            double g = gscale * lse / s;
            for (int32_t e = 0; e < n_experts; e++) dl[e] += (float)(g * exp((double)l[e] - m));
        }
        part[ch] = acc;
    }
    double total = 0.0;
    for (int ch = 0; ch < ROUTER_RED_CHUNKS; ch++) total += part[ch];
    *loss = (float)((double)coef * total / (double)n_tokens);
    return MOE_OK;
}

moe_status moei_router_balance_stats(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t top_k,
                                     const float *probs, const int32_t *topk_idx, float *tokens_fraction,
                                     float *prob_mean)
{
    static const char fn[] = "moei_router_balance_stats";
    moe_status st = check_topk_sizes(ctx, fn, n_tokens, n_experts, top_k);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, probs, n_tokens > 0);
    CHECK_PTR(ctx, fn, topk_idx, n_tokens > 0);
    CHECK_PTR(ctx, fn, tokens_fraction, 1);
    CHECK_PTR(ctx, fn, prob_mean, 1);
    const int64_t E = n_experts, K = top_k;
    st = check_topk_idx(ctx, fn, topk_idx, n_tokens * K, n_experts);
    if (st != MOE_OK) return st;
    /* Threads own blocks of 16 experts (one cache line of a probs row) and walk all tokens in order. */
    const int32_t nblk = (n_experts + 15) / 16;
#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int32_t b = 0; b < nblk; b++) {
        int32_t e0 = b * 16, e1 = e0 + 16 < n_experts ? e0 + 16 : n_experts;
        double ps[16] = {0};
        int64_t cnt[16] = {0};
        for (int64_t n = 0; n < n_tokens; n++) {
            for (int32_t e = e0; e < e1; e++) ps[e - e0] += probs[n * E + e];
            for (int64_t j = 0; j < K; j++) {
                int32_t x = topk_idx[n * K + j];
                if (x >= e0 && x < e1) cnt[x - e0]++;
            }
        }
        for (int32_t e = e0; e < e1; e++) {
            tokens_fraction[e] = n_tokens ? (float)((double)cnt[e - e0] / (double)n_tokens) : 0.0f;
            prob_mean[e] = n_tokens ? (float)(ps[e - e0] / (double)n_tokens) : 0.0f;
        }
    }
    return MOE_OK;
}

moe_status moei_router_prob_mean_backward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int32_t score_fn,
                                          const float *probs, const float *d_prob_mean, float *d_logits)
{
    static const char fn[] = "moei_router_prob_mean_backward";
    moe_status st = check_sizes(ctx, fn, n_tokens, n_experts);
    if (st == MOE_OK) st = check_score_fn(ctx, fn, score_fn);
    if (st != MOE_OK) return st;
    int has = n_tokens > 0;
    CHECK_PTR(ctx, fn, probs, has);
    CHECK_PTR(ctx, fn, d_prob_mean, 1);
    CHECK_PTR(ctx, fn, d_logits, has);
    const int64_t E = n_experts;
    const float inv_n = has ? (float)(1.0 / (double)n_tokens) : 0.0f;
#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int64_t n = 0; n < n_tokens; n++) {
        const float *p = probs + n * E;
        float *dl = d_logits + n * E;
        if (score_fn == MOEI_SCORE_SOFTMAX) {
            double dot = 0.0;
            for (int32_t e = 0; e < n_experts; e++) dot += (double)d_prob_mean[e] * p[e];
            for (int32_t e = 0; e < n_experts; e++) dl[e] += inv_n * p[e] * (d_prob_mean[e] - (float)dot);
        } else {
            for (int32_t e = 0; e < n_experts; e++) dl[e] += inv_n * d_prob_mean[e] * p[e] * (1.0f - p[e]);
        }
    }
    return MOE_OK;
}

moe_status moei_router_bias_update(moe_ctx *ctx, int32_t n_experts, const int64_t *counts, float rate, float *bias)
{
    static const char fn[] = "moei_router_bias_update";
    if (n_experts < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_experts' = %d must be >= 1", fn, (int)n_experts);
    CHECK_PTR(ctx, fn, counts, 1);
    CHECK_PTR(ctx, fn, bias, 1);
    if (!isfinite(rate))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'rate' = %g is not finite", fn, (double)rate);
    /* Compare E * counts[e] with the total in integers: the sign is exact. */
    int64_t total = 0;
    for (int32_t e = 0; e < n_experts; e++) {
        if (counts[e] < 0)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: 'counts'[%d] = %lld is negative", fn, (int)e,
                             (long long)counts[e]);
        total += counts[e];
    }
    for (int32_t e = 0; e < n_experts; e++) {
        int64_t scaled = counts[e] * (int64_t)n_experts;
        if (scaled < total) bias[e] += rate;
        else if (scaled > total) bias[e] -= rate;
    }
    return MOE_OK;
}

/* ---- expert choice ----------------------------------------------------------------------------- */

/* Strict total order of the tokens in one expert's column: higher score first, then lower index. */
static inline int ec_before(const float *col, int64_t stride, int32_t a, int32_t b)
{
    float pa = col[(int64_t)a * stride], pb = col[(int64_t)b * stride];
    return pa > pb || (pa == pb && a < b);
}

static void ec_swap(int32_t *v, int64_t i, int64_t j)
{
    int32_t t = v[i];
    v[i] = v[j];
    v[j] = t;
}

/* Sift a[root] down a heap of m elements kept with the latest-ordered element on top. */
static void ec_sift(const float *col, int64_t stride, int32_t *a, int64_t root, int64_t m)
{
    for (;;) {
        int64_t child = 2 * root + 1;
        if (child >= m) return;
        if (child + 1 < m && ec_before(col, stride, a[child], a[child + 1])) child++;
        if (!ec_before(col, stride, a[root], a[child])) return;
        ec_swap(a, root, child);
        root = child;
    }
}

/* Heap sort of v[lo..hi] into ec_before order (fallback of the selection below). */
static void ec_heapsort(const float *col, int64_t stride, int32_t *v, int64_t lo, int64_t hi)
{
    int32_t *a = v + lo;
    int64_t m = hi - lo + 1;
    for (int64_t r = m / 2 - 1; r >= 0; r--) ec_sift(col, stride, a, r, m);
    for (int64_t end = m - 1; end > 0; end--) {
        ec_swap(a, 0, end);
        ec_sift(col, stride, a, 0, end);
    }
}

/* Place into v[target] the element of rank `target` in ec_before order (introselect: quickselect
 * with median-of-three pivots, heap sort once the partition budget runs out). */
static void ec_select(const float *col, int64_t stride, int32_t *v, int64_t count, int64_t target)
{
    int64_t lo = 0, hi = count - 1;
    int budget = 8;
    for (int64_t c = count; c > 1; c >>= 1) budget += 2;
    while (hi > lo) {
        if (budget-- == 0) {
            ec_heapsort(col, stride, v, lo, hi);
            return;
        }
        int64_t mid = lo + (hi - lo) / 2;
        if (ec_before(col, stride, v[mid], v[lo])) ec_swap(v, mid, lo);
        if (ec_before(col, stride, v[hi], v[lo])) ec_swap(v, hi, lo);
        if (ec_before(col, stride, v[hi], v[mid])) ec_swap(v, hi, mid);
        ec_swap(v, mid, hi); /* median to the end as pivot */
        int32_t pivot = v[hi];
        int64_t store = lo;
        for (int64_t i = lo; i < hi; i++)
            if (ec_before(col, stride, v[i], pivot)) ec_swap(v, i, store++);
        ec_swap(v, store, hi);
        if (store == target) return;
        if (target < store) hi = store - 1;
        else lo = store + 1;
    }
}

size_t moei_router_expert_choice_workspace_size(int64_t n_tokens, int32_t n_experts)
{
    if (n_tokens <= 0 || n_experts <= 0) return 0;
    return sizeof(int32_t) * (size_t)n_tokens * (size_t)n_experts;
}

static moe_status check_ec_args(moe_ctx *ctx, const char *fn, int64_t n_tokens, int32_t n_experts, int64_t capacity)
{
    moe_status st = check_sizes(ctx, fn, n_tokens, n_experts);
    if (st != MOE_OK) return st;
    if (capacity < 1 || capacity > n_tokens)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'capacity' = %lld must be in [1, n_tokens = %lld]",
                         fn, (long long)capacity, (long long)n_tokens);
    return MOE_OK;
}

moe_status moei_router_expert_choice_forward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int64_t capacity,
                                             const float *logits, float *probs, int32_t *ec_idx, float *ec_w,
                                             void *workspace, size_t workspace_bytes)
{
    static const char fn[] = "moei_router_expert_choice_forward";
    moe_status st = check_ec_args(ctx, fn, n_tokens, n_experts, capacity);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, logits, 1);
    CHECK_PTR(ctx, fn, probs, 1);
    CHECK_PTR(ctx, fn, ec_idx, 1);
    CHECK_PTR(ctx, fn, ec_w, 1);
    CHECK_PTR(ctx, fn, workspace, 1);
    size_t need = moei_router_expert_choice_workspace_size(n_tokens, n_experts);
    if (workspace_bytes < need)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'workspace_bytes' = %zu is below the %zu needed", fn,
                         workspace_bytes, need);
    st = check_finite(ctx, fn, "logits", logits, n_tokens, n_experts);
    if (st != MOE_OK) return st;
    const int64_t E = n_experts, C = capacity;
#pragma omp parallel for schedule(static) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int64_t n = 0; n < n_tokens; n++) softmax_row(logits + n * E, probs + n * E, n_experts);

    int32_t *ws = (int32_t *)workspace;
#pragma omp parallel for schedule(dynamic, 1) if (n_tokens * E >= ROUTER_PAR_MIN)
    for (int32_t e = 0; e < n_experts; e++) {
        int32_t *v = ws + (int64_t)e * n_tokens;
        const float *col = probs + e;
        for (int64_t n = 0; n < n_tokens; n++) v[n] = (int32_t)n;
        ec_select(col, E, v, n_tokens, C - 1);
        /* The C-th token in order is v[C-1]; exactly C tokens sit at or before it. A scan in token
         * order lists them ascending, which is the order the dispatch plan keeps within an expert. */
        int32_t t = v[C - 1];
        int64_t c = 0;
        for (int64_t n = 0; n < n_tokens && c < C; n++) {
            if (n == t || ec_before(col, E, (int32_t)n, t)) {
                ec_idx[e * C + c] = (int32_t)n;
                ec_w[e * C + c] = col[n * E];
                c++;
            }
        }
    }
    return MOE_OK;
}

moe_status moei_router_expert_choice_backward(moe_ctx *ctx, int64_t n_tokens, int32_t n_experts, int64_t capacity,
                                              const float *probs, const int32_t *ec_idx, const float *d_ec_w,
                                              const float *d_probs, float *d_logits)
{
    static const char fn[] = "moei_router_expert_choice_backward";
    moe_status st = check_ec_args(ctx, fn, n_tokens, n_experts, capacity);
    if (st != MOE_OK) return st;
    CHECK_PTR(ctx, fn, probs, 1);
    CHECK_PTR(ctx, fn, ec_idx, 1);
    CHECK_PTR(ctx, fn, d_ec_w, 1);
    CHECK_PTR(ctx, fn, d_logits, 1);
    const int64_t E = n_experts, C = capacity;
    /* Each expert's tokens must be distinct (strictly ascending, as the forward writes them): then
     * every (token, expert) element of d_logits receives at most one scatter below. */
    for (int64_t e = 0; e < E; e++)
        for (int64_t c = 0; c < C; c++) {
            int32_t t = ec_idx[e * C + c];
            if (t < 0 || t >= n_tokens || (c > 0 && t <= ec_idx[e * C + c - 1]))
                return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                                 "%s: 'ec_idx'[%lld, %lld] = %d: tokens must ascend within [0, %lld)", fn,
                                 (long long)e, (long long)c, (int)t, (long long)n_tokens);
        }
    const int par = n_tokens * E >= ROUTER_PAR_MIN;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t n = 0; n < n_tokens; n++)
        for (int64_t e = 0; e < E; e++) d_logits[n * E + e] = d_probs ? d_probs[n * E + e] : 0.0f;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t e = 0; e < E; e++)
        for (int64_t c = 0; c < C; c++) d_logits[(int64_t)ec_idx[e * C + c] * E + e] += d_ec_w[e * C + c];
#pragma omp parallel for schedule(static) if (par)
    for (int64_t n = 0; n < n_tokens; n++)
        score_backward_row(MOEI_SCORE_SOFTMAX, probs + n * E, d_logits + n * E, d_logits + n * E, n_experts, 0);
    return MOE_OK;
}
