/* CPU SwiGLU / GELU forward and backward and elementwise utilities (see activation.h).
 * Invariants: every loop is elementwise with scalar libm calls, so neither the thread split nor
 * vectorisation changes a result bit; flat loops run over fixed-size blocks (the CUDA grid shape). */
#include "cpu/activation.h"

#include <math.h>

#include "core/error.h"

/* Elements per block of a flat loop; arrays of at most one block run on the calling thread. */
#define MOEI_ELEM_BLOCK 16384

#define MOEI_SQRT_2_OVER_PI 0.7978845608028654f
#define MOEI_INV_SQRT_2PI 0.3989422804014327f
#define MOEI_INV_SQRT_2 0.7071067811865476f
#define MOEI_GELU_TANH_C 0.044715f

static moe_status check_count(moe_ctx *ctx, const char *fn, int64_t count)
{
    if (count < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: count = %lld is negative", fn, (long long)count);
    return MOE_OK;
}

#define CHECK_PTR(fn, p, need)                                                                                      \
    do {                                                                                                            \
        if ((need) && !(p)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '" #p "' is NULL", fn);      \
    } while (0)

static moe_status check_rows(moe_ctx *ctx, const char *fn, int64_t rows, int64_t f)
{
    if (rows < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: rows = %lld is negative", fn, (long long)rows);
    if (f < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: f = %lld is negative", fn, (long long)f);
    if (f > 0 && rows > INT64_MAX / 2 / f)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: rows * 2f overflows int64", fn);
    return MOE_OK;
}

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float swiglu_fwd1(float g, float u) { return g * sigmoidf_(g) * u; }

static inline void swiglu_bwd1(float g, float u, float dy, float *dg, float *du)
{
    float s = sigmoidf_(g);
    float silu = g * s;
    *du = dy * silu;
    *dg = dy * u * (s * (1.0f + g * (1.0f - s)));
}

/* ---- SwiGLU ---------------------------------------------------------------------------------------- */

moe_status moei_cpu_swiglu_forward(moe_ctx *ctx, int64_t rows, int64_t f, const float *h, float *out)
{
    const char *fn = "swiglu_forward";
    moe_status st = check_rows(ctx, fn, rows, f);
    if (st != MOE_OK) return st;
    int64_t total = rows * f;
    CHECK_PTR(fn, h, total > 0);
    CHECK_PTR(fn, out, total > 0);
#pragma omp parallel for schedule(static) if (total > MOEI_ELEM_BLOCK)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = h + r * 2 * f, *u = g + f;
        float *y = out + r * f;
        for (int64_t j = 0; j < f; j++) y[j] = swiglu_fwd1(g[j], u[j]);
    }
    return MOE_OK;
}

moe_status moei_cpu_swiglu_backward(moe_ctx *ctx, int64_t rows, int64_t f, const float *h, const float *d_out,
                                    float *d_h)
{
    const char *fn = "swiglu_backward";
    moe_status st = check_rows(ctx, fn, rows, f);
    if (st != MOE_OK) return st;
    int64_t total = rows * f;
    CHECK_PTR(fn, h, total > 0);
    CHECK_PTR(fn, d_out, total > 0);
    CHECK_PTR(fn, d_h, total > 0);
#pragma omp parallel for schedule(static) if (total > MOEI_ELEM_BLOCK)
    for (int64_t r = 0; r < rows; r++) {
        const float *g = h + r * 2 * f, *u = g + f, *dy = d_out + r * f;
        float *dg = d_h + r * 2 * f, *du = dg + f;
        for (int64_t j = 0; j < f; j++) {
            float a, b;
            swiglu_bwd1(g[j], u[j], dy[j], &a, &b); /* both inputs read before either output is written */
            dg[j] = a;
            du[j] = b;
        }
    }
    return MOE_OK;
}

moe_status moei_cpu_swiglu_forward_split(moe_ctx *ctx, int64_t count, const float *gate, const float *up,
                                         float *out)
{
    const char *fn = "swiglu_forward_split";
    moe_status st = check_count(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, gate, count > 0);
    CHECK_PTR(fn, up, count > 0);
    CHECK_PTR(fn, out, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * MOEI_ELEM_BLOCK < count ? (b + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = b * MOEI_ELEM_BLOCK; i < e; i++) out[i] = swiglu_fwd1(gate[i], up[i]);
    }
    return MOE_OK;
}

moe_status moei_cpu_swiglu_backward_split(moe_ctx *ctx, int64_t count, const float *gate, const float *up,
                                          const float *d_out, float *d_gate, float *d_up)
{
    const char *fn = "swiglu_backward_split";
    moe_status st = check_count(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, gate, count > 0);
    CHECK_PTR(fn, up, count > 0);
    CHECK_PTR(fn, d_out, count > 0);
    CHECK_PTR(fn, d_gate, count > 0);
    CHECK_PTR(fn, d_up, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * MOEI_ELEM_BLOCK < count ? (b + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = b * MOEI_ELEM_BLOCK; i < e; i++) {
            float a, c;
            swiglu_bwd1(gate[i], up[i], d_out[i], &a, &c);
            d_gate[i] = a;
            d_up[i] = c;
        }
    }
    return MOE_OK;
}

/* ---- GELU ------------------------------------------------------------------------------------------ */

static inline float gelu_fwd1(float x, int32_t approx)
{
    if (approx == MOEI_GELU_TANH) {
        float inner = MOEI_SQRT_2_OVER_PI * (x + MOEI_GELU_TANH_C * x * x * x);
        return 0.5f * x * (1.0f + tanhf(inner));
    }
    return 0.5f * x * (1.0f + erff(x * MOEI_INV_SQRT_2));
}

static inline float gelu_grad1(float x, int32_t approx)
{
    if (approx == MOEI_GELU_TANH) {
        float x2 = x * x;
        float t = tanhf(MOEI_SQRT_2_OVER_PI * (x + MOEI_GELU_TANH_C * x2 * x));
        float dinner = MOEI_SQRT_2_OVER_PI * (1.0f + 3.0f * MOEI_GELU_TANH_C * x2);
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dinner;
    }
    float cdf = 0.5f * (1.0f + erff(x * MOEI_INV_SQRT_2));
    float pdf = MOEI_INV_SQRT_2PI * expf(-0.5f * x * x);
    return cdf + x * pdf;
}

static moe_status check_approx(moe_ctx *ctx, const char *fn, int32_t approx)
{
    if (approx != MOEI_GELU_EXACT && approx != MOEI_GELU_TANH)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: approx = %d is not a moei_gelu_approx", fn, (int)approx);
    return MOE_OK;
}

moe_status moei_cpu_gelu_forward(moe_ctx *ctx, int64_t count, int32_t approx, const float *x, float *y)
{
    const char *fn = "gelu_forward";
    moe_status st = check_count(ctx, fn, count);
    if (st == MOE_OK) st = check_approx(ctx, fn, approx);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, x, count > 0);
    CHECK_PTR(fn, y, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * MOEI_ELEM_BLOCK < count ? (b + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = b * MOEI_ELEM_BLOCK; i < e; i++) y[i] = gelu_fwd1(x[i], approx);
    }
    return MOE_OK;
}

moe_status moei_cpu_gelu_backward(moe_ctx *ctx, int64_t count, int32_t approx, const float *x, const float *dy,
                                  float *dx)
{
    const char *fn = "gelu_backward";
    moe_status st = check_count(ctx, fn, count);
    if (st == MOE_OK) st = check_approx(ctx, fn, approx);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, x, count > 0);
    CHECK_PTR(fn, dy, count > 0);
    CHECK_PTR(fn, dx, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t b = 0; b < nb; b++) {
        int64_t e = (b + 1) * MOEI_ELEM_BLOCK < count ? (b + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = b * MOEI_ELEM_BLOCK; i < e; i++) dx[i] = dy[i] * gelu_grad1(x[i], approx);
    }
    return MOE_OK;
}

/* ---- elementwise utilities --------------------------------------------------------------------------- */

moe_status moei_cpu_add(moe_ctx *ctx, int64_t count, const float *a, const float *b, float *y)
{
    const char *fn = "add";
    moe_status st = check_count(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, a, count > 0);
    CHECK_PTR(fn, b, count > 0);
    CHECK_PTR(fn, y, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t k = 0; k < nb; k++) {
        int64_t e = (k + 1) * MOEI_ELEM_BLOCK < count ? (k + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = k * MOEI_ELEM_BLOCK; i < e; i++) y[i] = a[i] + b[i];
    }
    return MOE_OK;
}

moe_status moei_cpu_axpy(moe_ctx *ctx, int64_t count, float alpha, const float *x, float *y)
{
    const char *fn = "axpy";
    moe_status st = check_count(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, x, count > 0);
    CHECK_PTR(fn, y, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t k = 0; k < nb; k++) {
        int64_t e = (k + 1) * MOEI_ELEM_BLOCK < count ? (k + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = k * MOEI_ELEM_BLOCK; i < e; i++) y[i] += alpha * x[i];
    }
    return MOE_OK;
}

moe_status moei_cpu_scale(moe_ctx *ctx, int64_t count, float alpha, float *x)
{
    const char *fn = "scale";
    moe_status st = check_count(ctx, fn, count);
    if (st != MOE_OK) return st;
    CHECK_PTR(fn, x, count > 0);
    int64_t nb = (count + MOEI_ELEM_BLOCK - 1) / MOEI_ELEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 1)
    for (int64_t k = 0; k < nb; k++) {
        int64_t e = (k + 1) * MOEI_ELEM_BLOCK < count ? (k + 1) * MOEI_ELEM_BLOCK : count;
        for (int64_t i = k * MOEI_ELEM_BLOCK; i < e; i++) x[i] *= alpha;
    }
    return MOE_OK;
}
