/* moe-train: the main job. Trains an MoE language model on a text file or a Megatron .bin/.idx
 * dataset, shows progress, writes metrics (JSON lines), a loss plot (SVG), checkpoints and a text
 * sample, resumes from its latest checkpoint bit for bit, generates text from a checkpoint and
 * exports Hugging Face Mixtral checkpoints. Written against the public API only. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <moe/checkpoint.h>
#include <moe/moe.h>

#include "../common/blas_tune.h"
#include "options.h"
#include "plot.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int fail_status(moe_ctx *ctx, const char *what)
{
    fprintf(stderr, "moe-train: %s: %s\n", what, ctx ? moe_ctx_last_error(ctx) : moe_last_error());
    return 1;
}

static void format_eta(double s, char *buf, size_t n)
{
    if (!isfinite(s) || s < 0) s = 0;
    int m = (int)(s / 60), sec = (int)s % 60;
    if (m >= 60)
        snprintf(buf, n, "%dh%02dm", m / 60, m % 60);
    else
        snprintf(buf, n, "%dm%02ds", m, sec);
}

static int mkdir_p(const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int choice_index(const char *v, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v, names[i])) return i;
    return 0;
}

static void model_config_from(const train_options *o, int32_t vocab, moe_model_config *c)
{
    static const char *const routers[] = {"token", "expert"}, *const scores[] = {"softmax", "sigmoid"},
                             *const positions[] = {"rope", "alibi", "learned"}, *const norms[] = {"rms", "layer"},
                             *const acts[] = {"swiglu", "gelu"};
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = vocab;
    c->max_seq_len = o->seq_len;
    c->d_model = o->d_model;
    c->num_layers = o->layers;
    c->num_heads = o->heads;
    c->num_kv_heads = o->kv_heads;
    c->head_dim = o->head_dim;
    c->position = choice_index(o->position, positions, 3);
    c->rope_theta = (float)o->rope_theta;
    c->norm = choice_index(o->norm, norms, 2);
    c->tie_embeddings = (uint32_t)o->tie_embeddings;
    c->init_std = (float)o->init_std;
    c->ffn_hidden = o->ffn_hidden;
    c->ffn_activation = choice_index(o->activation, acts, 2);
    c->moe_num_experts = o->experts;
    c->moe_top_k = o->top_k;
    c->moe_expert_hidden = o->expert_hidden;
    c->moe_activation = c->ffn_activation;
    c->moe_layer_freq = o->moe_every;
    c->moe_first_dense = o->first_dense;
    c->moe_shared_expert_hidden = o->shared_expert_hidden;
    c->moe_router = choice_index(o->router, routers, 2);
    c->moe_score_function = choice_index(o->score, scores, 2);
    c->moe_capacity_factor = (float)o->capacity_factor;
    c->moe_jitter = (float)o->jitter;
    c->moe_aux_loss_coef = (float)o->aux_coef;
    c->moe_z_loss_coef = (float)o->z_coef;
    c->moe_bias_update_rate = (float)o->bias_rate;
    c->pipeline_virtual_stages = o->virtual_stages;
}

static void optimizer_config_from(const train_options *o, moe_optimizer_config *c)
{
    static const char *const decays[] = {"constant", "cosine", "linear"};
    moe_optimizer_config_init(c, sizeof *c);
    c->type = strcmp(o->optimizer, "sgd") ? MOE_OPTIMIZER_ADAMW : MOE_OPTIMIZER_SGD;
    c->lr = (float)o->lr;
    c->min_lr = (float)(o->min_lr < o->lr ? o->min_lr : o->lr);
    c->warmup_steps = o->warmup;
    c->decay = choice_index(o->decay, decays, 3);
    c->decay_steps = o->steps > o->warmup ? o->steps - o->warmup : 1;
    c->beta1 = (float)o->beta1;
    c->beta2 = (float)o->beta2;
    c->weight_decay = (float)o->weight_decay;
    c->momentum = (float)o->momentum;
    c->clip_grad_norm = (float)o->clip;
    c->zero_stage = (uint32_t)o->zero_stage;
}

/* Mean cross-entropy of `batches` validation micro-batches, from the logits. */
/* The validation loss needs a whole-model forward, which a pipeline stage cannot run alone. */
static const moe_mesh *mesh_of_run;

