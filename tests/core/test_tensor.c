/* Tensors through the public API: creation for every dtype and rank (empty included), queries,
 * byte-exact copies, every error path, and fill checked against independent rounding references. */
#include <stdio.h>
#include <stdlib.h>

#include "core/test_util.h"

#define SENTINEL_T ((moe_tensor *)(uintptr_t)0xfeedface)

static const int32_t all_dtypes[] = {MOE_DTYPE_F32, MOE_DTYPE_BF16, MOE_DTYPE_F16,
                                     MOE_DTYPE_I32, MOE_DTYPE_I64,  MOE_DTYPE_U8};
static const size_t dtype_bytes[] = {4, 2, 2, 4, 8, 1}; /* indexed like all_dtypes */
#define N_DTYPES (sizeof all_dtypes / sizeof all_dtypes[0])

static int setup_ctx(void **state)
{
    moe_ctx *ctx = NULL;
    if (moe_ctx_create(NULL, &ctx) != MOE_OK) return -1;
    *state = ctx;
    return 0;
}

static int teardown_ctx(void **state)
{
    moe_ctx_destroy(*state); /* tests check their own accounting; a failed one may leave tensors */
    return 0;
}

static moe_tensor *make(moe_ctx *ctx, int32_t dtype, int32_t ndim, const int64_t *shape)
{
    moe_tensor *t = NULL;
    ASSERT_OK(moe_tensor_create(ctx, dtype, ndim, shape, &t));
    assert_non_null(t);
    return t;
}

/* ---- dtype size -------------------------------------------------------------------------------- */

static void test_dtype_size(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_DTYPES; i++) {
        size_t s = 0;
        ASSERT_OK(moe_dtype_size(all_dtypes[i], &s));
        assert_int_equal(s, dtype_bytes[i]);
    }
    const int32_t bad[] = {-1, 6, 7, 100, INT32_MIN, MOE_DTYPE_FORCE32};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t s = 77;
        ASSERT_FAILS(moe_dtype_size(bad[i], &s), MOE_ERR_INVALID_ARG, "moe_dtype_size", "dtype");
        assert_int_equal(s, 77);
    }
    ASSERT_FAILS(moe_dtype_size(MOE_DTYPE_F32, NULL), MOE_ERR_INVALID_ARG, "moe_dtype_size", "size");
}

/* ---- create and queries for every dtype and rank ---------------------------------------------- */

