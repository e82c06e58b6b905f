/* Public model API: config validation (every field), argument errors of every function, forward
 * (causality, batch independence), forward_backward (ignored targets, scaling, determinism), the
 * parameter API with hand-counted sizes and FLOPs, initialisation as a function of (seed, name),
 * routing statistics, upcycling and config versioning. Oracles are hand-computed numbers or
 * relations that hold for any correct implementation, never the library's own output. */
#include "model/api_util.h"

#define MB 2
#define MT 6
#define MV 13 /* vocab of au_tiny_config */

static moe_model *make_model(au_env *e, const moe_model_config *c)
{
    moe_model *m = NULL;
    AU_OK(moe_model_create(e->ctx, e->mesh, c, &m));
    return m;
}

/* ---- 1. config validation ---------------------------------------------------------------------- */

typedef struct bad_field {
    const char *field; /* must appear as "moe_model_config.<field>" in the message */
    void (*apply)(moe_model_config *c);
} bad_field;

static void b_vocab0(moe_model_config *c) { c->vocab_size = 0; }
static void b_vocab_neg(moe_model_config *c) { c->vocab_size = -13; }
static void b_vocab_big(moe_model_config *c) { c->vocab_size = (1 << 24) + 1; }
static void b_seq0(moe_model_config *c) { c->max_seq_len = 0; }
static void b_seq_neg(moe_model_config *c) { c->max_seq_len = -1; }
static void b_d0(moe_model_config *c) { c->d_model = 0; }
static void b_d_neg(moe_model_config *c) { c->d_model = -8; }
static void b_layers0(moe_model_config *c) { c->num_layers = 0; }
static void b_layers_neg(moe_model_config *c) { c->num_layers = -2; }
static void b_heads0(moe_model_config *c) { c->num_heads = 0; }
static void b_kv0(moe_model_config *c) { c->num_kv_heads = 0; }
static void b_kv_more(moe_model_config *c) { c->num_kv_heads = 3; }
static void b_kv_nodiv(moe_model_config *c)
{
    c->num_heads = 4;
    c->num_kv_heads = 3;
}
static void b_head_dim_neg(moe_model_config *c) { c->head_dim = -4; }
static void b_heads_nodiv(moe_model_config *c)
{
    c->num_heads = 3;
    c->num_kv_heads = 1;
    c->head_dim = 0;
}
static void b_head_dim_odd(moe_model_config *c) { c->head_dim = 3; }
static void b_head_dim_odd_derived(moe_model_config *c)
{
    c->num_heads = 8;
    c->num_kv_heads = 1;
    c->head_dim = 0; /* 8 / 8 = 1, odd, with RoPE */
}
static void b_position(moe_model_config *c) { c->position = 3; }
static void b_position_neg(moe_model_config *c) { c->position = -1; }
static void b_theta0(moe_model_config *c) { c->rope_theta = 0.0f; }
static void b_theta_nan(moe_model_config *c) { c->rope_theta = NAN; }
static void b_theta_inf(moe_model_config *c) { c->rope_theta = INFINITY; }
static void b_theta_neg(moe_model_config *c) { c->rope_theta = -10000.0f; }
static void b_norm(moe_model_config *c) { c->norm = 2; }
static void b_eps0(moe_model_config *c) { c->norm_eps = 0.0f; }
static void b_eps_nan(moe_model_config *c) { c->norm_eps = NAN; }
static void b_eps_neg(moe_model_config *c) { c->norm_eps = -1e-5f; }
static void b_tie(moe_model_config *c) { c->tie_embeddings = 2; }
static void b_std0(moe_model_config *c) { c->init_std = 0.0f; }
static void b_std_nan(moe_model_config *c) { c->init_std = NAN; }
static void b_std_neg_inf(moe_model_config *c) { c->init_std = -INFINITY; }
static void b_ffn0(moe_model_config *c) { c->ffn_hidden = 0; }
static void b_ffn_neg(moe_model_config *c) { c->ffn_hidden = -12; }
static void b_ffn_act(moe_model_config *c) { c->ffn_activation = 2; }
static void b_ffn_act_neg(moe_model_config *c) { c->ffn_activation = -1; }
static void b_experts_neg(moe_model_config *c) { c->moe_num_experts = -1; }
static void b_top_k0(moe_model_config *c) { c->moe_top_k = 0; }
static void b_top_k_big(moe_model_config *c) { c->moe_top_k = 5; }
static void b_top_k_neg(moe_model_config *c) { c->moe_top_k = -2; }
static void b_expert_hidden0(moe_model_config *c) { c->moe_expert_hidden = 0; }
static void b_moe_act(moe_model_config *c) { c->moe_activation = 7; }
static void b_freq0(moe_model_config *c) { c->moe_layer_freq = 0; }
static void b_freq_neg(moe_model_config *c) { c->moe_layer_freq = -1; }
static void b_first_dense_big(moe_model_config *c) { c->moe_first_dense = 3; }
static void b_first_dense_neg(moe_model_config *c) { c->moe_first_dense = -1; }
static void b_shared_neg(moe_model_config *c) { c->moe_shared_expert_hidden = -5; }
static void b_router(moe_model_config *c) { c->moe_router = 2; }
static void b_score(moe_model_config *c) { c->moe_score_function = 2; }
static void b_ec_sigmoid(moe_model_config *c)
{
    c->moe_router = MOE_ROUTER_EXPERT_CHOICE;
    c->moe_capacity_factor = 1.0f;
    c->moe_score_function = MOE_SCORE_SIGMOID;
}
static void b_renorm(moe_model_config *c) { c->moe_renormalize = 2; }
static void b_capacity_neg(moe_model_config *c) { c->moe_capacity_factor = -1.0f; }
static void b_capacity_nan(moe_model_config *c) { c->moe_capacity_factor = NAN; }
static void b_capacity_inf(moe_model_config *c) { c->moe_capacity_factor = INFINITY; }
static void b_ec_capacity0(moe_model_config *c)
{
    c->moe_router = MOE_ROUTER_EXPERT_CHOICE;
    c->moe_capacity_factor = 0.0f;
}
static void b_jitter_neg(moe_model_config *c) { c->moe_jitter = -0.1f; }
static void b_jitter_one(moe_model_config *c) { c->moe_jitter = 1.0f; }
static void b_jitter_nan(moe_model_config *c) { c->moe_jitter = NAN; }
static void b_aux_neg(moe_model_config *c) { c->moe_aux_loss_coef = -0.01f; }
static void b_aux_nan(moe_model_config *c) { c->moe_aux_loss_coef = NAN; }
static void b_z_neg(moe_model_config *c) { c->moe_z_loss_coef = -0.001f; }
static void b_z_inf(moe_model_config *c) { c->moe_z_loss_coef = INFINITY; }
static void b_bias_neg(moe_model_config *c) { c->moe_bias_update_rate = -0.01f; }
static void b_bias_nan(moe_model_config *c) { c->moe_bias_update_rate = NAN; }
static void b_bias_ec(moe_model_config *c)
{
    c->moe_router = MOE_ROUTER_EXPERT_CHOICE;
    c->moe_capacity_factor = 1.0f;
    c->moe_bias_update_rate = 0.01f;
}
static void b_struct_size0(moe_model_config *c) { c->struct_size = 0; }
static void b_struct_size3(moe_model_config *c) { c->struct_size = 3; }

static const bad_field bad_fields[] = {
    {"vocab_size", b_vocab0},
    {"vocab_size", b_vocab_neg},
    {"vocab_size", b_vocab_big},
    {"max_seq_len", b_seq0},
    {"max_seq_len", b_seq_neg},
    {"d_model", b_d0},
    {"d_model", b_d_neg},
    {"num_layers", b_layers0},
    {"num_layers", b_layers_neg},
    {"num_heads", b_heads0},
    {"num_kv_heads", b_kv0},
    {"num_kv_heads", b_kv_more},
    {"num_kv_heads", b_kv_nodiv},
    {"head_dim", b_head_dim_neg},
    {"num_heads", b_heads_nodiv},
    {"head_dim", b_head_dim_odd},
    {"head_dim", b_head_dim_odd_derived},
    {"position", b_position},
    {"position", b_position_neg},
    {"rope_theta", b_theta0},
    {"rope_theta", b_theta_nan},
    {"rope_theta", b_theta_inf},
    {"rope_theta", b_theta_neg},
    {"norm", b_norm},
    {"norm_eps", b_eps0},
    {"norm_eps", b_eps_nan},
    {"norm_eps", b_eps_neg},
    {"tie_embeddings", b_tie},
    {"init_std", b_std0},
    {"init_std", b_std_nan},
    {"init_std", b_std_neg_inf},
    {"ffn_hidden", b_ffn0},
    {"ffn_hidden", b_ffn_neg},
    {"ffn_activation", b_ffn_act},
    {"ffn_activation", b_ffn_act_neg},
    {"moe_num_experts", b_experts_neg},
    {"moe_top_k", b_top_k0},
    {"moe_top_k", b_top_k_big},
    {"moe_top_k", b_top_k_neg},
    {"moe_expert_hidden", b_expert_hidden0},
    {"moe_activation", b_moe_act},
    {"moe_layer_freq", b_freq0},
    {"moe_layer_freq", b_freq_neg},
    {"moe_first_dense", b_first_dense_big},
    {"moe_first_dense", b_first_dense_neg},
    {"moe_shared_expert_hidden", b_shared_neg},
    {"moe_router", b_router},
    {"moe_score_function", b_score},
    {"moe_score_function", b_ec_sigmoid},
    {"moe_renormalize", b_renorm},
    {"moe_capacity_factor", b_capacity_neg},
    {"moe_capacity_factor", b_capacity_nan},
    {"moe_capacity_factor", b_capacity_inf},
    {"moe_capacity_factor", b_ec_capacity0},
    {"moe_jitter", b_jitter_neg},
    {"moe_jitter", b_jitter_one},
    {"moe_jitter", b_jitter_nan},
    {"moe_aux_loss_coef", b_aux_neg},
    {"moe_aux_loss_coef", b_aux_nan},
    {"moe_z_loss_coef", b_z_neg},
    {"moe_z_loss_coef", b_z_inf},
    {"moe_bias_update_rate", b_bias_neg},
    {"moe_bias_update_rate", b_bias_nan},
    {"moe_bias_update_rate", b_bias_ec},
    {"struct_size", b_struct_size0},
    {"struct_size", b_struct_size3},
};