static int validation_loss(moe_model *model, moe_dataset *ds, const train_options *o, int32_t vocab, int32_t *tok,
                           int32_t *tgt, float *logits, double *out)
{
    int64_t nval = 0;
    int32_t pp = 1;
    moe_mesh_group_size(mesh_of_run, MOE_AXIS_PP, &pp);
    if (pp > 1 || moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nval) != MOE_OK || nval == 0) {
        *out = NAN;
        return 0;
    }
    const int64_t n = (int64_t)o->batch * o->seq_len;
    double sum = 0.0;
    int64_t count = 0;
    for (int b = 0; b < o->eval_batches; b++) {
        if (moe_dataset_batch(ds, MOE_DATASET_SPLIT_VALIDATION, (int64_t)b * o->batch, o->batch, tok, tgt) != MOE_OK ||
            moe_model_forward(model, tok, o->batch, o->seq_len, logits, (uint64_t)(n * vocab)) != MOE_OK)
            return -1;
        for (int64_t i = 0; i < n; i++) {
            const float *row = logits + i * vocab;
            float mx = row[0];
            for (int32_t v = 1; v < vocab; v++) mx = row[v] > mx ? row[v] : mx;
            double z = 0.0;
            for (int32_t v = 0; v < vocab; v++) z += exp((double)row[v] - mx);
            sum += log(z) + mx - row[tgt[i]];
            count++;
        }
    }
    *out = sum / (double)count;
    return 0;
}

static void print_bytes(FILE *f, const int32_t *t, int32_t n)
{
    for (int32_t i = 0; i < n; i++) fputc(t[i] >= 0 && t[i] < 256 ? t[i] : '?', f);
}

static int generate_text(moe_model *model, const train_options *o, FILE *out)
{
    int32_t prompt[1024], len = 0;
    for (const unsigned char *p = (const unsigned char *)o->prompt; *p && len < 1024; p++) prompt[len++] = *p;
    if (len == 0) {
        fprintf(stderr, "moe-train: --prompt is empty\n");
        return 1;
    }
    moe_generate_config g;
    moe_generate_config_init(&g, sizeof g);
    g.max_new_tokens = o->max_new_tokens;
    g.temperature = (float)o->temperature;
    g.top_k = o->top_k_sample;
    g.top_p = (float)o->top_p;
    g.beam_width = o->beam;
    g.seed = (uint64_t)o->seed;
    int32_t cap = o->max_new_tokens > 0 ? o->max_new_tokens : 1, got = 0;
    int32_t *gen = malloc((size_t)cap * sizeof *gen);
    if (moe_model_generate(model, &g, prompt, len, gen, cap, &got) != MOE_OK) {
        free(gen);
        return fail_status(NULL, "generate");
    }
    print_bytes(out, prompt, len);
    print_bytes(out, gen, got);
    fputc('\n', out);
    free(gen);
    return 0;
}

typedef struct run {
    int rank0;                 /* rank 0 of the world prints and writes the outputs */
    int32_t dp, dp_rank, world; /* this rank reads micro-batches [dp_rank * per_step, ...) of each step */
    moe_ctx *ctx;
    moe_mesh *mesh;
    moe_model *model;
    moe_optimizer *opt;
    moe_dataset *ds;
} run;

static void run_free(run *r)
{
    moe_dataset_destroy(r->ds);
    moe_optimizer_destroy(r->opt);
    moe_model_destroy(r->model);
    moe_mesh_destroy(r->mesh);
    moe_ctx_destroy(r->ctx);
}