static void check_tensor(moe_ctx *ctx, int32_t dtype, size_t esize, int32_t ndim, const int64_t *shape, test_rng *rng)
{
    uint64_t mem_before = 0;
    ASSERT_OK(moe_ctx_memory(ctx, &mem_before, NULL));
    moe_tensor *t = make(ctx, dtype, ndim, shape);
    int64_t numel = 1;
    for (int32_t i = 0; i < ndim; i++) numel *= shape[i];
    uint64_t nbytes = (uint64_t)numel * esize;

    int32_t got_dtype = -1;
    ASSERT_OK(moe_tensor_dtype(t, &got_dtype));
    assert_int_equal(got_dtype, dtype);
    int32_t got_ndim = -1;
    int64_t got_shape[MOE_TENSOR_MAX_DIMS + 1];
    for (int i = 0; i <= MOE_TENSOR_MAX_DIMS; i++) got_shape[i] = -7;
    ASSERT_OK(moe_tensor_shape(t, &got_ndim, got_shape, MOE_TENSOR_MAX_DIMS + 1));
    assert_int_equal(got_ndim, ndim);
    for (int32_t i = 0; i < ndim; i++) assert_int_equal(got_shape[i], shape[i]);
    for (int32_t i = ndim; i <= MOE_TENSOR_MAX_DIMS; i++) assert_int_equal(got_shape[i], -7); /* not written */
    /* exact capacity and shape == NULL (ndim query) both work */
    got_ndim = -1;
    ASSERT_OK(moe_tensor_shape(t, &got_ndim, got_shape, ndim));
    assert_int_equal(got_ndim, ndim);
    got_ndim = -1;
    ASSERT_OK(moe_tensor_shape(t, &got_ndim, NULL, 0));
    assert_int_equal(got_ndim, ndim);
    int64_t got_numel = -1;
    uint64_t got_nbytes = 12345;
    ASSERT_OK(moe_tensor_size(t, &got_numel, &got_nbytes));
    assert_int_equal(got_numel, numel);
    assert_true(got_nbytes == nbytes);
    ASSERT_OK(moe_tensor_size(t, NULL, NULL));
    uint64_t mem = 0;
    ASSERT_OK(moe_ctx_memory(ctx, &mem, NULL));
    assert_true(mem == mem_before + nbytes);

    /* zero-filled on creation, then a byte-exact round trip of random bytes (NaN patterns included) */
    size_t n = (size_t)nbytes;
    uint8_t *src = malloc(n + 16), *dst = malloc(n + 16);
    assert_non_null(src);
    assert_non_null(dst);
    memset(dst, 0xEE, n + 16);
    ASSERT_OK(moe_tensor_copy_to(t, dst, nbytes));
    for (size_t i = 0; i < n; i++) assert_int_equal(dst[i], 0);
    assert_int_equal(dst[n], 0xEE);
    test_rng_bytes(rng, src, n);
    ASSERT_OK(moe_tensor_copy_from(t, n ? src : NULL, nbytes));
    memset(dst, 0xEE, n + 16);
    /* a larger destination is fine; only the tensor's bytes are written */
    ASSERT_OK(moe_tensor_copy_to(t, dst, nbytes + 16));
    assert_memory_equal(dst, src, n);
    for (size_t i = n; i < n + 16; i++) assert_int_equal(dst[i], 0xEE);
    free(src);
    free(dst);
    moe_tensor_destroy(t);
    ASSERT_OK(moe_ctx_memory(ctx, &mem, NULL));
    assert_true(mem == mem_before);
}

static void test_create_every_dtype_and_rank(void **state)
{
    moe_ctx *ctx = *state;
    test_rng rng = {0x1234567ULL};
    for (size_t d = 0; d < N_DTYPES; d++) {
        for (int32_t ndim = 0; ndim <= MOE_TENSOR_MAX_DIMS; ndim++) {
            int64_t shape[MOE_TENSOR_MAX_DIMS];
            for (int32_t i = 0; i < ndim; i++) shape[i] = 1 + (i * 3 + ndim) % 3; /* 1..3, product <= 3^8 */
            check_tensor(ctx, all_dtypes[d], dtype_bytes[d], ndim, shape, &rng);
            /* a zero-size dimension anywhere gives an empty tensor */
            for (int32_t z = 0; z < ndim; z++) {
                int64_t zs[MOE_TENSOR_MAX_DIMS];
                memcpy(zs, shape, sizeof zs);
                zs[z] = 0;
                check_tensor(ctx, all_dtypes[d], dtype_bytes[d], ndim, zs, &rng);
            }
        }
        /* a scalar with shape == NULL, a long odd vector, and a 2-D odd matrix */
        check_tensor(ctx, all_dtypes[d], dtype_bytes[d], 0, NULL, &rng);
        int64_t vec[1] = {1001};
        check_tensor(ctx, all_dtypes[d], dtype_bytes[d], 1, vec, &rng);
        int64_t mat[2] = {17, 33};
        check_tensor(ctx, all_dtypes[d], dtype_bytes[d], 2, mat, &rng);
    }
}

/* ---- every error path ------------------------------------------------------------------------- */

