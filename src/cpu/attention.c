/* Flash-style causal attention on the CPU. Work is cut into items that own their output rows: the
 * forward and the dq pass take (batch, head, query block), the dk/dv pass takes (batch, kv head, key
 * block) and loops over the query heads of its group in a fixed order. Each item runs on one thread
 * with single-threaded BLAS and a fixed operation order, so results do not depend on which thread
 * or how many threads ran it. Block products go to cblas_sgemm; masking and softmax are plain loops. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "cpu/attention.h"

#define BQ MOEI_ATTN_BLOCK_Q
#define BK MOEI_ATTN_BLOCK_K
/* Per-thread scratch: two score-sized blocks (S/P and dP or dS) and the running max and sum of the
 * online softmax; rounded to whole cache lines. */
#define SLOT_FLOATS ((2 * BQ * BK + 2 * BQ + 15) / 16 * 16)
#define WS_ALIGN 64

typedef struct attn_args {
    int64_t B, T, H, Hkv, D, rep; /* rep = H / Hkv query heads per kv head */
    float scale;
    const float *alibi;
    const float *q, *k, *v, *out, *lse, *dout, *delta;
    float *o, *lse_out, *dq, *dk, *dv;
} attn_args;

static size_t round_floats(size_t n) { return (n + 15) / 16 * 16; }

/* C = alpha * op(A) op(B) + beta * C on one thread. With beta == 0 C is cleared first, so scratch
 * that holds garbage (or NaN) never leaks through a BLAS that reads it. */