static void test_config_validation(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 1);
    moe_model_config good;
    au_tiny_config(&good);
    AU_OK(moe_model_config_validate(&good));
    for (size_t i = 0; i < sizeof bad_fields / sizeof bad_fields[0]; i++) {
        moe_model_config c;
        au_tiny_config(&c);
        bad_fields[i].apply(&c);
        moe_model_config before = c;
        char want[64];
        snprintf(want, sizeof want, "moe_model_config.%s", bad_fields[i].field);
        moe_status st = moe_model_config_validate(&c);
        const char *msg = moe_last_error();
        if (st != MOE_ERR_INVALID_ARG || !strstr(msg, want) || !strstr(msg, "moe_model_config_validate"))
            fail_msg("validate, case %zu (%s): status %s, message '%s'", i, bad_fields[i].field,
                     moe_status_string(st), msg);
        moe_model *sentinel = (moe_model *)(uintptr_t)0x1357, *out = sentinel;
        st = moe_model_create(e.ctx, e.mesh, &c, &out);
        msg = moe_last_error();
        const char *cmsg = moe_ctx_last_error(e.ctx);
        if (st != MOE_ERR_INVALID_ARG || !strstr(msg, want) || !strstr(cmsg, want) || !strstr(cmsg, "moe_model_create"))
            fail_msg("create, case %zu (%s): status %s, message '%s', ctx message '%s'", i, bad_fields[i].field,
                     moe_status_string(st), msg, cmsg);
        assert_ptr_equal(out, sentinel);
        assert_memory_equal(&c, &before, sizeof c); /* the config is read only */
    }
    /* the MoE rules apply to MoE models only: a dense model ignores the moe_* fields */
    moe_model_config c;
    au_tiny_config(&c);
    c.moe_num_experts = 0;
    c.moe_top_k = 99;
    c.moe_layer_freq = 0;
    AU_OK(moe_model_config_validate(&c));
    /* boundaries that are valid */
    au_tiny_config(&c);
    c.moe_first_dense = c.num_layers; /* every layer dense */
    c.moe_top_k = c.moe_num_experts;
    c.num_kv_heads = c.num_heads;
    c.moe_jitter = 0.5f;
    AU_OK(moe_model_config_validate(&c));
    moe_model *m = make_model(&e, &c);
    moe_model_destroy(m);
    AU_FAILS(moe_model_config_validate(NULL), MOE_ERR_INVALID_ARG, "moe_model_config_validate", "NULL");
    au_env_close(&e);
}

static void test_config_init_and_versioning(void **state)
{
    (void)state;
    moe_model_config c;
    AU_FAILS(moe_model_config_init(NULL, sizeof c), MOE_ERR_INVALID_ARG, "moe_model_config_init", "cfg");
    AU_FAILS(moe_model_config_init(&c, 0), MOE_ERR_INVALID_ARG, "moe_model_config_init", "struct_size");
    AU_FAILS(moe_model_config_init(&c, 3), MOE_ERR_INVALID_ARG, "struct_size");
    /* documented defaults */
    AU_OK(moe_model_config_init(&c, sizeof c));
    assert_int_equal(c.struct_size, sizeof c);
    assert_int_equal(c.vocab_size, 256);
    assert_int_equal(c.max_seq_len, 256);
    assert_int_equal(c.d_model, 128);
    assert_int_equal(c.num_layers, 4);
    assert_int_equal(c.num_heads, 4);
    assert_int_equal(c.num_kv_heads, 4);
    assert_int_equal(c.head_dim, 0);
    assert_int_equal(c.position, MOE_POSITION_ROPE);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.norm, MOE_NORM_RMSNORM);
    assert_true(c.norm_eps == 1e-5f);
    assert_int_equal(c.tie_embeddings, 0);
    assert_true(c.init_std == 0.02f);
    assert_int_equal(c.ffn_activation, MOE_ACTIVATION_SWIGLU);
    assert_int_equal(c.moe_num_experts, 8);
    assert_int_equal(c.moe_top_k, 2);
    assert_int_equal(c.moe_expert_hidden, 256);
    assert_int_equal(c.moe_layer_freq, 1);
    assert_int_equal(c.moe_first_dense, 0);
    assert_int_equal(c.moe_shared_expert_hidden, 0);
    assert_int_equal(c.moe_router, MOE_ROUTER_TOKEN_CHOICE);
    assert_int_equal(c.moe_score_function, MOE_SCORE_SOFTMAX);
    assert_int_equal(c.moe_renormalize, 1);
    assert_true(c.moe_capacity_factor == 0.0f);
    assert_true(c.moe_jitter == 0.0f);
    assert_true(c.moe_aux_loss_coef == 0.01f);
    assert_true(c.moe_z_loss_coef == 0.001f);
    assert_true(c.moe_bias_update_rate == 0.0f);
    AU_OK(moe_model_config_validate(&c));

    /* an older caller: init writes only its bytes */
    const uint32_t old = (uint32_t)offsetof(moe_model_config, moe_num_experts);
    unsigned char raw[sizeof(moe_model_config) + 16];
    memset(raw, 0xAB, sizeof raw);
    AU_OK(moe_model_config_init((moe_model_config *)(void *)raw, old));
    for (size_t b = old; b < sizeof raw; b++) assert_int_equal(raw[b], 0xAB);

    /* ... and the library reads only its bytes: the later fields (garbage here) get defaults */
    moe_model_config o;
    au_tiny_config(&o);
    o.struct_size = old;
    o.moe_num_experts = -7;
    o.moe_top_k = 1000;
    o.moe_router = 42;
    o.moe_aux_loss_coef = NAN;
    AU_OK(moe_model_config_validate(&o));
    au_env e;
    au_env_open(&e, 2);
    moe_model *m = make_model(&e, &o);
    moe_model_config got;
    AU_OK(moe_model_config_init(&got, sizeof got));
    AU_OK(moe_model_get_config(m, &got));
    assert_int_equal(got.struct_size, sizeof got);
    assert_int_equal(got.d_model, 8);
    assert_int_equal(got.vocab_size, MV);
    assert_int_equal(got.ffn_hidden, 12);
    assert_int_equal(got.moe_num_experts, 8);
    assert_int_equal(got.moe_top_k, 2);
    assert_int_equal(got.moe_expert_hidden, 256);
    assert_int_equal(got.moe_activation, MOE_ACTIVATION_SWIGLU);
    assert_int_equal(got.moe_layer_freq, 1);
    assert_int_equal(got.moe_first_dense, 0);
    assert_int_equal(got.moe_shared_expert_hidden, 0);
    assert_int_equal(got.moe_router, MOE_ROUTER_TOKEN_CHOICE);
    assert_int_equal(got.moe_score_function, MOE_SCORE_SOFTMAX);
    assert_int_equal(got.moe_renormalize, 1);
    assert_true(got.moe_capacity_factor == 0.0f);
    assert_true(got.moe_aux_loss_coef == 0.01f);
    assert_true(got.moe_z_loss_coef == 0.001f);
    assert_true(got.moe_bias_update_rate == 0.0f);
    /* the parameters reflect the defaults: experts [8, 256, 8] */
    int64_t shape[8];
    int32_t ndim = 0, count = 0;
    AU_OK(moe_model_param_count(m, &count));
    int found = 0;
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        AU_OK(moe_model_param_info(m, i, name, sizeof name, &ndim, shape));
        if (strcmp(name, "layers.1.moe.experts.w2") == 0) {
            found = 1;
            assert_int_equal(ndim, 3);
            assert_int_equal(shape[0], 8);
            assert_int_equal(shape[1], 8);
            assert_int_equal(shape[2], 256);
        }
    }
    assert_true(found);
    moe_model_destroy(m);
    au_env_close(&e);
}

/* ---- 2. create/destroy and NULL arguments -------------------------------------------------------- */