static void test_create_errors(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[MOE_TENSOR_MAX_DIMS + 1] = {2, 3, 4, 1, 1, 1, 1, 1, 1};
    moe_tensor *out = SENTINEL_T;
    ASSERT_FAILS(moe_tensor_create(NULL, MOE_DTYPE_F32, 1, shape, &out), MOE_ERR_INVALID_ARG, "moe_tensor_create",
                 "ctx");
    assert_ptr_equal(out, SENTINEL_T);
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_F32, 1, shape, NULL), MOE_ERR_INVALID_ARG,
                     "moe_tensor_create", "out");
    const int32_t bad_dtypes[] = {-1, 6, 1000, MOE_DTYPE_FORCE32};
    for (size_t i = 0; i < sizeof bad_dtypes / sizeof bad_dtypes[0]; i++) {
        ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, bad_dtypes[i], 1, shape, &out), MOE_ERR_INVALID_ARG,
                         "moe_tensor_create", "dtype");
        assert_ptr_equal(out, SENTINEL_T);
    }
    const int32_t bad_ndims[] = {-1, MOE_TENSOR_MAX_DIMS + 1, 100, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_ndims / sizeof bad_ndims[0]; i++) {
        ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_F32, bad_ndims[i], shape, &out), MOE_ERR_INVALID_ARG,
                         "moe_tensor_create", "ndim");
        assert_ptr_equal(out, SENTINEL_T);
    }
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_F32, 2, NULL, &out), MOE_ERR_INVALID_ARG,
                     "moe_tensor_create", "shape");
    assert_ptr_equal(out, SENTINEL_T);
    /* a negative dimension at every position, reported by index */
    for (int i = 0; i < 3; i++) {
        int64_t s[3] = {2, 3, 4};
        s[i] = i == 1 ? INT64_MIN : -1;
        char want[32];
        snprintf(want, sizeof want, "shape[%d]", i);
        ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_I32, 3, s, &out), MOE_ERR_INVALID_ARG,
                         "moe_tensor_create", want);
        assert_ptr_equal(out, SENTINEL_T);
    }
    /* element counts or byte sizes that overflow 64 bits */
    const int64_t big = INT64_MAX;
    int64_t ov1[2] = {big, 2};
    int64_t ov2[3] = {1 << 30, 1LL << 31, 1LL << 31};
    int64_t ov3[2] = {1LL << 31, 1LL << 31}; /* 2^62 elements: 2^65 bytes as i64 */
    int64_t ov4[8] = {256, 256, 256, 256, 256, 256, 256, 256};
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_U8, 2, ov1, &out), MOE_ERR_INVALID_ARG,
                     "moe_tensor_create", "overflow");
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_U8, 3, ov2, &out), MOE_ERR_INVALID_ARG,
                     "moe_tensor_create", "overflow");
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_I64, 2, ov3, &out), MOE_ERR_INVALID_ARG,
                     "moe_tensor_create", "overflow");
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, MOE_DTYPE_F32, 8, ov4, &out), MOE_ERR_INVALID_ARG,
                     "moe_tensor_create", "overflow");
    assert_ptr_equal(out, SENTINEL_T);
    uint64_t cur = 1;
    ASSERT_OK(moe_ctx_memory(ctx, &cur, NULL));
    assert_true(cur == 0); /* nothing was allocated by any failure */
}

/* A zero dimension makes the tensor empty whatever the other dimensions are, in any order:
 * its byte size (0) cannot overflow. */
static void test_create_empty_with_huge_dim(void **state)
{
    moe_ctx *ctx = *state;
    int64_t a[2] = {0, INT64_MAX};
    int64_t b[2] = {INT64_MAX, 0};
    moe_tensor *ta = NULL, *tb = NULL;
    moe_status sa = moe_tensor_create(ctx, MOE_DTYPE_F32, 2, a, &ta);
    moe_status sb = moe_tensor_create(ctx, MOE_DTYPE_F32, 2, b, &tb);
    moe_tensor_destroy(ta);
    moe_tensor_destroy(tb);
    if (sa != sb)
        fail_msg("shape {0, INT64_MAX} gives %s but {INT64_MAX, 0} gives %s (%s): the result depends on the order "
                 "of the dimensions",
                 moe_status_string(sa), moe_status_string(sb), moe_last_error());
    assert_int_equal(sa, MOE_OK);
}

