/* Flash-style causal attention on the CPU. Work is cut into items that own their output rows: the
 * forward and the dq pass take (batch, head, query block), the dk/dv pass takes (batch, kv head, key
 * block) and loops over the query heads of its group in a fixed order. Each item runs on one thread
 * with single-threaded BLAS and a fixed operation order, so results do not depend on which thread
 * or how many threads ran it. Block products (64 x 64 x head_dim: too small for BLAS packing to pay)
 * go to a register-blocked AVX2/FMA kernel when the CPU has it (chosen at run time, the build has no
 * -march flags), else to cblas_sgemm; the softmax's exp, row max and row sum are vectorised on the
 * same condition. Either way each machine has one fixed operation order. Masking is a plain loop.
 * The backward normally runs fused: the dk/dv pass also stores each block of dS = P (dP - delta),
 * and the dq pass only multiplies those stored blocks by K (5 block products per block pair instead
 * of 7, one exp instead of two). It does the same products in the same order as the unfused
 * two-pass form, which remains for sequences whose dS store would not fit a bounded budget. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include "core/error.h"
#include "cpu/attention.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define ATTN_X86 1
#include <immintrin.h>
#endif

#define BQ MOEI_ATTN_BLOCK_Q
#define BK MOEI_ATTN_BLOCK_K
/* Per-thread scratch: two score-sized blocks (S/P and dP or dS) and the running max and sum of the
 * online softmax; rounded to whole cache lines. */
#define SLOT_FLOATS ((2 * BQ * BK + 2 * BQ + 15) / 16 * 16)
#define WS_ALIGN 64
/* Largest dS store of the fused backward, in floats (64 MiB): heads are processed in chunks that
 * fit it; when a single head's blocks do not, the backward recomputes instead (two-pass form). */
#define DS_STORE_CAP ((int64_t)16 * 1024 * 1024)

