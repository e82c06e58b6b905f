/* Tensors on a CUDA ctx through the public API, with a CPU ctx as the oracle: creation zero-fills,
 * fill of every dtype matches the CPU bit for bit, copies round-trip random bytes, and memory is
 * accounted. Skips when no GPU is visible (or the build has no CUDA). */
#include <stdio.h>
#include <stdlib.h>

#include "core/test_util.h"

static const int32_t all_dtypes[] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16,
                                     MOE_DTYPE_I32, MOE_DTYPE_I64,  MOE_DTYPE_U8};
#define N_DTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

typedef struct ctx_pair {
    moe_ctx *gpu;
    moe_ctx *cpu;
} ctx_pair;

static int setup(void **state)
{
    int32_t n = 0;
    if (moe_cuda_device_count(&n) != MOE_OK) return -1;
    ctx_pair *p = calloc(1, sizeof *p);
    if (!p) return -1;
    *state = p;
    if (n == 0) return 0; /* every test skips */
    moe_ctx_config cfg;
    moe_ctx_config_init(&cfg, sizeof cfg);
    cfg.device_type = MOE_DEVICE_CUDA;
    cfg.device_index = 0;
    if (moe_ctx_create(&cfg, &p->gpu) != MOE_OK) {
        fprintf(stderr, "CUDA ctx: %s\n", moe_last_error());
        return -1;
    }
    if (moe_ctx_create(NULL, &p->cpu) != MOE_OK) return -1;
    return 0;
}

static int teardown(void **state)
{
    ctx_pair *p = *state;
    int rc = 0;
    if (p->gpu) {
        uint64_t cur = 1;
        moe_ctx_memory(p->gpu, &cur, NULL);
        if (cur != 0) rc = -1; /* a test leaked device memory */
    }
    moe_ctx_destroy(p->gpu);
    moe_ctx_destroy(p->cpu);
    free(p);
    return rc;
}

#define NEED_GPU(p)                                                                                    \
    do {                                                                                               \
        if (!(p)->gpu) {                                                                               \
            skip();                                                                                    \
        }                                                                                              \
    } while (0)

static moe_tensor *make(moe_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape)
{
    moe_tensor *t = NULL;
    ASSERT_OK(moe_tensor_create(ctx, dtype, ndim, shape, &t));
    return t;
}

static void test_device_query(void **state)
{
    ctx_pair *p = *state;
    NEED_GPU(p);
    int32_t type = -1, index = -1;
    ASSERT_OK(moe_ctx_device(p->gpu, &type, &index));
    assert_int_equal(type, MOE_DEVICE_CUDA);
    assert_int_equal(index, 0);
    int32_t n = 0;
    ASSERT_OK(moe_cuda_device_count(&n));
    moe_ctx_config cfg;
    ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
    cfg.device_type = MOE_DEVICE_CUDA;
    cfg.device_index = n; /* one past the last GPU */
    moe_ctx *bad = (moe_ctx *)(uintptr_t)0x1;
    moe_status st = moe_ctx_create(&cfg, &bad);
    assert_int_equal(st, MOE_ERR_DEVICE);
    assert_true(strlen(moe_last_error()) > 0);
    assert_ptr_equal(bad, (moe_ctx *)(uintptr_t)0x1);
}

/* Creation zero-fills, and random bytes (NaN patterns included) survive a round trip exactly. */
static void test_create_and_copy(void **state)
{
    ctx_pair *p = *state;
    NEED_GPU(p);
    test_rng rng = {0xCDA1ULL};
    const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {0, 4, 4}, {1, 1, 1000003}, {64, 64, 65}};
    for (size_t d = 0; d < N_DTYPES; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            moe_tensor *t = make(p->gpu, all_dtypes[d], 3, shapes[s]);
            uint64_t nbytes = 0;
            ASSERT_OK(moe_tensor_size(t, NULL, &nbytes));
            size_t esize = 0;
            ASSERT_OK(moe_dtype_size(all_dtypes[d], &esize));
            assert_true(nbytes == (uint64_t)(shapes[s][0] * shapes[s][1] * shapes[s][2]) * esize);
            size_t n = (size_t)nbytes;
            uint8_t *src = malloc(n + 1), *dst = malloc(n + 1);
            assert_non_null(src);
            assert_non_null(dst);
            memset(dst, 0xA5, n + 1);
            ASSERT_OK(moe_tensor_copy_to(t, dst, nbytes));
            for (size_t i = 0; i < n; i++)
                if (dst[i] != 0) fail_msg("dtype %d shape %zu: byte %zu not zero after create", all_dtypes[d], s, i);
            test_rng_bytes(&rng, src, n);
            ASSERT_OK(moe_tensor_copy_from(t, n ? src : NULL, nbytes));
            memset(dst, 0xA5, n + 1);
            ASSERT_OK(moe_tensor_copy_to(t, dst, nbytes + 1));
            assert_memory_equal(dst, src, n);
            assert_int_equal(dst[n], 0xA5);
            free(src);
            free(dst);
            moe_tensor_destroy(t);
        }
    /* scalar */
    moe_tensor *t = make(p->gpu, MOE_DTYPE_I64, 0, NULL);
    int64_t v = INT64_MIN + 12345, back = 0;
    ASSERT_OK(moe_tensor_copy_from(t, &v, 8));
    ASSERT_OK(moe_tensor_copy_to(t, &back, 8));
    assert_true(back == v);
    moe_tensor_destroy(t);
}

