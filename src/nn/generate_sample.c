/* The token sampler (see generate.h): temperature, then top-k, then top-p, then one draw with a
 * caller-given uniform number, so a run is a pure function of (logits, settings, seed, step).
 * Probabilities are computed in double relative to the largest logit; orderings break ties toward
 * the lower token id, so greedy, top_k = 1 and a tiny top_p pick the same token. */
#include <math.h>
#include <stdlib.h>

#include "core/error.h"
#include "core/rng.h"
#include "nn/generate.h"

typedef struct cand {
    double p; /* unnormalised probability exp((logit - max) / temperature) */
    int32_t id;
} cand;

size_t moei_sample_workspace_size(int32_t vocab)
{
    return (size_t)(vocab > 0 ? vocab : 1) * sizeof(cand) + sizeof(cand);
}

double moei_sample_uniform(uint64_t seed, uint64_t step)
{
    uint32_t w[4];
    moei_rng_block(seed, moei_name_hash("generate.sample"), step, w);
    /* 27 + 26 bits, as the usual 53-bit construction: exactly representable, in [0, 1). */
    return ((double)(w[0] >> 5) * 67108864.0 + (double)(w[1] >> 6)) * 0x1p-53;
}

/* Larger probability first; the lower id among equals. */
static int cand_cmp(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    if (a->p != b->p) return a->p > b->p ? -1 : 1;
    return (a->id > b->id) - (a->id < b->id);
}

moe_status moei_sample(moe_ctx *ctx, const float *logits, int32_t vocab, float temperature, int32_t top_k,
                       float top_p, double u, void *ws, size_t ws_bytes, int32_t *token)
{
    const char *fn = "moei_sample";
    if (!logits) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'logits' is NULL", fn);
    if (!token) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'token' is NULL", fn);
    if (vocab < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'vocab' must be >= 1 (got %d)", fn, (int)vocab);
    if (!(temperature >= 0.0f) || isinf(temperature))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'temperature' must be finite and >= 0 (got %g)", fn,
                         (double)temperature);
    if (top_k < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'top_k' is negative (%d)", fn, (int)top_k);
    if (!(top_p > 0.0f && top_p <= 1.0f))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'top_p' must be in (0, 1] (got %g)", fn,
                         (double)top_p);
    if (!(u >= 0.0 && u < 1.0))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'u' must be in [0, 1) (got %g)", fn, u);
    int32_t best = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (isnan(logits[i]) || logits[i] == INFINITY)
            return moei_fail(ctx, MOE_ERR_NUMERIC, "%s: logits[%d] = %g is not a number below +inf", fn, (int)i,
                             (double)logits[i]);
        if (logits[i] > logits[best]) best = i;
    }
    if (logits[best] == -INFINITY)
        return moei_fail(ctx, MOE_ERR_NUMERIC, "%s: every logit is -inf", fn);
    if (temperature == 0.0f || top_k == 1 || vocab == 1) {
        *token = best;
        return MOE_OK;
    }
    if (!ws) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is NULL", fn);
    if (ws_bytes < moei_sample_workspace_size(vocab))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws_bytes' (%zu) is below the %zu bytes needed", fn,
                         ws_bytes, moei_sample_workspace_size(vocab));
    cand *c = (cand *)(((uintptr_t)ws + sizeof(cand) - 1) / sizeof(cand) * sizeof(cand));
    const double mx = logits[best], inv_t = 1.0 / (double)temperature;
    for (int32_t i = 0; i < vocab; i++) {
        c[i].p = exp(((double)logits[i] - mx) * inv_t);
        c[i].id = i;
    }
    int32_t kept = vocab;
    const int filtered = (top_k > 0 && top_k < vocab) || top_p < 1.0f;
    if (filtered) {
        qsort(c, (size_t)vocab, sizeof *c, cand_cmp);
        if (top_k > 0 && top_k < vocab) kept = top_k;
    }
    double total = 0.0;
    for (int32_t i = 0; i < kept; i++) total += c[i].p;
    if (top_p < 1.0f) {
        /* The shortest prefix whose mass reaches top_p of the kept mass (at least one token). */
        const double target = (double)top_p * total;
        double cum = 0.0;
        int32_t m = 0;
        while (m < kept && (m == 0 || cum < target)) cum += c[m++].p;
        kept = m;
        total = cum;
    }
    const double target = u * total;
    double acc = 0.0;
    int32_t pick = -1;
    for (int32_t i = 0; i < kept; i++) {
        acc += c[i].p;
        if (c[i].p > 0.0) pick = c[i].id; /* the fallback when rounding puts target at the very top */
        if (target < acc) {
            pick = c[i].id;
            break;
        }
    }
    *token = pick >= 0 ? pick : best;
    return MOE_OK;
}
