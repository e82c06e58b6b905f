/* See model_config.h. Validation is a flat list of (condition, field, rule) checks so that every
 * field has exactly one place where its rule is written. */
#include "nn/model_config.h"

#include <math.h>

#include "core/config.h"
#include "core/error.h"

void moei_model_config_defaults(moe_model_config *c)
{
    c->vocab_size = 256;
    c->max_seq_len = 256;
    c->d_model = 128;
    c->num_layers = 4;
    c->num_heads = 4;
    c->num_kv_heads = 4;
    c->head_dim = 0;
    c->position = MOE_POSITION_ROPE;
    c->rope_theta = 10000.0f;
    c->norm = MOE_NORM_RMSNORM;
    c->norm_eps = 1e-5f;
    c->tie_embeddings = 0;
    c->init_std = 0.02f;
    c->ffn_hidden = 512;
    c->ffn_activation = MOE_ACTIVATION_SWIGLU;
    c->moe_num_experts = 8;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 256;
    c->moe_activation = MOE_ACTIVATION_SWIGLU;
    c->moe_layer_freq = 1;
    c->moe_first_dense = 0;
    c->moe_shared_expert_hidden = 0;
    c->moe_router = MOE_ROUTER_TOKEN_CHOICE;
    c->moe_score_function = MOE_SCORE_SOFTMAX;
    c->moe_renormalize = 1;
    c->moe_capacity_factor = 0.0f;
    c->moe_jitter = 0.0f;
    c->moe_aux_loss_coef = 0.01f;
    c->moe_z_loss_coef = 0.001f;
    c->moe_bias_update_rate = 0.0f;
    c->pipeline_virtual_stages = 1;
    for (size_t i = 0; i < sizeof c->pipeline_layers / sizeof c->pipeline_layers[0]; i++) c->pipeline_layers[i] = 0;
}

MOE_API moe_status moe_model_config_init(moe_model_config *cfg, uint32_t struct_size)
{
    moe_model_config d;
    moei_model_config_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_model_config_init");
}

int32_t moei_model_head_dim(const moe_model_config *c)
{
    return c->head_dim > 0 ? c->head_dim : (c->num_heads > 0 ? c->d_model / c->num_heads : 0);
}

int moei_model_layer_is_moe(const moe_model_config *c, int32_t layer)
{
    if (c->moe_num_experts == 0 || layer < c->moe_first_dense) return 0;
    return ((layer - c->moe_first_dense) % c->moe_layer_freq) == c->moe_layer_freq - 1;
}

