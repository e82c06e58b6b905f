/* Helpers for the public-API tests of models and layers: failure assertions that check the status
 * and the message (thread-local and per ctx), a ctx + mesh fixture, a fixed tiny config whose sizes
 * the tests count by hand, and a directional finite-difference check of a layer's backward. */
#ifndef MOE_TESTS_MODEL_API_UTIL_H
#define MOE_TESTS_MODEL_API_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "model/model_util.h"
#include <moe/moe.h>

/* `expr` must return `code` and moe_last_error() must contain each string that follows. */
#define AU_FAILS(expr, code, ...)                                                                        \
    do {                                                                                                 \
        moe_status st_ = (expr);                                                                         \
        const char *msg_ = moe_last_error();                                                             \
        if (st_ != (code))                                                                               \
            fail_msg("%s returned %s (%d), expected %s; message '%s'", #expr, moe_status_string(st_),    \
                     (int)st_, moe_status_string(code), msg_ ? msg_ : "(null)");                         \
        if (!msg_ || !msg_[0]) fail_msg("%s: empty moe_last_error()", #expr);                            \
        const char *subs_[] = {__VA_ARGS__, NULL};                                                       \
        for (size_t i_ = 0; subs_[i_]; i_++)                                                             \
            if (!strstr(msg_, subs_[i_])) fail_msg("%s: message '%s' lacks '%s'", #expr, msg_, subs_[i_]); \
    } while (0)

/* As AU_FAILS, and the ctx's last error must carry the same strings. */
#define AU_FAILS_CTX(ctx, expr, code, ...)                                                               \
    do {                                                                                                 \
        AU_FAILS(expr, code, __VA_ARGS__);                                                               \
        const char *cm_ = moe_ctx_last_error(ctx);                                                       \
        if (!cm_) fail_msg("%s: moe_ctx_last_error() is NULL", #expr);                                   \
        const char *csubs_[] = {__VA_ARGS__, NULL};                                                      \
        for (size_t j_ = 0; csubs_[j_]; j_++)                                                            \
            if (!strstr(cm_, csubs_[j_])) fail_msg("%s: ctx message '%s' lacks '%s'", #expr, cm_, csubs_[j_]); \
    } while (0)

#define AU_OK(expr)                                                                                      \
    do {                                                                                                 \
        moe_status st_ = (expr);                                                                         \
        if (st_ != MOE_OK)                                                                               \
            fail_msg("%s returned %s (%d): %s", #expr, moe_status_string(st_), (int)st_, moe_last_error()); \
    } while (0)

/* ---- fixture --------------------------------------------------------------------------------- */

typedef struct au_env {
    moe_ctx *ctx;
    moe_mesh *mesh;
} au_env;

static inline void au_env_open(au_env *e, uint64_t seed)
{
    moe_ctx_config cc;
    AU_OK(moe_ctx_config_init(&cc, sizeof cc));
    cc.seed = seed;
    e->ctx = NULL;
    e->mesh = NULL;
    AU_OK(moe_ctx_create(&cc, &e->ctx));
    AU_OK(moe_mesh_create(e->ctx, NULL, &e->mesh));
}

static inline void au_env_close(au_env *e)
{
    moe_mesh_destroy(e->mesh);
    moe_ctx_destroy(e->ctx);
    e->mesh = NULL;
    e->ctx = NULL;
}

/* The tiny MoE config the parameter counts are computed for by hand: V 13, d 8, 2 layers, 2 heads of
 * 4 with one kv head, RoPE, RMSNorm, untied, 4 SwiGLU experts of hidden 6, top-2; dense MLPs 12. */
static inline void au_tiny_config(moe_model_config *c)
{
    AU_OK(moe_model_config_init(c, sizeof *c));
    c->vocab_size = 13;
    c->max_seq_len = 16;
    c->d_model = 8;
    c->num_layers = 2;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->head_dim = 4;
    c->ffn_hidden = 12;
    c->moe_num_experts = 4;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 6;
    c->init_std = 0.3f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
}

static inline int64_t au_numel(int32_t ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

static inline void au_fill_normal(uint64_t *rs, float *v, int64_t n, double scale)
{
    for (int64_t i = 0; i < n; i++) v[i] = (float)(scale * tu_normal(rs));
}

static inline double au_rel_diff(const float *a, const float *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* ---- layer finite differences ------------------------------------------------------------------ */

/* What one layer's gradient check runs on: the input x [batch*seq, d] and the projection w of the
 * loss L = sum(w .* y) (+ aux + z of an MoE layer, as reported by moe_layer_routing_stats). */
typedef struct au_fd_case {
    const char *what;
    moe_layer *layer;
    int32_t batch, seq, d;
    const float *x;
    const float *w;
    float eps;    /* finite-difference step, in the units of a unit-norm direction */
    double rtol;  /* relative tolerance on |fd - analytic| against max(|g|, |analytic|) */
    double atol;  /* absolute tolerance floor */
    double scale; /* multiplies the analytic gradient: 1 normally, 1.01 to prove the check can fail */
    int verbose;  /* print each failing comparison */
} au_fd_case;

/* L(x) in double over the layer's fp32 forward. */
static inline double au_layer_loss(const au_fd_case *c, const float *x, float *y)
{
    const int64_t nd = (int64_t)c->batch * c->seq * c->d;
    AU_OK(moe_layer_forward(c->layer, x, c->batch, c->seq, y));
    double L = 0.0;
    for (int64_t i = 0; i < nd; i++) L += (double)c->w[i] * y[i];
    int32_t kind = -1;
    AU_OK(moe_layer_kind_of(c->layer, &kind));
    if (kind == MOE_LAYER_MOE) {
        moe_routing_stats s;
        memset(&s, 0, sizeof s);
        s.struct_size = sizeof s;
        AU_OK(moe_layer_routing_stats(c->layer, &s, NULL, 0));
        L += s.aux_loss + s.z_loss;
    }
    return L;
}

/* One directional comparison; returns |fd - expect| / tol (<= 1 passes). */
static inline double au_fd_ratio(const au_fd_case *c, const char *name, const char *dirname, double fd,
                                 double expect, double gnorm)
{
    double tol = c->rtol * (gnorm > fabs(expect) ? gnorm : fabs(expect)) + c->atol;
    double r = fabs(fd - expect) / tol;
    if (r > 1.0 && c->verbose)
        print_error("%s: %s (%s): finite difference %.8g, analytic %.8g (|g| = %.4g, tol %.3g)\n", c->what, name,
                    dirname, fd, expect, gnorm, tol);
    return r;
}

/* Runs the whole check (dx along itself, along a random direction, a few single elements; every
 * parameter tensor along its gradient and a random direction) and returns the worst ratio of
 * error to tolerance. The layer's parameters are restored afterwards. */
static inline double au_layer_fd_check(const au_fd_case *c, uint64_t dir_seed)
{
    const int64_t nd = (int64_t)c->batch * c->seq * c->d;
    float *y = malloc((size_t)nd * sizeof(float)), *dx = malloc((size_t)nd * sizeof(float)),
          *xw = malloc((size_t)nd * sizeof(float)), *dir = malloc((size_t)nd * sizeof(float));
    assert_non_null(y);
    assert_non_null(dx);
    assert_non_null(xw);
    assert_non_null(dir);
    uint64_t rs = dir_seed * 0x9E3779B97F4A7C15ull + 7;
    double worst = 0.0;

    /* analytic gradients of L at (x, θ) */
    AU_OK(moe_layer_zero_grad(c->layer));
    (void)au_layer_loss(c, c->x, y);
    AU_OK(moe_layer_backward(c->layer, c->w, dx));
    for (int64_t i = 0; i < nd; i++) dx[i] = (float)(dx[i] * c->scale);

    /* dx: directional */
    double gnorm = 0.0;
    for (int64_t i = 0; i < nd; i++) gnorm += (double)dx[i] * dx[i];
    gnorm = sqrt(gnorm);
    for (int pass = 0; pass < 2; pass++) {
        double dn = 0.0, expect = 0.0;
        for (int64_t i = 0; i < nd; i++) {
            dir[i] = pass == 0 ? dx[i] : (float)tu_normal(&rs);
            dn += (double)dir[i] * dir[i];
        }
        dn = sqrt(dn);
        if (dn == 0.0) continue;
        for (int64_t i = 0; i < nd; i++) {
            dir[i] = (float)(dir[i] / dn);
            expect += (double)dx[i] * dir[i];
        }
        for (int64_t i = 0; i < nd; i++) xw[i] = c->x[i] + c->eps * dir[i];
        double lp = au_layer_loss(c, xw, y);
        for (int64_t i = 0; i < nd; i++) xw[i] = c->x[i] - c->eps * dir[i];
        double lm = au_layer_loss(c, xw, y);
        double r = au_fd_ratio(c, "dx", pass == 0 ? "along dx" : "random direction", (lp - lm) / (2.0 * c->eps),
                               expect, gnorm);
        if (r > worst) worst = r;
    }
    /* dx: a handful of single elements, spread over tokens and features */
    double rms = gnorm / sqrt((double)nd);
    for (int j = 0; j < 6; j++) {
        int64_t i = (int64_t)((tu_next(&rs) >> 11) % (uint64_t)nd);
        memcpy(xw, c->x, (size_t)nd * sizeof(float));
        xw[i] = c->x[i] + c->eps;
        double lp = au_layer_loss(c, xw, y);
        xw[i] = c->x[i] - c->eps;
        double lm = au_layer_loss(c, xw, y);
        char name[48];
        snprintf(name, sizeof name, "dx[%lld]", (long long)i);
        double r = au_fd_ratio(c, name, "element", (lp - lm) / (2.0 * c->eps), dx[i], fabs(dx[i]) + rms);
        if (r > worst) worst = r;
    }

    /* parameters */
    int32_t count = 0;
    AU_OK(moe_layer_param_count(c->layer, &count));
    assert_true(count > 0);
    for (int32_t p = 0; p < count; p++) {
        char name[128];
        int32_t ndim = 0;
        int64_t shape[8];
        AU_OK(moe_layer_param_info(c->layer, p, name, sizeof name, &ndim, shape));
        const int64_t numel = au_numel(ndim, shape);
        float *theta = malloc((size_t)numel * sizeof(float)), *g = malloc((size_t)numel * sizeof(float)),
              *pd = malloc((size_t)numel * sizeof(float)), *work = malloc((size_t)numel * sizeof(float));
        assert_non_null(theta);
        assert_non_null(g);
        assert_non_null(pd);
        assert_non_null(work);
        AU_OK(moe_layer_param_read(c->layer, p, 0, theta, numel));
        AU_OK(moe_layer_param_read(c->layer, p, 1, g, numel));
        double pn = 0.0;
        for (int64_t i = 0; i < numel; i++) {
            g[i] = (float)(g[i] * c->scale);
            pn += (double)g[i] * g[i];
        }
        pn = sqrt(pn);
        for (int pass = 0; pass < 2; pass++) {
            double dn = 0.0, expect = 0.0;
            for (int64_t i = 0; i < numel; i++) {
                pd[i] = pass == 0 ? g[i] : (float)tu_normal(&rs);
                dn += (double)pd[i] * pd[i];
            }
            dn = sqrt(dn);
            if (dn == 0.0) continue;
            for (int64_t i = 0; i < numel; i++) {
                pd[i] = (float)(pd[i] / dn);
                expect += (double)g[i] * pd[i];
            }
            for (int64_t i = 0; i < numel; i++) work[i] = theta[i] + c->eps * pd[i];
            AU_OK(moe_layer_param_write(c->layer, p, work, numel));
            double lp = au_layer_loss(c, c->x, y);
            for (int64_t i = 0; i < numel; i++) work[i] = theta[i] - c->eps * pd[i];
            AU_OK(moe_layer_param_write(c->layer, p, work, numel));
            double lm = au_layer_loss(c, c->x, y);
            AU_OK(moe_layer_param_write(c->layer, p, theta, numel));
            double r = au_fd_ratio(c, name, pass == 0 ? "along gradient" : "random direction",
                                   (lp - lm) / (2.0 * c->eps), expect, pn);
            if (r > worst) worst = r;
        }
        free(theta);
        free(g);
        free(pd);
        free(work);
    }
    free(y);
    free(dx);
    free(xw);
    free(dir);
    return worst;
}

#endif