/* Fill on the GPU equals fill on the CPU, bit for bit, for every dtype and a range of values. */
static void test_fill_matches_cpu(void **state)
{
    ctx_pair *p = *state;
    NEED_GPU(p);
    const double float_values[] = {0.0, -0.0, 1.0, -2.5, 0.1, 1.0 / 3.0, 65504.0, 65520.0, 1e-8, 1e-40,
                                   3.5e38, 1e300, INFINITY, -INFINITY, NAN, 1.00390625, 1.00048828125};
    const double int_values[] = {0.0, 1.0, 7.0, 255.0, -1.0, 2147483647.0, -2147483648.0, 4294967296.0,
                                 -9223372036854775808.0};
    /* more elements than one launch grid covers (65535 blocks x 256 threads), and an odd count */
    const int64_t counts[] = {1, 3, 1001, 65535LL * 256 + 17};
    for (size_t d = 0; d < N_DTYPES; d++) {
        int32_t dt = all_dtypes[d];
        int is_float = dt == MOE_DTYPE_F32 || dt == MOE_DTYPE_BF16 || dt == MOE_DTYPE_F16;
        const double *vals = is_float ? float_values : int_values;
        size_t nv = is_float ? sizeof float_values / sizeof float_values[0] : sizeof int_values / sizeof int_values[0];
        size_t esize = 0;
        ASSERT_OK(moe_dtype_size(dt, &esize));
        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
            int64_t shape[1] = {counts[c]};
            moe_tensor *g = make(p->gpu, dt, 1, shape);
            moe_tensor *h = make(p->cpu, dt, 1, shape);
            size_t n = (size_t)counts[c] * esize;
            uint8_t *bg = malloc(n), *bh = malloc(n);
            assert_non_null(bg);
            assert_non_null(bh);
            for (size_t i = 0; i < nv; i++) {
                if (counts[c] > 100000 && i % 4 != 2) continue; /* a few values suffice for the big one */
                moe_status sg = moe_tensor_fill(g, vals[i]);
                moe_status sh = moe_tensor_fill(h, vals[i]);
                assert_int_equal(sg, sh);
                if (sg != MOE_OK) continue; /* out of range for this integer type on both */
                ASSERT_OK(moe_tensor_copy_to(g, bg, n));
                ASSERT_OK(moe_tensor_copy_to(h, bh, n));
                if (memcmp(bg, bh, n) != 0)
                    fail_msg("dtype %d, %lld elements, fill(%.17g): GPU and CPU differ", dt, (long long)counts[c],
                             vals[i]);
            }
            /* a rejected value changes nothing on the GPU either */
            ASSERT_OK(moe_tensor_fill(g, 1.0));
            ASSERT_OK(moe_tensor_copy_to(g, bh, n));
            if (!is_float) {
                ASSERT_FAILS_CTX(p->gpu, moe_tensor_fill(g, 0.5), MOE_ERR_INVALID_ARG, "moe_tensor_fill");
                ASSERT_OK(moe_tensor_copy_to(g, bg, n));
                assert_memory_equal(bg, bh, n);
            }
            free(bg);
            free(bh);
            moe_tensor_destroy(g);
            moe_tensor_destroy(h);
        }
    }
}

static void test_copy_errors(void **state)
{
    ctx_pair *p = *state;
    NEED_GPU(p);
    int64_t shape[2] = {4, 4};
    moe_tensor *t = make(p->gpu, MOE_DTYPE_F32, 2, shape);
    float buf[16] = {0};
    ASSERT_FAILS_CTX(p->gpu, moe_tensor_copy_from(t, buf, 60), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from", "nbytes");
    ASSERT_FAILS_CTX(p->gpu, moe_tensor_copy_from(t, NULL, 64), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from", "src");
    ASSERT_FAILS_CTX(p->gpu, moe_tensor_copy_to(t, buf, 63), MOE_ERR_INVALID_ARG, "moe_tensor_copy_to", "nbytes");
    ASSERT_FAILS_CTX(p->gpu, moe_tensor_copy_to(t, NULL, 64), MOE_ERR_INVALID_ARG, "moe_tensor_copy_to", "dst");
    moe_tensor_destroy(t);
}

static void test_memory_accounting(void **state)
{
    ctx_pair *p = *state;
    NEED_GPU(p);
    uint64_t cur = 1, peak = 0;
    ASSERT_OK(moe_ctx_memory(p->gpu, &cur, &peak));
    assert_true(cur == 0);
    int64_t s1[2] = {1000, 1000}; /* 4 MB as f32 */
    int64_t s2[1] = {13};
    moe_tensor *a = make(p->gpu, MOE_DTYPE_F32, 2, s1);
    moe_tensor *b = make(p->gpu, MOE_DTYPE_U8, 1, s2);
    ASSERT_OK(moe_ctx_memory(p->gpu, &cur, &peak));
    assert_true(cur == 4000000 + 13);
    assert_true(peak >= cur);
    moe_tensor_destroy(a);
    ASSERT_OK(moe_ctx_memory(p->gpu, &cur, NULL));
    assert_true(cur == 13);
    moe_tensor_destroy(b);
    ASSERT_OK(moe_ctx_memory(p->gpu, &cur, &peak));
    assert_true(cur == 0);
    assert_true(peak >= 4000000 + 13);
    /* the CPU ctx is unaffected */
    ASSERT_OK(moe_ctx_memory(p->cpu, &cur, NULL));
    assert_true(cur == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_query),
        cmocka_unit_test(test_create_and_copy),
        cmocka_unit_test(test_fill_matches_cpu),
        cmocka_unit_test(test_copy_errors),
        cmocka_unit_test(test_memory_accounting),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