static void test_query_errors(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[3] = {2, 3, 4};
    moe_tensor *t = make(ctx, MOE_DTYPE_F32, 3, shape);

    int32_t dtype = -9;
    ASSERT_FAILS(moe_tensor_dtype(NULL, &dtype), MOE_ERR_INVALID_ARG, "moe_tensor_dtype", "'t'");
    assert_int_equal(dtype, -9);
    ASSERT_FAILS_CTX(ctx, moe_tensor_dtype(t, NULL), MOE_ERR_INVALID_ARG, "moe_tensor_dtype", "dtype");

    int32_t ndim = -9;
    int64_t got[3] = {-5, -5, -5};
    ASSERT_FAILS(moe_tensor_shape(NULL, &ndim, got, 3), MOE_ERR_INVALID_ARG, "moe_tensor_shape", "'t'");
    ASSERT_FAILS_CTX(ctx, moe_tensor_shape(t, NULL, got, 3), MOE_ERR_INVALID_ARG, "moe_tensor_shape", "ndim");
    ASSERT_FAILS_CTX(ctx, moe_tensor_shape(t, &ndim, got, 2), MOE_ERR_INVALID_ARG, "moe_tensor_shape",
                     "shape_capacity");
    ASSERT_FAILS_CTX(ctx, moe_tensor_shape(t, &ndim, got, -1), MOE_ERR_INVALID_ARG, "moe_tensor_shape",
                     "shape_capacity");
    ASSERT_FAILS_CTX(ctx, moe_tensor_shape(t, &ndim, got, 0), MOE_ERR_INVALID_ARG, "moe_tensor_shape",
                     "shape_capacity");
    /* failures wrote nothing */
    assert_int_equal(ndim, -9);
    for (int i = 0; i < 3; i++) assert_int_equal(got[i], -5);

    int64_t numel = -9;
    uint64_t nbytes = 9;
    ASSERT_FAILS(moe_tensor_size(NULL, &numel, &nbytes), MOE_ERR_INVALID_ARG, "moe_tensor_size", "'t'");
    assert_int_equal(numel, -9);
    assert_true(nbytes == 9);
    moe_tensor_destroy(t);
}