static void test_null_arguments(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 3);
    moe_model_config c;
    au_tiny_config(&c);
    moe_model *sentinel = (moe_model *)(uintptr_t)0x2468, *out = sentinel;
    AU_FAILS(moe_model_create(NULL, e.mesh, &c, &out), MOE_ERR_INVALID_ARG, "moe_model_create", "ctx");
    AU_FAILS_CTX(e.ctx, moe_model_create(e.ctx, NULL, &c, &out), MOE_ERR_INVALID_ARG, "moe_model_create", "mesh");
    AU_FAILS_CTX(e.ctx, moe_model_create(e.ctx, e.mesh, NULL, &out), MOE_ERR_INVALID_ARG, "moe_model_create", "NULL");
    AU_FAILS_CTX(e.ctx, moe_model_create(e.ctx, e.mesh, &c, NULL), MOE_ERR_INVALID_ARG, "moe_model_create", "out");
    assert_ptr_equal(out, sentinel);
    moe_model_destroy(NULL);

    moe_model *m = make_model(&e, &c);
    int32_t tok[MB * MT], tgt[MB * MT];
    tu_tokens(1, MV, MB * MT, tok, tgt);
    float logits[MB * MT * MV], buf[104];
    int64_t i64 = 0;
    int32_t i32 = 0;
    double dbl = 0.0;
    moe_model_config got;
    AU_OK(moe_model_config_init(&got, sizeof got));
    moe_routing_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;

    AU_FAILS(moe_model_get_config(NULL, &got), MOE_ERR_INVALID_ARG, "moe_model_get_config", "model");
    AU_FAILS_CTX(e.ctx, moe_model_get_config(m, NULL), MOE_ERR_INVALID_ARG, "moe_model_get_config", "cfg");
    AU_FAILS(moe_model_num_params(NULL, &i64, &i64), MOE_ERR_INVALID_ARG, "moe_model_num_params", "model");
    AU_OK(moe_model_num_params(m, NULL, NULL)); /* both outputs optional */
    AU_FAILS(moe_model_flops_per_token(NULL, MT, &dbl), MOE_ERR_INVALID_ARG, "moe_model_flops_per_token", "model");
    AU_FAILS_CTX(e.ctx, moe_model_flops_per_token(m, MT, NULL), MOE_ERR_INVALID_ARG, "moe_model_flops_per_token",
                 "flops");
    AU_FAILS(moe_model_forward(NULL, tok, MB, MT, logits, MB * MT * MV), MOE_ERR_INVALID_ARG, "moe_model_forward",
             "model");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, NULL, MB, MT, logits, MB * MT * MV), MOE_ERR_INVALID_ARG,
                 "moe_model_forward", "tokens");
    AU_FAILS(moe_model_forward_backward(NULL, tok, tgt, MB, MT, 1.0f, NULL, NULL), MOE_ERR_INVALID_ARG,
             "moe_model_forward_backward", "model");
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, NULL, tgt, MB, MT, 1.0f, NULL, NULL), MOE_ERR_INVALID_ARG,
                 "moe_model_forward_backward", "tokens");
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, NULL, MB, MT, 1.0f, NULL, NULL), MOE_ERR_INVALID_ARG,
                 "moe_model_forward_backward", "targets");
    AU_FAILS(moe_model_zero_grad(NULL), MOE_ERR_INVALID_ARG, "moe_model_zero_grad", "model");
    AU_FAILS(moe_model_param_count(NULL, &i32), MOE_ERR_INVALID_ARG, "moe_model_param_count", "model");
    AU_FAILS_CTX(e.ctx, moe_model_param_count(m, NULL), MOE_ERR_INVALID_ARG, "moe_model_param_count", "count");
    AU_FAILS(moe_model_param_info(NULL, 0, NULL, 0, NULL, NULL), MOE_ERR_INVALID_ARG, "moe_model_param_info", "model");
    AU_OK(moe_model_param_info(m, 0, NULL, 0, NULL, NULL)); /* every output optional */
    AU_FAILS(moe_model_param_read(NULL, "embed.weight", 0, buf, 104), MOE_ERR_INVALID_ARG, "moe_model_param_read",
             "model");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, NULL, 0, buf, 104), MOE_ERR_INVALID_ARG, "moe_model_param_read",
                 "name");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, "embed.weight", 0, NULL, 104), MOE_ERR_INVALID_ARG,
                 "moe_model_param_read", "dst");
    AU_FAILS(moe_model_param_write(NULL, "embed.weight", buf, 104), MOE_ERR_INVALID_ARG, "moe_model_param_write",
             "model");
    AU_FAILS_CTX(e.ctx, moe_model_param_write(m, NULL, buf, 104), MOE_ERR_INVALID_ARG, "moe_model_param_write", "name");
    AU_FAILS_CTX(e.ctx, moe_model_param_write(m, "embed.weight", NULL, 104), MOE_ERR_INVALID_ARG,
                 "moe_model_param_write", "src");
    AU_FAILS(moe_model_routing_stats(NULL, 0, &s, NULL, 0), MOE_ERR_INVALID_ARG, "moe_model_routing_stats", "model");
    AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 0, NULL, NULL, 0), MOE_ERR_INVALID_ARG, "moe_model_routing_stats",
                 "stats");
    AU_FAILS(moe_model_upcycle(NULL, m), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "model");
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(m, NULL), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "dense");
    /* the model is still usable after all of that */
    AU_OK(moe_model_forward(m, tok, MB, MT, logits, MB * MT * MV));
    moe_model_destroy(m);
    au_env_close(&e);
}

/* ---- 3. forward ---------------------------------------------------------------------------------- */

static void test_forward_errors(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 4);
    moe_model_config c;
    au_tiny_config(&c);
    moe_model *m = make_model(&e, &c);
    int32_t tok[MB * 17];
    tu_tokens(2, MV, MB * 17, tok, NULL);
    const uint64_t need = MB * MT * MV;
    float logits[MB * 17 * MV];
    for (size_t i = 0; i < sizeof logits / sizeof logits[0]; i++) logits[i] = -7.0f;

    tok[5] = MV;
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, MB, MT, logits, need), MOE_ERR_INVALID_ARG, "moe_model_forward",
                 "tokens[5]");
    tok[5] = -1;
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, MB, MT, logits, need), MOE_ERR_INVALID_ARG, "tokens[5]");
    tok[5] = 0;
    tok[MB * MT - 1] = 1 << 30;
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, MB, MT, logits, need), MOE_ERR_INVALID_ARG, "tokens[11]");
    tok[MB * MT - 1] = MV - 1;
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, 1, 17, logits, 17 * MV), MOE_ERR_INVALID_ARG, "seq_len");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, 1, 0, logits, need), MOE_ERR_INVALID_ARG, "seq_len");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, 1, -3, logits, need), MOE_ERR_INVALID_ARG, "seq_len");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, 0, MT, logits, need), MOE_ERR_INVALID_ARG, "batch");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, -1, MT, logits, need), MOE_ERR_INVALID_ARG, "batch");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, MB, MT, logits, need - 1), MOE_ERR_INVALID_ARG, "logits_capacity");
    AU_FAILS_CTX(e.ctx, moe_model_forward(m, tok, MB, MT, logits, 0), MOE_ERR_INVALID_ARG, "logits_capacity");
    for (size_t i = 0; i < sizeof logits / sizeof logits[0]; i++) assert_true(logits[i] == -7.0f);
    /* no statistics from failed calls */
    moe_routing_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 0, &s, NULL, 0), MOE_ERR_STATE, "moe_model_routing_stats");

    /* logits NULL (for statistics only) is allowed, and seq_len == max_seq_len too */
    AU_OK(moe_model_forward(m, tok, MB, MT, NULL, 0));
    AU_OK(moe_model_forward(m, tok, 1, 16, NULL, 0));
    AU_OK(moe_model_routing_stats(m, 0, &s, NULL, 0));
    assert_int_equal(s.tokens, 16);
    /* a larger capacity than needed is fine, and only `need` floats are written */
    AU_OK(moe_model_forward(m, tok, MB, MT, logits, sizeof logits / sizeof logits[0]));
    for (size_t i = need; i < sizeof logits / sizeof logits[0]; i++) assert_true(logits[i] == -7.0f);
    for (size_t i = 0; i < need; i++) assert_true(isfinite(logits[i]) && logits[i] != -7.0f);
    moe_model_destroy(m);
    au_env_close(&e);
}

static void cfg_learned_layernorm_gelu(moe_model_config *c)
{
    c->position = MOE_POSITION_LEARNED;
    c->norm = MOE_NORM_LAYERNORM;
    c->moe_activation = MOE_ACTIVATION_GELU;
    c->moe_shared_expert_hidden = 5;
}
static void cfg_alibi_sigmoid(moe_model_config *c)
{
    c->position = MOE_POSITION_ALIBI;
    c->moe_score_function = MOE_SCORE_SIGMOID;
    c->moe_renormalize = 0;
    c->moe_first_dense = 1;
}
static void cfg_none(moe_model_config *c) { (void)c; }

static void (*const forward_cfgs[])(moe_model_config *) = {cfg_none, cfg_learned_layernorm_gelu, cfg_alibi_sigmoid};

/* Dropless token choice: earlier tokens neither see later ones in attention nor in routing. */
static void test_forward_causality(void **state)
{
    (void)state;
    enum { T = 10, CUT = 4 };
    for (size_t v = 0; v < sizeof forward_cfgs / sizeof forward_cfgs[0]; v++) {
        au_env e;
        au_env_open(&e, 5);
        moe_model_config c;
        au_tiny_config(&c);
        forward_cfgs[v](&c);
        moe_model *m = make_model(&e, &c);
        int32_t a[T], b[T];
        tu_tokens(3, MV, T, a, NULL);
        memcpy(b, a, sizeof a);
        for (int t = CUT + 1; t < T; t++) b[t] = (a[t] + 1 + t) % MV;
        float la[T * MV], lb[T * MV];
        AU_OK(moe_model_forward(m, a, 1, T, la, T * MV));
        AU_OK(moe_model_forward(m, b, 1, T, lb, T * MV));
        if (memcmp(la, lb, (size_t)(CUT + 1) * MV * sizeof(float)) != 0)
            fail_msg("config %zu: logits at positions <= %d changed with later tokens", v, CUT);
        /* ... while the later positions do change (the check is not vacuous) */
        assert_true(memcmp(la + (CUT + 1) * MV, lb + (CUT + 1) * MV, (size_t)(T - CUT - 1) * MV * sizeof(float)) != 0);
        /* and a prefix run alone gives the same logits as the prefix of the long run */
        float lp[(CUT + 1) * MV];
        AU_OK(moe_model_forward(m, a, 1, CUT + 1, lp, (CUT + 1) * MV));
        double r = au_rel_diff(lp, la, (CUT + 1) * MV);
        if (r > 1e-6) fail_msg("config %zu: a prefix alone differs from the prefix in context (%.3g)", v, r);
        moe_model_destroy(m);
        au_env_close(&e);
    }
}

