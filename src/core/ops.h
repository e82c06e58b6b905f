/* The internal op table: the layers are written once against these entry points, and each backend
 * (src/cpu/, cuda/) implements them. Pointers live in the ctx's memory space; matrices are
 * row-major; every op returns a status. New ops arrive with the layers that need them. */
#ifndef MOEI_CORE_OPS_H
#define MOEI_CORE_OPS_H

#include <stdint.h>

#include "moe/ctx.h"

/* One problem of a grouped GEMM: C = alpha * op(A) * op(B) + beta * C, op(A) m x k, op(B) k x n. */
typedef struct moei_gemm_problem {
    int64_t m, n, k;
    const float *a;
    int64_t lda;
    const float *b;
    int64_t ldb;
    float *c;
    int64_t ldc;
} moei_gemm_problem;

typedef struct moei_ops {
    const char *name;
    /* C = alpha * op(A) * op(B) + beta * C. trans_* is 0 or 1. With beta == 0, C is not read (NaN in C
     * does not propagate). m, n or k may be 0; k == 0 scales C by beta. */
    moe_status (*gemm)(moe_ctx *ctx, int32_t trans_a, int32_t trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                       const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
    /* `count` independent problems with one transpose setting and alpha/beta; row counts may
     * differ (the expert layer's variable tokens per expert) and may be 0. */
    moe_status (*grouped_gemm)(moe_ctx *ctx, int32_t trans_a, int32_t trans_b, float alpha, float beta,
                               const moei_gemm_problem *problems, int64_t count);
} moei_ops;

/* The op table of the ctx's device, or NULL (with a message) if that backend has none yet. */
const moei_ops *moei_ctx_ops(moe_ctx *ctx);

/* The CPU table, exposed so tests can call it directly. */
extern const moei_ops moei_cpu_ops;

#endif