static void test_copy_errors(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[2] = {3, 5};
    moe_tensor *t = make(ctx, MOE_DTYPE_F32, 2, shape); /* 60 bytes */
    float buf[16];
    for (int i = 0; i < 16; i++) buf[i] = (float)i + 0.5f;
    ASSERT_OK(moe_tensor_copy_from(t, buf, 60));

    ASSERT_FAILS(moe_tensor_copy_from(NULL, buf, 60), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from", "'t'");
    const uint64_t wrong[] = {0, 56, 59, 61, 64, UINT64_MAX};
    float zeros[16] = {0};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++)
        ASSERT_FAILS_CTX(ctx, moe_tensor_copy_from(t, zeros, wrong[i]), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from",
                         "nbytes");
    ASSERT_FAILS_CTX(ctx, moe_tensor_copy_from(t, NULL, 60), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from", "src");

    float out[16];
    memset(out, 0, sizeof out);
    ASSERT_FAILS(moe_tensor_copy_to(NULL, out, 60), MOE_ERR_INVALID_ARG, "moe_tensor_copy_to", "'t'");
    ASSERT_FAILS_CTX(ctx, moe_tensor_copy_to(t, out, 59), MOE_ERR_INVALID_ARG, "moe_tensor_copy_to", "nbytes");
    ASSERT_FAILS_CTX(ctx, moe_tensor_copy_to(t, out, 0), MOE_ERR_INVALID_ARG, "moe_tensor_copy_to", "nbytes");
    ASSERT_FAILS_CTX(ctx, moe_tensor_copy_to(t, NULL, 60), MOE_ERR_INVALID_ARG, "moe_tensor_copy_to", "dst");
    for (int i = 0; i < 16; i++) assert_true(out[i] == 0.0f); /* failures wrote nothing */
    /* and none of the failed copies changed the tensor */
    ASSERT_OK(moe_tensor_copy_to(t, out, sizeof out));
    assert_memory_equal(out, buf, 60);
    moe_tensor_destroy(t);

    /* an empty tensor: NULL with size 0 is fine both ways, a nonzero size into it is not */
    int64_t es[2] = {4, 0};
    moe_tensor *e = make(ctx, MOE_DTYPE_I64, 2, es);
    ASSERT_OK(moe_tensor_copy_from(e, NULL, 0));
    ASSERT_OK(moe_tensor_copy_to(e, NULL, 0));
    ASSERT_OK(moe_tensor_copy_to(e, NULL, 8)); /* nothing to write */
    ASSERT_FAILS_CTX(ctx, moe_tensor_copy_from(e, buf, 8), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from", "nbytes");
    moe_tensor_destroy(e);
}

/* ---- fill ------------------------------------------------------------------------------------- */

/* Fill `t` (n elements of esize bytes) with v and read back the first and last element. */
static void fill_and_read(moe_tensor *t, double v, void *elem, size_t esize, int64_t n)
{
    ASSERT_OK(moe_tensor_fill(t, v));
    uint8_t *buf = malloc((size_t)n * esize);
    assert_non_null(buf);
    ASSERT_OK(moe_tensor_copy_to(t, buf, (uint64_t)n * esize));
    for (int64_t i = 1; i < n; i++)
        if (memcmp(buf, buf + (size_t)i * esize, esize) != 0)
            fail_msg("fill(%.17g): element %lld differs", v, (long long)i);
    memcpy(elem, buf, esize);
    free(buf);
}

/* Doubles that probe rounding: exact values, ties, subnormals, overflow, plus random ones. */
static size_t float_probe_values(double *v, size_t cap, test_rng *rng)
{
    size_t n = 0;
    const double fixed[] = {0.0, -0.0, 1.0, -1.0, 0.5, 3.0, -2.75, 0.1, 1.0 / 3.0, 3.14159265358979,
                            65504.0, 65519.0, 65519.99, 65520.0, -65520.0, 65536.0, 1e5, 1e-5, 6.1e-5,
                            5.960464477539063e-08 /* 2^-24 */, 2.9802322387695312e-08 /* 2^-25 */, 1e-8, 1e-30,
                            1e-40, 1e-45, 3.4028234663852886e38, 3.4e38, 3.5e38, 1e39, 1e300, -1e300, 1e-300,
                            INFINITY, -INFINITY, 1.00390625 /* bf16 tie 1 + 2^-8 */, 1.01171875 /* 1 + 3*2^-8 */,
                            1.00048828125 /* f16 tie 1 + 2^-11 */, 1.00146484375 /* 1 + 3*2^-11 */, 255.5, 257.0,
                            -1234.5678, 16777217.0, 1.1754943508222875e-38, 9.183549615799121e-41};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0] && n < cap; i++) v[n++] = fixed[i];
    while (n < cap) {
        /* random sign, exponent in [-50, 50], 53 random mantissa bits */
        double m = 1.0 + (double)(test_rng_u64(rng) >> 11) * 0x1p-53;
        int e = (int)test_rng_range(rng, -50, 50);
        v[n++] = ((test_rng_u32(rng) & 1) ? -1.0 : 1.0) * ldexp(m, e);
    }
    return n;
}

static void test_fill_f32(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[2] = {7, 9};
    moe_tensor *t = make(ctx, MOE_DTYPE_F32, 2, shape);
    test_rng rng = {99};
    double v[400];
    size_t n = float_probe_values(v, 400, &rng);
    for (size_t i = 0; i < n; i++) {
        float got;
        fill_and_read(t, v[i], &got, 4, 63);
        float want = (float)v[i]; /* C's double -> float conversion rounds to nearest even */
        if (test_f32_bits(got) != test_f32_bits(want))
            fail_msg("f32 fill(%.17g): got %a, want %a", v[i], (double)got, (double)want);
    }
    float got;
    fill_and_read(t, NAN, &got, 4, 63);
    assert_true(isnan(got));
    moe_tensor_destroy(t);
}

