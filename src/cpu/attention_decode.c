/* Decode attention on the CPU (see attention_decode.h). A work item (sequence, kv head, query)
 * holds the scores of its group's query heads in one per-thread slot [rep, keys]; the operation
 * order inside an item is fixed, so the result does not depend on which thread ran it. Dot products
 * are SIMD reductions (a fixed, compile-time order); softmax and the value sum are plain loops. */
#include "cpu/attention_decode.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "core/error.h"

#define WS_ALIGN 64
/* Below this many multiply-adds a call stays on the calling thread: a parallel region costs more. */
#define DECODE_PAR_MIN 32768

static size_t round_floats(size_t n) { return (n + 15) / 16 * 16; }

static moe_status check_shape(moe_ctx *ctx, const char *fn, int64_t heads, int64_t kv_heads, int64_t keys)
{
    if (heads < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'heads' must be >= 1 (got %lld)", fn,
                         (long long)heads);
    if (kv_heads < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'kv_heads' must be >= 1 (got %lld)", fn,
                         (long long)kv_heads);
    if (heads % kv_heads != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'heads' (%lld) is not a multiple of 'kv_heads' (%lld)",
                         fn, (long long)heads, (long long)kv_heads);
    if (keys < 0 || keys > INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: the key count (%lld) is outside [0, 2^31)", fn,
                         (long long)keys);
    return MOE_OK;
}

moe_status moei_attention_decode_workspace_size(moe_ctx *ctx, int64_t heads, int64_t kv_heads, int64_t keys,
                                                int32_t threads, size_t *bytes)
{
    const char *fn = "moei_attention_decode_workspace_size";
    moe_status st = check_shape(ctx, fn, heads, kv_heads, keys);
    if (st != MOE_OK) return st;
    if (!bytes) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'bytes' is NULL", fn);
    int64_t nthr = threads > 0 ? threads : omp_get_max_threads();
    size_t slot = round_floats((size_t)(heads / kv_heads) * (size_t)(keys > 0 ? keys : 1));
    *bytes = WS_ALIGN + (size_t)nthr * slot * sizeof(float);
    return MOE_OK;
}

typedef struct dec_args {
    int64_t n_new, past, H, Hkv, D, rep, rows;
    float scale;
    const float *alibi, *q, *k, *v;
    float *out;
} dec_args;

