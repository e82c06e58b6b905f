/* The KV-cached decoder against the full forward: feeding a sequence one token at a time (or in
 * chunks) must give, after each call, the logits moe_model_forward gives at that position, for
 * every position scheme, MHA/GQA/MQA, norms, dense and MoE layers. Also reset, lengths, and every
 * bad argument of the decoder API. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <cmocka.h>

#include "gen/gen_util.h"

#define TOL 1e-5

typedef struct variant {
    const char *name;
    void (*apply)(moe_model_config *c);
} variant;

static void v_default(moe_model_config *c) { (void)c; } /* RoPE, RMSNorm, MQA (2 heads, 1 kv head), MoE top-2 */
static void v_mha(moe_model_config *c) { c->num_kv_heads = 2; }
static void v_gqa(moe_model_config *c)
{
    c->num_heads = 4;
    c->num_kv_heads = 2;
    c->head_dim = 4;
}
static void v_alibi_layernorm_shared(moe_model_config *c)
{
    c->position = MOE_POSITION_ALIBI;
    c->norm = MOE_NORM_LAYERNORM;
    c->moe_activation = MOE_ACTIVATION_GELU;
    c->moe_shared_expert_hidden = 5;
    c->num_heads = 4;
    c->num_kv_heads = 2;
    c->head_dim = 2;
}
static void v_learned_tied_first_dense(moe_model_config *c)
{
    c->position = MOE_POSITION_LEARNED;
    c->tie_embeddings = 1;
    c->moe_first_dense = 1;
    c->num_kv_heads = 2;
}
static void v_dense_mqa_gelu(moe_model_config *c)
{
    c->moe_num_experts = 0;
    c->ffn_activation = MOE_ACTIVATION_GELU;
    c->num_heads = 4;
    c->num_kv_heads = 1;
    c->head_dim = 2;
}
static void v_dense_learned_layernorm(moe_model_config *c)
{
    c->moe_num_experts = 0;
    c->position = MOE_POSITION_LEARNED;
    c->norm = MOE_NORM_LAYERNORM;
}
static void v_sigmoid_every_second(moe_model_config *c)
{
    c->num_layers = 3;
    c->moe_layer_freq = 2;
    c->moe_score_function = MOE_SCORE_SIGMOID;
    c->moe_renormalize = 0;
}
/* Longer than one attention block (64 rows) of the prefill kernel. */
static void v_long_rope_gqa(moe_model_config *c)
{
    c->max_seq_len = 80;
    c->num_heads = 4;
    c->num_kv_heads = 2;
    c->head_dim = 4;
}
static void v_long_alibi(moe_model_config *c)
{
    c->max_seq_len = 72;
    c->position = MOE_POSITION_ALIBI;
    c->num_heads = 3;
    c->num_kv_heads = 1;
    c->head_dim = 4;
}

static const variant variants[] = {
    {"RoPE, RMSNorm, MQA, MoE", v_default},
    {"RoPE, MHA, MoE", v_mha},
    {"RoPE, GQA 4/2, MoE", v_gqa},
    {"ALiBi, LayerNorm, GQA, GELU experts, shared expert", v_alibi_layernorm_shared},
    {"learned positions, tied embeddings, first layer dense, MHA", v_learned_tied_first_dense},
    {"dense, MQA, GELU", v_dense_mqa_gelu},
    {"dense, learned positions, LayerNorm", v_dense_learned_layernorm},
    {"sigmoid router, every second layer MoE", v_sigmoid_every_second},
    {"RoPE, GQA, 80 positions", v_long_rope_gqa},
    {"ALiBi, 3 heads MQA, 72 positions", v_long_alibi},
};

/* Feed `seq` in the chunks `chunks` (summing to len) and compare the logits after each chunk. */
static void check_chunks(gu_model *g, moe_decoder *dec, const int32_t *seq, const float *ref, const int32_t *chunks,
                         int32_t nchunks, const char *what)
{
    const int32_t V = g->cfg.vocab_size;
    float *lg = malloc((size_t)V * sizeof(float));
    assert_int_equal(moe_decoder_reset(dec), MOE_OK);
    int32_t at = 0;
    for (int32_t i = 0; i < nchunks; i++) {
        assert_int_equal(moe_decoder_feed(dec, seq + at, chunks[i], lg, (uint64_t)V), MOE_OK);
        at += chunks[i];
        int32_t len = -1;
        assert_int_equal(moe_decoder_length(dec, &len), MOE_OK);
        assert_int_equal(len, at);
        double rel = gu_row_rel_diff(lg, ref + (size_t)(at - 1) * V, V);
        if (!(rel <= TOL)) {
            print_error("%s: position %d: relative difference %.3g\n", what, (int)(at - 1), rel);
            fail();
        }
    }
    free(lg);
}