static void test_fill_bf16(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[1] = {37};
    moe_tensor *t = make(ctx, MOE_DTYPE_BF16, 1, shape);
    test_rng rng = {7};
    double v[2000];
    size_t n = float_probe_values(v, 2000, &rng);
    for (size_t i = 0; i < n; i++) {
        uint16_t got;
        fill_and_read(t, v[i], &got, 2, 37);
        uint16_t want = test_ref_bf16(v[i]); /* one rounding of the double, to nearest even */
        if (got != want) fail_msg("bf16 fill(%.17g): got 0x%04x, want 0x%04x", v[i], got, want);
    }
    uint16_t got;
    fill_and_read(t, NAN, &got, 2, 37);
    assert_true(isnan(test_bf16_value(got)));
    moe_tensor_destroy(t);
}

static void test_fill_f16(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[3] = {2, 3, 5};
    moe_tensor *t = make(ctx, MOE_DTYPE_F16, 3, shape);
    test_rng rng = {8};
    double v[2000];
    size_t n = float_probe_values(v, 2000, &rng);
    for (size_t i = 0; i < n; i++) {
        uint16_t got;
        fill_and_read(t, v[i], &got, 2, 30);
        uint16_t want = test_f16_bits_of(v[i]);
        if (got != want) fail_msg("f16 fill(%.17g): got 0x%04x, want 0x%04x (_Float16)", v[i], got, want);
        /* the compiler's conversion and the double-arithmetic reference agree */
        double r = test_round_to_format(v[i], 11, -14, 15);
        if (test_f16_value(want) != r) fail_msg("reference disagreement at %.17g", v[i]);
    }
    uint16_t got;
    fill_and_read(t, NAN, &got, 2, 30);
    assert_true(isnan(test_f16_value(got)));
    fill_and_read(t, -INFINITY, &got, 2, 30);
    assert_int_equal(got, 0xfc00);
    moe_tensor_destroy(t);
}

/* The fill value is a double; rounding it to bf16/f16 must happen once. Rounding to float first and
 * then to the narrow type (double rounding) goes wrong when the double lies just off a tie of the
 * narrow type, by less than half a float ulp: the float rounding lands exactly on the tie. Probes:
 * fixed cases plus random ties of each type nudged up and down by a relative 2^-35. */