static inline float dot(const float *a, const float *b, int64_t n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Every query head of group g for query r of sequence b. S holds [rep, L] scores, then weights. */
static void item(const dec_args *a, int64_t b, int64_t g, int64_t r, float *S)
{
    const int64_t D = a->D, rep = a->rep, pos = a->past + r, L = pos + 1, ldk = a->Hkv * D;
    const float *kb = a->k + (b * a->rows * a->Hkv + g) * D, *vb = a->v + (b * a->rows * a->Hkv + g) * D;
    const int64_t qrow = (b * a->n_new + r) * a->H + g * rep; /* first head of the group */
    const float *qg = a->q + qrow * D;
    float *og = a->out + qrow * D;

    for (int64_t j = 0; j < L; j++) {
        const float *krow = kb + j * ldk;
        for (int64_t t = 0; t < rep; t++) S[t * L + j] = a->scale * dot(qg + t * D, krow, D);
    }
    for (int64_t t = 0; t < rep; t++) {
        float *row = S + t * L;
        const float slope = a->alibi ? a->alibi[g * rep + t] : 0.0f;
        if (slope != 0.0f)
            for (int64_t j = 0; j < L; j++) row[j] -= slope * (float)(pos - j);
        float mx = row[0];
        for (int64_t j = 1; j < L; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
        for (int64_t j = 0; j < L; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        /* sum >= 1 (the maximum contributes exp(0)): fold the normalisation into the weights. */
        float inv = 1.0f / sum;
        for (int64_t j = 0; j < L; j++) row[j] *= inv;
        memset(og + t * D, 0, (size_t)D * sizeof(float));
    }
    for (int64_t j = 0; j < L; j++) {
        const float *vrow = vb + j * ldk;
        for (int64_t t = 0; t < rep; t++) {
            const float p = S[t * L + j];
            float *o = og + t * D;
#pragma omp simd
            for (int64_t d = 0; d < D; d++) o[d] += p * vrow[d];
        }
    }
}

moe_status moei_attention_decode(moe_ctx *ctx, int64_t batch, int64_t n_new, int64_t past, int64_t heads,
                                 int64_t kv_heads, int64_t head_dim, float scale, const float *alibi, const float *q,
                                 const float *k_cache, const float *v_cache, int64_t cache_rows, float *out, void *ws,
                                 size_t ws_bytes)
{
    const char *fn = "moei_attention_decode";
    if (batch < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'batch' is negative (%lld)", fn, (long long)batch);
    if (n_new < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'n_new' is negative (%lld)", fn, (long long)n_new);
    if (past < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'past' is negative (%lld)", fn, (long long)past);
    if (head_dim < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'head_dim' must be >= 1 (got %lld)", fn,
                         (long long)head_dim);
    if (past > INT32_MAX - n_new)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: arguments 'past' + 'n_new' exceed the int32 range", fn);
    const int64_t keys = past + n_new;
    moe_status st = check_shape(ctx, fn, heads, kv_heads, keys);
    if (st != MOE_OK) return st;
    if (cache_rows < keys)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'cache_rows' (%lld) is below past + n_new (%lld)", fn,
                         (long long)cache_rows, (long long)keys);
    if (!(scale >= 0.0f) || isinf(scale))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'scale' must be finite and >= 0 (got %g)", fn,
                         (double)scale);
    if (batch == 0 || n_new == 0) return MOE_OK;
    if (!q) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'q' is NULL", fn);
    if (!k_cache) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'k_cache' is NULL", fn);
    if (!v_cache) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'v_cache' is NULL", fn);
    if (!out) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'out' is NULL", fn);
    if (!ws) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is NULL", fn);
    if ((uintptr_t)ws % sizeof(float) != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is not float-aligned", fn);

    const int64_t rep = heads / kv_heads;
    const size_t slot = round_floats((size_t)rep * (size_t)keys);
    uintptr_t base = ((uintptr_t)ws + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
    size_t skip = (size_t)(base - (uintptr_t)ws);
    if (ws_bytes < skip || (ws_bytes - skip) / sizeof(float) < slot)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: argument 'ws_bytes' (%zu) is below the %zu bytes one thread needs", fn, ws_bytes,
                         skip + slot * sizeof(float));
    size_t nslots = (ws_bytes - skip) / sizeof(float) / slot;
    float *slots = (float *)base;

    dec_args a = {.n_new = n_new, .past = past, .H = heads, .Hkv = kv_heads, .D = head_dim, .rep = rep,
                  .rows = cache_rows, .scale = scale > 0.0f ? scale : (float)(1.0 / sqrt((double)head_dim)),
                  .alibi = alibi, .q = q, .k = k_cache, .v = v_cache, .out = out};
    const int64_t items = batch * kv_heads * n_new;
    int nthr = omp_get_max_threads();
    if ((size_t)nthr > nslots) nthr = (int)nslots;
    if (nthr > items) nthr = (int)items;
    if ((double)items * (double)keys * (double)(heads / kv_heads) * (double)head_dim < DECODE_PAR_MIN) nthr = 1;
    if (nthr < 1) nthr = 1;
#pragma omp parallel num_threads(nthr)
    {
        float *S = slots + (size_t)omp_get_thread_num() * slot;
        /* Late queries see the most keys: hand them out first. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int64_t r = n_new - 1 - it / (batch * kv_heads), bg = it % (batch * kv_heads);
            item(&a, bg / kv_heads, bg % kv_heads, r, S);
        }
    }
    return MOE_OK;
}