#define CHECK_FIELD(cond, field, rule)                                                                 \
    do {                                                                                               \
        if (!(cond)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.%s %s", fn, field, rule); \
    } while (0)

moe_status moei_model_config_check(moe_ctx *ctx, const moe_model_config *c, const char *fn)
{
    const int32_t big = 1 << 24;
    CHECK_FIELD(c->vocab_size >= 1 && c->vocab_size <= big, "vocab_size", "must be in 1..2^24");
    CHECK_FIELD(c->max_seq_len >= 1 && c->max_seq_len <= (1 << 20), "max_seq_len", "must be in 1..2^20");
    CHECK_FIELD(c->d_model >= 1 && c->d_model <= (1 << 16), "d_model", "must be in 1..65536");
    CHECK_FIELD(c->num_layers >= 1 && c->num_layers <= 4096, "num_layers", "must be in 1..4096");
    CHECK_FIELD(c->num_heads >= 1 && c->num_heads <= 4096, "num_heads", "must be in 1..4096");
    CHECK_FIELD(c->num_kv_heads >= 1 && c->num_kv_heads <= c->num_heads, "num_kv_heads", "must be in 1..num_heads");
    CHECK_FIELD(c->num_heads % c->num_kv_heads == 0, "num_kv_heads", "must divide num_heads");
    CHECK_FIELD(c->head_dim >= 0 && c->head_dim <= 4096, "head_dim", "must be in 0..4096 (0 = d_model / num_heads)");
    CHECK_FIELD(c->head_dim > 0 || c->d_model % c->num_heads == 0, "num_heads",
                "must divide d_model when head_dim is 0");
    CHECK_FIELD(c->position >= MOE_POSITION_ROPE && c->position <= MOE_POSITION_LEARNED, "position",
                "is not a moe_position_type");
    CHECK_FIELD(c->position != MOE_POSITION_ROPE || moei_model_head_dim(c) % 2 == 0, "head_dim",
                "must be even for RoPE");
    CHECK_FIELD(isfinite(c->rope_theta) && c->rope_theta > 0.0f, "rope_theta", "must be finite and > 0");
    CHECK_FIELD(c->norm == MOE_NORM_RMSNORM || c->norm == MOE_NORM_LAYERNORM, "norm", "is not a moe_norm_type");
    CHECK_FIELD(isfinite(c->norm_eps) && c->norm_eps > 0.0f, "norm_eps", "must be finite and > 0");
    CHECK_FIELD(c->tie_embeddings <= 1, "tie_embeddings", "must be 0 or 1");
    CHECK_FIELD(isfinite(c->init_std) && c->init_std > 0.0f, "init_std", "must be finite and > 0");
    CHECK_FIELD(c->ffn_hidden >= 1 && c->ffn_hidden <= big, "ffn_hidden", "must be in 1..2^24");
    CHECK_FIELD(c->ffn_activation == MOE_ACTIVATION_SWIGLU || c->ffn_activation == MOE_ACTIVATION_GELU,
                "ffn_activation", "is not a moe_activation");
    CHECK_FIELD(c->moe_num_experts >= 0 && c->moe_num_experts <= 65536, "moe_num_experts",
                "must be in 0..65536 (0 = no MoE layers)");
    if (c->moe_num_experts > 0) {
        CHECK_FIELD(c->moe_top_k >= 1 && c->moe_top_k <= c->moe_num_experts, "moe_top_k",
                    "must be in 1..moe_num_experts");
        CHECK_FIELD(c->moe_expert_hidden >= 1 && c->moe_expert_hidden <= big, "moe_expert_hidden",
                    "must be in 1..2^24");
        CHECK_FIELD(c->moe_activation == MOE_ACTIVATION_SWIGLU || c->moe_activation == MOE_ACTIVATION_GELU,
                    "moe_activation", "is not a moe_activation");
        CHECK_FIELD(c->moe_layer_freq >= 1, "moe_layer_freq", "must be >= 1");
        CHECK_FIELD(c->moe_first_dense >= 0 && c->moe_first_dense <= c->num_layers, "moe_first_dense",
                    "must be in 0..num_layers");
        CHECK_FIELD(c->moe_shared_expert_hidden >= 0 && c->moe_shared_expert_hidden <= big,
                    "moe_shared_expert_hidden", "must be in 0..2^24 (0 = none)");
        CHECK_FIELD(c->moe_router == MOE_ROUTER_TOKEN_CHOICE || c->moe_router == MOE_ROUTER_EXPERT_CHOICE,
                    "moe_router", "is not a moe_router_type");
        CHECK_FIELD(c->moe_score_function == MOE_SCORE_SOFTMAX || c->moe_score_function == MOE_SCORE_SIGMOID,
                    "moe_score_function", "is not a moe_score_function");
        CHECK_FIELD(c->moe_router != MOE_ROUTER_EXPERT_CHOICE || c->moe_score_function == MOE_SCORE_SOFTMAX,
                    "moe_score_function", "must be MOE_SCORE_SOFTMAX for expert-choice routing");
        CHECK_FIELD(c->moe_renormalize <= 1, "moe_renormalize", "must be 0 or 1");
        CHECK_FIELD(isfinite(c->moe_capacity_factor) && c->moe_capacity_factor >= 0.0f, "moe_capacity_factor",
                    "must be finite and >= 0 (0 = dropless)");
        CHECK_FIELD(c->moe_router != MOE_ROUTER_EXPERT_CHOICE || c->moe_capacity_factor > 0.0f,
                    "moe_capacity_factor", "must be > 0 for expert-choice routing");
        CHECK_FIELD(isfinite(c->moe_jitter) && c->moe_jitter >= 0.0f && c->moe_jitter < 1.0f, "moe_jitter",
                    "must be in [0, 1)");
        CHECK_FIELD(isfinite(c->moe_aux_loss_coef) && c->moe_aux_loss_coef >= 0.0f, "moe_aux_loss_coef",
                    "must be finite and >= 0");
        CHECK_FIELD(isfinite(c->moe_z_loss_coef) && c->moe_z_loss_coef >= 0.0f, "moe_z_loss_coef",
                    "must be finite and >= 0");
        CHECK_FIELD(isfinite(c->moe_bias_update_rate) && c->moe_bias_update_rate >= 0.0f, "moe_bias_update_rate",
                    "must be finite and >= 0");
        CHECK_FIELD(c->moe_bias_update_rate == 0.0f || c->moe_router == MOE_ROUTER_TOKEN_CHOICE,
                    "moe_bias_update_rate", "needs token-choice routing");
    }
    return MOE_OK;
}

moe_status moei_model_config_load(moe_ctx *ctx, const moe_model_config *user, moe_model_config *out, const char *fn)
{
    moei_model_config_defaults(out);
    out->struct_size = sizeof *out;
    if (!user) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: config is NULL", fn);
    moe_status st = moei_config_read(out, sizeof *out, user, "moe_model_config", fn);
    if (st != MOE_OK) return ctx ? moei_fail_msg(ctx, st, moe_last_error()) : st;
    return moei_model_config_check(ctx, out, fn);
}

MOE_API moe_status moe_model_config_validate(const moe_model_config *cfg)
{
    moe_model_config c;
    return moei_model_config_load(NULL, cfg, &c, "moe_model_config_validate");
}