static int open_run(run *r, const train_options *o, uint64_t seed)
{
    moe_ctx_config cc;
    moe_ctx_config_init(&cc, sizeof cc);
    cc.num_threads = o->threads;
    cc.seed = seed;
    if (moe_ctx_create(&cc, &r->ctx) != MOE_OK) return fail_status(NULL, "creating the context");
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.tp = o->tp;
    mc.pp = o->pp;
    mc.ep = o->ep;
    mc.etp = o->etp;
    mc.sequence_parallel = (uint32_t)o->sequence_parallel;
    mc.dp = o->dp;
    if (mc.dp <= 0) { /* fill dp from the launcher's world size */
        const char *ws = getenv("OMPI_COMM_WORLD_SIZE");
        if (!ws) ws = getenv("PMI_SIZE");
        int world = ws ? atoi(ws) : 1, rest = (o->tp > 0 ? o->tp : 1) * (o->pp > 0 ? o->pp : 1);
        mc.dp = world > 0 && rest > 0 && world % rest == 0 ? world / rest : 1;
    }
    if (moe_mesh_create(r->ctx, &mc, &r->mesh) != MOE_OK) return fail_status(r->ctx, "the parallel layout (--dp/--tp/--pp/--ep/--etp)");
    int32_t rank = 0;
    moe_mesh_group_rank(r->mesh, MOE_AXIS_WORLD, &rank);
    r->rank0 = rank == 0;
    moe_mesh_group_size(r->mesh, MOE_AXIS_DP, &r->dp);
    moe_mesh_group_rank(r->mesh, MOE_AXIS_DP, &r->dp_rank);
    moe_mesh_group_size(r->mesh, MOE_AXIS_WORLD, &r->world);
    return 0;
}

static int save_checkpoint(run *r, const train_options *o, const char *root, int64_t step)
{
    char *json = options_to_json(o);
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    info.step = step;
    info.data_position = step * (int64_t)o->batch * o->micro_batches * r->dp;
    info.keep_last = o->keep;
    info.user_json = json;
    moe_status st = moe_checkpoint_save(r->model, r->opt, root, &info);
    free(json);
    return st == MOE_OK ? 0 : fail_status(r->ctx, "saving a checkpoint");
}