static void test_forward_batch_independence(void **state)
{
    (void)state;
    enum { T = 7 };
    for (size_t v = 0; v < sizeof forward_cfgs / sizeof forward_cfgs[0]; v++) {
        au_env e;
        au_env_open(&e, 6);
        moe_model_config c;
        au_tiny_config(&c);
        forward_cfgs[v](&c);
        moe_model *m = make_model(&e, &c);
        int32_t tok[3 * T];
        tu_tokens(4, MV, 3 * T, tok, NULL);
        float all[3 * T * MV], one[T * MV];
        AU_OK(moe_model_forward(m, tok, 3, T, all, 3 * T * MV));
        for (int s = 0; s < 3; s++) {
            AU_OK(moe_model_forward(m, tok + s * T, 1, T, one, T * MV));
            double r = au_rel_diff(one, all + s * T * MV, T * MV);
            if (r > 1e-6) fail_msg("config %zu: sequence %d alone differs from it in a batch of 3 (%.3g)", v, s, r);
        }
        /* forward is a pure function of the tokens */
        float again[3 * T * MV];
        AU_OK(moe_model_forward(m, tok, 3, T, again, 3 * T * MV));
        assert_memory_equal(all, again, sizeof all);
        /* one token */
        float l1[MV], l1b[MV];
        AU_OK(moe_model_forward(m, tok, 1, 1, l1, MV));
        for (int i = 0; i < MV; i++) assert_true(isfinite(l1[i]));
        AU_OK(moe_model_forward(m, tok, 1, 1, l1b, MV));
        assert_memory_equal(l1, l1b, sizeof l1);
        double r = au_rel_diff(l1, all, MV);
        if (r > 1e-6) fail_msg("config %zu: a single token differs from position 0 of its sequence (%.3g)", v, r);
        /* forward adds no gradient */
        int32_t count = 0;
        AU_OK(moe_model_param_count(m, &count));
        for (int32_t i = 0; i < count; i++) {
            char name[128];
            int32_t ndim = 0;
            int64_t shape[8];
            AU_OK(moe_model_param_info(m, i, name, sizeof name, &ndim, shape));
            int64_t n = au_numel(ndim, shape);
            float *g = malloc((size_t)n * sizeof(float));
            assert_non_null(g);
            AU_OK(moe_model_param_read(m, name, 1, g, n));
            for (int64_t j = 0; j < n; j++) assert_true(g[j] == 0.0f);
            free(g);
        }
        moe_model_destroy(m);
        au_env_close(&e);
    }
}

/* ---- 4. forward_backward ------------------------------------------------------------------------- */

typedef struct grads {
    int32_t count;
    int64_t total;
    float *v; /* every gradient, in parameter order */
} grads;

static void read_all(moe_model *m, uint32_t gradient, grads *g)
{
    AU_OK(moe_model_param_count(m, &g->count));
    AU_OK(moe_model_num_params(m, &g->total, NULL));
    g->v = malloc((size_t)g->total * sizeof(float));
    assert_non_null(g->v);
    int64_t off = 0;
    for (int32_t i = 0; i < g->count; i++) {
        char name[128];
        int32_t ndim = 0;
        int64_t shape[8];
        AU_OK(moe_model_param_info(m, i, name, sizeof name, &ndim, shape));
        int64_t n = au_numel(ndim, shape);
        assert_true(off + n <= g->total);
        AU_OK(moe_model_param_read(m, name, gradient, g->v + off, n));
        off += n;
    }
    assert_int_equal(off, g->total);
}

static void grads_of(moe_model *m, const int32_t *tok, const int32_t *tgt, int32_t b, int32_t t, float weight,
                     grads *g, double *lm, double *aux)
{
    AU_OK(moe_model_zero_grad(m));
    AU_OK(moe_model_forward_backward(m, tok, tgt, b, t, weight, lm, aux));
    read_all(m, 1, g);
}

static void test_forward_backward_errors(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 7);
    moe_model_config c;
    au_tiny_config(&c);
    moe_model *m = make_model(&e, &c);
    int32_t tok[MB * MT], tgt[MB * MT];
    tu_tokens(5, MV, MB * MT, tok, tgt);
    double lm = -1.0, aux = -1.0;
    tgt[7] = MV;
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "moe_model_forward_backward", "targets[7]");
    tgt[7] = -1;
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "targets[7]");
    tgt[7] = -101;
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "targets[7]");
    tgt[7] = 2;
    tok[3] = MV;
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "tokens[3]");
    tok[3] = 0;
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, MB, MT, NAN, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "loss_weight");
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, MB, MT, INFINITY, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "loss_weight");
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, 0, MT, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG, "batch");
    AU_FAILS_CTX(e.ctx, moe_model_forward_backward(m, tok, tgt, 1, 17, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG,
                 "seq_len");
    assert_true(lm == -1.0 && aux == -1.0); /* outputs untouched */
    /* failed calls added no gradient */
    grads g;
    read_all(m, 1, &g);
    for (int64_t i = 0; i < g.total; i++) assert_true(g.v[i] == 0.0f);
    free(g.v);
    moe_model_destroy(m);
    au_env_close(&e);
}

static void test_forward_backward_ignored_targets(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 8);
    int32_t tok[MB * MT], tgt[MB * MT];
    tu_tokens(6, MV, MB * MT, tok, NULL);
    for (int i = 0; i < MB * MT; i++) tgt[i] = -100;
    for (int with_router_losses = 0; with_router_losses < 2; with_router_losses++) {
        moe_model_config c;
        au_tiny_config(&c);
        if (!with_router_losses) c.moe_aux_loss_coef = c.moe_z_loss_coef = 0.0f;
        moe_model *m = make_model(&e, &c);
        double lm = -1.0, aux = -1.0;
        grads g;
        grads_of(m, tok, tgt, MB, MT, 1.0f, &g, &lm, &aux);
        assert_true(lm == 0.0);
        assert_true(isfinite(aux));
        double gn = 0.0;
        for (int64_t i = 0; i < g.total; i++) {
            assert_true(isfinite(g.v[i]));
            gn += fabs(g.v[i]);
        }
        if (!with_router_losses) {
            assert_true(aux == 0.0);
            assert_true(gn == 0.0); /* nothing counted, nothing learned */
        } else {
            assert_true(aux > 0.0);
            assert_true(gn > 0.0); /* the router losses still train the routers */
        }
        free(g.v);
        moe_model_destroy(m);
    }
    au_env_close(&e);
}

/* lm_loss is the mean cross-entropy of the counted targets, computed here from the forward's logits
 * in double; aux_loss is the sum of every MoE layer's aux + z from the routing statistics. */
static void test_forward_backward_loss_values(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 9);
    moe_model_config c;
    au_tiny_config(&c);
    c.num_layers = 3;
    c.moe_first_dense = 1;
    moe_model *m = make_model(&e, &c);
    int32_t tok[MB * MT], tgt[MB * MT];
    tu_tokens(7, MV, MB * MT, tok, tgt);
    tgt[0] = tgt[4] = tgt[9] = -100;
    float logits[MB * MT * MV];
    AU_OK(moe_model_forward(m, tok, MB, MT, logits, MB * MT * MV));
    double ref = 0.0;
    int counted = 0;
    for (int i = 0; i < MB * MT; i++) {
        if (tgt[i] == -100) continue;
        const float *z = logits + (size_t)i * MV;
        double mx = z[0], s = 0.0;
        for (int j = 1; j < MV; j++) mx = z[j] > mx ? z[j] : mx;
        for (int j = 0; j < MV; j++) s += exp((double)z[j] - mx);
        ref += mx + log(s) - z[tgt[i]];
        counted++;
    }
    ref /= counted;
    double lm = 0.0, aux = 0.0;
    AU_OK(moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, &lm, &aux));
    if (fabs(lm - ref) > 1e-5 * fabs(ref)) fail_msg("lm_loss %.9g, reference %.9g", lm, ref);
    double sum = 0.0;
    for (int32_t l = 1; l < 3; l++) {
        moe_routing_stats s;
        memset(&s, 0, sizeof s);
        s.struct_size = sizeof s;
        AU_OK(moe_model_routing_stats(m, l, &s, NULL, 0));
        assert_true(s.aux_loss > 0.0 && s.z_loss > 0.0);
        sum += s.aux_loss + s.z_loss;
    }
    if (fabs(aux - sum) > 1e-6 * sum) fail_msg("aux_loss %.9g, sum over layers %.9g", aux, sum);
    /* NULL outputs are allowed */
    AU_OK(moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, NULL, NULL));
    moe_model_destroy(m);
    au_env_close(&e);
}

static void assert_scaled(const grads *a, const grads *b, double k, const char *what)
{
    /* a == k * b within 1e-6 relative */
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < a->total; i++) {
        double d = (double)a->v[i] - k * b->v[i];
        num += d * d;
        den += k * k * (double)b->v[i] * b->v[i];
    }
    if (!(den > 0.0)) fail_msg("%s: zero reference gradient", what);
    if (sqrt(num / den) > 1e-6) fail_msg("%s: relative difference %.3g", what, sqrt(num / den));
}

