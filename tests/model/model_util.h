/* Helpers shared by the model tests: tiny configs, data, and the directional finite-difference
 * gradient check on the whole model. */
#ifndef MOE_TESTS_MODEL_UTIL_H
#define MOE_TESTS_MODEL_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <moe/layer.h>
#include <moe/model.h>
#include <moe/optim.h>
#include <moe/train.h>

/* A deterministic xorshift generator for test data. */
static inline uint64_t tu_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static inline double tu_uniform(uint64_t *s) { return (double)(tu_next(s) >> 11) * (1.0 / 9007199254740992.0); }
static inline double tu_normal(uint64_t *s)
{
    double u1 = tu_uniform(s) + 1e-12, u2 = tu_uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* A tiny MoE config that exercises every part: GQA, 2 layers, 4 experts, top-2. */
static inline void tu_tiny_config(moe_model_config *c)
{
    moe_model_config_init(c, sizeof *c);
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

static inline void tu_tokens(uint64_t seed, int32_t vocab, int64_t n, int32_t *tokens, int32_t *targets)
{
    uint64_t s = seed * 2654435761u + 1;
    for (int64_t i = 0; i < n; i++) tokens[i] = (int32_t)(tu_next(&s) % (uint64_t)vocab);
    if (targets)
        for (int64_t i = 0; i < n; i++) targets[i] = (int32_t)(tu_next(&s) % (uint64_t)vocab);
}

#endif
