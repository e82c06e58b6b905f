/* Pipeline layout without MPI: the layer partition over pp * v virtual stages from the config's
 * pipeline fields against the test's own count (even split, extra layers first; explicit lists
 * with empty stages), the config defaults, and every refusal with its message. */
#include <stdio.h>
#include <stdlib.h>

#include "comm/comm.h"
#include "core/test_util.h"
#include "parallel/pipeline.h"

static moe_ctx *g_ctx;

static int setup(void **state)
{
    (void)state;
    return moe_ctx_create(NULL, &g_ctx) == MOE_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    moe_ctx_destroy(g_ctx);
    return 0;
}

static void config(moe_model_config *c, int32_t layers, int32_t v)
{
    moe_model_config_init(c, sizeof *c);
    c->num_layers = layers;
    c->pipeline_virtual_stages = v;
}

static void test_defaults(void **state)
{
    (void)state;
    moe_model_config c;
    memset(&c, 0x5A, sizeof c);
    ASSERT_OK(moe_model_config_init(&c, sizeof c));
    assert_int_equal(c.pipeline_virtual_stages, 1);
    for (int i = 0; i < 64; i++) assert_int_equal(c.pipeline_layers[i], 0);
    moe_batch b;
    memset(&b, 0x5A, sizeof b);
    ASSERT_OK(moe_batch_init(&b, sizeof b));
    assert_int_equal(b.pipeline_schedule, MOE_PIPELINE_ONE_F_ONE_B);
}

/* every (pp, v, layers) of a grid: virtual stage s gets layers/S layers, one more for s < layers % S */
static void test_even_grid(void **state)
{
    (void)state;
    int32_t first[64];
    for (int32_t pp = 1; pp <= 6; pp++)
        for (int32_t v = 0; v <= 3; v++) {
            const int32_t S = pp * (v ? v : 1);
            for (int32_t L = S; L <= S + 7; L++) {
                moe_model_config c;
                config(&c, L, v);
                int32_t chunks = -1;
                ASSERT_OK(moei_pipe_layout(g_ctx, &c, pp, &chunks, first, "t"));
                assert_int_equal(chunks, v ? v : 1);
                int32_t at = 0;
                for (int32_t s = 0; s < S; s++) {
                    assert_int_equal(first[s], at);
                    at += L / S + (s < L % S ? 1 : 0);
                }
                assert_int_equal(first[S], L);
            }
        }
}

static void test_explicit(void **state)
{
    (void)state;
    moe_model_config c;
    int32_t first[8], chunks = 0;
    config(&c, 3, 1);
    c.pipeline_layers[1] = 3; /* the first stage holds only the embedding */
    ASSERT_OK(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"));
    assert_int_equal(first[0], 0);
    assert_int_equal(first[1], 0);
    assert_int_equal(first[2], 3);
    config(&c, 4, 2);
    const int32_t counts[4] = {2, 1, 0, 1};
    memcpy(c.pipeline_layers, counts, sizeof counts);
    ASSERT_OK(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"));
    const int32_t want[5] = {0, 2, 3, 3, 4};
    for (int i = 0; i < 5; i++) assert_int_equal(first[i], want[i]);
    assert_int_equal(chunks, 2);
    /* a list may use all 64 entries */
    config(&c, 64, 2);
    for (int i = 0; i < 64; i++) c.pipeline_layers[i] = 1;
    int32_t big[65];
    ASSERT_OK(moei_pipe_layout(g_ctx, &c, 32, &chunks, big, "t"));
    for (int i = 0; i <= 64; i++) assert_int_equal(big[i], i);
}

static void test_refusals(void **state)
{
    (void)state;
    moe_model_config c;
    int32_t first[200], chunks = 0;
    config(&c, 4, 1);
    c.tie_embeddings = 1;
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "fnname"), MOE_ERR_UNSUPPORTED, "fnname",
                 "tie_embeddings", "pp = 2");
    ASSERT_OK(moei_pipe_layout(g_ctx, &c, 1, &chunks, first, "t")); /* one stage holds both */
    config(&c, 4, -1);
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"), MOE_ERR_INVALID_ARG,
                 "pipeline_virtual_stages = -1");
    config(&c, 4, 1025);
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"), MOE_ERR_INVALID_ARG,
                 "pipeline_virtual_stages = 1025");
    config(&c, 3, 2);
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"), MOE_ERR_INVALID_ARG, "num_layers = 3",
                 "pp * pipeline_virtual_stages = 4");
    config(&c, 4, 1);
    c.pipeline_layers[0] = 5;
    c.pipeline_layers[1] = -1;
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"), MOE_ERR_INVALID_ARG, "pipeline_layers[1] = -1");
    config(&c, 4, 1);
    c.pipeline_layers[0] = 3;
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"), MOE_ERR_INVALID_ARG,
                 "pipeline_layers sum to 3", "num_layers = 4");
    config(&c, 4, 1);
    c.pipeline_layers[0] = 2;
    c.pipeline_layers[1] = 1;
    c.pipeline_layers[2] = 1;
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 2, &chunks, first, "t"), MOE_ERR_INVALID_ARG, "pipeline_layers[2] = 1",
                 "lies past");
    config(&c, 100, 4);
    c.pipeline_layers[0] = 100;
    ASSERT_FAILS(moei_pipe_layout(g_ctx, &c, 32, &chunks, first, "t"), MOE_ERR_INVALID_ARG, "at most 64",
                 "= 128");
    assert_int_equal(chunks, 1); /* failures leave the out-param alone (last success wrote 1) */
}

/* The self communicator has no peer for a non-blocking send; test and wait see nothing pending. */
static void test_self_isend(void **state)
{
    (void)state;
    moei_comm *c = NULL;
    ASSERT_OK(moei_comm_self_create(g_ctx, &c));
    float x = 1.0f;
    moei_comm_request req;
    memset(&req, 0, sizeof req);
    ASSERT_FAILS(c->ops->isend(c, &x, 1, MOE_DTYPE_F32, 1, 0, &req), MOE_ERR_COMM, "send to rank 1");
    assert_int_equal(req.active, 0);
    int32_t done = 0;
    ASSERT_OK(c->ops->test(c, &req, &done));
    assert_int_equal(done, 1);
    ASSERT_OK(c->ops->wait(c, &req));
    assert_int_equal(c->bytes_sent, 0);
    moei_comm_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_even_grid),
        cmocka_unit_test(test_explicit),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_self_isend),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