typedef struct attn_args {
    int64_t B, T, H, Hkv, D, rep; /* rep = H / Hkv query heads per kv head */
    float scale;
    const float *alibi;
    const float *q, *k, *v, *out, *lse, *dout, *delta;
    float *o, *lse_out, *dq, *dk, *dv;
    /* fused backward: dS blocks of the flattened heads [f0, f0 + chunk), ntri blocks per head */
    float *ds;
    int64_t ntri;
    int simd; /* the AVX2/FMA block kernel may run (checked once per call) */
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

/* ---- block products ---------------------------------------------------------------------------- */

/* Largest head_dim whose transposed K / V block the kernel path keeps on the stack. */
#define PACK_MAX_D 64

#ifdef ATTN_X86
#define AVX2_FMA __attribute__((target("avx2,fma")))

static int cpu_has_avx2_fma(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

/* Rows [0, mr) x columns [0, 16) of C = (acc ? C : 0) + alpha * sum_p A(i, p) B(p, j), with
 * A(i, p) = a[i * rsa + p * csa] and B row-major. p runs in order and each element keeps its own
 * accumulator, so the result depends only on the operands. !full: columns past the masks are
 * neither read nor written. */
static inline __attribute__((always_inline)) AVX2_FMA void ukr(const int mr, const int full, int64_t k, float alpha,
                                                              const float *a, int64_t rsa, int64_t csa,
                                                              const float *b, int64_t ldb, int acc, float *c,
                                                              int64_t ldc, __m256i m0, __m256i m1)
{
    /* Named accumulators (not an array) so that every one stays in a register; mr is a constant at
     * each call site, so the row conditions fold away. */
    __m256 x0 = _mm256_setzero_ps(), y0 = x0, x1 = x0, y1 = x0, x2 = x0, y2 = x0, x3 = x0, y3 = x0, x4 = x0,
           y4 = x0, x5 = x0, y5 = x0;
    for (int64_t p = 0; p < k; p++) {
        const float *bp = b + p * ldb, *ap = a + p * csa;
        const __m256 b0 = full ? _mm256_loadu_ps(bp) : _mm256_maskload_ps(bp, m0);
        const __m256 b1 = full ? _mm256_loadu_ps(bp + 8) : _mm256_maskload_ps(bp + 8, m1);
        __m256 t;
#define UKR_FMA(i)                                                                                                    \
    if (mr > i) {                                                                                                     \
        t = _mm256_broadcast_ss(ap + i * rsa);                                                                        \
        x##i = _mm256_fmadd_ps(t, b0, x##i);                                                                          \
        y##i = _mm256_fmadd_ps(t, b1, y##i);                                                                          \
    }
        UKR_FMA(0) UKR_FMA(1) UKR_FMA(2) UKR_FMA(3) UKR_FMA(4) UKR_FMA(5)
#undef UKR_FMA
    }
    const __m256 va = _mm256_set1_ps(alpha);
#define UKR_STORE(i)                                                                                                  \
    if (mr > i) {                                                                                                     \
        float *ci = c + i * ldc;                                                                                      \
        __m256 r0 = _mm256_mul_ps(va, x##i), r1 = _mm256_mul_ps(va, y##i);                                            \
        if (full) {                                                                                                   \
            if (acc) r0 = _mm256_add_ps(_mm256_loadu_ps(ci), r0), r1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), r1);    \
            _mm256_storeu_ps(ci, r0);                                                                                 \
            _mm256_storeu_ps(ci + 8, r1);                                                                             \
        } else {                                                                                                      \
            if (acc)                                                                                                  \
                r0 = _mm256_add_ps(_mm256_maskload_ps(ci, m0), r0),                                                   \
                r1 = _mm256_add_ps(_mm256_maskload_ps(ci + 8, m1), r1);                                               \
            _mm256_maskstore_ps(ci, m0, r0);                                                                          \
            _mm256_maskstore_ps(ci + 8, m1, r1);                                                                      \
        }                                                                                                             \
    }
    UKR_STORE(0) UKR_STORE(1) UKR_STORE(2) UKR_STORE(3) UKR_STORE(4) UKR_STORE(5)
#undef UKR_STORE
}

#define UKR_ROWS(full)                                                                                                \
    switch (mr) {                                                                                                     \
    case 6: ukr(6, full, k, alpha, ai, rsa, csa, b + j, ldb, acc, ci, ldc, m0, m1); break;                            \
    case 5: ukr(5, full, k, alpha, ai, rsa, csa, b + j, ldb, acc, ci, ldc, m0, m1); break;                            \
    case 4: ukr(4, full, k, alpha, ai, rsa, csa, b + j, ldb, acc, ci, ldc, m0, m1); break;                            \
    case 3: ukr(3, full, k, alpha, ai, rsa, csa, b + j, ldb, acc, ci, ldc, m0, m1); break;                            \
    case 2: ukr(2, full, k, alpha, ai, rsa, csa, b + j, ldb, acc, ci, ldc, m0, m1); break;                            \
    default: ukr(1, full, k, alpha, ai, rsa, csa, b + j, ldb, acc, ci, ldc, m0, m1); break;                           \
    }

/* C [m, n] = (acc ? C : 0) + alpha * A B over k, A(i, p) = a[i * rsa + p * csa] (rsa = lda, csa = 1:
 * A as stored; rsa = 1, csa = lda: its transpose), B [k, n] row-major. Tiles of 6 rows x 16 columns. */
static AVX2_FMA void gemm_avx2(int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t rsa,
                               int64_t csa, const float *b, int64_t ldb, int acc, float *c, int64_t ldc)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t j = 0; j < n; j += 16) {
        const int64_t rem = n - j;
        const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(rem < 16 ? rem : 16)), lane);
        const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(rem < 16 ? rem : 16) - 8), lane);
        for (int64_t i = 0; i < m; i += 6) {
            const int mr = (int)(m - i < 6 ? m - i : 6);
            const float *ai = a + i * rsa;
            float *ci = c + i * ldc + j;
            if (rem >= 16) {
                UKR_ROWS(1)
            } else {
                UKR_ROWS(0)
            }
        }
    }
}

/* exp of 8 lanes (Cephes-style: 2^n split by Cody-Waite, degree-6 polynomial; within ~2 ulp of expf
 * on the range used here, x <= 0). Below the smallest normal result it gives 0; NaN stays NaN. */
