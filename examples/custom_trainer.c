/* A custom C trainer built on libmoe's public API only, the way people embed libmoe layers in
 * their own training code:
 *
 *  1. a standalone MoE layer (FastMoE's FMoE as a C object) trained as a regression model with a
 *     hand-written SGD loop over moe_layer_param_read/write;
 *  2. a full model driven one micro-batch at a time (moe_model_forward_backward with token-count
 *     weights, i.e. gradient accumulation by hand) and updated with moe_optimizer_step.
 *
 * Exit status 0 when both losses fall, so the test suite runs this file as a test. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <moe/moe.h>

#define CHECK(ctx, call)                                                                               \
    do {                                                                                               \
        moe_status st_ = (call);                                                                       \
        if (st_ != MOE_OK) {                                                                           \
            fprintf(stderr, "%s failed: %s: %s\n", #call, moe_status_string(st_), moe_ctx_last_error(ctx)); \
            exit(1);                                                                                   \
        }                                                                                              \
    } while (0)

/* Part 1: fit y = sin(x) elementwise through an MoE layer, with our own SGD. */
static int train_layer(moe_ctx *ctx, moe_mesh *mesh)
{
    enum { D = 8, N = 64 };
    moe_layer_config lc;
    moe_layer_config_init(&lc, sizeof lc);
    lc.d_model = D;
    lc.hidden = 16;
    lc.num_experts = 4;
    lc.top_k = 2;
    lc.init_std = 0.3f;
    moe_layer *layer = NULL;
    CHECK(ctx, moe_layer_create(ctx, mesh, &lc, &layer));
    float x[N * D], y[N * D], target[N * D], dy[N * D], dx[N * D];
    for (int i = 0; i < N * D; i++) {
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        target[i] = sinf(2.0f * x[i]);
    }
    int32_t count = 0;
    CHECK(ctx, moe_layer_param_count(layer, &count));
    double first = 0.0, last = 0.0;
    for (int step = 0; step < 200; step++) {
        CHECK(ctx, moe_layer_zero_grad(layer));
        CHECK(ctx, moe_layer_forward(layer, x, 1, N, y));
        double loss = 0.0;
        for (int i = 0; i < N * D; i++) {
            double e = y[i] - target[i];
            loss += e * e / (N * D);
            dy[i] = (float)(2.0 * e / (N * D));
        }
        CHECK(ctx, moe_layer_backward(layer, dy, dx));
        for (int32_t p = 0; p < count; p++) { /* plain SGD, written by the user */
            int32_t ndim = 0;
            int64_t shape[8], n = 1;
            CHECK(ctx, moe_layer_param_info(layer, p, NULL, 0, &ndim, shape));
            for (int32_t d = 0; d < ndim; d++) n *= shape[d];
            float *w = malloc((size_t)n * sizeof *w), *g = malloc((size_t)n * sizeof *g);
            CHECK(ctx, moe_layer_param_read(layer, p, 0, w, n));
            CHECK(ctx, moe_layer_param_read(layer, p, 1, g, n));
            for (int64_t i = 0; i < n; i++) w[i] -= 0.5f * g[i];
            CHECK(ctx, moe_layer_param_write(layer, p, w, n));
            free(w);
            free(g);
        }
        if (step == 0) first = loss;
        last = loss;
    }
    moe_routing_stats rs = {.struct_size = sizeof rs};
    int64_t per_expert[4];
    CHECK(ctx, moe_layer_routing_stats(layer, &rs, per_expert, 4));
    printf("MoE layer regression: loss %.4f -> %.4f; tokens per expert %lld %lld %lld %lld\n", first, last,
           (long long)per_expert[0], (long long)per_expert[1], (long long)per_expert[2], (long long)per_expert[3]);
    moe_layer_destroy(layer);
    return last < 0.5 * first;
}

/* Part 2: a language model, micro-batches accumulated by hand. */
static int train_model(moe_ctx *ctx, moe_mesh *mesh)
{
    enum { MICRO = 3, B = 2, T = 16 };
    moe_model_config mc;
    moe_model_config_init(&mc, sizeof mc);
    mc.vocab_size = 32;
    mc.max_seq_len = T;
    mc.d_model = 32;
    mc.num_layers = 2;
    mc.num_heads = 4;
    mc.num_kv_heads = 2;
    mc.moe_num_experts = 4;
    mc.moe_top_k = 2;
    mc.moe_expert_hidden = 32;
    moe_model *model = NULL;
    CHECK(ctx, moe_model_create(ctx, mesh, &mc, &model));
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 3e-3f;
    moe_optimizer *opt = NULL;
    CHECK(ctx, moe_optimizer_create(model, &oc, &opt));
    int32_t tok[MICRO][B * T], tgt[MICRO][B * T];
    for (int m = 0; m < MICRO; m++)
        for (int i = 0; i < B * T; i++) { /* counting sequences: next token = token + 1 */
            tok[m][i] = (m * 7 + i) % mc.vocab_size;
            tgt[m][i] = (tok[m][i] + 1) % mc.vocab_size;
        }
    double first = 0.0, last = 0.0;
    for (int step = 0; step < 40; step++) {
        CHECK(ctx, moe_model_zero_grad(model));
        double loss = 0.0;
        for (int m = 0; m < MICRO; m++) {
            double lm = 0.0, aux = 0.0;
            CHECK(ctx, moe_model_forward_backward(model, tok[m], tgt[m], B, T, 1.0f / MICRO, &lm, &aux));
            loss += lm / MICRO;
        }
        moe_optimizer_stats os = {.struct_size = sizeof os};
        CHECK(ctx, moe_optimizer_step(opt, &os));
        if (step == 0) first = loss;
        last = loss;
        if (step % 10 == 0) printf("  step %2d  loss %.4f  grad norm %.3f  lr %.2g\n", step, loss, os.grad_norm, os.lr);
    }
    printf("language model: loss %.4f -> %.4f\n", first, last);
    moe_optimizer_destroy(opt);
    moe_model_destroy(model);
    return last < 0.5 * first;
}

int main(void)
{
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK || moe_mesh_create(ctx, NULL, &mesh) != MOE_OK) {
        fprintf(stderr, "setup: %s\n", moe_last_error());
        return 1;
    }
    int ok = train_layer(ctx, mesh) & train_model(ctx, mesh);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
    printf("%s\n", ok ? "ok: both losses fell" : "FAIL: a loss did not fall");
    return ok ? 0 : 1;
}