static void test_forward_backward_scaling(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 10);
    int32_t tok[MB * MT], tgt[MB * MT];
    tu_tokens(8, MV, MB * MT, tok, tgt);
    tgt[2] = -100;
    for (int with_router_losses = 0; with_router_losses < 2; with_router_losses++) {
        moe_model_config c;
        au_tiny_config(&c);
        if (!with_router_losses) c.moe_aux_loss_coef = c.moe_z_loss_coef = 0.0f;
        moe_model *m = make_model(&e, &c);
        grads g1, g2, gh, gneg, gz, gacc;
        double lm1 = 0, lm2 = 0, aux1 = 0, aux2 = 0;
        grads_of(m, tok, tgt, MB, MT, 1.0f, &g1, &lm1, &aux1);
        grads_of(m, tok, tgt, MB, MT, 2.0f, &g2, &lm2, &aux2);
        grads_of(m, tok, tgt, MB, MT, 0.375f, &gh, NULL, NULL);
        grads_of(m, tok, tgt, MB, MT, -1.0f, &gneg, NULL, NULL);
        grads_of(m, tok, tgt, MB, MT, 0.0f, &gz, NULL, NULL);
        /* the reported losses do not depend on the weight */
        assert_true(lm1 == lm2 && aux1 == aux2);
        const char *tag = with_router_losses ? "with router losses" : "without router losses";
        char what[96];
        snprintf(what, sizeof what, "weight 2 vs 1, %s", tag);
        assert_scaled(&g2, &g1, 2.0, what);
        snprintf(what, sizeof what, "weight 0.375 vs 1, %s", tag);
        assert_scaled(&gh, &g1, 0.375, what);
        snprintf(what, sizeof what, "weight -1 vs 1, %s", tag);
        assert_scaled(&gneg, &g1, -1.0, what);
        for (int64_t i = 0; i < gz.total; i++) assert_true(gz.v[i] == 0.0f);
        /* accumulation: two calls without zero_grad add up */
        AU_OK(moe_model_zero_grad(m));
        AU_OK(moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, NULL, NULL));
        AU_OK(moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, NULL, NULL));
        read_all(m, 1, &gacc);
        snprintf(what, sizeof what, "two accumulated calls vs one, %s", tag);
        assert_scaled(&gacc, &g1, 2.0, what);
        /* determinism: a fresh run gives bitwise the same gradients */
        grads again;
        grads_of(m, tok, tgt, MB, MT, 1.0f, &again, NULL, NULL);
        assert_memory_equal(again.v, g1.v, (size_t)g1.total * sizeof(float));
        /* the parameters are not touched by forward_backward */
        free(again.v);
        free(g1.v);
        free(g2.v);
        free(gh.v);
        free(gneg.v);
        free(gz.v);
        free(gacc.v);
        moe_model_destroy(m);
    }
    au_env_close(&e);
}

/* Two micro-batches weighted by their token shares give the gradient of the one big batch. */
static void test_micro_batch_accumulation(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 11);
    moe_model_config c;
    au_tiny_config(&c);
    c.moe_aux_loss_coef = c.moe_z_loss_coef = 0.0f; /* router losses are per micro-batch by design */
    moe_model *m = make_model(&e, &c);
    int32_t tok[MB * MT], tgt[MB * MT];
    tu_tokens(9, MV, MB * MT, tok, tgt);
    tgt[1] = tgt[2] = tgt[3] = -100; /* sequence 0 counts 3 targets, sequence 1 counts 6 */
    grads big, parts;
    grads_of(m, tok, tgt, MB, MT, 1.0f, &big, NULL, NULL);
    AU_OK(moe_model_zero_grad(m));
    AU_OK(moe_model_forward_backward(m, tok, tgt, 1, MT, 3.0f / 9.0f, NULL, NULL));
    AU_OK(moe_model_forward_backward(m, tok + MT, tgt + MT, 1, MT, 6.0f / 9.0f, NULL, NULL));
    read_all(m, 1, &parts);
    double r = au_rel_diff(parts.v, big.v, big.total);
    if (r > 1e-5) fail_msg("micro-batch accumulation differs from the big batch by %.3g", r);
    free(big.v);
    free(parts.v);
    moe_model_destroy(m);
    au_env_close(&e);
}

/* ---- 5. parameters --------------------------------------------------------------------------------- */

typedef struct expected_param {
    const char *name;
    int32_t ndim;
    int64_t shape[3];
} expected_param;

static void test_param_listing(void **state)
{
    (void)state;
    static const expected_param expect[] = {
        {"embed.weight", 2, {13, 8}},
        {"layers.0.attn_norm.weight", 1, {8}},
        {"layers.0.attn.wq", 2, {8, 8}},
        {"layers.0.attn.wk", 2, {4, 8}},
        {"layers.0.attn.wv", 2, {4, 8}},
        {"layers.0.attn.wo", 2, {8, 8}},
        {"layers.0.ffn_norm.weight", 1, {8}},
        {"layers.0.moe.router", 2, {4, 8}},
        {"layers.0.moe.experts.w1", 3, {4, 6, 8}},
        {"layers.0.moe.experts.w3", 3, {4, 6, 8}},
        {"layers.0.moe.experts.w2", 3, {4, 8, 6}},
        {"layers.1.attn_norm.weight", 1, {8}},
        {"layers.1.attn.wq", 2, {8, 8}},
        {"layers.1.attn.wk", 2, {4, 8}},
        {"layers.1.attn.wv", 2, {4, 8}},
        {"layers.1.attn.wo", 2, {8, 8}},
        {"layers.1.ffn_norm.weight", 1, {8}},
        {"layers.1.moe.router", 2, {4, 8}},
        {"layers.1.moe.experts.w1", 3, {4, 6, 8}},
        {"layers.1.moe.experts.w3", 3, {4, 6, 8}},
        {"layers.1.moe.experts.w2", 3, {4, 8, 6}},
        {"final_norm.weight", 1, {8}},
        {"lm_head.weight", 2, {13, 8}},
    };
    const int32_t n_expect = (int32_t)(sizeof expect / sizeof expect[0]);
    au_env e;
    au_env_open(&e, 12);
    moe_model_config c;
    au_tiny_config(&c);
    moe_model *m = make_model(&e, &c);
    int32_t count = -1;
    AU_OK(moe_model_param_count(m, &count));
    assert_int_equal(count, n_expect);
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        int32_t ndim = -1;
        int64_t shape[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
        AU_OK(moe_model_param_info(m, i, name, sizeof name, &ndim, shape));
        if (strcmp(name, expect[i].name) != 0) fail_msg("parameter %d is '%s', expected '%s'", i, name, expect[i].name);
        assert_int_equal(ndim, expect[i].ndim);
        for (int32_t d = 0; d < ndim; d++) assert_int_equal(shape[d], expect[i].shape[d]);
        for (int32_t d = ndim; d < 8; d++) assert_int_equal(shape[d], -1); /* nothing past ndim written */
        /* a buffer exactly one byte short fails and stays untouched */
        char small[128];
        memset(small, 'Q', sizeof small);
        uint32_t len = (uint32_t)strlen(expect[i].name);
        AU_FAILS_CTX(e.ctx, moe_model_param_info(m, i, small, len, &ndim, shape), MOE_ERR_INVALID_ARG,
                     "moe_model_param_info", "name_capacity");
        for (size_t b = 0; b < sizeof small; b++) assert_int_equal(small[b], 'Q');
        AU_OK(moe_model_param_info(m, i, small, len + 1, NULL, NULL));
        assert_string_equal(small, expect[i].name);
    }
    AU_FAILS_CTX(e.ctx, moe_model_param_info(m, -1, NULL, 0, NULL, NULL), MOE_ERR_INVALID_ARG, "moe_model_param_info",
                 "index -1");
    AU_FAILS_CTX(e.ctx, moe_model_param_info(m, count, NULL, 0, NULL, NULL), MOE_ERR_INVALID_ARG, "index");
    moe_model_destroy(m);

    /* tied embeddings: no LM head tensor */
    au_tiny_config(&c);
    c.tie_embeddings = 1;
    m = make_model(&e, &c);
    AU_OK(moe_model_param_count(m, &count));
    assert_int_equal(count, n_expect - 1);
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        AU_OK(moe_model_param_info(m, i, name, sizeof name, NULL, NULL));
        assert_true(strcmp(name, "lm_head.weight") != 0);
    }
    float buf[104];
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, "lm_head.weight", 0, buf, 104), MOE_ERR_INVALID_ARG, "lm_head.weight");
    moe_model_destroy(m);

    /* LayerNorm, learned positions, GELU experts with a shared expert, a dense first layer */
    au_tiny_config(&c);
    c.norm = MOE_NORM_LAYERNORM;
    c.position = MOE_POSITION_LEARNED;
    c.moe_activation = MOE_ACTIVATION_GELU;
    c.moe_shared_expert_hidden = 5;
    c.moe_first_dense = 1;
    m = make_model(&e, &c);
    static const expected_param some[] = {
        {"pos_embed.weight", 2, {16, 8}},         {"layers.0.attn_norm.bias", 1, {8}},
        {"layers.0.mlp.w1", 2, {12, 8}},          {"layers.0.mlp.w3", 2, {12, 8}},
        {"layers.0.mlp.w2", 2, {8, 12}},          {"layers.1.moe.experts.w1", 3, {4, 6, 8}},
        {"layers.1.moe.shared_expert.w1", 2, {5, 8}}, {"layers.1.moe.shared_expert.w2", 2, {8, 5}},
        {"final_norm.bias", 1, {8}},
    };
    static const char *absent[] = {"layers.0.moe.router", "layers.1.mlp.w1", "layers.1.moe.experts.w3",
                                   "layers.1.moe.shared_expert.w3"};
    AU_OK(moe_model_param_count(m, &count));
    for (size_t k = 0; k < sizeof some / sizeof some[0]; k++) {
        int found = 0;
        for (int32_t i = 0; i < count && !found; i++) {
            char name[128];
            int32_t ndim = 0;
            int64_t shape[8];
            AU_OK(moe_model_param_info(m, i, name, sizeof name, &ndim, shape));
            if (strcmp(name, some[k].name) != 0) continue;
            found = 1;
            assert_int_equal(ndim, some[k].ndim);
            for (int32_t d = 0; d < ndim; d++) assert_int_equal(shape[d], some[k].shape[d]);
        }
        if (!found) fail_msg("no parameter '%s'", some[k].name);
    }
    for (size_t k = 0; k < sizeof absent / sizeof absent[0]; k++)
        AU_FAILS_CTX(e.ctx, moe_model_param_read(m, absent[k], 0, buf, 1), MOE_ERR_INVALID_ARG, absent[k]);
    moe_model_destroy(m);
    au_env_close(&e);
}