static int cmd_train(train_options *o)
{
    char ckpt_root[1100], path[1200];
    snprintf(ckpt_root, sizeof ckpt_root, "%s/checkpoints", o->out);
    int64_t start_step = 0;
    uint64_t seed = (uint64_t)o->seed;
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    if (o->resume) {
        /* The run's settings come back from the checkpoint; flags given now override them. */
        char *user = malloc(1 << 20);
        uint32_t size = 0;
        if (moe_checkpoint_read_info(ckpt_root, &info, user, 1 << 20, &size) != MOE_OK) {
            free(user);
            return fail_status(NULL, "--resume: reading the latest checkpoint");
        }
        train_options saved;
        options_defaults(&saved);
        if (options_apply_json(&saved, user, "checkpoint settings")) {
            free(user);
            return 1;
        }
        free(user);
        if (options_given("steps")) saved.steps = o->steps;
        if (options_given("time-limit")) saved.time_limit = o->time_limit;
        if (options_given("threads")) saved.threads = o->threads;
        if (options_given("quiet")) saved.quiet = o->quiet;
        if (options_given("checkpoint-every")) saved.checkpoint_every = o->checkpoint_every;
        if (options_given("stop-after")) saved.stop_after = o->stop_after;
        snprintf(saved.out, sizeof saved.out, "%s", o->out);
        saved.resume = 1;
        *o = saved;
        start_step = info.step;
        seed = info.rng_seed;
    }
    if (mkdir_p(o->out) != 0) {
        fprintf(stderr, "moe-train: cannot create --out '%s': %s\n", o->out, strerror(errno));
        return 1;
    }
    run r = {0};
    if (open_run(&r, o, seed)) return 1;
    if (!r.rank0) o->quiet = 1; /* one rank reports for all */
    mesh_of_run = r.mesh;
    moe_dataset_config dc;
    moe_dataset_config_init(&dc, sizeof dc);
    dc.path = o->data;
    dc.kind = !strcmp(o->data_kind, "text") ? MOE_DATASET_KIND_TEXT
              : !strcmp(o->data_kind, "indexed") ? MOE_DATASET_KIND_INDEXED : MOE_DATASET_KIND_AUTO;
    dc.seq_len = o->seq_len;
    dc.seed = (uint64_t)o->seed;
    dc.validation_fraction = o->val_fraction;
    if (moe_dataset_open(r.ctx, &dc, &r.ds) != MOE_OK) {
        fail_status(r.ctx, "--data");
        run_free(&r);
        return 1;
    }
    int32_t vocab = 256;
    moe_dataset_vocab_size(r.ds, &vocab);
    if (vocab <= 0) vocab = 256;
    moe_model_config mc;
    if (o->resume) {
        moe_model_config_init(&mc, sizeof mc);
        if (moe_checkpoint_read_config(ckpt_root, &mc) != MOE_OK) {
            run_free(&r);
            return fail_status(NULL, "--resume: reading the model config");
        }
    } else {
        model_config_from(o, vocab, &mc);
    }
    if (moe_model_create(r.ctx, r.mesh, &mc, &r.model) != MOE_OK) {
        fail_status(r.ctx, "model settings");
        run_free(&r);
        return 1;
    }
    moe_optimizer_config oc;
    optimizer_config_from(o, &oc);
    if (moe_optimizer_create(r.model, &oc, &r.opt) != MOE_OK) {
        fail_status(r.ctx, "optimizer settings");
        run_free(&r);
        return 1;
    }
    if (o->resume && moe_checkpoint_load(r.model, r.opt, ckpt_root, NULL, NULL, 0) != MOE_OK) {
        fail_status(r.ctx, "--resume: loading the checkpoint");
        run_free(&r);
        return 1;
    }
    int64_t total_params = 0, active = 0;
    moe_model_num_params(r.model, &total_params, &active);
    int64_t ntrain = 0;
    moe_dataset_num_samples(r.ds, MOE_DATASET_SPLIT_TRAIN, &ntrain);
    if (!o->quiet)
        printf("moe-train: %s model, %.2fM parameters (%.2fM active per token), %d layers, %d experts top-%d; "
               "data %s (%lld training samples of %d tokens)%s\n",
               mc.moe_num_experts ? "MoE" : "dense", total_params / 1e6, active / 1e6, mc.num_layers,
               mc.moe_num_experts, mc.moe_top_k, o->data, (long long)ntrain, o->seq_len,
               o->resume ? ", resumed" : "");

    const int64_t per_step = (int64_t)o->batch * o->micro_batches, ntok = per_step * o->seq_len;
    int32_t *tok = malloc((size_t)ntok * sizeof *tok), *tgt = malloc((size_t)ntok * sizeof *tgt);
    float *logits = malloc((size_t)o->batch * o->seq_len * vocab * sizeof *logits);
    double *xs = malloc((size_t)(o->steps + 1) * sizeof *xs), *ys = malloc((size_t)(o->steps + 1) * sizeof *ys);
    double *vx = malloc((size_t)(o->steps + 2) * sizeof *vx), *vy = malloc((size_t)(o->steps + 2) * sizeof *vy);
    int64_t npts = 0, nval = 0;
    snprintf(path, sizeof path, "%s/metrics.jsonl", o->out);
    FILE *metrics = r.rank0 ? fopen(path, o->resume ? "a" : "w") : NULL;
    if (!tok || !tgt || !logits || !xs || !ys || !vx || !vy || (r.rank0 && !metrics)) {
        fprintf(stderr, "moe-train: cannot start (%s)\n", metrics ? "out of memory" : strerror(errno));
        run_free(&r);
        return 1;
    }
    /* On resume, reload the curve so far for the plot. */
    if (o->resume) {
        FILE *old = fopen(path, "r");
        char line[2048];
        while (old && fgets(line, sizeof line, old)) {
            long long st;
            double l, vl;
            if (sscanf(line, "{\"step\":%lld,\"loss\":%lf", &st, &l) == 2 && st <= start_step && npts < o->steps) {
                xs[npts] = (double)st;
                ys[npts++] = l;
            }
            char *v = strstr(line, "\"val_loss\":");
            if (v && sscanf(v, "\"val_loss\":%lf", &vl) == 1 && st <= start_step && nval < o->steps + 1) {
                vx[nval] = (double)st;
                vy[nval++] = vl;
            }
        }
        if (old) fclose(old);
    }
    const int tty = isatty(STDOUT_FILENO) && !o->quiet;
    moe_batch b;
    moe_batch_init(&b, sizeof b);
    b.tokens = tok;
    b.targets = tgt;
    b.micro_batch_size = o->batch;
    b.seq_len = o->seq_len;
    b.num_micro_batches = o->micro_batches;
    b.pipeline_schedule = !strcmp(o->pipeline, "gpipe") ? MOE_PIPELINE_GPIPE
                          : !strcmp(o->pipeline, "interleaved") ? MOE_PIPELINE_INTERLEAVED : MOE_PIPELINE_ONE_F_ONE_B;
    double t_start = now(), t_last = t_start, val = NAN;
    int64_t tokens_since = 0, step = start_step;
    int rc = 0, stopped_early = 0;
    for (step = start_step; step < o->steps; step++) {
        /* data parallelism: rank d of the dp group reads the d-th share of the step's global batch */
        int64_t first = (step * r.dp + r.dp_rank) * per_step;
        if (moe_dataset_batch(r.ds, MOE_DATASET_SPLIT_TRAIN, first, (int32_t)per_step, tok, tgt) != MOE_OK) {
            rc = fail_status(r.ctx, "reading a batch");
            break;
        }
        moe_step_stats s = {.struct_size = sizeof s};
        if (moe_train_step(r.model, r.opt, &b, &s) != MOE_OK) {
            rc = fail_status(r.ctx, "training step");
            break;
        }
        tokens_since += ntok;
        int64_t done = step + 1;
        int eval_now = done == o->steps || (o->eval_every > 0 && done % o->eval_every == 0);
        if (eval_now) {
            if (validation_loss(r.model, r.ds, o, vocab, tok, tgt, logits, &val)) {
                rc = fail_status(r.ctx, "validation");
                break;
            }
            vx[nval] = (double)done;
            vy[nval++] = val;
        }
        xs[npts] = (double)done;
        ys[npts++] = s.loss;
        double t = now(), tps = tokens_since / fmax(t - t_last, 1e-9);
        if (metrics) fprintf(metrics, "{\"step\":%lld,\"loss\":%.6f,\"aux_loss\":%.6f,\"grad_norm\":%.5f,\"lr\":%.6g,"
                         "\"tokens\":%lld,\"dropped\":%lld,\"max_load\":%.4f,\"skipped\":%u,\"elapsed_s\":%.3f",
                (long long)done, s.loss, s.aux_loss, s.grad_norm, s.lr, (long long)s.tokens, (long long)s.dropped,
                s.max_load, (unsigned)s.skipped, t - t_start);
        if (metrics && eval_now) fprintf(metrics, ",\"val_loss\":%.6f", val);
        if (metrics) fprintf(metrics, "}\n");
        double eta = (t - t_start) / (double)(done - start_step) * (double)(o->steps - done);
        char etabuf[32];
        format_eta(eta, etabuf, sizeof etabuf);
        if (!o->quiet && (tty || done % o->log_every == 0 || done == o->steps || eval_now)) {
            char valbuf[16] = "  -   ";
            if (isfinite(val)) snprintf(valbuf, sizeof valbuf, "%.4f", val);
            printf("%sstep %5lld/%d | loss %.4f | val %s | %6.0f tok/s | load max/mean %.2f | lr %.2e | ETA %s%s",
                   tty ? "\r\033[K" : "", (long long)done, o->steps, s.loss, valbuf, tps, s.max_load, s.lr, etabuf,
                   tty && !eval_now ? "" : "\n");
            fflush(stdout);
            t_last = t;
            tokens_since = 0;
        }
        if (o->checkpoint_every > 0 && done % o->checkpoint_every == 0 && done != o->steps &&
            save_checkpoint(&r, o, ckpt_root, done)) {
            rc = 1;
            break;
        }
        if (((o->time_limit > 0 && t - t_start > o->time_limit) || (o->stop_after > 0 && done - start_step >= o->stop_after)) &&
            done < o->steps) {
            stopped_early = 1;
            step = done;
            break;
        }
    }
    if (metrics) fclose(metrics);
    if (rc == 0) {
        int64_t final_step = stopped_early ? step : o->steps;
        if (final_step > start_step && save_checkpoint(&r, o, ckpt_root, final_step)) rc = 1;
        snprintf(path, sizeof path, "%s/loss.svg", o->out);
        plot_series series[2] = {{"train loss", "#1f77b4", xs, ys, npts}, {"validation loss", "#d62728", vx, vy, nval}};
        if (r.rank0 && plot_write_svg(path, "moe-train: loss", "step", "cross-entropy (nats/token)", series, 2) != 0)
            fprintf(stderr, "moe-train: warning: cannot write %s: %s\n", path, strerror(errno));
        /* every rank decodes (expert-parallel layers exchange tokens); rank 0 writes */
        snprintf(path, sizeof path, "%s/sample.txt", o->out);
        FILE *sf = r.rank0 ? fopen(path, "w") : fopen("/dev/null", "w");
        if (sf) {
            if (o->tp > 1 || o->pp > 1) /* generation needs whole layers: load the checkpoint on one rank */
                fprintf(sf, "(no sample: generate from the checkpoint with `moe-train generate` on one rank)\n");
            else
                rc |= generate_text(r.model, o, sf);
            fclose(sf);
        }
        if (!o->quiet && rc == 0) {
            printf("\n%s at step %lld: train loss %.4f, validation loss %.4f (%.1fs)\n",
                   stopped_early ? "stopped early" : "done", (long long)final_step,
                   npts ? ys[npts - 1] : NAN, nval ? vy[nval - 1] : NAN, now() - t_start);
            printf("wrote %s/metrics.jsonl, %s/loss.svg, %s/checkpoints/, %s/sample.txt\nsample:\n", o->out, o->out,
                   o->out, o->out);
            snprintf(path, sizeof path, "%s/sample.txt", o->out);
            FILE *shown = fopen(path, "r");
            char line[512];
            while (shown && fgets(line, sizeof line, shown)) fputs(line, stdout);
            if (shown) fclose(shown);
        }
    }
    free(tok);
    free(tgt);
    free(logits);
    free(xs);
    free(ys);
    free(vx);
    free(vy);
    run_free(&r);
    return rc;
}

