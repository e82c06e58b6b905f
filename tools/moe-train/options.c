/* See options.h. */
#include "options.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { T_INT, T_I64, T_REAL, T_STR, T_CHOICE, T_FLAG } opt_type;

typedef struct opt_def {
    const char *name;
    opt_type type;
    size_t offset;
    size_t size; /* for strings */
    const char *choices; /* "a|b|c" for T_CHOICE */
    const char *group;   /* "train", "generate" or "both" */
    const char *help;
} opt_def;

#define F(field) offsetof(train_options, field)
#define S(field) sizeof(((train_options *)0)->field)
static const opt_def defs[] = {
    {"data", T_STR, F(data), S(data), NULL, "train", "training data: a text file (bytes are tokens) or a Megatron .bin/.idx prefix"},
    {"data-kind", T_CHOICE, F(data_kind), S(data_kind), "auto|text|indexed", "train", "how to read --data"},
    {"val-fraction", T_REAL, F(val_fraction), 0, NULL, "train", "share of samples held out for validation"},
    {"layers", T_INT, F(layers), 0, NULL, "train", "transformer blocks"},
    {"d-model", T_INT, F(d_model), 0, NULL, "train", "hidden size"},
    {"heads", T_INT, F(heads), 0, NULL, "train", "attention heads"},
    {"kv-heads", T_INT, F(kv_heads), 0, NULL, "train", "key/value heads (GQA; = heads for MHA, 1 for MQA)"},
    {"head-dim", T_INT, F(head_dim), 0, NULL, "train", "head size (0 = d-model / heads)"},
    {"seq-len", T_INT, F(seq_len), 0, NULL, "train", "tokens per training sequence (and the model's maximum)"},
    {"experts", T_INT, F(experts), 0, NULL, "train", "routed experts per MoE layer (0 = dense model)"},
    {"top-k", T_INT, F(top_k), 0, NULL, "train", "experts per token"},
    {"expert-hidden", T_INT, F(expert_hidden), 0, NULL, "train", "hidden size of one expert"},
    {"ffn-hidden", T_INT, F(ffn_hidden), 0, NULL, "train", "hidden size of dense MLP layers"},
    {"shared-expert-hidden", T_INT, F(shared_expert_hidden), 0, NULL, "train", "hidden size of an always-on shared expert (0 = none)"},
    {"moe-every", T_INT, F(moe_every), 0, NULL, "train", "every N-th layer is MoE"},
    {"first-dense", T_INT, F(first_dense), 0, NULL, "train", "the first N layers are dense"},
    {"tie-embeddings", T_INT, F(tie_embeddings), 0, NULL, "train", "1 = LM head shares the embedding"},
    {"router", T_CHOICE, F(router), S(router), "token|expert", "train", "token-choice top-k or expert-choice routing"},
    {"score", T_CHOICE, F(score), S(score), "softmax|sigmoid", "train", "router score function"},
    {"position", T_CHOICE, F(position), S(position), "rope|alibi|learned", "train", "position encoding"},
    {"norm", T_CHOICE, F(norm), S(norm), "rms|layer", "train", "normalisation"},
    {"activation", T_CHOICE, F(activation), S(activation), "swiglu|gelu", "train", "MLP and expert activation"},
    {"capacity-factor", T_REAL, F(capacity_factor), 0, NULL, "train", "expert capacity factor (0 = dropless)"},
    {"aux-coef", T_REAL, F(aux_coef), 0, NULL, "train", "load-balancing loss coefficient"},
    {"z-coef", T_REAL, F(z_coef), 0, NULL, "train", "router z-loss coefficient"},
    {"bias-rate", T_REAL, F(bias_rate), 0, NULL, "train", "aux-loss-free balancing bias step (0 = off)"},
    {"jitter", T_REAL, F(jitter), 0, NULL, "train", "router input jitter amplitude"},
    {"init-std", T_REAL, F(init_std), 0, NULL, "train", "standard deviation of the weight init"},
    {"rope-theta", T_REAL, F(rope_theta), 0, NULL, "train", "RoPE base"},
    {"optimizer", T_CHOICE, F(optimizer), S(optimizer), "adamw|sgd", "train", "update rule"},
    {"lr", T_REAL, F(lr), 0, NULL, "train", "peak learning rate"},
    {"min-lr", T_REAL, F(min_lr), 0, NULL, "train", "learning rate at the end of the decay"},
    {"warmup", T_INT, F(warmup), 0, NULL, "train", "linear warm-up steps"},
    {"decay", T_CHOICE, F(decay), S(decay), "cosine|linear|constant", "train", "learning-rate decay after warm-up (over --steps)"},
    {"weight-decay", T_REAL, F(weight_decay), 0, NULL, "train", "decoupled weight decay (AdamW) or L2 (SGD)"},
    {"beta1", T_REAL, F(beta1), 0, NULL, "train", "AdamW beta1"},
    {"beta2", T_REAL, F(beta2), 0, NULL, "train", "AdamW beta2"},
    {"momentum", T_REAL, F(momentum), 0, NULL, "train", "SGD momentum"},
    {"clip", T_REAL, F(clip), 0, NULL, "train", "global gradient-norm clip (0 = off)"},
    {"dp", T_INT, F(dp), 0, NULL, "train", "data-parallel size (0 = world / (tp * pp)); launch with mpirun -np dp*tp*pp"},
    {"tp", T_INT, F(tp), 0, NULL, "train", "tensor-parallel size"},
    {"pp", T_INT, F(pp), 0, NULL, "train", "pipeline-parallel size"},
    {"ep", T_INT, F(ep), 0, NULL, "train", "expert-parallel size (divides dp * tp and --experts)"},
    {"etp", T_INT, F(etp), 0, NULL, "train", "expert tensor-parallel size"},
    {"sequence-parallel", T_INT, F(sequence_parallel), 0, NULL, "train", "1 = shard norms and residuals over tp"},
    {"pipeline", T_CHOICE, F(pipeline), S(pipeline), "1f1b|gpipe|interleaved", "train", "pipeline schedule when --pp > 1"},
    {"virtual-stages", T_INT, F(virtual_stages), 0, NULL, "train", "model chunks per pipeline stage (interleaved schedule)"},
    {"zero-stage", T_INT, F(zero_stage), 0, NULL, "train", "1 = shard optimizer state over data-parallel replicas (ZeRO-1)"},
    {"steps", T_INT, F(steps), 0, NULL, "train", "optimizer steps in total"},
    {"batch", T_INT, F(batch), 0, NULL, "train", "sequences per micro-batch"},
    {"micro-batches", T_INT, F(micro_batches), 0, NULL, "train", "micro-batches accumulated per step"},
    {"seed", T_I64, F(seed), 0, NULL, "both", "seed of initialisation, data order and sampling"},
    {"threads", T_INT, F(threads), 0, NULL, "both", "compute threads (0 = all cores)"},
    {"log-every", T_INT, F(log_every), 0, NULL, "train", "steps between progress lines when output is not a terminal"},
    {"eval-every", T_INT, F(eval_every), 0, NULL, "train", "steps between validation-loss evaluations (0 = end only)"},
    {"eval-batches", T_INT, F(eval_batches), 0, NULL, "train", "validation micro-batches per evaluation"},
    {"checkpoint-every", T_INT, F(checkpoint_every), 0, NULL, "train", "steps between checkpoints (0 = end only)"},
    {"keep", T_INT, F(keep), 0, NULL, "train", "checkpoints kept (0 = all)"},
    {"time-limit", T_REAL, F(time_limit), 0, NULL, "train", "stop after this many seconds, checkpointing first (0 = none)"},
    {"stop-after", T_INT, F(stop_after), 0, NULL, "train", "stop after this many steps of this invocation, checkpointing first (0 = run to --steps)"},
    {"out", T_STR, F(out), S(out), NULL, "both", "output directory: metrics.jsonl, loss.svg, checkpoints/, sample.txt"},
    {"resume", T_FLAG, F(resume), 0, NULL, "train", "continue from the latest checkpoint in --out (its settings are reused)"},
    {"quiet", T_FLAG, F(quiet), 0, NULL, "both", "no progress output"},
    {"checkpoint", T_STR, F(checkpoint), S(checkpoint), NULL, "generate", "checkpoint directory (a step-N dir or the checkpoints root)"},
    {"prompt", T_STR, F(prompt), S(prompt), NULL, "both", "text to continue"},
    {"max-new-tokens", T_INT, F(max_new_tokens), 0, NULL, "both", "tokens to generate"},
    {"temperature", T_REAL, F(temperature), 0, NULL, "both", "sampling temperature (0 = greedy)"},
    {"top-k-sample", T_INT, F(top_k_sample), 0, NULL, "both", "sample from the k most likely tokens (0 = off)"},
    {"top-p", T_REAL, F(top_p), 0, NULL, "both", "nucleus sampling mass (1 = off)"},
    {"beam", T_INT, F(beam), 0, NULL, "both", "beam width (1 = sampling or greedy)"},
};
#define NDEFS (sizeof defs / sizeof defs[0])
static unsigned char given[NDEFS];

