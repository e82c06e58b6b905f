/* Helpers shared by the generation tests: a model on a fresh ctx, the full-forward logits the
 * decoding results are checked against, and fp64 log-softmax / argmax of those logits. */
#ifndef MOE_TESTS_GEN_UTIL_H
#define MOE_TESTS_GEN_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <moe/ctx.h>
#include <moe/generate.h>
#include <moe/mesh.h>
#include <moe/model.h>

#include "model/model_util.h"

typedef struct gu_model {
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moe_model_config cfg;
} gu_model;

/* 0 on success. */
static inline int gu_open(gu_model *g, const moe_model_config *cfg)
{
    memset(g, 0, sizeof *g);
    g->cfg = *cfg;
    if (moe_ctx_create(NULL, &g->ctx) != MOE_OK) return -1;
    if (moe_mesh_create(g->ctx, NULL, &g->mesh) != MOE_OK) return -1;
    return moe_model_create(g->ctx, g->mesh, cfg, &g->model) == MOE_OK ? 0 : -1;
}

static inline void gu_close(gu_model *g)
{
    moe_model_destroy(g->model);
    moe_mesh_destroy(g->mesh);
    moe_ctx_destroy(g->ctx);
}

/* logits [len, vocab] of the full forward over tokens[0..len). 0 on success. */
static inline int gu_forward(gu_model *g, const int32_t *tokens, int32_t len, float *logits)
{
    return moe_model_forward(g->model, tokens, 1, len, logits, (uint64_t)len * (uint64_t)g->cfg.vocab_size) == MOE_OK
               ? 0
               : -1;
}

/* The argmax of a row, lowest id among ties. */
static inline int32_t gu_argmax(const float *row, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (row[i] > row[best]) best = i;
    return best;
}

/* log softmax of row[tok] in double. */
static inline double gu_logprob(const float *row, int32_t n, int32_t tok)
{
    double mx = row[0];
    for (int32_t i = 1; i < n; i++) mx = row[i] > mx ? row[i] : mx;
    double s = 0.0;
    for (int32_t i = 0; i < n; i++) s += exp((double)row[i] - mx);
    return (double)row[tok] - mx - log(s);
}

/* Sum of log-probabilities of gen[0..n) after prompt, from one full forward over prompt + gen. */
static inline double gu_sequence_logprob(gu_model *g, const int32_t *prompt, int32_t plen, const int32_t *gen,
                                         int32_t n)
{
    const int32_t V = g->cfg.vocab_size, len = plen + n;
    int32_t *seq = malloc((size_t)len * sizeof(int32_t));
    float *lg = malloc((size_t)len * (size_t)V * sizeof(float));
    memcpy(seq, prompt, (size_t)plen * sizeof(int32_t));
    memcpy(seq + plen, gen, (size_t)n * sizeof(int32_t));
    double s = NAN;
    if (gu_forward(g, seq, len, lg) == 0) {
        s = 0.0;
        for (int32_t i = 0; i < n; i++) s += gu_logprob(lg + (size_t)(plen + i - 1) * V, V, gen[i]);
    }
    free(seq);
    free(lg);
    return s;
}

/* max |a - b| / max |b| over one row of n. */
static inline double gu_row_rel_diff(const float *a, const float *b, int32_t n)
{
    double diff = 0.0, ref = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double dd = fabs((double)a[i] - (double)b[i]), r = fabs((double)b[i]);
        diff = dd > diff ? dd : diff;
        ref = r > ref ? r : ref;
    }
    return ref > 0.0 ? diff / ref : diff;
}

#endif