static void test_fill_half_single_rounding(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[1] = {3};
    moe_tensor *tb = make(ctx, MOE_DTYPE_BF16, 1, shape);
    moe_tensor *th = make(ctx, MOE_DTYPE_F16, 1, shape);
    enum { N_RANDOM = 200, CAP = 16 + 2 * N_RANDOM };
    double bf[CAP], hf[CAP];
    size_t nb = 0, nh = 0;
    const double bf16_fixed[] = {1.0 + 0x1p-8 + 0x1p-30, -(1.0 + 0x1p-8 + 0x1p-40), 0x1p-134 + 0x1p-170,
                                 3.0 + 0x1p-7 + 0x1p-35};
    const double f16_fixed[] = {65519.999 /* float rounds it to 65520, a tie that goes to inf */,
                                1.0 + 0x1p-11 + 0x1p-40, -(1.0 + 0x1p-11 + 0x1p-50), 0x1p-25 + 0x1p-60,
                                2048.0 + 1.0 + 0x1p-30};
    for (size_t i = 0; i < sizeof bf16_fixed / sizeof bf16_fixed[0]; i++) bf[nb++] = bf16_fixed[i];
    for (size_t i = 0; i < sizeof f16_fixed / sizeof f16_fixed[0]; i++) hf[nh++] = f16_fixed[i];
    test_rng rng = {0x71E5ULL};
    for (int i = 0; i < N_RANDOM; i++) {
        /* a random finite bf16 / f16 value and its upper neighbour; their midpoint is a tie */
        uint16_t b = (uint16_t)(test_rng_u32(&rng) % 0x7f7fu);
        double mid = (test_bf16_value(b) + test_bf16_value((uint16_t)(b + 1))) / 2.0;
        bf[nb++] = mid + fabs(mid) * 0x1p-35;
        bf[nb++] = -(mid - fabs(mid) * 0x1p-35);
        uint16_t h = (uint16_t)(test_rng_u32(&rng) % 0x7bffu);
        mid = (test_f16_value(h) + test_f16_value((uint16_t)(h + 1))) / 2.0;
        hf[nh++] = mid + fabs(mid) * 0x1p-35;
        hf[nh++] = -(mid - fabs(mid) * 0x1p-35);
    }
    int wrong_b = 0, wrong_h = 0;
    for (size_t i = 0; i < nb; i++) {
        uint16_t got;
        fill_and_read(tb, bf[i], &got, 2, 3);
        uint16_t want = test_ref_bf16(bf[i]);
        if (got != want && wrong_b++ < 4) print_error("bf16 fill(%a): got 0x%04x, want 0x%04x\n", bf[i], got, want);
    }
    for (size_t i = 0; i < nh; i++) {
        uint16_t got;
        fill_and_read(th, hf[i], &got, 2, 3);
        uint16_t want = test_f16_bits_of(hf[i]);
        if (got != want && wrong_h++ < 4) print_error("f16 fill(%a): got 0x%04x, want 0x%04x\n", hf[i], got, want);
    }
    moe_tensor_destroy(tb);
    moe_tensor_destroy(th);
    if (wrong_b || wrong_h)
        fail_msg("fill rounds twice: %d of %zu bf16 and %d of %zu f16 near-tie values are misrounded", wrong_b, nb,
                 wrong_h, nh);
}

static void test_fill_integers(void **state)
{
    moe_ctx *ctx = *state;
    int64_t shape[2] = {3, 4};
    moe_tensor *ti = make(ctx, MOE_DTYPE_I32, 2, shape);
    moe_tensor *tl = make(ctx, MOE_DTYPE_I64, 2, shape);
    moe_tensor *tu = make(ctx, MOE_DTYPE_U8, 2, shape);

    const double i32_ok[] = {0.0, -0.0, 1.0, -1.0, 12345.0, 2147483647.0, -2147483648.0, 1e9};
    for (size_t i = 0; i < sizeof i32_ok / sizeof i32_ok[0]; i++) {
        int32_t got;
        fill_and_read(ti, i32_ok[i], &got, 4, 12);
        assert_int_equal(got, (int32_t)i32_ok[i]);
    }
    const double i64_ok[] = {0.0, -7.0, 4294967296.0, 9007199254740993.0 /* rounds to 2^53 as a double */,
                             -9223372036854775808.0, 9223372036854774784.0};
    const int64_t i64_want[] = {0, -7, 4294967296LL, 9007199254740992LL, INT64_MIN, 9223372036854774784LL};
    for (size_t i = 0; i < sizeof i64_ok / sizeof i64_ok[0]; i++) {
        int64_t got;
        fill_and_read(tl, i64_ok[i], &got, 8, 12);
        if (got != i64_want[i]) fail_msg("i64 fill(%.17g) = %lld", i64_ok[i], (long long)got);
    }
    const double u8_ok[] = {0.0, -0.0, 1.0, 128.0, 255.0};
    for (size_t i = 0; i < sizeof u8_ok / sizeof u8_ok[0]; i++) {
        uint8_t got;
        fill_and_read(tu, u8_ok[i], &got, 1, 12);
        assert_int_equal(got, (uint8_t)u8_ok[i]);
    }

    /* rejected values leave the tensor as it was */
    ASSERT_OK(moe_tensor_fill(ti, 5.0));
    ASSERT_OK(moe_tensor_fill(tl, 6.0));
    ASSERT_OK(moe_tensor_fill(tu, 7.0));
    const double i32_bad[] = {1.5, -0.5, 2147483648.0, -2147483649.0, 1e10, NAN, INFINITY, -INFINITY, 1e300};
    for (size_t i = 0; i < sizeof i32_bad / sizeof i32_bad[0]; i++)
        ASSERT_FAILS_CTX(ctx, moe_tensor_fill(ti, i32_bad[i]), MOE_ERR_INVALID_ARG, "moe_tensor_fill");
    const double i64_bad[] = {0.25, 9223372036854775808.0, -9223372036854777856.0, 1e19, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof i64_bad / sizeof i64_bad[0]; i++)
        ASSERT_FAILS_CTX(ctx, moe_tensor_fill(tl, i64_bad[i]), MOE_ERR_INVALID_ARG, "moe_tensor_fill");
    const double u8_bad[] = {256.0, -1.0, 1.5, 255.5, -0.5, 1000.0, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < sizeof u8_bad / sizeof u8_bad[0]; i++)
        ASSERT_FAILS_CTX(ctx, moe_tensor_fill(tu, u8_bad[i]), MOE_ERR_INVALID_ARG, "moe_tensor_fill");
    int32_t bi[12];
    int64_t bl[12];
    uint8_t bu[12];
    ASSERT_OK(moe_tensor_copy_to(ti, bi, sizeof bi));
    ASSERT_OK(moe_tensor_copy_to(tl, bl, sizeof bl));
    ASSERT_OK(moe_tensor_copy_to(tu, bu, sizeof bu));
    for (int i = 0; i < 12; i++) {
        assert_int_equal(bi[i], 5);
        assert_int_equal(bl[i], 6);
        assert_int_equal(bu[i], 7);
    }
    ASSERT_FAILS(moe_tensor_fill(NULL, 1.0), MOE_ERR_INVALID_ARG, "moe_tensor_fill", "'t'");
    moe_tensor_destroy(ti);
    moe_tensor_destroy(tl);
    moe_tensor_destroy(tu);
}