/* Rebuild the model a checkpoint holds (config, seed and weights) for generate and export-hf. */
static int open_checkpoint_model(run *r, const train_options *o)
{
    moe_checkpoint_info info;
    moe_checkpoint_info_init(&info, sizeof info);
    uint32_t size = 0;
    if (moe_checkpoint_read_info(o->checkpoint, &info, NULL, 0, &size) != MOE_OK)
        return fail_status(NULL, "--checkpoint");
    if (open_run(r, o, info.rng_seed)) return 1;
    moe_model_config mc;
    moe_model_config_init(&mc, sizeof mc);
    if (moe_checkpoint_read_config(o->checkpoint, &mc) != MOE_OK) return fail_status(NULL, "--checkpoint");
    if (moe_model_create(r->ctx, r->mesh, &mc, &r->model) != MOE_OK) return fail_status(r->ctx, "model");
    if (moe_checkpoint_load(r->model, NULL, o->checkpoint, NULL, NULL, 0) != MOE_OK)
        return fail_status(r->ctx, "--checkpoint");
    return 0;
}

static int cmd_generate(const train_options *o)
{
    if (!o->checkpoint[0]) {
        fprintf(stderr, "moe-train: generate needs --checkpoint DIR\n");
        return 2;
    }
    run r = {0};
    int rc = open_checkpoint_model(&r, o);
    if (rc == 0) rc = generate_text(r.model, o, stdout);
    run_free(&r);
    return rc;
}