static inline __attribute__((always_inline)) AVX2_FMA __m256 exp8(__m256 x)
{
    const __m256 hi = _mm256_set1_ps(88.3762626647949f), lo = _mm256_set1_ps(-87.3365447504f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(lo, _mm256_min_ps(hi, x)); /* (this operand order keeps a NaN x) */
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* x[c] = exp(x[c] - s) for c < n; every lane goes through exp8, the tail under a mask. */
static AVX2_FMA void exp_sub_avx2(float *x, int64_t n, float s)
{
    const __m256 vs = _mm256_set1_ps(s);
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) _mm256_storeu_ps(x + c, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + c), vs)));
    if (c < n) {
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - c)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(x + c, m, exp8(_mm256_sub_ps(_mm256_maskload_ps(x + c, m), vs)));
    }
}

/* max(init, x[0..n)) and, separately, the sum of x[0..n) in 8 lane sums folded in a fixed order. */
static AVX2_FMA float max_avx2(const float *x, int64_t n, float init)
{
    __m256 m = _mm256_set1_ps(init);
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + c));
    float t[8], r = init;
    _mm256_storeu_ps(t, m);
    for (int i = 0; i < 8; i++) r = t[i] > r ? t[i] : r;
    for (; c < n; c++) r = x[c] > r ? x[c] : r;
    return r;
}

static AVX2_FMA float sum_avx2(const float *x, int64_t n)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + c));
    float t[8], r = 0.0f;
    _mm256_storeu_ps(t, acc);
    for (int i = 0; i < 8; i++) r += t[i];
    for (; c < n; c++) r += x[c];
    return r;
}
#else
static int cpu_has_avx2_fma(void) { return 0; }
#endif

/* x[c] = exp(x[c] - s) for c < n, the one exponential every pass uses for probabilities. */
static void exp_sub(const attn_args *at, float *x, int64_t n, float s)
{
#ifdef ATTN_X86
    if (at->simd) {
        exp_sub_avx2(x, n, s);
        return;
    }
#else
    (void)at;
#endif
    for (int64_t c = 0; c < n; c++) x[c] = expf(x[c] - s);
}