void options_defaults(train_options *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->data, sizeof o->data, "data/corpus.txt");
    snprintf(o->data_kind, sizeof o->data_kind, "auto");
    o->val_fraction = 0.02;
    o->layers = 4;
    o->d_model = 128;
    o->heads = 4;
    o->kv_heads = 2;
    o->seq_len = 128;
    o->experts = 8;
    o->top_k = 2;
    o->expert_hidden = 192;
    o->ffn_hidden = 384;
    o->moe_every = 1;
    snprintf(o->router, sizeof o->router, "token");
    snprintf(o->score, sizeof o->score, "softmax");
    snprintf(o->position, sizeof o->position, "rope");
    snprintf(o->norm, sizeof o->norm, "rms");
    snprintf(o->activation, sizeof o->activation, "swiglu");
    o->aux_coef = 0.01;
    o->z_coef = 0.001;
    o->init_std = 0.02;
    o->rope_theta = 10000.0;
    snprintf(o->optimizer, sizeof o->optimizer, "adamw");
    snprintf(o->decay, sizeof o->decay, "cosine");
    o->lr = 3e-3;
    o->min_lr = 3e-4;
    o->warmup = 30;
    o->weight_decay = 0.1;
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->momentum = 0.9;
    o->clip = 1.0;
    o->steps = 3500;
    o->dp = 0;
    o->tp = o->pp = o->ep = o->etp = 1;
    o->virtual_stages = 1;
    snprintf(o->pipeline, sizeof o->pipeline, "1f1b");
    o->batch = 8;
    o->micro_batches = 1;
    o->log_every = 20;
    o->eval_every = 100;
    o->eval_batches = 4;
    o->checkpoint_every = 200;
    o->keep = 2;
    o->seed = 1234;
    snprintf(o->out, sizeof o->out, "moe-train-out");
    snprintf(o->prompt, sizeof o->prompt, "The ");
    o->max_new_tokens = 240;
    o->temperature = 0.8;
    o->top_p = 0.95;
    o->beam = 1;
}

