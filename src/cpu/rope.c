/* RoPE tables and rotation, and ALiBi slopes, on the CPU. The table follows HF's fp32 recipe step by
 * step so a model imported from HF sees the same angles; the rotation threads over tokens (each
 * token's heads are independent), and positions are validated before anything is written. */
#include <math.h>
#include <omp.h>

#include "core/error.h"
#include "cpu/rope.h"

#define MOEI_ROPE_PAR_MIN 16384

moe_status moei_rope_table(moe_ctx *ctx, int64_t max_seq, int64_t head_dim, float theta, float *cos_tab,
                           float *sin_tab)
{
    const char *fn = "moei_rope_table";
    if (max_seq < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'max_seq' must be >= 1 (got %lld)", fn,
                         (long long)max_seq);
    if (head_dim < 2 || head_dim % 2 != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'head_dim' must be even and >= 2 (got %lld)", fn,
                         (long long)head_dim);
    if (max_seq > INT32_MAX || head_dim > INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'max_seq' or 'head_dim' exceeds the int32 range", fn);
    if (!(theta > 1.0f) || isinf(theta))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'theta' must be finite and > 1 (got %g)", fn,
                         (double)theta);
    if (!cos_tab) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'cos_tab' is NULL", fn);
    if (!sin_tab) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'sin_tab' is NULL", fn);

    int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (max_seq * half >= MOEI_ROPE_PAR_MIN)
    for (int64_t p = 0; p < max_seq; p++) {
        for (int64_t i = 0; i < half; i++) {
            /* HF: inv_freq = 1.0 / (theta ** (arange(0, D, 2).float() / D)), every step in fp32; the
             * fp32 pow is taken as the double pow rounded once to fp32 (correctly rounded). */
            float e = (float)(2 * i) / (float)head_dim;
            float pw = (float)pow((double)theta, (double)e);
            float inv_freq = 1.0f / pw;
            float angle = (float)p * inv_freq; /* HF: inv_freq @ position_ids in fp32 */
            cos_tab[p * half + i] = (float)cos((double)angle);
            sin_tab[p * half + i] = (float)sin((double)angle);
        }
    }
    return MOE_OK;
}

/* The forward rotates by +angle, the backward by -angle (sign = -1): R(-a) = R(a)^T. */
static moe_status rope_apply(moe_ctx *ctx, const char *fn, int64_t tokens, int64_t heads, int64_t kv_heads,
                             int64_t head_dim, const int32_t *pos, int64_t max_seq, const float *cos_tab,
                             const float *sin_tab, float *q, float *k, float sign)
{
    if (tokens < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'tokens' is negative (%lld)", fn, (long long)tokens);
    if (heads < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'heads' is negative (%lld)", fn, (long long)heads);
    if (kv_heads < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'kv_heads' is negative (%lld)", fn,
                         (long long)kv_heads);
    if (head_dim < 2 || head_dim % 2 != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'head_dim' must be even and >= 2 (got %lld)", fn,
                         (long long)head_dim);
    if (max_seq < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'max_seq' must be >= 1 (got %lld)", fn,
                         (long long)max_seq);
    if (tokens == 0 || heads + kv_heads == 0) return MOE_OK;
    if (!pos) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'pos' is NULL", fn);
    if (!cos_tab) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'cos_tab' is NULL", fn);
    if (!sin_tab) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'sin_tab' is NULL", fn);
    if (heads > 0 && !q)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", fn, sign > 0 ? "q" : "dq");
    if (kv_heads > 0 && !k)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", fn, sign > 0 ? "k" : "dk");
    for (int64_t t = 0; t < tokens; t++)
        if (pos[t] < 0 || pos[t] >= max_seq)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'pos' [%lld] = %d is outside [0, max_seq = %lld)",
                             fn, (long long)t, (int)pos[t], (long long)max_seq);

    int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (tokens * (heads + kv_heads) * head_dim >= MOEI_ROPE_PAR_MIN)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos_tab + (int64_t)pos[t] * half;
        const float *s = sin_tab + (int64_t)pos[t] * half;
        for (int64_t which = 0; which < 2; which++) {
            int64_t nh = which == 0 ? heads : kv_heads;
            float *base = which == 0 ? q : k;
            for (int64_t h = 0; h < nh; h++) {
                float *x1 = base + (t * nh + h) * head_dim, *x2 = x1 + half;
                for (int64_t i = 0; i < half; i++) {
                    float a = x1[i], b = x2[i], si = sign * s[i];
                    x1[i] = a * c[i] - b * si;
                    x2[i] = b * c[i] + a * si;
                }
            }
        }
    }
    return MOE_OK;
}

moe_status moei_rope_fwd(moe_ctx *ctx, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                         const int32_t *pos, int64_t max_seq, const float *cos_tab, const float *sin_tab, float *q,
                         float *k)
{
    return rope_apply(ctx, "moei_rope_fwd", tokens, heads, kv_heads, head_dim, pos, max_seq, cos_tab, sin_tab, q, k,
                      1.0f);
}

moe_status moei_rope_bwd(moe_ctx *ctx, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                         const int32_t *pos, int64_t max_seq, const float *cos_tab, const float *sin_tab, float *dq,
                         float *dk)
{
    return rope_apply(ctx, "moei_rope_bwd", tokens, heads, kv_heads, head_dim, pos, max_seq, cos_tab, sin_tab, dq,
                      dk, -1.0f);
}

moe_status moei_alibi_slopes(moe_ctx *ctx, int64_t heads, float *slopes)
{
    const char *fn = "moei_alibi_slopes";
    if (heads < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'heads' must be >= 1 (got %lld)", fn,
                         (long long)heads);
    if (!slopes) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'slopes' is NULL", fn);
    int64_t c = 1; /* the closest power of two not above heads */
    while (c * 2 <= heads) c *= 2;
    for (int64_t h = 0; h < c; h++) slopes[h] = (float)exp2(-8.0 * (double)(h + 1) / (double)c);
    /* The rest interleave between those: the odd-numbered slopes of 2c heads. */
    for (int64_t j = 0; j < heads - c; j++) slopes[c + j] = (float)exp2(-8.0 * (double)(2 * j + 1) / (double)(2 * c));
    return MOE_OK;
}
