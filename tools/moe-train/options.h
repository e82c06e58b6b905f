/* moe-train's options: one table drives command-line parsing, the JSON config file, --help, and
 * the copy of the run's settings stored in every checkpoint (so --resume needs no flags). */
#ifndef MOE_TRAIN_OPTIONS_H
#define MOE_TRAIN_OPTIONS_H

#include <stdint.h>

typedef struct train_options {
    /* data */
    char data[1024];
    char data_kind[16];
    double val_fraction;
    /* model */
    int layers, d_model, heads, kv_heads, head_dim, seq_len, experts, top_k, expert_hidden, ffn_hidden;
    int shared_expert_hidden, moe_every, first_dense, tie_embeddings;
    char router[16], score[16], position[16], norm[16], activation[16];
    double capacity_factor, aux_coef, z_coef, bias_rate, jitter, init_std, rope_theta;
    /* optimizer */
    char optimizer[16], decay[16];
    double lr, min_lr, weight_decay, beta1, beta2, clip, momentum;
    int warmup;
    /* parallel layout (launch with mpirun -np dp*tp*pp) */
    int dp, tp, pp, ep, etp, sequence_parallel, zero_stage, virtual_stages;
    char pipeline[16];
    /* run */
    int steps, batch, micro_batches, threads, log_every, eval_every, eval_batches, checkpoint_every, keep;
    double time_limit;
    int stop_after;
    int64_t seed;
    char out[1024];
    int resume, quiet;
    /* generation (generate command, and the sample at the end of training) */
    char checkpoint[1024], prompt[1024];
    int max_new_tokens, top_k_sample, beam;
    double temperature, top_p;
} train_options;

void options_defaults(train_options *o);
/* Parse argv[first..argc); returns 0, or -1 after printing a one-line error naming the flag. */
int options_parse_args(train_options *o, int argc, char **argv, int first, const char *command);
/* Apply a JSON object of {"flag-name": value}; returns 0 or -1 after printing a one-line error. */
int options_apply_json(train_options *o, const char *json_text, const char *origin);
/* The options as a JSON object (malloc'ed string). */
char *options_to_json(const train_options *o);
void options_print_help(const char *command);
/* Whether the flag was given explicitly on the command line (so it overrides a resumed value). */
int options_given(const char *name);

#endif