static const opt_def *find_def(const char *name)
{
    for (size_t i = 0; i < NDEFS; i++)
        if (strcmp(defs[i].name, name) == 0) return &defs[i];
    return NULL;
}

int options_given(const char *name)
{
    const opt_def *d = find_def(name);
    return d ? given[d - defs] : 0;
}

static int choice_ok(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, v, n) == 0) return 1;
        if (!bar) break;
        p = bar + 1;
    }
    return 0;
}

static int set_value(train_options *o, const opt_def *d, const char *v, const char *origin)
{
    char *base = (char *)o + d->offset, *end = NULL;
    errno = 0;
    switch (d->type) {
    case T_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < -2147483647L || x > 2147483647L) goto bad;
        *(int *)base = (int)x;
        return 0;
    }
    case T_I64: {
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno) goto bad;
        *(int64_t *)base = (int64_t)x;
        return 0;
    }
    case T_REAL: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x)) goto bad;
        *(double *)base = x;
        return 0;
    }
    case T_CHOICE:
        if (!choice_ok(d->choices, v)) {
            fprintf(stderr, "moe-train: %s: --%s must be one of %s, not '%s'\n", origin, d->name, d->choices, v);
            return -1;
        }
        /* fall through */
    case T_STR:
        if (strlen(v) >= d->size) {
            fprintf(stderr, "moe-train: %s: --%s value is too long\n", origin, d->name);
            return -1;
        }
        snprintf(base, d->size, "%s", v);
        return 0;
    case T_FLAG:
        if (strcmp(v, "1") && strcmp(v, "0") && strcmp(v, "true") && strcmp(v, "false")) goto bad;
        *(int *)base = !strcmp(v, "1") || !strcmp(v, "true");
        return 0;
    }
bad:
    fprintf(stderr, "moe-train: %s: --%s has an invalid value '%s'\n", origin, d->name, v);
    return -1;
}

int options_parse_args(train_options *o, int argc, char **argv, int first, const char *command)
{
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "moe-train: unexpected argument '%s' (see moe-train %s --help)\n", a, command);
            return -1;
        }
        char name[64];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, a + 2, len);
        name[len] = '\0';
        if (!strcmp(name, "config")) {
            const char *path = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!path) {
                fprintf(stderr, "moe-train: --config needs a file\n");
                return -1;
            }
            FILE *f = fopen(path, "rb");
            if (!f) {
                fprintf(stderr, "moe-train: --config: cannot open '%s': %s\n", path, strerror(errno));
                return -1;
            }
            char *text = malloc(1 << 20);
            size_t n = fread(text, 1, (1 << 20) - 1, f);
            fclose(f);
            text[n] = '\0';
            int rc = options_apply_json(o, text, path);
            free(text);
            if (rc) return -1;
            continue;
        }
        const opt_def *d = find_def(name);
        if (!d || (strcmp(d->group, "both") && strcmp(d->group, command))) {
            fprintf(stderr, "moe-train: unknown flag '--%s' for '%s' (see moe-train %s --help)\n", name, command, command);
            return -1;
        }
        const char *v;
        if (d->type == T_FLAG && !eq)
            v = "1";
        else if (eq)
            v = eq + 1;
        else if (i + 1 < argc)
            v = argv[++i];
        else {
            fprintf(stderr, "moe-train: --%s needs a value\n", name);
            return -1;
        }
        if (set_value(o, d, v, "command line")) return -1;
        given[d - defs] = 1;
    }
    return 0;
}