/* C = alpha * op(A) B + beta * C for B [k, n] row-major, beta 0 or 1 (op(A) = A^T when ta). */
static void mm(const attn_args *at, int ta, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
               int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc)
{
#ifdef ATTN_X86
    if (at->simd) {
        gemm_avx2(m, n, k, alpha, a, ta ? 1 : lda, ta ? lda : 1, b, ldb, beta != 0.0f, c, ldc);
        return;
    }
#else
    (void)at;
#endif
    sgemm(ta, 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* For the kernel path: the [nk, D] block src (rows ld apart) transposed into buf [D, BK], returned;
 * NULL when the A B^T products go to cblas instead. */
static const float *pack_t(const attn_args *at, float *buf, const float *src, int64_t ld, int64_t nk)
{
    if (!at->simd || at->D > PACK_MAX_D) return NULL;
    for (int64_t j = 0; j < nk; j++)
        for (int64_t d = 0; d < at->D; d++) buf[d * BK + j] = src[j * ld + d];
    return buf;
}

/* C [m, n] = alpha * A B^T for B [n, k] (rows ldb apart), bt its pack_t form or NULL. */
static void mm_nt(const attn_args *at, int64_t m, int64_t n, int64_t k, float alpha, const float *a, int64_t lda,
                  const float *b, int64_t ldb, const float *bt, float *c, int64_t ldc)
{
    if (bt)
        mm(at, 0, m, n, k, alpha, a, lda, bt, BK, 0.0f, c, ldc);
    else
        sgemm(0, 1, m, n, k, alpha, a, lda, b, ldb, 0.0f, c, ldc);
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
    float *S = slot, *kt = slot + BQ * BK, *m = slot + 2 * BQ * BK, *l = m + BQ;
    const float slope = a->alibi ? a->alibi[h] : 0.0f;

    for (int64_t r = 0; r < nq; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        memset(ob + r * ldq, 0, (size_t)D * sizeof(float));
    }
    /* Key blocks past the last query of the block are masked for every row: stop at i1. */
    for (int64_t j0 = 0; j0 < i1; j0 += BK) {
        int64_t nk = (i1 - j0 < BK ? i1 - j0 : BK);
        mm_nt(a, nq, nk, D, a->scale, qb, ldq, kb + j0 * ldk, ldk, pack_t(a, kt, kb + j0 * ldk, ldk, nk), S, BK);
        for (int64_t r = 0; r < nq; r++) {
            int64_t i = i0 + r, nv = valid(i, j0, nk);
            float *row = S + r * BK;
            if (nv == 0) { /* nothing visible: the row's state and output stay as they are */
                memset(row, 0, (size_t)nk * sizeof(float));
                continue;
            }
            add_alibi(row, nv, slope, i, j0);
            float mx = m[r], sum = 0.0f;
#ifdef ATTN_X86
            if (a->simd) {
                mx = max_avx2(row, nv, mx);
                exp_sub(a, row, nv, mx);
                sum = sum_avx2(row, nv);
            } else
#endif
            {
                for (int64_t c = 0; c < nv; c++) mx = row[c] > mx ? row[c] : mx;
                /* Exponentials first, sum after: in one loop the running sum lives on the stack
                 * across the expf calls and its store-to-load chain slows every element. */
                exp_sub(a, row, nv, mx);
                for (int64_t c = 0; c < nv; c++) sum += row[c];
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
        mm(a, 0, nq, D, nk, 1.0f, S, BK, vb + j0 * ldk, ldk, 1.0f, ob, ldq);
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
    float kt[PACK_MAX_D * BK] __attribute__((aligned(64)));
    const float slope = a->alibi ? a->alibi[h] : 0.0f;

    for (int64_t r = 0; r < nq; r++) memset(dqb + r * ldq, 0, (size_t)D * sizeof(float));
    for (int64_t j0 = 0; j0 < i1; j0 += BK) {
        int64_t nk = (i1 - j0 < BK ? i1 - j0 : BK);
        mm_nt(a, nq, nk, D, a->scale, qb, ldq, kb + j0 * ldk, ldk, pack_t(a, kt, kb + j0 * ldk, ldk, nk), S, BK);
        mm_nt(a, nq, nk, D, 1.0f, dob, ldq, vb + j0 * ldk, ldk, pack_t(a, kt, vb + j0 * ldk, ldk, nk), dP, BK);
        for (int64_t r = 0; r < nq; r++) {
            int64_t i = i0 + r, nv = valid(i, j0, nk);
            float *row = S + r * BK, *dprow = dP + r * BK;
            float lse = a->lse[soff + r], delta = a->delta[soff + r];
            add_alibi(row, nv, slope, i, j0);
            exp_sub(a, row, nv, lse);
            for (int64_t c = 0; c < nv; c++) row[c] *= dprow[c] - delta;
            for (int64_t c = nv; c < nk; c++) row[c] = 0.0f;
        }
        mm(a, 0, nq, D, nk, a->scale, S, BK, kb + j0 * ldk, ldk, 1.0f, dqb, ldq);
    }
}

/* One (query head h, query block i0) x (key block j0) step of the dk/dv pass: S and P, dP, then
 * dS = P (dP - delta) written over dP, and dv += Pᵀ dout, dk += scale dSᵀ q. Both backward forms
 * run exactly this, so they give the same bits; they differ only in where dP/dS lives. */
static void dkv_block(const attn_args *a, int64_t b, int64_t h, int64_t i0, int64_t j0, int64_t nk, const float *kb,
                      const float *vb, const float *kt, const float *vt, float *S, float *dP, float *dkb, float *dvb)
{
    const int64_t D = a->D, ldq = a->H * D, ldk = a->Hkv * D, T = a->T;
    const int64_t nq = (T - i0 < BQ ? T - i0 : BQ);
    const int64_t qoff = ((b * T + i0) * a->H + h) * D, soff = (b * a->H + h) * T + i0;
    const float *qb = a->q + qoff, *dob = a->dout + qoff;
    const float slope = a->alibi ? a->alibi[h] : 0.0f;
    mm_nt(a, nq, nk, D, a->scale, qb, ldq, kb, ldk, kt, S, BK);
    mm_nt(a, nq, nk, D, 1.0f, dob, ldq, vb, ldk, vt, dP, BK);
    for (int64_t r = 0; r < nq; r++) {
        int64_t i = i0 + r, nv = valid(i, j0, nk);
        float *row = S + r * BK, *dprow = dP + r * BK;
        float lse = a->lse[soff + r], delta = a->delta[soff + r];
        add_alibi(row, nv, slope, i, j0);
        exp_sub(a, row, nv, lse);
        for (int64_t c = 0; c < nv; c++) dprow[c] = row[c] * (dprow[c] - delta);
        for (int64_t c = nv; c < nk; c++) row[c] = dprow[c] = 0.0f;
    }
    mm(a, 1, nk, D, nq, 1.0f, S, BK, dob, ldq, 1.0f, dvb, ldk);
    mm(a, 1, nk, D, nq, a->scale, dP, BK, qb, ldq, 1.0f, dkb, ldk);
}

/* dk, dv for one (batch, kv head, key block), summed over the group's query heads in order:
 * dv_j = sum_i P_ij dout_i, dk_j = scale * sum_i P_ij (dP_ij - delta_i) q_i. */
static void dkv_item(const attn_args *a, int64_t b, int64_t g, int64_t j0, int64_t j1, float *slot)
{
    const int64_t D = a->D, ldk = a->Hkv * D, nk = j1 - j0, T = a->T;
    const int64_t koff = ((b * T + j0) * a->Hkv + g) * D;
    const float *kb = a->k + koff, *vb = a->v + koff;
    float *dkb = a->dk + koff, *dvb = a->dv + koff;
    float *S = slot, *dP = slot + BQ * BK;
    float ktb[PACK_MAX_D * BK] __attribute__((aligned(64))), vtb[PACK_MAX_D * BK] __attribute__((aligned(64)));
    const float *kt = pack_t(a, ktb, kb, ldk, nk), *vt = pack_t(a, vtb, vb, ldk, nk);

    for (int64_t c = 0; c < nk; c++) {
        memset(dkb + c * ldk, 0, (size_t)D * sizeof(float));
        memset(dvb + c * ldk, 0, (size_t)D * sizeof(float));
    }
    for (int64_t h = g * a->rep; h < (g + 1) * a->rep; h++)
        /* Query blocks wholly before j0 see none of these keys. */
        for (int64_t i0 = j0 / BQ * BQ; i0 < T; i0 += BQ)
            dkv_block(a, b, h, i0, j0, nk, kb, vb, kt, vt, S, dP, dkb, dvb);
}

/* ---- fused backward ----------------------------------------------------------------------------- */

/* Flattened head f = b * H + h of the chunk that starts at f0: its block pair (query block qb, key
 * block kb <= qb) lives at this offset of the dS store (BQ x BK blocks, lower triangle by rows). */
static float *ds_block(const attn_args *a, int64_t f0, int64_t f, int64_t qb, int64_t kb)
{
    return a->ds + ((f - f0) * a->ntri + qb * (qb + 1) / 2 + kb) * (int64_t)(BQ * BK);
}

/* dk, dv for one (batch, kv head, key block) over query heads [h0, h1) of the group, like dkv_item,
 * and stores each block's dS for the dq pass. zero: clear dk, dv first (the first chunk of
 * heads of this group); otherwise they hold the earlier heads' sums and this adds to them in the
 * same order the unchunked loop would. */
static void dkv_fused_item(const attn_args *a, int64_t f0, int64_t b, int64_t g, int64_t kb, int64_t h0, int64_t h1,
                           int zero, float *slot)
{
    const int64_t D = a->D, ldk = a->Hkv * D, T = a->T, j0 = kb * BK;
    const int64_t nk = (T - j0 < BK ? T - j0 : BK);
    const int64_t koff = ((b * T + j0) * a->Hkv + g) * D;
    const float *kbp = a->k + koff, *vb = a->v + koff;
    float *dkb = a->dk + koff, *dvb = a->dv + koff;
    float *S = slot;
    float ktb[PACK_MAX_D * BK] __attribute__((aligned(64))), vtb[PACK_MAX_D * BK] __attribute__((aligned(64)));
    const float *kt = pack_t(a, ktb, kbp, ldk, nk), *vt = pack_t(a, vtb, vb, ldk, nk);

    if (zero)
        for (int64_t c = 0; c < nk; c++) {
            memset(dkb + c * ldk, 0, (size_t)D * sizeof(float));
            memset(dvb + c * ldk, 0, (size_t)D * sizeof(float));
        }
    for (int64_t h = h0; h < h1; h++)
        for (int64_t i0 = j0 / BQ * BQ; i0 < T; i0 += BQ) /* dP goes straight into the store, becoming dS */
            dkv_block(a, b, h, i0, j0, nk, kbp, vb, kt, vt, S, ds_block(a, f0, b * a->H + h, i0 / BQ, kb), dkb, dvb);
}

/* dq for one (batch, head, query block) from the stored dS blocks, key blocks in order: the same
 * products, with the same operands, that dq_item does after recomputing them. */
static void dq_fused_item(const attn_args *a, int64_t f0, int64_t b, int64_t h, int64_t qb)
{
    const int64_t D = a->D, ldq = a->H * D, ldk = a->Hkv * D, g = h / a->rep, T = a->T, i0 = qb * BQ;
    const int64_t i1 = i0 + BQ < T ? i0 + BQ : T, nq = i1 - i0;
    const float *kb = a->k + (b * T * a->Hkv + g) * D;
    float *dqb = a->dq + ((b * T + i0) * a->H + h) * D;

    for (int64_t r = 0; r < nq; r++) memset(dqb + r * ldq, 0, (size_t)D * sizeof(float));
    for (int64_t j0 = 0; j0 < i1; j0 += BK) {
        int64_t nk = (i1 - j0 < BK ? i1 - j0 : BK);
        mm(a, 0, nq, D, nk, a->scale, ds_block(a, f0, b * a->H + h, qb, j0 / BK), BK, kb + j0 * ldk, ldk, 1.0f, dqb,
           ldq);
    }
}

/* Flattened heads per chunk of the fused backward's dS store (0: one head does not fit the cap). */
static int64_t ds_chunk_heads(int64_t B, int64_t T, int64_t H, int64_t *ntri)
{
    int64_t nqb = (T + BQ - 1) / BQ;
    *ntri = nqb * (nqb + 1) / 2;
    if (B * H == 0 || *ntri == 0 || *ntri > DS_STORE_CAP / (BQ * BK)) return 0;
    int64_t per_head = *ntri * BQ * BK, n = DS_STORE_CAP / per_head;
    return n < B * H ? n : B * H;
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
    int64_t nthr = threads > 0 ? threads : omp_get_max_threads(), ntri;
    size_t rows = round_floats((size_t)(batch * seq * heads));
    size_t store = (size_t)(ds_chunk_heads(batch, seq, heads, &ntri) * ntri * BQ * BK);
    *bytes = WS_ALIGN + (rows + store + (size_t)nthr * SLOT_FLOATS) * sizeof(float);
    return MOE_OK;
}

/* Whether ws_bytes from ws hold `floats` floats after aligning the start (the backward asks this
 * before it chooses the fused form, whose dS store the caller may not have sized for). */
static int ws_fits(const void *ws, size_t ws_bytes, size_t floats)
{
    size_t skip = (size_t)((((uintptr_t)ws + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN) - (uintptr_t)ws);
    return ws_bytes >= skip && (ws_bytes - skip) / sizeof(float) >= floats;
}

/* Carve the workspace: an optional [B, H, T] part first, then `extra` floats (the fused backward's
 * dS store, a multiple of 16 floats; at *extra_out), then as many thread slots as fit. */
static moe_status carve(moe_ctx *ctx, const char *fn, void *ws, size_t ws_bytes, size_t rows, size_t extra,
                        float **rows_out, float **extra_out, float **slots, int *nslots)
{
    if (!ws) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is NULL", fn);
    if ((uintptr_t)ws % sizeof(float) != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws' is not float-aligned", fn);
    uintptr_t base = ((uintptr_t)ws + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN;
    size_t skip = (size_t)(base - (uintptr_t)ws);
    size_t need1 = (round_floats(rows) + extra + SLOT_FLOATS) * sizeof(float);
    if (ws_bytes < skip || ws_bytes - skip < need1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ws_bytes' (%zu) is below the %zu bytes one thread needs",
                         fn, ws_bytes, skip + need1);
    float *f = (float *)base;
    *rows_out = f;
    *extra_out = extra ? f + round_floats(rows) : NULL;
    *slots = f + round_floats(rows) + extra;
    size_t n = (ws_bytes - skip) / sizeof(float) - round_floats(rows) - extra;
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
    float *unused, *unused2, *slots;
    int nslots;
    st = carve(ctx, fn, ws, ws_bytes, 0, 0, &unused, &unused2, &slots, &nslots);
    if (st != MOE_OK) return st;

    attn_args a = {.B = batch, .T = seq, .H = heads, .Hkv = kv_heads, .D = head_dim, .rep = heads / kv_heads,
                   .scale = scale > 0.0f ? scale : (float)(1.0 / sqrt((double)head_dim)), .alibi = alibi,
                   .q = q, .k = k, .v = v, .o = out, .lse_out = lse, .simd = cpu_has_avx2_fma()};
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
    /* The fused form needs the dS store; without room for it (a workspace sized for fewer floats, or
     * sequences too long for the cap) the two-pass form recomputes instead, with the same results. */
    int64_t ntri, chunk = ds_chunk_heads(batch, seq, heads, &ntri);
    size_t nrows = (size_t)(batch * seq * heads), store = (size_t)(chunk * ntri * BQ * BK);
    if (store > 0 && !ws_fits(ws, ws_bytes, round_floats(nrows) + store + SLOT_FLOATS)) store = 0;
    float *delta, *ds, *slots;
    int nslots;
    st = carve(ctx, fn, ws, ws_bytes, nrows, store, &delta, &ds, &slots, &nslots);
    if (st != MOE_OK) return st;

    attn_args a = {.B = batch, .T = seq, .H = heads, .Hkv = kv_heads, .D = head_dim, .rep = heads / kv_heads,
                   .scale = scale > 0.0f ? scale : (float)(1.0 / sqrt((double)head_dim)), .alibi = alibi,
                   .q = q, .k = k, .v = v, .out = out, .lse = lse, .dout = dout, .delta = delta,
                   .dq = dq, .dk = dk, .dv = dv, .ds = ds, .ntri = ntri, .simd = cpu_has_avx2_fma()};
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
        const int64_t rep = heads / kv_heads, fh = batch * heads;
        /* Fused: chunks of flattened heads f = b * heads + h in order. Flattened kv head fg = f / rep
         * holds heads [fg * rep, fg * rep + rep); a group cut by a chunk edge adds its later heads to
         * dk, dv in the next chunk, the order the unchunked loop uses. */
        for (int64_t f0 = 0; ds && f0 < fh; f0 += chunk) {
            const int64_t f1 = f0 + chunk < fh ? f0 + chunk : fh, fg0 = f0 / rep, ng = (f1 - 1) / rep + 1 - fg0;
            /* Early key blocks are seen by the most queries: they come first. */
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < nkb * ng; it++) {
                int64_t kb = it / ng, fg = fg0 + it % ng, b = fg / kv_heads, g = fg % kv_heads;
                int64_t h0 = g * rep, h1 = h0 + rep;
                if (h0 < f0 - b * heads) h0 = f0 - b * heads;
                if (h1 > f1 - b * heads) h1 = f1 - b * heads;
                dkv_fused_item(&a, f0, b, g, kb, h0, h1, h0 == g * rep, slot);
            }
            /* (barrier: every dS block of the chunk is stored) Late query blocks cost the most. */
#pragma omp for schedule(dynamic, 1)
            for (int64_t it = 0; it < (f1 - f0) * nqb; it++) {
                int64_t qb = nqb - 1 - it / (f1 - f0), f = f0 + it % (f1 - f0);
                dq_fused_item(&a, f0, f / heads, f % heads, qb);
            }
        }
        if (!ds) { /* two-pass form: each pass recomputes S and dP */
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
    }
    return MOE_OK;
}