static void test_param_read_write(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 13);
    moe_model_config c;
    au_tiny_config(&c);
    moe_model *m = make_model(&e, &c);
    float w[4 * 6 * 8], back[4 * 6 * 8], orig[4 * 6 * 8];
    const int64_t n = 4 * 6 * 8;
    const char *nm = "layers.1.moe.experts.w1";
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, nm, 0, back, n - 1), MOE_ERR_INVALID_ARG, "moe_model_param_read",
                 "count");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, nm, 0, back, n + 1), MOE_ERR_INVALID_ARG, "count");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, nm, 2, back, n), MOE_ERR_INVALID_ARG, "gradient");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, "layers.1.moe.experts.w", 0, back, n), MOE_ERR_INVALID_ARG,
                 "layers.1.moe.experts.w");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, "", 0, back, n), MOE_ERR_INVALID_ARG, "moe_model_param_read");
    AU_FAILS_CTX(e.ctx, moe_model_param_read(m, "layers.2.moe.router", 0, back, 32), MOE_ERR_INVALID_ARG,
                 "layers.2.moe.router");
    AU_FAILS_CTX(e.ctx, moe_model_param_write(m, nm, w, n - 1), MOE_ERR_INVALID_ARG, "moe_model_param_write", "count");
    AU_FAILS_CTX(e.ctx, moe_model_param_write(m, nm, w, -1), MOE_ERR_INVALID_ARG, "count");
    AU_FAILS_CTX(e.ctx, moe_model_param_write(m, "nope", w, n), MOE_ERR_INVALID_ARG, "nope");

    int32_t tok[MB * MT];
    tu_tokens(10, MV, MB * MT, tok, NULL);
    float l0[MB * MT * MV], l1[MB * MT * MV];
    AU_OK(moe_model_forward(m, tok, MB, MT, l0, MB * MT * MV));
    AU_OK(moe_model_param_read(m, nm, 0, orig, n));
    for (int64_t i = 0; i < n; i++) w[i] = (float)(i % 17) * 0.03125f - 0.25f;
    AU_OK(moe_model_param_write(m, nm, w, n));
    AU_OK(moe_model_param_read(m, nm, 0, back, n));
    assert_memory_equal(w, back, sizeof w);
    /* the write is what the model computes with, and touches nothing else */
    AU_OK(moe_model_forward(m, tok, MB, MT, l1, MB * MT * MV));
    assert_true(memcmp(l0, l1, sizeof l0) != 0);
    float other[4 * 6 * 8];
    AU_OK(moe_model_param_read(m, "layers.1.moe.experts.w3", 0, other, n));
    AU_OK(moe_model_param_read(m, "layers.0.moe.experts.w1", 0, back, n));
    assert_true(memcmp(back, w, sizeof w) != 0);
    AU_OK(moe_model_param_write(m, nm, orig, n));
    AU_OK(moe_model_forward(m, tok, MB, MT, l1, MB * MT * MV));
    assert_memory_equal(l0, l1, sizeof l0);
    /* gradients read back the same way, and zero_grad clears them */
    int32_t tgt[MB * MT];
    tu_tokens(11, MV, MB * MT, tok, tgt);
    AU_OK(moe_model_forward_backward(m, tok, tgt, MB, MT, 1.0f, NULL, NULL));
    AU_OK(moe_model_param_read(m, nm, 1, back, n));
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += fabs(back[i]);
    assert_true(s > 0.0);
    AU_OK(moe_model_zero_grad(m));
    grads g;
    read_all(m, 1, &g);
    for (int64_t i = 0; i < g.total; i++) assert_true(g.v[i] == 0.0f);
    free(g.v);
    moe_model_destroy(m);
    au_env_close(&e);
}

/* Sizes of au_tiny_config counted by hand (V 13, d 8, L 2, 2 heads x 4, 1 kv head, E 4, k 2, f 6):
 *   embed 13*8 = 104; per layer: norms 8 + 8, wq 64, wk 32, wv 32, wo 64, router 32,
 *   experts 3 * 4*6*8 = 576 -> 816 (active: 576 * 2/4 = 288 -> 528); final norm 8; head 104.
 *   total 104 + 2*816 + 8 + 104 = 1848; active 104 + 2*528 + 8 + 104 = 1272.
 * Dense (ffn 12): per layer 16 + 192 + 3*12*8 = 496; total 104 + 992 + 8 + 104 = 1208.
 * FLOPs (model.c): 6 x (active matmul weights incl. the LM head or the tied embedding)
 *   + 6 x layers x heads x head_dim x seq. Dense: matmuls 2*(192 + 288) + 104 = 1064;
 *   MoE: 2*(192 + 32 + 288) + 104 = 1128; attention at seq 16: 6*2*2*4*16 = 1536. */
static void test_param_counts_and_flops(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 14);
    moe_model_config c;
    int64_t total = -1, active = -1;
    double flops = -1.0;

    au_tiny_config(&c);
    moe_model *m = make_model(&e, &c);
    AU_OK(moe_model_num_params(m, &total, &active));
    assert_int_equal(total, 1848);
    assert_int_equal(active, 1272);
    assert_true(active < total);
    int64_t only = -1;
    AU_OK(moe_model_num_params(m, &only, NULL));
    assert_int_equal(only, 1848);
    AU_OK(moe_model_num_params(m, NULL, &only));
    assert_int_equal(only, 1272);
    AU_OK(moe_model_flops_per_token(m, 16, &flops));
    assert_true(fabs(flops - (6.0 * 1128 + 1536)) < 1e-9);
    AU_OK(moe_model_flops_per_token(m, 1, &flops));
    assert_true(fabs(flops - (6.0 * 1128 + 96)) < 1e-9);
    flops = -1.0;
    AU_FAILS_CTX(e.ctx, moe_model_flops_per_token(m, 0, &flops), MOE_ERR_INVALID_ARG, "moe_model_flops_per_token",
                 "seq_len");
    AU_FAILS_CTX(e.ctx, moe_model_flops_per_token(m, 17, &flops), MOE_ERR_INVALID_ARG, "seq_len");
    assert_true(flops == -1.0);
    /* the parameter counts add up to the listing */
    grads g;
    read_all(m, 0, &g);
    assert_int_equal(g.total, 1848);
    free(g.v);
    moe_model_destroy(m);

    /* with an always-on shared expert of 5: + 3*5*8 = 120 per layer, all active */
    au_tiny_config(&c);
    c.moe_shared_expert_hidden = 5;
    m = make_model(&e, &c);
    AU_OK(moe_model_num_params(m, &total, &active));
    assert_int_equal(total, 1848 + 240);
    assert_int_equal(active, 1272 + 240);
    moe_model_destroy(m);

    /* top-1 of 4: experts active 576/4 = 144 per layer */
    au_tiny_config(&c);
    c.moe_top_k = 1;
    m = make_model(&e, &c);
    AU_OK(moe_model_num_params(m, &total, &active));
    assert_int_equal(total, 1848);
    assert_int_equal(active, 1848 - 2 * 432);
    moe_model_destroy(m);

    /* dense */
    au_tiny_config(&c);
    c.moe_num_experts = 0;
    m = make_model(&e, &c);
    AU_OK(moe_model_num_params(m, &total, &active));
    assert_int_equal(total, 1208);
    assert_int_equal(active, 1208);
    AU_OK(moe_model_flops_per_token(m, 16, &flops));
    assert_true(fabs(flops - (6.0 * 1064 + 1536)) < 1e-9);
    AU_OK(moe_model_flops_per_token(m, 5, &flops));
    assert_true(fabs(flops - (6.0 * 1064 + 6.0 * 2 * 2 * 4 * 5)) < 1e-9);
    moe_model_destroy(m);

    /* dense and tied: one tensor fewer, the same matmul work (the embedding is the head) */
    c.tie_embeddings = 1;
    m = make_model(&e, &c);
    AU_OK(moe_model_num_params(m, &total, &active));
    assert_int_equal(total, 1208 - 104);
    assert_int_equal(active, total);
    AU_OK(moe_model_flops_per_token(m, 16, &flops));
    assert_true(fabs(flops - (6.0 * 1064 + 1536)) < 1e-9);
    moe_model_destroy(m);
    au_env_close(&e);
}