int options_apply_json(train_options *o, const char *json_text, const char *origin)
{
    cJSON *root = cJSON_Parse(json_text);
    if (!cJSON_IsObject(root)) {
        fprintf(stderr, "moe-train: %s: not a JSON object\n", origin);
        cJSON_Delete(root);
        return -1;
    }
    for (cJSON *e = root->child; e; e = e->next) {
        const opt_def *d = find_def(e->string);
        if (!d) {
            fprintf(stderr, "moe-train: %s: unknown setting \"%s\"\n", origin, e->string);
            cJSON_Delete(root);
            return -1;
        }
        char buf[1100];
        if (cJSON_IsString(e))
            snprintf(buf, sizeof buf, "%s", e->valuestring);
        else if (cJSON_IsBool(e))
            snprintf(buf, sizeof buf, "%s", cJSON_IsTrue(e) ? "1" : "0");
        else if (cJSON_IsNumber(e))
            snprintf(buf, sizeof buf, d->type == T_REAL ? "%.17g" : "%.0f", e->valuedouble);
        else {
            fprintf(stderr, "moe-train: %s: \"%s\" must be a string, number or boolean\n", origin, e->string);
            cJSON_Delete(root);
            return -1;
        }
        if (set_value(o, d, buf, origin)) {
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}

char *options_to_json(const train_options *o)
{
    cJSON *root = cJSON_CreateObject();
    for (size_t i = 0; i < NDEFS; i++) {
        const opt_def *d = &defs[i];
        const char *base = (const char *)o + d->offset;
        if (!strcmp(d->name, "resume") || !strcmp(d->name, "checkpoint") || !strcmp(d->name, "stop-after")) continue;
        switch (d->type) {
        case T_INT:
        case T_FLAG: cJSON_AddNumberToObject(root, d->name, *(const int *)base); break;
        case T_I64: cJSON_AddNumberToObject(root, d->name, (double)*(const int64_t *)base); break;
        case T_REAL: cJSON_AddNumberToObject(root, d->name, *(const double *)base); break;
        default: cJSON_AddStringToObject(root, d->name, base); break;
        }
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

void options_print_help(const char *command)
{
    if (!strcmp(command, "generate"))
        printf("usage: moe-train generate --checkpoint DIR [--prompt TEXT] [flags]\n\n"
               "Continue a prompt with a trained model (byte-level tokens).\n\nflags:\n");
    else if (!strcmp(command, "export-hf"))
        printf("usage: moe-train export-hf --checkpoint DIR --out DIR\n\n"
               "Write a checkpoint as a Hugging Face Mixtral model (config.json + safetensors).\n");
    else
        printf("usage: moe-train [train] [flags]\n"
               "       moe-train generate --checkpoint DIR --prompt TEXT [flags]\n"
               "       moe-train export-hf --checkpoint DIR --out DIR\n\n"
               "Train a Mixture-of-Experts language model. With no flags it trains a small byte-level MoE\n"
               "model on data/corpus.txt for a few minutes, then writes metrics, a loss plot, a checkpoint\n"
               "and a text sample to moe-train-out/.\n\n"
               "  --config FILE               read settings from a JSON object {\"flag-name\": value, ...}\n"
               "  --help                      this text\n\nflags:\n");
    if (!strcmp(command, "export-hf")) return;
    train_options d;
    options_defaults(&d);
    for (size_t i = 0; i < NDEFS; i++) {
        const opt_def *x = &defs[i];
        if (strcmp(x->group, "both") && strcmp(x->group, command)) continue;
        char def[64] = "";
        const char *base = (const char *)&d + x->offset;
        switch (x->type) {
        case T_INT: snprintf(def, sizeof def, "%d", *(const int *)base); break;
        case T_I64: snprintf(def, sizeof def, "%lld", (long long)*(const int64_t *)base); break;
        case T_REAL: snprintf(def, sizeof def, "%g", *(const double *)base); break;
        case T_FLAG: snprintf(def, sizeof def, "off"); break;
        default: snprintf(def, sizeof def, "%s", *base ? base : "none"); break;
        }
        char left[96];
        snprintf(left, sizeof left, "--%s%s%s", x->name, x->type == T_FLAG ? "" : " ",
                 x->type == T_FLAG ? "" : x->type == T_CHOICE ? x->choices : x->type == T_STR ? "TEXT" : "N");
        printf("  %-27s %s (default %s)\n", left, x->help, def);
    }
}