static int cmd_export(const train_options *o)
{
    if (!o->checkpoint[0] || !strcmp(o->out, "moe-train-out")) {
        fprintf(stderr, "moe-train: export-hf needs --checkpoint DIR and --out DIR\n");
        return 2;
    }
    run r = {0};
    int rc = open_checkpoint_model(&r, o);
    if (rc == 0 && moe_model_export_hf(r.model, o->out, 0) != MOE_OK) rc = fail_status(r.ctx, "export");
    if (rc == 0) printf("wrote a Hugging Face Mixtral checkpoint to %s\n", o->out);
    run_free(&r);
    return rc;
}

int main(int argc, char **argv)
{
    tools_prefer_avx512_blas(argv);
    const char *command = "train";
    int first = 1;
    if (argc > 1 && argv[1][0] != '-') {
        command = argv[1];
        first = 2;
        if (strcmp(command, "train") && strcmp(command, "generate") && strcmp(command, "export-hf")) {
            fprintf(stderr, "moe-train: unknown command '%s' (train, generate or export-hf; see --help)\n", command);
            return 2;
        }
    }
    for (int i = first; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            options_print_help(command);
            return 0;
        }
    train_options o;
    options_defaults(&o);
    if (!strcmp(command, "generate")) {
        o.temperature = 0.8;
    }
    if (options_parse_args(&o, argc, argv, first, !strcmp(command, "export-hf") ? "generate" : command)) return 2;
    if (!strcmp(command, "generate")) return cmd_generate(&o);
    if (!strcmp(command, "export-hf")) return cmd_export(&o);
    return cmd_train(&o);
}
