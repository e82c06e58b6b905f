/* CPU activations of the expert / dense MLP (SwiGLU, GELU exact and tanh) with their backwards, and
 * the small elementwise utilities the layers need (residual add, axpy, scale). All fp32, contiguous,
 * purely elementwise: each output element depends on its own inputs only, so results are the same
 * bits for any thread count. Outputs are OVERWRITTEN unless a function says it accumulates. */
#ifndef MOEI_CPU_ACTIVATION_H
#define MOEI_CPU_ACTIVATION_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- SwiGLU: out = silu(gate) * up, silu(g) = g * sigmoid(g) ----------------------------------- */

/* Packed form, the output of one fused [d, 2f] up-projection: h is [rows, 2f] and each row is laid
 * out as [gate (f values) | up (f values)]; out is [rows, f]. out must not overlap h. */
moe_status moei_cpu_swiglu_forward(moe_ctx *ctx, int64_t rows, int64_t f, const float *h, float *out);

/* Packed backward: d_h [rows, 2f] = [d_gate | d_up] with d_gate = d_out * up * silu'(gate) and
 * d_up = d_out * silu(gate). d_h may be the same pointer as h (in place); d_out must not overlap
 * either. */
moe_status moei_cpu_swiglu_backward(moe_ctx *ctx, int64_t rows, int64_t f, const float *h, const float *d_out,
                                    float *d_h);

/* Split form over `count` elements of separate gate and up arrays. out may equal gate or up. */
moe_status moei_cpu_swiglu_forward_split(moe_ctx *ctx, int64_t count, const float *gate, const float *up,
                                         float *out);

/* Split backward. d_gate may equal gate and d_up may equal up (in place); d_out may equal d_gate or
 * d_up. Any other overlap is not allowed. */
moe_status moei_cpu_swiglu_backward_split(moe_ctx *ctx, int64_t count, const float *gate, const float *up,
                                          const float *d_out, float *d_gate, float *d_up);

/* ---- GELU ---------------------------------------------------------------------------------------- */

typedef enum moei_gelu_approx {
    MOEI_GELU_EXACT = 0, /* 0.5 x (1 + erf(x / sqrt 2)), torch approximate='none' */
    MOEI_GELU_TANH = 1   /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), torch approximate='tanh' */
} moei_gelu_approx;

/* y = gelu(x) over count elements; y may equal x. approx is a moei_gelu_approx. */
moe_status moei_cpu_gelu_forward(moe_ctx *ctx, int64_t count, int32_t approx, const float *x, float *y);

/* dx = dy * gelu'(x); dx may equal dy (in place) or x. */
moe_status moei_cpu_gelu_backward(moe_ctx *ctx, int64_t count, int32_t approx, const float *x, const float *dy,
                                  float *dx);

/* ---- elementwise utilities ------------------------------------------------------------------------- */

/* y = a + b (residual); y may equal a or b. */
moe_status moei_cpu_add(moe_ctx *ctx, int64_t count, const float *a, const float *b, float *y);

/* y += alpha * x (ACCUMULATES into y); x and y must not partially overlap. */
moe_status moei_cpu_axpy(moe_ctx *ctx, int64_t count, float alpha, const float *x, float *y);

/* x *= alpha in place (also the gradient-clipping scale). Plain IEEE multiply: NaN * 0 stays NaN. */
moe_status moei_cpu_scale(moe_ctx *ctx, int64_t count, float alpha, float *x);

#ifdef __cplusplus
}
#endif

#endif