static void test_fill_empty_and_scalar(void **state)
{
    moe_ctx *ctx = *state;
    for (size_t d = 0; d < N_DTYPES; d++) {
        int64_t shape[3] = {5, 0, 3};
        moe_tensor *e = make(ctx, all_dtypes[d], 3, shape);
        ASSERT_OK(moe_tensor_fill(e, 1.0));
        ASSERT_OK(moe_tensor_fill(e, 0.0));
        moe_tensor_destroy(e);
        moe_tensor *s = make(ctx, all_dtypes[d], 0, NULL);
        uint8_t buf[8] = {0};
        ASSERT_OK(moe_tensor_fill(s, 3.0));
        ASSERT_OK(moe_tensor_copy_to(s, buf, sizeof buf));
        double got = 0;
        switch (all_dtypes[d]) {
        case MOE_DTYPE_F32: { float f; memcpy(&f, buf, 4); got = f; break; }
        case MOE_DTYPE_BF16: { uint16_t h; memcpy(&h, buf, 2); got = test_bf16_value(h); break; }
        case MOE_DTYPE_F16: { uint16_t h; memcpy(&h, buf, 2); got = test_f16_value(h); break; }
        case MOE_DTYPE_I32: { int32_t x; memcpy(&x, buf, 4); got = x; break; }
        case MOE_DTYPE_I64: { int64_t x; memcpy(&x, buf, 8); got = (double)x; break; }
        case MOE_DTYPE_U8: got = buf[0]; break;
        default: fail();
        }
        assert_true(got == 3.0);
        moe_tensor_destroy(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dtype_size),
        cmocka_unit_test_setup_teardown(test_create_every_dtype_and_rank, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_create_errors, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_create_empty_with_huge_dim, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_query_errors, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_copy_errors, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_fill_f32, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_fill_bf16, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_fill_f16, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_fill_half_single_rounding, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_fill_integers, setup_ctx, teardown_ctx),
        cmocka_unit_test_setup_teardown(test_fill_empty_and_scalar, setup_ctx, teardown_ctx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