static void check_variant(const variant *v)
{
    moe_model_config c;
    tu_tiny_config(&c);
    v->apply(&c);
    gu_model g;
    assert_int_equal(gu_open(&g, &c), 0);
    const int32_t T = c.max_seq_len, V = c.vocab_size;
    int32_t *seq = malloc((size_t)T * sizeof(int32_t));
    float *ref = malloc((size_t)T * V * sizeof(float));
    tu_tokens(11, V, T, seq, NULL);
    assert_int_equal(gu_forward(&g, seq, T, ref), 0);

    moe_decoder *dec = NULL;
    assert_int_equal(moe_decoder_create(g.model, 0, &dec), MOE_OK);
    int32_t *chunks = malloc((size_t)T * sizeof(int32_t));
    /* one token at a time */
    for (int32_t i = 0; i < T; i++) chunks[i] = 1;
    check_chunks(&g, dec, seq, ref, chunks, T, "single tokens");
    /* a prompt, then single tokens */
    int32_t n = 0, prompt = T > 8 ? T - 6 : 5;
    chunks[n++] = prompt;
    for (int32_t i = prompt; i < T; i++) chunks[n++] = 1;
    check_chunks(&g, dec, seq, ref, chunks, n, "prompt then single tokens");
    /* uneven chunks: the decode kernel with several new queries */
    n = 0;
    for (int32_t at = 0, k = 3; at < T; k = k % 4 + 1) {
        int32_t step = k < T - at ? k : T - at;
        chunks[n++] = step;
        at += step;
    }
    check_chunks(&g, dec, seq, ref, chunks, n, "uneven chunks");
    /* the whole sequence at once */
    chunks[0] = T;
    check_chunks(&g, dec, seq, ref, chunks, 1, "whole sequence");

    moe_decoder_destroy(dec);
    free(chunks);
    free(seq);
    free(ref);
    gu_close(&g);
}

static void test_variant(void **state) { check_variant((const variant *)*state); }

/* Token choice with capacity: a token decoded alone is never dropped, so a capacity model decodes
 * like its dropless twin (same weights: same names and seed) runs its full forward. */
static void test_capacity_single_tokens(void **state)
{
    (void)state;
    moe_model_config c;
    tu_tiny_config(&c);
    c.moe_capacity_factor = 0.5f;
    gu_model g, twin;
    assert_int_equal(gu_open(&g, &c), 0);
    c.moe_capacity_factor = 0.0f;
    assert_int_equal(gu_open(&twin, &c), 0);
    const int32_t T = c.max_seq_len, V = c.vocab_size;
    int32_t seq[64];
    float *ref = malloc((size_t)T * V * sizeof(float)), *lg = malloc((size_t)V * sizeof(float));
    tu_tokens(5, V, T, seq, NULL);
    assert_int_equal(gu_forward(&twin, seq, T, ref), 0);
    moe_decoder *dec = NULL;
    assert_int_equal(moe_decoder_create(g.model, 0, &dec), MOE_OK);
    for (int32_t i = 0; i < T; i++) {
        assert_int_equal(moe_decoder_feed(dec, seq + i, 1, lg, (uint64_t)V), MOE_OK);
        assert_true(gu_row_rel_diff(lg, ref + (size_t)i * V, V) <= TOL);
    }
    moe_decoder_destroy(dec);
    free(ref);
    free(lg);
    gu_close(&g);
    gu_close(&twin);
}

/* Two decoders over one model are independent; a reset decoder repeats itself exactly. */
static void test_independent_and_reset(void **state)
{
    (void)state;
    moe_model_config c;
    tu_tiny_config(&c);
    gu_model g;
    assert_int_equal(gu_open(&g, &c), 0);
    const int32_t V = c.vocab_size;
    moe_decoder *a = NULL, *b = NULL;
    assert_int_equal(moe_decoder_create(g.model, 8, &a), MOE_OK);
    assert_int_equal(moe_decoder_create(g.model, 0, &b), MOE_OK);
    int32_t sa[8], sb[8];
    tu_tokens(1, V, 8, sa, NULL);
    tu_tokens(2, V, 8, sb, NULL);
    float la[8][13], lb[8][13], again[13];
    for (int i = 0; i < 8; i++) {
        assert_int_equal(moe_decoder_feed(a, sa + i, 1, la[i], 13), MOE_OK);
        assert_int_equal(moe_decoder_feed(b, sb + i, 1, lb[i], 13), MOE_OK);
    }
    float ref[8 * 13];
    assert_int_equal(gu_forward(&g, sa, 8, ref), 0);
    for (int i = 0; i < 8; i++) assert_true(gu_row_rel_diff(la[i], ref + i * V, V) <= TOL);
    assert_int_equal(gu_forward(&g, sb, 8, ref), 0);
    for (int i = 0; i < 8; i++) assert_true(gu_row_rel_diff(lb[i], ref + i * V, V) <= TOL);
    /* a is full at max_len = 8 */
    assert_int_equal(moe_decoder_feed(a, sa, 1, again, 13), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "count"));
    assert_int_equal(moe_decoder_reset(a), MOE_OK);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(moe_decoder_feed(a, sa + i, 1, again, 13), MOE_OK);
        assert_memory_equal(again, la[i], sizeof again);
    }
    /* logits may be NULL: the cache still advances (a 3-token prefill rounds differently from
     * three single steps, hence the tolerance) */
    assert_int_equal(moe_decoder_reset(b), MOE_OK);
    assert_int_equal(moe_decoder_feed(b, sb, 3, NULL, 0), MOE_OK);
    assert_int_equal(moe_decoder_feed(b, sb + 3, 1, again, 13), MOE_OK);
    assert_true(gu_row_rel_diff(again, lb[3], V) <= TOL);
    moe_decoder_destroy(a);
    moe_decoder_destroy(b);
    gu_close(&g);
}

