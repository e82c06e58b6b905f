/* moe-bench: training-step speed of fixed model configs on this machine, reported as step time,
 * tokens/s, model FLOP/s and that as a fraction of the machine's own sgemm rate measured in the
 * same run with the same thread count. bench/compare_pytorch.py runs the same configs in PyTorch.
 * Uses the public API only (plus CBLAS for the sgemm reference). */
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <moe/moe.h>

#include "../common/blas_tune.h"

typedef struct bench_config {
    const char *name;
    const char *what;
    int32_t d_model, layers, heads, kv_heads, experts, top_k, expert_hidden, vocab, batch, seq;
} bench_config;

static const bench_config configs[] = {
    {"matmul", "matmul-heavy: few large experts", 512, 2, 8, 8, 8, 2, 1024, 256, 8, 128},
    {"finegrained", "fine-grained: 64 small experts, top-8", 256, 2, 8, 8, 64, 8, 128, 256, 8, 128},
    {"attention", "attention-heavy: long sequences", 256, 2, 8, 2, 4, 1, 256, 256, 1, 1024},
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The machine's sgemm rate (FLOP/s) for square n x n products, median of several runs. */
static double sgemm_rate(int n, int reps)
{
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    for (int i = 0; i < n * n; i++) {
        a[i] = (float)((i * 7) % 13) * 0.01f;
        b[i] = (float)((i * 3) % 11) * 0.01f;
    }
    double t[32];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t[r] = now() - t0;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * (double)n * n / median(t, reps);
}

static int usage(FILE *f)
{
    fprintf(f, "usage: moe-bench [--config NAME|all] [--steps N] [--threads N] [--json]\n"
               "  --config   matmul | finegrained | attention | all (default all)\n"
               "  --steps    timed training steps per config after 2 warm-up steps (default 5)\n"
               "  --threads  OpenMP/BLAS threads (default: all cores)\n"
               "  --json     one JSON object per config instead of a table\n");
    return f == stderr ? 2 : 0;
}

int main(int argc, char **argv)
{
    tools_prefer_avx512_blas(argv);
    const char *which = "all";
    int steps = 5, threads = 0, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) which = argv[++i];
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(stdout);
        else {
            fprintf(stderr, "moe-bench: unknown or incomplete argument '%s'\n", argv[i]);
            return usage(stderr);
        }
    }
    if (steps < 1 || steps > 1000 || threads < 0) {
        fprintf(stderr, "moe-bench: --steps must be 1..1000 and --threads >= 0\n");
        return 2;
    }
    if (threads > 0) omp_set_num_threads(threads);
    threads = omp_get_max_threads();
    double peak = sgemm_rate(1024, 7);
    if (!json) {
        printf("sgemm 1024^3 on %d thread(s), OpenBLAS %s kernels: %.1f GFLOP/s (reference for the fractions below)\n",
               threads, openblas_get_corename(), peak / 1e9);
        printf("%-12s %10s %12s %12s %10s\n", "config", "step ms", "tokens/s", "GFLOP/s", "of sgemm");
    }
    int ran = 0;
    for (size_t ci = 0; ci < sizeof configs / sizeof configs[0]; ci++) {
        const bench_config *bc = &configs[ci];
        if (strcmp(which, "all") && strcmp(which, bc->name)) continue;
        ran++;
        moe_ctx_config cc;
        moe_ctx_config_init(&cc, sizeof cc);
        cc.num_threads = threads;
        moe_ctx *ctx = NULL;
        moe_mesh *mesh = NULL;
        moe_model *model = NULL;
        moe_optimizer *opt = NULL;
        moe_model_config mc;
        moe_model_config_init(&mc, sizeof mc);
        mc.vocab_size = bc->vocab;
        mc.max_seq_len = bc->seq;
        mc.d_model = bc->d_model;
        mc.num_layers = bc->layers;
        mc.num_heads = bc->heads;
        mc.num_kv_heads = bc->kv_heads;
        mc.moe_num_experts = bc->experts;
        mc.moe_top_k = bc->top_k;
        mc.moe_expert_hidden = bc->expert_hidden;
        moe_optimizer_config oc;
        moe_optimizer_config_init(&oc, sizeof oc);
        if (moe_ctx_create(&cc, &ctx) || moe_mesh_create(ctx, NULL, &mesh) || moe_model_create(ctx, mesh, &mc, &model) ||
            moe_optimizer_create(model, &oc, &opt)) {
            fprintf(stderr, "moe-bench: %s: %s\n", bc->name, ctx ? moe_ctx_last_error(ctx) : moe_last_error());
            return 1;
        }
        int64_t n = (int64_t)bc->batch * bc->seq;
        int32_t *tok = malloc((size_t)n * sizeof *tok), *tgt = malloc((size_t)n * sizeof *tgt);
        for (int64_t i = 0; i < n; i++) {
            tok[i] = (int32_t)((i * 31 + 7) % bc->vocab);
            tgt[i] = (int32_t)((i * 17 + 3) % bc->vocab);
        }
        moe_batch b;
        moe_batch_init(&b, sizeof b);
        b.tokens = tok;
        b.targets = tgt;
        b.micro_batch_size = bc->batch;
        b.seq_len = bc->seq;
        double t[1000];
        for (int s = 0; s < steps + 2; s++) {
            double t0 = now();
            if (moe_train_step(model, opt, &b, NULL) != MOE_OK) {
                fprintf(stderr, "moe-bench: %s: %s\n", bc->name, moe_ctx_last_error(ctx));
                return 1;
            }
            if (s >= 2) t[s - 2] = now() - t0;
        }
        double step = median(t, steps), fpt = 0.0;
        moe_model_flops_per_token(model, bc->seq, &fpt);
        double tps = (double)n / step, flops = fpt * tps;
        if (json)
            printf("{\"config\":\"%s\",\"threads\":%d,\"step_s\":%.6f,\"tokens_per_s\":%.1f,\"model_flops\":%.4g,"
                   "\"sgemm_flops\":%.4g,\"fraction_of_sgemm\":%.4f}\n",
                   bc->name, threads, step, tps, flops, peak, flops / peak);
        else
            printf("%-12s %10.1f %12.0f %12.2f %9.1f%%   (%s)\n", bc->name, step * 1e3, tps, flops / 1e9,
                   100.0 * flops / peak, bc->what);
        free(tok);
        free(tgt);
        moe_optimizer_destroy(opt);
        moe_model_destroy(model);
        moe_mesh_destroy(mesh);
        moe_ctx_destroy(ctx);
    }
    if (!ran) {
        fprintf(stderr, "moe-bench: unknown config '%s'\n", which);
        return 2;
    }
    return 0;
}