/* ---- 6. initialisation ------------------------------------------------------------------------------ */

static int is_norm(const char *name) { return strstr(name, "norm") != NULL; }

static void test_init_is_keyed_by_seed_and_name(void **state)
{
    (void)state;
    au_env e1, e2, e3;
    au_env_open(&e1, 777);
    au_env_open(&e2, 777);
    au_env_open(&e3, 778);
    moe_model_config c;
    au_tiny_config(&c);
    c.norm = MOE_NORM_LAYERNORM;
    moe_model *a = make_model(&e1, &c), *b = make_model(&e2, &c), *d = make_model(&e3, &c);
    moe_model_config c3 = c;
    c3.num_layers = 3;
    moe_model *big = make_model(&e1, &c3);
    int32_t count = 0;
    AU_OK(moe_model_param_count(a, &count));
    double s1 = 0.0, s2 = 0.0;
    int64_t nmat = 0;
    for (int32_t i = 0; i < count; i++) {
        char name[128];
        int32_t ndim = 0;
        int64_t shape[8];
        AU_OK(moe_model_param_info(a, i, name, sizeof name, &ndim, shape));
        int64_t n = au_numel(ndim, shape);
        float *va = malloc((size_t)n * sizeof(float)), *vb = malloc((size_t)n * sizeof(float)),
              *vd = malloc((size_t)n * sizeof(float)), *vg = malloc((size_t)n * sizeof(float));
        assert_non_null(va);
        assert_non_null(vb);
        assert_non_null(vd);
        assert_non_null(vg);
        AU_OK(moe_model_param_read(a, name, 0, va, n));
        AU_OK(moe_model_param_read(b, name, 0, vb, n));
        AU_OK(moe_model_param_read(d, name, 0, vd, n));
        AU_OK(moe_model_param_read(big, name, 0, vg, n));
        if (memcmp(va, vb, (size_t)n * sizeof(float)) != 0) fail_msg("'%s' differs between equal seeds", name);
        if (memcmp(va, vg, (size_t)n * sizeof(float)) != 0)
            fail_msg("'%s' differs between a 2-layer and a 3-layer model", name);
        if (is_norm(name)) {
            /* norm weights start at 1, norm biases at 0, whatever the seed */
            float want = strstr(name, ".bias") ? 0.0f : 1.0f;
            for (int64_t j = 0; j < n; j++) assert_true(va[j] == want && vd[j] == want);
        } else {
            int64_t same = 0;
            for (int64_t j = 0; j < n; j++) {
                same += va[j] == vd[j];
                s1 += va[j];
                s2 += (double)va[j] * va[j];
            }
            nmat += n;
            if (same > n / 10) fail_msg("'%s': %lld of %lld values equal under another seed", name, (long long)same,
                                        (long long)n);
        }
        /* distinct tensors get distinct streams: no tensor equals the start of the embedding */
        free(va);
        free(vb);
        free(vd);
        free(vg);
    }
    /* matrices are N(0, init_std): 1800 samples, std 0.3 */
    double mean = s1 / (double)nmat, sd = sqrt(s2 / (double)nmat - mean * mean);
    assert_true(fabs(mean) < 0.03);
    assert_true(fabs(sd - 0.3) < 0.03);
    /* same-shaped tensors with different names hold different values */
    float x0[64], x1[64];
    AU_OK(moe_model_param_read(a, "layers.0.attn.wq", 0, x0, 64));
    AU_OK(moe_model_param_read(a, "layers.1.attn.wq", 0, x1, 64));
    assert_true(memcmp(x0, x1, sizeof x0) != 0);
    AU_OK(moe_model_param_read(a, "layers.0.attn.wo", 0, x1, 64));
    assert_true(memcmp(x0, x1, sizeof x0) != 0);
    /* init_std scales the same stream */
    moe_model_config ch = c;
    ch.init_std = 0.6f;
    moe_model *h = make_model(&e1, &ch);
    AU_OK(moe_model_param_read(h, "layers.0.attn.wq", 0, x1, 64));
    for (int j = 0; j < 64; j++) assert_true(fabsf(x1[j] - 2.0f * x0[j]) <= 1e-6f * (fabsf(x1[j]) + 1e-6f));
    moe_model_destroy(h);
    moe_model_destroy(a);
    moe_model_destroy(b);
    moe_model_destroy(d);
    moe_model_destroy(big);
    au_env_close(&e1);
    au_env_close(&e2);
    au_env_close(&e3);
}

/* ---- 7. routing statistics ------------------------------------------------------------------------ */

static void test_routing_stats(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 15);
    enum { B = 3, T = 8, N = B * T };
    int32_t tok[N];
    tu_tokens(12, MV, N, tok, NULL);
    const float factors[3] = {0.0f, 0.5f, 1.25f};
    for (int fi = 0; fi < 3; fi++) {
        moe_model_config c;
        au_tiny_config(&c);
        c.num_layers = 3;
        c.moe_first_dense = 1;
        c.moe_capacity_factor = factors[fi];
        moe_model *m = make_model(&e, &c);
        moe_routing_stats s;
        memset(&s, 0, sizeof s);
        s.struct_size = sizeof s;
        int64_t tpe[6];
        AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 1, &s, tpe, 4), MOE_ERR_STATE, "moe_model_routing_stats");
        AU_OK(moe_model_forward(m, tok, B, T, NULL, 0));
        AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 0, &s, tpe, 4), MOE_ERR_INVALID_ARG, "moe_model_routing_stats",
                     "layer 0");
        AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 3, &s, tpe, 4), MOE_ERR_INVALID_ARG, "layer 3");
        AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, -1, &s, tpe, 4), MOE_ERR_INVALID_ARG, "layer -1");
        AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 1, &s, tpe, 3), MOE_ERR_INVALID_ARG, "capacity");
        s.struct_size = 0;
        AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 1, &s, tpe, 4), MOE_ERR_INVALID_ARG, "struct_size");
        s.struct_size = sizeof s;
        const int64_t cap = (int64_t)ceil((double)factors[fi] * N * 2 / 4.0);
        for (int32_t l = 1; l < 3; l++) {
            for (int i = 0; i < 6; i++) tpe[i] = -5;
            AU_OK(moe_model_routing_stats(m, l, &s, tpe, 6));
            assert_int_equal(tpe[4], -5);
            assert_int_equal(tpe[5], -5);
            assert_int_equal(s.num_experts, 4);
            assert_int_equal(s.tokens, N);
            int64_t sum = 0, mx = 0;
            for (int i = 0; i < 4; i++) {
                assert_true(tpe[i] >= 0);
                sum += tpe[i];
                mx = tpe[i] > mx ? tpe[i] : mx;
            }
            assert_int_equal(sum, s.assignments);
            assert_int_equal(s.assignments, (int64_t)N * 2 - s.dropped);
            assert_int_equal(s.max_load, mx);
            assert_true(fabs(s.mean_load - (double)s.assignments / 4.0) < 1e-12);
            if (factors[fi] == 0.0f) assert_int_equal(s.dropped, 0);
            if (factors[fi] == 0.5f) assert_true(s.dropped > 0);
            if (factors[fi] > 0.0f) assert_true(s.max_load <= cap);
            /* a forward has no gradient pass, but its losses are reported */
            assert_true(s.aux_loss > 0.0 && s.z_loss > 0.0);
        }
        /* statistics follow the last forward */
        AU_OK(moe_model_forward(m, tok, 1, 3, NULL, 0));
        AU_OK(moe_model_routing_stats(m, 2, &s, NULL, 0));
        assert_int_equal(s.tokens, 3);
        assert_int_equal(s.assignments + s.dropped, 6);
        moe_model_destroy(m);
    }
    /* a shorter stats struct gets only its bytes */
    moe_model_config c;
    au_tiny_config(&c);
    moe_model *m = make_model(&e, &c);
    AU_OK(moe_model_forward(m, tok, B, T, NULL, 0));
    unsigned char raw[sizeof(moe_routing_stats) + 8];
    memset(raw, 0xEE, sizeof raw);
    uint32_t ssz = (uint32_t)offsetof(moe_routing_stats, assignments);
    memcpy(raw, &ssz, sizeof ssz);
    AU_OK(moe_model_routing_stats(m, 0, (moe_routing_stats *)(void *)raw, NULL, 0));
    for (size_t b = ssz; b < sizeof raw; b++) assert_int_equal(raw[b], 0xEE);
    moe_routing_stats part;
    memcpy(&part, raw, ssz);
    assert_int_equal(part.struct_size, ssz);
    assert_int_equal(part.num_experts, 4);
    assert_int_equal(part.tokens, N);
    moe_model_destroy(m);
    /* a dense model has no MoE layer at all */
    au_tiny_config(&c);
    c.moe_num_experts = 0;
    m = make_model(&e, &c);
    AU_OK(moe_model_forward(m, tok, B, T, NULL, 0));
    moe_routing_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    AU_FAILS_CTX(e.ctx, moe_model_routing_stats(m, 0, &s, NULL, 0), MOE_ERR_INVALID_ARG, "dense");
    moe_model_destroy(m);
    au_env_close(&e);
}

/* ---- 8. upcycling ---------------------------------------------------------------------------------- */