static void expect_error(moe_status got, moe_status want, const char *needle)
{
    assert_int_equal(got, want);
    if (!strstr(moe_last_error(), needle)) {
        print_error("message '%s' does not name '%s'\n", moe_last_error(), needle);
        fail();
    }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    moe_model_config c;
    tu_tiny_config(&c);
    gu_model g;
    assert_int_equal(gu_open(&g, &c), 0);
    moe_decoder *dec = NULL;
    expect_error(moe_decoder_create(NULL, 0, &dec), MOE_ERR_INVALID_ARG, "model");
    expect_error(moe_decoder_create(g.model, 0, NULL), MOE_ERR_INVALID_ARG, "out");
    expect_error(moe_decoder_create(g.model, -1, &dec), MOE_ERR_INVALID_ARG, "max_len");
    expect_error(moe_decoder_create(g.model, c.max_seq_len + 1, &dec), MOE_ERR_INVALID_ARG, "max_len");
    assert_null(dec);
    assert_int_equal(moe_decoder_create(g.model, 4, &dec), MOE_OK);
    int32_t tok[5] = {1, 2, 3, 4, 5}, bad[3] = {0, 13, 1}, neg[2] = {2, -1}, len = -1;
    float lg[13];
    expect_error(moe_decoder_feed(NULL, tok, 1, lg, 13), MOE_ERR_INVALID_ARG, "decoder");
    expect_error(moe_decoder_feed(dec, NULL, 1, lg, 13), MOE_ERR_INVALID_ARG, "tokens");
    expect_error(moe_decoder_feed(dec, tok, 0, lg, 13), MOE_ERR_INVALID_ARG, "count");
    expect_error(moe_decoder_feed(dec, tok, 5, lg, 13), MOE_ERR_INVALID_ARG, "count");
    expect_error(moe_decoder_feed(dec, bad, 3, lg, 13), MOE_ERR_INVALID_ARG, "tokens[1]");
    expect_error(moe_decoder_feed(dec, neg, 2, lg, 13), MOE_ERR_INVALID_ARG, "tokens[1]");
    expect_error(moe_decoder_feed(dec, tok, 1, lg, 12), MOE_ERR_INVALID_ARG, "logits_capacity");
    /* failures append nothing */
    assert_int_equal(moe_decoder_length(dec, &len), MOE_OK);
    assert_int_equal(len, 0);
    assert_int_equal(moe_decoder_feed(dec, tok, 3, lg, 13), MOE_OK);
    expect_error(moe_decoder_feed(dec, tok, 2, lg, 13), MOE_ERR_INVALID_ARG, "count");
    assert_int_equal(moe_decoder_length(dec, &len), MOE_OK);
    assert_int_equal(len, 3);
    assert_int_equal(moe_decoder_feed(dec, tok, 1, lg, 13), MOE_OK);
    expect_error(moe_decoder_length(dec, NULL), MOE_ERR_INVALID_ARG, "length");
    expect_error(moe_decoder_length(NULL, &len), MOE_ERR_INVALID_ARG, "decoder");
    expect_error(moe_decoder_reset(NULL), MOE_ERR_INVALID_ARG, "decoder");
    moe_decoder_destroy(NULL);
    moe_decoder_destroy(dec);
    gu_close(&g);
}

int main(void)
{
    enum { NV = sizeof variants / sizeof variants[0] };
    struct CMUnitTest tests[NV + 3];
    for (size_t i = 0; i < NV; i++) {
        struct CMUnitTest t = {variants[i].name, test_variant, NULL, NULL, (void *)&variants[i]};
        tests[i] = t;
    }
    struct CMUnitTest extra[3] = {cmocka_unit_test(test_capacity_single_tokens),
                                  cmocka_unit_test(test_independent_and_reset), cmocka_unit_test(test_bad_arguments)};
    for (size_t i = 0; i < 3; i++) tests[NV + i] = extra[i];
    return _cmocka_run_group_tests("decoder", tests, NV + 3, NULL, NULL);
}