static void sgemm(int ta, int tb, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                  const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
    if (beta == 0.0f)
        for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k,
                alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/* Scores of a block already hold scale * q.k; add the ALiBi bias of query i and keys j0 + c. The
 * forward and both backward passes use this one function so they see the same values. */
static inline void add_alibi(float *row, int64_t nv, float slope, int64_t i, int64_t j0)
{
    if (slope == 0.0f) return;
    for (int64_t c = 0; c < nv; c++) row[c] -= slope * (float)(i - (j0 + c));
}

/* Keys j0 + c with c < valid(i, j0, nk) are visible to query i (j <= i). */
static inline int64_t valid(int64_t i, int64_t j0, int64_t nk)
{
    int64_t nv = i - j0 + 1;
    return nv < 0 ? 0 : (nv > nk ? nk : nv);
}

/* ---- forward --------------------------------------------------------------------------------- */

static void fwd_item(const attn_args *a, int64_t b, int64_t h, int64_t i0, int64_t i1, float *slot)
{
    const int64_t D = a->D, ldq = a->H * D, ldk = a->Hkv * D, g = h / a->rep, nq = i1 - i0;
    const float *qb = a->q + ((b * a->T + i0) * a->H + h) * D;
    const float *kb = a->k + (b * a->T * a->Hkv + g) * D;
    const float *vb = a->v + (b * a->T * a->Hkv + g) * D;
    float *ob = a->o + ((b * a->T + i0) * a->H + h) * D;
    float *S = slot, *m = slot + 2 * BQ * BK, *l = m + BQ;
    const float slope = a->alibi ? a->alibi[h] : 0.0f;

    for (int64_t r = 0; r < nq; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        memset(ob + r * ldq, 0, (size_t)D * sizeof(float));
    }
    /* Key blocks past the last query of the block are masked for every row: stop at i1. */
    for (int64_t j0 = 0; j0 < i1; j0 += BK) {
        int64_t nk = (i1 - j0 < BK ? i1 - j0 : BK);
        sgemm(0, 1, nq, nk, D, a->scale, qb, ldq, kb + j0 * ldk, ldk, 0.0f, S, BK);
        for (int64_t r = 0; r < nq; r++) {
            int64_t i = i0 + r, nv = valid(i, j0, nk);
            float *row = S + r * BK;
            if (nv == 0) { /* nothing visible: the row's state and output stay as they are */
                memset(row, 0, (size_t)nk * sizeof(float));
                continue;
            }
            add_alibi(row, nv, slope, i, j0);
            float mx = m[r];
            for (int64_t c = 0; c < nv; c++) mx = row[c] > mx ? row[c] : mx;
            float sum = 0.0f;
            for (int64_t c = 0; c < nv; c++) {
                row[c] = expf(row[c] - mx);
                sum += row[c];
            }
            for (int64_t c = nv; c < nk; c++) row[c] = 0.0f;
            if (mx != m[r]) { /* rescale what was accumulated under the old maximum */
                float corr = m[r] == -INFINITY ? 0.0f : expf(m[r] - mx);
                float *orow = ob + r * ldq;
                for (int64_t d = 0; d < D; d++) orow[d] *= corr;
                l[r] *= corr;
                m[r] = mx;
            }
            l[r] += sum;
        }
        sgemm(0, 0, nq, D, nk, 1.0f, S, BK, vb + j0 * ldk, ldk, 1.0f, ob, ldq);
    }
    for (int64_t r = 0; r < nq; r++) {
        /* l >= 1: the row maximum contributes exp(0). */
        float inv = 1.0f / l[r], *orow = ob + r * ldq;
        for (int64_t d = 0; d < D; d++) orow[d] *= inv;
        if (a->lse_out) a->lse_out[(b * a->H + h) * a->T + i0 + r] = m[r] + logf(l[r]);
    }
}

/* ---- backward -------------------------------------------------------------------------------- */

/* dq for one (batch, head, query block): dq_i = scale * sum_j P_ij (dP_ij - delta_i) k_j. */
static void dq_item(const attn_args *a, int64_t b, int64_t h, int64_t i0, int64_t i1, float *slot)
{
    const int64_t D = a->D, ldq = a->H * D, ldk = a->Hkv * D, g = h / a->rep, nq = i1 - i0;
    const int64_t qoff = ((b * a->T + i0) * a->H + h) * D, soff = (b * a->H + h) * a->T + i0;
    const float *qb = a->q + qoff, *dob = a->dout + qoff;
    const float *kb = a->k + (b * a->T * a->Hkv + g) * D;
    const float *vb = a->v + (b * a->T * a->Hkv + g) * D;
    float *dqb = a->dq + qoff;
    float *S = slot, *dP = slot + BQ * BK;
    const float slope = a->alibi ? a->alibi[h] : 0.0f;

    for (int64_t r = 0; r < nq; r++) memset(dqb + r * ldq, 0, (size_t)D * sizeof(float));
    for (int64_t j0 = 0; j0 < i1; j0 += BK) {
        int64_t nk = (i1 - j0 < BK ? i1 - j0 : BK);
        sgemm(0, 1, nq, nk, D, a->scale, qb, ldq, kb + j0 * ldk, ldk, 0.0f, S, BK);
        sgemm(0, 1, nq, nk, D, 1.0f, dob, ldq, vb + j0 * ldk, ldk, 0.0f, dP, BK);
        for (int64_t r = 0; r < nq; r++) {
            int64_t i = i0 + r, nv = valid(i, j0, nk);
            float *row = S + r * BK, *dprow = dP + r * BK;
            float lse = a->lse[soff + r], delta = a->delta[soff + r];
            add_alibi(row, nv, slope, i, j0);
            for (int64_t c = 0; c < nv; c++) row[c] = expf(row[c] - lse) * (dprow[c] - delta);
            for (int64_t c = nv; c < nk; c++) row[c] = 0.0f;
        }
        sgemm(0, 0, nq, D, nk, a->scale, S, BK, kb + j0 * ldk, ldk, 1.0f, dqb, ldq);
    }
}

/* dk, dv for one (batch, kv head, key block), summed over the group's query heads in order:
 * dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i P_ij (dP_ij - delta_i) q_i. */
static void dkv_item(const attn_args *a, int64_t b, int64_t g, int64_t j0, int64_t j1, float *slot)
{
    const int64_t D = a->D, ldq = a->H * D, ldk = a->Hkv * D, nk = j1 - j0, T = a->T;
    const int64_t koff = ((b * T + j0) * a->Hkv + g) * D;
    const float *kb = a->k + koff, *vb = a->v + koff;
    float *dkb = a->dk + koff, *dvb = a->dv + koff;
    float *S = slot, *dP = slot + BQ * BK;

    for (int64_t c = 0; c < nk; c++) {
        memset(dkb + c * ldk, 0, (size_t)D * sizeof(float));
        memset(dvb + c * ldk, 0, (size_t)D * sizeof(float));
    }
    for (int64_t h = g * a->rep; h < (g + 1) * a->rep; h++) {
        const float slope = a->alibi ? a->alibi[h] : 0.0f;
        /* Query blocks wholly before j0 see none of these keys. */
        for (int64_t i0 = j0 / BQ * BQ; i0 < T; i0 += BQ) {
            int64_t nq = (T - i0 < BQ ? T - i0 : BQ);
            const int64_t qoff = ((b * T + i0) * a->H + h) * D, soff = (b * a->H + h) * T + i0;
            const float *qb = a->q + qoff, *dob = a->dout + qoff;
            sgemm(0, 1, nq, nk, D, a->scale, qb, ldq, kb, ldk, 0.0f, S, BK);
            sgemm(0, 1, nq, nk, D, 1.0f, dob, ldq, vb, ldk, 0.0f, dP, BK);
            for (int64_t r = 0; r < nq; r++) {
                int64_t i = i0 + r, nv = valid(i, j0, nk);
                float *row = S + r * BK, *dprow = dP + r * BK;
                float lse = a->lse[soff + r], delta = a->delta[soff + r];
                add_alibi(row, nv, slope, i, j0);
                for (int64_t c = 0; c < nv; c++) {
                    float p = expf(row[c] - lse);
                    row[c] = p;
                    dprow[c] = p * (dprow[c] - delta);
                }
                for (int64_t c = nv; c < nk; c++) row[c] = dprow[c] = 0.0f;
            }
            sgemm(1, 0, nk, D, nq, 1.0f, S, BK, dob, ldq, 1.0f, dvb, ldk);
            sgemm(1, 0, nk, D, nq, a->scale, dP, BK, qb, ldq, 1.0f, dkb, ldk);
        }
    }
}

/* ---- argument checks and workspace ------------------------------------------------------------ */

static moe_status check_common(moe_ctx *ctx, const char *fn, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                               float scale)
{
    if (B < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'batch' is negative (%lld)", fn, (long long)B);
    if (T < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'seq' is negative (%lld)", fn, (long long)T);
    if (H < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'heads' must be >= 1 (got %lld)", fn, (long long)H);
    if (Hkv < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'kv_heads' must be >= 1 (got %lld)", fn,
                         (long long)Hkv);
    if (D < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'head_dim' must be >= 1 (got %lld)", fn,
                         (long long)D);
    if (H % Hkv != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'heads' (%lld) is not a multiple of 'kv_heads' (%lld)",
                         fn, (long long)H, (long long)Hkv);
    if (!(scale >= 0.0f) || isinf(scale))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'scale' must be finite and >= 0 (got %g)", fn,
                         (double)scale);
    /* BLAS takes int leading dimensions; every flat index must fit int64. */
    if (H > INT32_MAX / D || T > INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: arguments 'heads' x 'head_dim' or 'seq' exceed the int32 range",
                         fn);
    if (B > 0 && T > 0 && B > INT64_MAX / 4 / T / (H * D))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: arguments 'batch' x 'seq' x 'heads' x 'head_dim' overflow", fn);
    return MOE_OK;
}

moe_status moei_attention_workspace_size(moe_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int32_t threads,
                                         size_t *bytes)
{
    const char *fn = "moei_attention_workspace_size";
    if (batch < 0 || seq < 0 || heads < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: arguments 'batch' (%lld), 'seq' (%lld) must be >= 0 and 'heads' (%lld) >= 1", fn,
                         (long long)batch, (long long)seq, (long long)heads);
    if (!bytes) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'bytes' is NULL", fn);
    if (seq > 0 && batch > (int64_t)(SIZE_MAX / 8) / seq / heads)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: arguments 'batch' x 'seq' x 'heads' overflow", fn);
    int64_t nthr = threads > 0 ? threads : omp_get_max_threads();
    size_t rows = round_floats((size_t)(batch * seq * heads));
    *bytes = WS_ALIGN + (rows + (size_t)nthr * SLOT_FLOATS) * sizeof(float);
    return MOE_OK;
}

/* Carve the workspace: an optional [B, H, T] part first, then as many thread slots as fit. */
static moe_status carve(moe_ctx *ctx, const char *fn, void *ws, size_t ws_bytes, size_t rows, float **rows_out,
                        float **slots, int *nslots)
{
    if (!ws) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is NULL", fn);
    if ((uintptr_t)ws % sizeof(float) != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is not float-aligned", fn);
    uintptr_t base = ((uintptr_t)ws + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
    size_t skip = (size_t)(base - (uintptr_t)ws);
    size_t need1 = (round_floats(rows) + SLOT_FLOATS) * sizeof(float);
    if (ws_bytes < skip || ws_bytes - skip < need1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws_bytes' (%zu) is below the %zu bytes one thread needs",
                         fn, ws_bytes, skip + need1);
    float *f = (float *)base;
    *rows_out = f;
    *slots = f + round_floats(rows);
    size_t n = (ws_bytes - skip) / sizeof(float) - round_floats(rows);
    size_t k = n / SLOT_FLOATS;
    *nslots = k > 4096 ? 4096 : (int)k;
    return MOE_OK;
}

static int team_size(int nslots, int64_t items)
{
    int n = omp_get_max_threads();
    if (n > nslots) n = nslots;
    if (n > items) n = (int)items;
    return n < 1 ? 1 : n;
}

#define CHECK_PTR(p)                                                                                                  \
    do {                                                                                                              \
        if (!(p)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '" #p "' is NULL", fn);                    \
    } while (0)

moe_status moei_attention_fwd(moe_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                              int64_t head_dim, float scale, const float *alibi, const float *q, const float *k,
                              const float *v, float *out, float *lse, void *ws, size_t ws_bytes)
{
    const char *fn = "moei_attention_fwd";
    moe_status st = check_common(ctx, fn, batch, seq, heads, kv_heads, head_dim, scale);
    if (st != MOE_OK) return st;
    if (batch == 0 || seq == 0) return MOE_OK;
    CHECK_PTR(q);
    CHECK_PTR(k);
    CHECK_PTR(v);
    CHECK_PTR(out);
    float *unused, *slots;
    int nslots;
    st = carve(ctx, fn, ws, ws_bytes, 0, &unused, &slots, &nslots);
    if (st != MOE_OK) return st;

    attn_args a = {.B = batch, .T = seq, .H = heads, .Hkv = kv_heads, .D = head_dim, .rep = heads / kv_heads,
                   .scale = scale > 0.0f ? scale : (float)(1.0 / sqrt((double)head_dim)), .alibi = alibi,
                   .q = q, .k = k, .v = v, .o = out, .lse_out = lse};
    const int64_t nqb = (seq + BQ - 1) / BQ, bh = batch * heads, items = nqb * bh;
    const int nthr = team_size(nslots, items);
#pragma omp parallel num_threads(nthr)
    {
        float *slot = slots + (size_t)omp_get_thread_num() * SLOT_FLOATS;
        omp_set_num_threads(1); /* BLAS inside an item stays on this thread, even in a team of one */
        /* Late query blocks cost the most: hand them out first. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < items; it++) {
            int64_t qb = nqb - 1 - it / bh, b = (it % bh) / heads, h = it % heads;
            int64_t i0 = qb * BQ, i1 = i0 + BQ < seq ? i0 + BQ : seq;
            fwd_item(&a, b, h, i0, i1, slot);
        }
    }
    return MOE_OK;
}

moe_status moei_attention_bwd(moe_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                              int64_t head_dim, float scale, const float *alibi, const float *q, const float *k,
                              const float *v, const float *out, const float *lse, const float *dout, float *dq,
                              float *dk, float *dv, void *ws, size_t ws_bytes)
{
    const char *fn = "moei_attention_bwd";
    moe_status st = check_common(ctx, fn, batch, seq, heads, kv_heads, head_dim, scale);
    if (st != MOE_OK) return st;
    if (batch == 0 || seq == 0) return MOE_OK;
    CHECK_PTR(q);
    CHECK_PTR(k);
    CHECK_PTR(v);
    CHECK_PTR(out);
    CHECK_PTR(lse);
    CHECK_PTR(dout);
    CHECK_PTR(dq);
    CHECK_PTR(dk);
    CHECK_PTR(dv);
    float *delta, *slots;
    int nslots;
    st = carve(ctx, fn, ws, ws_bytes, (size_t)(batch * seq * heads), &delta, &slots, &nslots);
    if (st != MOE_OK) return st;

    attn_args a = {.B = batch, .T = seq, .H = heads, .Hkv = kv_heads, .D = head_dim, .rep = heads / kv_heads,
                   .scale = scale > 0.0f ? scale : (float)(1.0 / sqrt((double)head_dim)), .alibi = alibi,
                   .q = q, .k = k, .v = v, .out = out, .lse = lse, .dout = dout, .delta = delta,
                   .dq = dq, .dk = dk, .dv = dv};
    const int64_t nqb = (seq + BQ - 1) / BQ, nkb = (seq + BK - 1) / BK, bh = batch * heads, bg = batch * kv_heads;
    const int64_t rows = batch * seq, dq_items = nqb * bh, dkv_items = nkb * bg;
    const int nthr = team_size(nslots, dq_items > rows ? dq_items : rows);
#pragma omp parallel num_threads(nthr)
    {
        float *slot = slots + (size_t)omp_get_thread_num() * SLOT_FLOATS;
        omp_set_num_threads(1);
        /* delta_i = rowsum(dout_i * out_i), the softmax backward's correction term. */
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            int64_t b = r / seq, i = r % seq;
            for (int64_t h = 0; h < heads; h++) {
                const float *o = out + (r * heads + h) * head_dim, *g = dout + (r * heads + h) * head_dim;
                double s = 0.0;
                for (int64_t d = 0; d < head_dim; d++) s += (double)o[d] * (double)g[d];
                delta[(b * heads + h) * seq + i] = (float)s;
            }
        }
        /* (the implicit barrier makes delta complete before either pass reads it) */
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t it = 0; it < dq_items; it++) {
            int64_t qb = nqb - 1 - it / bh, b = (it % bh) / heads, h = it % heads;
            int64_t i0 = qb * BQ, i1 = i0 + BQ < seq ? i0 + BQ : seq;
            dq_item(&a, b, h, i0, i1, slot);
        }
        /* Early key blocks are seen by the most queries: they come first. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t it = 0; it < dkv_items; it++) {
            int64_t kb = it / bg, b = (it % bg) / kv_heads, g = it % kv_heads;
            int64_t j0 = kb * BK, j1 = j0 + BK < seq ? j0 + BK : seq;
            dkv_item(&a, b, g, j0, j1, slot);
        }
    }
    return MOE_OK;
}