static void upcycle_pair(moe_model_config *dense, moe_model_config *moe, int variant)
{
    au_tiny_config(dense);
    dense->moe_aux_loss_coef = dense->moe_z_loss_coef = 0.0f;
    dense->ffn_hidden = 6;
    if (variant == 1) {
        dense->ffn_activation = MOE_ACTIVATION_GELU;
        dense->norm = MOE_NORM_LAYERNORM;
        dense->position = MOE_POSITION_LEARNED;
        dense->num_layers = 3;
    }
    *moe = *dense;
    dense->moe_num_experts = 0;
    moe->moe_num_experts = 4;
    moe->moe_top_k = variant == 1 ? 1 : 2;
    moe->moe_expert_hidden = 6;
    moe->moe_activation = dense->ffn_activation;
    moe->moe_renormalize = 1;
    if (variant == 1) moe->moe_first_dense = 1; /* layer 0 stays a dense MLP: copied as is */
}

static void test_upcycle(void **state)
{
    (void)state;
    enum { B = 2, T = 7 };
    int32_t tok[B * T];
    tu_tokens(13, MV, B * T, tok, NULL);
    for (int variant = 0; variant < 2; variant++) {
        au_env e1, e2;
        au_env_open(&e1, 21);
        au_env_open(&e2, 22); /* another seed, so every tensor differs before the upcycle */
        moe_model_config dc, mc;
        upcycle_pair(&dc, &mc, variant);
        moe_model *dense = make_model(&e1, &dc), *moe = make_model(&e2, &mc);
        float ld[B * T * MV], lm[B * T * MV], router[32], router_after[32];
        AU_OK(moe_model_forward(dense, tok, B, T, ld, B * T * MV));
        AU_OK(moe_model_forward(moe, tok, B, T, lm, B * T * MV));
        assert_true(au_rel_diff(lm, ld, B * T * MV) > 1e-2);
        AU_OK(moe_model_param_read(moe, "layers.1.moe.router", 0, router, 32));
        AU_OK(moe_model_upcycle(moe, dense));
        AU_OK(moe_model_forward(moe, tok, B, T, lm, B * T * MV));
        double r = au_rel_diff(lm, ld, B * T * MV);
        if (r > 1e-5) fail_msg("variant %d: upcycled logits differ from the dense model's by %.3g", variant, r);
        /* every expert is the dense MLP; the router keeps its own initialisation */
        AU_OK(moe_model_param_read(moe, "layers.1.moe.router", 0, router_after, 32));
        assert_memory_equal(router, router_after, sizeof router);
        float dw1[48], ew1[4 * 48];
        AU_OK(moe_model_param_read(dense, "layers.1.mlp.w1", 0, dw1, 48));
        AU_OK(moe_model_param_read(moe, "layers.1.moe.experts.w1", 0, ew1, 4 * 48));
        for (int x = 0; x < 4; x++) assert_memory_equal(ew1 + x * 48, dw1, sizeof dw1);
        /* the source is not modified */
        float ld2[B * T * MV];
        AU_OK(moe_model_forward(dense, tok, B, T, ld2, B * T * MV));
        assert_memory_equal(ld, ld2, sizeof ld);
        moe_model_destroy(dense);
        moe_model_destroy(moe);
        au_env_close(&e1);
        au_env_close(&e2);
    }
}

static void test_upcycle_mismatches(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 23);
    moe_model_config dc, mc, x;
    upcycle_pair(&dc, &mc, 0);
    moe_model *dense = make_model(&e, &dc), *moe = make_model(&e, &mc);

    x = dc;
    x.ffn_hidden = 7;
    moe_model *d7 = make_model(&e, &x);
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(moe, d7), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "ffn_hidden");
    moe_model_destroy(d7);

    x = dc;
    x.ffn_activation = MOE_ACTIVATION_GELU;
    moe_model *dg = make_model(&e, &x);
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(moe, dg), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "activation");
    moe_model_destroy(dg);

    moe_model *moe2 = make_model(&e, &mc);
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(moe, moe2), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "source");
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(moe, moe), MOE_ERR_INVALID_ARG, "source");
    moe_model_destroy(moe2);
    moe_model *dense2 = make_model(&e, &dc);
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(dense2, dense), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "target");
    moe_model_destroy(dense2);

    x = dc;
    x.vocab_size = 14;
    moe_model *dv = make_model(&e, &x);
    AU_FAILS_CTX(e.ctx, moe_model_upcycle(moe, dv), MOE_ERR_INVALID_ARG, "moe_model_upcycle", "vocab_size");
    moe_model_destroy(dv);
    moe_model_destroy(dense);
    moe_model_destroy(moe);
    au_env_close(&e);
}

/* "dense must have the same config except that it has no MoE layers": configs that differ in
 * something else are refused, even where every dense tensor happens to find a same-shaped
 * counterpart, and a refused upcycle changes nothing. */
static void test_upcycle_rejects_other_differences(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 24);
    moe_model_config dc, mc;
    upcycle_pair(&dc, &mc, 0);
    moe_model *moe = make_model(&e, &mc);
    grads before, after;
    read_all(moe, 0, &before);
    static const char *what[] = {"fewer layers in the source", "ALiBi source for a RoPE target",
                                 "tied source for an untied target", "LayerNorm source for an RMSNorm target",
                                 "source with 2 kv heads for a target with 1"};
    int bad = 0;
    for (int k = 0; k < 5; k++) {
        moe_model_config x = dc;
        if (k == 0) x.num_layers = 1;
        if (k == 1) x.position = MOE_POSITION_ALIBI;
        if (k == 2) x.tie_embeddings = 1;
        if (k == 3) x.norm = MOE_NORM_LAYERNORM;
        if (k == 4) x.num_kv_heads = 2;
        /* each source has its own seed, so any tensor it copied would show */
        au_env es;
        au_env_open(&es, 1000 + (uint64_t)k);
        moe_model *src = make_model(&es, &x);
        moe_status st = moe_model_upcycle(moe, src);
        if (st != MOE_ERR_INVALID_ARG) {
            print_error("upcycle with %s returned %s\n", what[k], moe_status_string(st));
            bad++;
        }
        read_all(moe, 0, &after);
        if (st != MOE_OK && memcmp(before.v, after.v, (size_t)before.total * sizeof(float)) != 0) {
            print_error("upcycle with %s failed (%s) but modified the target's parameters\n", what[k],
                        moe_status_string(st));
            bad++;
        }
        memcpy(before.v, after.v, (size_t)before.total * sizeof(float));
        free(after.v);
        moe_model_destroy(src);
        au_env_close(&es);
    }
    free(before.v);
    moe_model_destroy(moe);
    au_env_close(&e);
    assert_int_equal(bad, 0);
}

/* ---- 9. get_config ------------------------------------------------------------------------------- */

static void test_get_config(void **state)
{
    (void)state;
    au_env e;
    au_env_open(&e, 25);
    moe_model_config c;
    au_tiny_config(&c);
    c.moe_jitter = 0.125f;
    c.moe_capacity_factor = 1.5f;
    c.moe_shared_expert_hidden = 3;
    c.position = MOE_POSITION_ALIBI;
    moe_model *m = make_model(&e, &c);
    moe_model_config got;
    memset(&got, 0x5A, sizeof got);
    got.struct_size = sizeof got;
    AU_OK(moe_model_get_config(m, &got));
    assert_memory_equal(&got, &c, sizeof c);
    /* an older caller's struct: only its bytes are written, struct_size kept */
    unsigned char raw[sizeof(moe_model_config) + 16];
    memset(raw, 0xC3, sizeof raw);
    const uint32_t old = (uint32_t)offsetof(moe_model_config, moe_num_experts);
    memcpy(raw, &old, sizeof old);
    AU_OK(moe_model_get_config(m, (moe_model_config *)(void *)raw));
    for (size_t b = old; b < sizeof raw; b++) assert_int_equal(raw[b], 0xC3);
    assert_memory_equal(raw + sizeof(uint32_t), (const unsigned char *)&c + sizeof(uint32_t), old - sizeof(uint32_t));
    uint32_t kept;
    memcpy(&kept, raw, sizeof kept);
    assert_int_equal(kept, old);
    /* too small to hold even struct_size: refused, untouched */
    memset(&got, 0x11, sizeof got);
    got.struct_size = 0;
    AU_FAILS_CTX(e.ctx, moe_model_get_config(m, &got), MOE_ERR_INVALID_ARG, "moe_model_get_config", "struct_size");
    assert_int_equal(got.struct_size, 0);
    assert_int_equal(got.vocab_size, 0x11111111);
    moe_model_destroy(m);
    au_env_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_validation),
        cmocka_unit_test(test_config_init_and_versioning),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_forward_errors),
        cmocka_unit_test(test_forward_causality),
        cmocka_unit_test(test_forward_batch_independence),
        cmocka_unit_test(test_forward_backward_errors),
        cmocka_unit_test(test_forward_backward_ignored_targets),
        cmocka_unit_test(test_forward_backward_loss_values),
        cmocka_unit_test(test_forward_backward_scaling),
        cmocka_unit_test(test_micro_batch_accumulation),
        cmocka_unit_test(test_param_listing),
        cmocka_unit_test(test_param_read_write),
        cmocka_unit_test(test_param_counts_and_flops),
        cmocka_unit_test(test_init_is_keyed_by_seed_and_name),
        cmocka_unit_test(test_routing_stats),
        cmocka_unit_test(test_upcycle),
        cmocka_unit_test(test_upcycle_mismatches),
        cmocka_unit_test(test_upcycle_rejects_other_differences),
        cmocka_unit_test(test_get_config),
    };
    return cmocka_run_group_tests_name("model_api", tests, NULL, NULL);
}
