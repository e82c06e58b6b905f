/* The ctx: config defaults and versioned-struct handling, validation of every field, device
 * selection, logging, per-ctx errors, memory accounting, and destroy from another thread. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/test_util.h"

#define SENTINEL_CTX ((moe_ctx *)(uintptr_t)0xdeadbeef)

static moe_ctx *make_cpu_ctx(void)
{
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(NULL, &ctx));
    assert_non_null(ctx);
    return ctx;
}

/* ---- config_init -------------------------------------------------------------------------------- */

static void test_config_init_defaults(void **state)
{
    (void)state;
    moe_ctx_config cfg;
    memset(&cfg, 0xAB, sizeof cfg);
    ASSERT_OK(moe_ctx_config_init(&cfg, (uint32_t)sizeof cfg));
    assert_int_equal(cfg.struct_size, sizeof cfg);
    assert_int_equal(cfg.device_type, MOE_DEVICE_CPU);
    assert_int_equal(cfg.device_index, 0);
    assert_int_equal(cfg.num_threads, 0);
    assert_true(cfg.seed == 1234);
    assert_null((void *)(uintptr_t)cfg.log_fn);
    assert_null(cfg.log_user_data);
    assert_int_equal(cfg.log_level, MOE_LOG_WARN);
}

static void test_config_init_bad_args(void **state)
{
    (void)state;
    ASSERT_FAILS(moe_ctx_config_init(NULL, (uint32_t)sizeof(moe_ctx_config)), MOE_ERR_INVALID_ARG,
                 "moe_ctx_config_init", "cfg");
    const uint32_t small[] = {0, 1, 2, 3};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
        moe_ctx_config cfg;
        memset(&cfg, 0x5A, sizeof cfg);
        moe_ctx_config before = cfg;
        ASSERT_FAILS(moe_ctx_config_init(&cfg, small[i]), MOE_ERR_INVALID_ARG, "moe_ctx_config_init", "struct_size");
        assert_memory_equal(&cfg, &before, sizeof cfg); /* failure changes nothing */
    }
    /* exactly the struct_size field: only that field is written */
    unsigned char buf[sizeof(moe_ctx_config)];
    memset(buf, 0x5A, sizeof buf);
    ASSERT_OK(moe_ctx_config_init((moe_ctx_config *)(void *)buf, 4));
    uint32_t ss;
    memcpy(&ss, buf, 4);
    assert_int_equal(ss, 4);
    for (size_t i = 4; i < sizeof buf; i++) assert_int_equal(buf[i], 0x5A);
}

/* Larger-than-known struct (a caller compiled against a newer header): accepted; the known fields
 * get their defaults. */
static void test_config_init_larger_struct(void **state)
{
    (void)state;
    union {
        moe_ctx_config cfg;
        unsigned char bytes[sizeof(moe_ctx_config) + 32];
    } u;
    memset(&u, 0, sizeof u);
    uint32_t big = (uint32_t)sizeof u;
    ASSERT_OK(moe_ctx_config_init(&u.cfg, big));
    assert_int_equal(u.cfg.struct_size, big);
    assert_int_equal(u.cfg.log_level, MOE_LOG_WARN);
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(&u.cfg, &ctx));
    moe_ctx_destroy(ctx);
}

/* ---- versioned structs: an older, smaller caller struct --------------------------------------- */

typedef struct log_record {
    int calls;
    int errors;
    int max_level;
    int wrong_user_data;
    void *expected_user_data;
    char last[1024];
    char last_error[1024];
} log_record;

static void record_log(int32_t level, const char *message, void *user_data)
{
    log_record *r = user_data;
    if (!r) return;
    if (user_data != r->expected_user_data) r->wrong_user_data++;
    r->calls++;
    if (level > r->max_level) r->max_level = level;
    snprintf(r->last, sizeof r->last, "%s", message ? message : "(null)");
    if (level == MOE_LOG_ERROR) {
        r->errors++;
        snprintf(r->last_error, sizeof r->last_error, "%s", message ? message : "(null)");
    }
}

static void test_truncated_struct_gets_defaults(void **state)
{
    (void)state;
    const uint32_t trunc = (uint32_t)offsetof(moe_ctx_config, log_fn);
    union {
        moe_ctx_config cfg;
        unsigned char bytes[sizeof(moe_ctx_config) + 16];
    } u;
    memset(&u, 0xAB, sizeof u);
    ASSERT_OK(moe_ctx_config_init(&u.cfg, trunc));
    /* the library wrote nothing past the caller's struct */
    for (size_t i = trunc; i < sizeof u.bytes; i++)
        if (u.bytes[i] != 0xAB) fail_msg("byte %zu past struct_size %u was written (0x%02x)", i, trunc, u.bytes[i]);
    assert_int_equal(u.cfg.struct_size, trunc);
    assert_int_equal(u.cfg.device_type, MOE_DEVICE_CPU);
    assert_int_equal(u.cfg.device_index, 0);
    assert_int_equal(u.cfg.num_threads, 0);
    assert_true(u.cfg.seed == 1234);

    /* create reads only `trunc` bytes: the garbage log_fn / log_level (0xABAB...) would be an invalid
     * level and a wild callback; the defaults (no logging, WARN) must be used instead */
    u.cfg.num_threads = 1;
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(&u.cfg, &ctx));
    assert_non_null(ctx);
    moe_tensor *t = NULL;
    ASSERT_FAILS_CTX(ctx, moe_tensor_create(ctx, 77, 0, NULL, &t), MOE_ERR_INVALID_ARG, "dtype");
    assert_null(t);
    moe_ctx_destroy(ctx);
}

/* A struct that ends before log_level: the callback given is used and log_level defaults to WARN. */
static void test_truncated_struct_log_level_default(void **state)
{
    (void)state;
    const uint32_t trunc = (uint32_t)offsetof(moe_ctx_config, log_level);
    union {
        moe_ctx_config cfg;
        unsigned char bytes[sizeof(moe_ctx_config) + 16];
    } u;
    memset(&u, 0xCD, sizeof u);
    ASSERT_OK(moe_ctx_config_init(&u.cfg, trunc));
    for (size_t i = trunc; i < sizeof u.bytes; i++) assert_int_equal(u.bytes[i], 0xCD);
    assert_null((void *)(uintptr_t)u.cfg.log_fn);
    log_record rec;
    memset(&rec, 0, sizeof rec);
    rec.max_level = -1;
    rec.expected_user_data = &rec;
    u.cfg.log_fn = record_log;
    u.cfg.log_user_data = &rec;
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(&u.cfg, &ctx));
    assert_int_equal(rec.calls, 0); /* the DEBUG creation message is above the default WARN */
    moe_tensor *t = NULL;
    int64_t shape[1] = {-3};
    assert_int_equal(moe_tensor_create(ctx, MOE_DTYPE_F32, 1, shape, &t), MOE_ERR_INVALID_ARG);
    assert_int_equal(rec.errors, 1);
    assert_int_equal(rec.wrong_user_data, 0);
    assert_non_null(strstr(rec.last_error, "shape[0]"));
    moe_ctx_destroy(ctx);
}

/* ---- create: every invalid field --------------------------------------------------------------- */

static void expect_create_fails(const moe_ctx_config *cfg, moe_status code, const char *field)
{
    moe_ctx *out = SENTINEL_CTX;
    moe_status st = moe_ctx_create(cfg, &out);
    if (st != code)
        fail_msg("moe_ctx_create for field %s returned %s, expected %s (%s)", field, moe_status_string(st),
                 moe_status_string(code), moe_last_error());
    if (!strstr(moe_last_error(), field)) fail_msg("message '%s' does not name '%s'", moe_last_error(), field);
    if (!strstr(moe_last_error(), "moe_ctx_create"))
        fail_msg("message '%s' does not name the function", moe_last_error());
    assert_ptr_equal(out, SENTINEL_CTX); /* out-param untouched */
}

static void test_create_invalid_fields(void **state)
{
    (void)state;
    moe_ctx_config cfg;
    const int32_t bad_types[] = {-1, 2, 3, 100, INT32_MIN, MOE_DEVICE_TYPE_FORCE32};
    for (size_t i = 0; i < sizeof bad_types / sizeof bad_types[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.device_type = bad_types[i];
        expect_create_fails(&cfg, MOE_ERR_INVALID_ARG, "device_type");
    }
    const int32_t bad_cpu_index[] = {-1, 1, 7, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof bad_cpu_index / sizeof bad_cpu_index[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.device_index = bad_cpu_index[i];
        expect_create_fails(&cfg, MOE_ERR_INVALID_ARG, "device_index");
    }
    ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
    cfg.device_type = MOE_DEVICE_CUDA;
    cfg.device_index = -1;
    expect_create_fails(&cfg, MOE_ERR_INVALID_ARG, "device_index");
    const int32_t bad_threads[] = {-1, -100, 4097, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_threads / sizeof bad_threads[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.num_threads = bad_threads[i];
        expect_create_fails(&cfg, MOE_ERR_INVALID_ARG, "num_threads");
    }
    const int32_t bad_levels[] = {-1, 4, 5, INT32_MIN, MOE_LOG_LEVEL_FORCE32};
    for (size_t i = 0; i < sizeof bad_levels / sizeof bad_levels[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.log_level = bad_levels[i];
        expect_create_fails(&cfg, MOE_ERR_INVALID_ARG, "log_level");
    }
    const uint32_t bad_sizes[] = {0, 1, 3};
    for (size_t i = 0; i < sizeof bad_sizes / sizeof bad_sizes[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.struct_size = bad_sizes[i];
        expect_create_fails(&cfg, MOE_ERR_INVALID_ARG, "struct_size");
    }
    /* NULL out */
    ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
    ASSERT_FAILS(moe_ctx_create(&cfg, NULL), MOE_ERR_INVALID_ARG, "moe_ctx_create", "out");
}

static void test_create_valid_edges(void **state)
{
    (void)state;
    moe_ctx_config cfg;
    const int32_t threads[] = {0, 1, 2, 4096};
    for (size_t i = 0; i < sizeof threads / sizeof threads[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.num_threads = threads[i];
        moe_ctx *ctx = NULL;
        ASSERT_OK(moe_ctx_create(&cfg, &ctx));
        moe_ctx_destroy(ctx);
    }
    for (int32_t lvl = MOE_LOG_ERROR; lvl <= MOE_LOG_DEBUG; lvl++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.log_level = lvl;
        cfg.seed = UINT64_MAX;
        moe_ctx *ctx = NULL;
        ASSERT_OK(moe_ctx_create(&cfg, &ctx));
        moe_ctx_destroy(ctx);
    }
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(NULL, &ctx)); /* NULL config = all defaults */
    int32_t type = -1, index = -1;
    ASSERT_OK(moe_ctx_device(ctx, &type, &index));
    assert_int_equal(type, MOE_DEVICE_CPU);
    assert_int_equal(index, 0);
    moe_ctx_destroy(ctx);
}

static void test_create_cuda_without_gpu(void **state)
{
    (void)state;
    int32_t n = -1;
    ASSERT_OK(moe_cuda_device_count(&n));
    assert_true(n >= 0);
    if (n > 0) {
        skip();
    }
    moe_ctx_config cfg;
    const int32_t indices[] = {0, 1, 5};
    for (size_t i = 0; i < sizeof indices / sizeof indices[0]; i++) {
        ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
        cfg.device_type = MOE_DEVICE_CUDA;
        cfg.device_index = indices[i];
        moe_ctx *out = SENTINEL_CTX;
        moe_status st = moe_ctx_create(&cfg, &out);
        if (st != MOE_ERR_UNSUPPORTED && st != MOE_ERR_DEVICE)
            fail_msg("CUDA ctx without a GPU returned %s: %s", moe_status_string(st), moe_last_error());
        assert_true(strlen(moe_last_error()) > 0);
        assert_ptr_equal(out, SENTINEL_CTX);
    }
}

/* A CUDA index past the visible devices is a device error, not a crash (only meaningful with a GPU). */
static void test_create_cuda_index_out_of_range(void **state)
{
    (void)state;
    int32_t n = 0;
    ASSERT_OK(moe_cuda_device_count(&n));
    if (n == 0) {
        skip();
    }
    moe_ctx_config cfg;
    ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
    cfg.device_type = MOE_DEVICE_CUDA;
    cfg.device_index = n;
    moe_ctx *out = SENTINEL_CTX;
    assert_int_equal(moe_ctx_create(&cfg, &out), MOE_ERR_DEVICE);
    assert_true(strlen(moe_last_error()) > 0);
    assert_ptr_equal(out, SENTINEL_CTX);
}

/* ---- logging --------------------------------------------------------------------------------- */

static moe_ctx *make_logging_ctx(log_record *rec, int32_t level)
{
    memset(rec, 0, sizeof *rec);
    rec->max_level = -1;
    rec->expected_user_data = rec;
    moe_ctx_config cfg;
    ASSERT_OK(moe_ctx_config_init(&cfg, sizeof cfg));
    cfg.log_fn = record_log;
    cfg.log_user_data = rec;
    cfg.log_level = level;
    moe_ctx *ctx = NULL;
    ASSERT_OK(moe_ctx_create(&cfg, &ctx));
    return ctx;
}

static void test_log_callback_on_failure(void **state)
{
    (void)state;
    log_record rec;
    moe_ctx *ctx = make_logging_ctx(&rec, MOE_LOG_ERROR);
    assert_int_equal(rec.calls, 0);
    moe_tensor *t = NULL;
    assert_int_equal(moe_tensor_create(ctx, 42, 0, NULL, &t), MOE_ERR_INVALID_ARG);
    assert_int_equal(rec.errors, 1);
    assert_int_equal(rec.calls, 1);
    assert_int_equal(rec.max_level, MOE_LOG_ERROR);
    assert_int_equal(rec.wrong_user_data, 0);
    assert_non_null(strstr(rec.last_error, "moe_tensor_create"));
    assert_non_null(strstr(rec.last_error, "dtype"));
    /* a second failure through another function logs again */
    int32_t *null_type = NULL;
    assert_int_equal(moe_ctx_device(ctx, null_type, NULL), MOE_ERR_INVALID_ARG);
    assert_int_equal(rec.errors, 2);
    assert_non_null(strstr(rec.last_error, "moe_ctx_device"));
    /* successful calls log nothing at ERROR level */
    ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_F32, 0, NULL, &t));
    moe_tensor_destroy(t);
    assert_int_equal(rec.errors, 2);
    assert_int_equal(rec.max_level, MOE_LOG_ERROR);
    moe_ctx_destroy(ctx);
}

static void test_log_level_respected(void **state)
{
    (void)state;
    for (int32_t level = MOE_LOG_ERROR; level <= MOE_LOG_DEBUG; level++) {
        log_record rec;
        moe_ctx *ctx = make_logging_ctx(&rec, level);
        moe_tensor *t = NULL;
        ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_U8, 0, NULL, &t));
        moe_tensor_destroy(t);
        assert_int_equal(moe_tensor_fill(NULL, 1.0), MOE_ERR_INVALID_ARG); /* no ctx: no log */
        assert_int_equal(moe_tensor_create(ctx, -5, 0, NULL, &t), MOE_ERR_INVALID_ARG);
        moe_ctx_destroy(ctx);
        /* nothing above the configured level is ever forwarded, and errors always are */
        assert_true(rec.max_level <= level);
        assert_int_equal(rec.errors, 1);
        assert_int_equal(rec.wrong_user_data, 0);
    }
    /* at DEBUG the ctx reports its creation (the one debug message that exists today) */
    log_record rec;
    moe_ctx *ctx = make_logging_ctx(&rec, MOE_LOG_DEBUG);
    assert_true(rec.calls >= 1);
    assert_int_equal(rec.errors, 0);
    moe_ctx_destroy(ctx);
}

/* ---- per-ctx errors -------------------------------------------------------------------------- */

static void test_ctx_last_error(void **state)
{
    (void)state;
    moe_ctx *a = make_cpu_ctx();
    moe_ctx *b = make_cpu_ctx();
    assert_non_null(moe_ctx_last_error(a));
    assert_string_equal(moe_ctx_last_error(a), "");
    int64_t shape[2] = {4, -1};
    moe_tensor *t = NULL;
    ASSERT_FAILS_CTX(a, moe_tensor_create(a, MOE_DTYPE_F32, 2, shape, &t), MOE_ERR_INVALID_ARG, "moe_tensor_create",
                     "shape[1]");
    assert_null(t);
    /* another ctx is independent */
    assert_string_equal(moe_ctx_last_error(b), "");
    /* the ctx keeps its message even after the thread's message moved on */
    assert_int_equal(moe_cuda_device_count(NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_ctx_last_error(a), "shape[1]"));
    assert_non_null(strstr(moe_last_error(), "moe_cuda_device_count"));
    /* NULL ctx gives the thread's text */
    assert_string_equal(moe_ctx_last_error(NULL), moe_last_error());
    /* a tensor call failing through the tensor's ctx */
    ASSERT_OK(moe_tensor_create(a, MOE_DTYPE_F32, 0, NULL, &t));
    ASSERT_FAILS_CTX(a, moe_tensor_copy_from(t, NULL, 4), MOE_ERR_INVALID_ARG, "moe_tensor_copy_from", "src");
    moe_tensor_destroy(t);
    assert_string_equal(moe_ctx_last_error(b), "");
    moe_ctx_destroy(a);
    moe_ctx_destroy(b);
}

/* ---- device and memory queries ------------------------------------------------------------- */

static void test_ctx_device_query(void **state)
{
    (void)state;
    moe_ctx *ctx = make_cpu_ctx();
    int32_t type = 99, index = 99;
    ASSERT_OK(moe_ctx_device(ctx, &type, &index));
    assert_int_equal(type, MOE_DEVICE_CPU);
    assert_int_equal(index, 0);
    type = 99;
    ASSERT_OK(moe_ctx_device(ctx, &type, NULL));
    assert_int_equal(type, MOE_DEVICE_CPU);
    type = 99;
    index = 99;
    ASSERT_FAILS(moe_ctx_device(NULL, &type, &index), MOE_ERR_INVALID_ARG, "moe_ctx_device", "ctx");
    assert_int_equal(type, 99);
    assert_int_equal(index, 99);
    ASSERT_FAILS_CTX(ctx, moe_ctx_device(ctx, NULL, &index), MOE_ERR_INVALID_ARG, "moe_ctx_device", "device_type");
    assert_int_equal(index, 99);
    moe_ctx_destroy(ctx);

    ASSERT_FAILS(moe_cuda_device_count(NULL), MOE_ERR_INVALID_ARG, "moe_cuda_device_count", "count");
    int32_t n = -1;
    ASSERT_OK(moe_cuda_device_count(&n));
    assert_true(n >= 0);
}

static void test_ctx_memory_accounting(void **state)
{
    (void)state;
    moe_ctx *ctx = make_cpu_ctx();
    uint64_t cur = 7, peak = 7;
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    assert_true(cur == 0 && peak == 0);

    int64_t s1[2] = {3, 5};   /* f32: 60 bytes */
    int64_t s2[1] = {7};      /* i64: 56 bytes */
    int64_t s3[3] = {2, 0, 9}; /* empty */
    int64_t s4[1] = {13};     /* u8: 13 bytes, not a multiple of any alignment */
    moe_tensor *a = NULL, *b = NULL, *c = NULL, *d = NULL;
    ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_F32, 2, s1, &a));
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    assert_true(cur == 60);
    assert_true(peak >= 60);
    ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_I64, 1, s2, &b));
    ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_BF16, 3, s3, &c));
    ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_U8, 1, s4, &d));
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    assert_true(cur == 60 + 56 + 13);
    assert_true(peak >= cur);
    moe_tensor_destroy(a);
    ASSERT_OK(moe_ctx_memory(ctx, &cur, NULL));
    assert_true(cur == 56 + 13);
    moe_tensor_destroy(b);
    moe_tensor_destroy(c);
    moe_tensor_destroy(d);
    uint64_t peak_after = 0;
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak_after));
    assert_true(cur == 0);
    assert_true(peak_after >= 60 + 56 + 13);
    /* a failed create allocates nothing */
    int64_t bad[1] = {-1};
    moe_tensor *e = NULL;
    assert_int_equal(moe_tensor_create(ctx, MOE_DTYPE_F32, 1, bad, &e), MOE_ERR_INVALID_ARG);
    ASSERT_OK(moe_ctx_memory(ctx, &cur, NULL));
    assert_true(cur == 0);
    ASSERT_OK(moe_ctx_memory(ctx, NULL, NULL));
    cur = 5;
    ASSERT_FAILS(moe_ctx_memory(NULL, &cur, &peak), MOE_ERR_INVALID_ARG, "moe_ctx_memory", "ctx");
    assert_true(cur == 5);
    moe_ctx_destroy(ctx);
}

/* ---- destroy from another thread ----------------------------------------------------------- */

#define N_TENSORS 400

typedef struct destroyer_args {
    moe_tensor **tensors;
    int count;
    moe_mesh *mesh;
    pthread_barrier_t *start;
} destroyer_args;

static void *destroyer(void *arg)
{
    destroyer_args *a = arg;
    pthread_barrier_wait(a->start);
    for (int i = 0; i < a->count; i++) moe_tensor_destroy(a->tensors[i]);
    moe_mesh_destroy(a->mesh);
    return NULL;
}

static void test_destroy_from_other_thread(void **state)
{
    (void)state;
    moe_ctx *ctx = make_cpu_ctx();
    moe_tensor **first = calloc(N_TENSORS, sizeof *first);
    moe_tensor **second = calloc(N_TENSORS, sizeof *second);
    assert_non_null(first);
    assert_non_null(second);
    uint64_t expect = 0;
    for (int i = 0; i < N_TENSORS; i++) {
        int64_t shape[2] = {1 + i % 7, 1 + i % 5};
        ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_F32, 2, shape, &first[i]));
        expect += (uint64_t)(shape[0] * shape[1] * 4);
    }
    uint64_t cur = 0, peak = 0;
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    assert_true(cur == expect);
    moe_mesh *mesh = NULL;
    ASSERT_OK(moe_mesh_create(ctx, NULL, &mesh));

    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, 2), 0);
    destroyer_args args = {first, N_TENSORS, mesh, &start};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, destroyer, &args), 0);
    pthread_barrier_wait(&start);
    /* the main thread keeps using the ctx while the other thread destroys */
    for (int i = 0; i < N_TENSORS; i++) {
        int64_t shape[1] = {1 + i % 11};
        ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_I32, 1, shape, &second[i]));
        ASSERT_OK(moe_tensor_fill(second[i], (double)i));
        ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    }
    pthread_join(th, NULL);
    pthread_barrier_destroy(&start);
    uint64_t expect2 = 0;
    for (int i = 0; i < N_TENSORS; i++) expect2 += (uint64_t)((1 + i % 11) * 4);
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    assert_true(cur == expect2);
    for (int i = 0; i < N_TENSORS; i++) moe_tensor_destroy(second[i]);
    ASSERT_OK(moe_ctx_memory(ctx, &cur, &peak));
    assert_true(cur == 0);
    assert_true(peak >= expect);
    free(first);
    free(second);
    moe_ctx_destroy(ctx);
}

/* Destroying a whole ctx (with nothing left in it) from another thread. */
static void *destroy_ctx_thread(void *arg)
{
    moe_ctx_destroy(arg);
    return NULL;
}

static void test_destroy_ctx_other_thread(void **state)
{
    (void)state;
    moe_ctx *ctx = make_cpu_ctx();
    moe_tensor *t = NULL;
    ASSERT_OK(moe_tensor_create(ctx, MOE_DTYPE_F16, 0, NULL, &t));
    moe_tensor_destroy(t);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, destroy_ctx_thread, ctx), 0);
    pthread_join(th, NULL);
}

static void test_destroy_null(void **state)
{
    (void)state;
    moe_ctx_destroy(NULL);
    moe_tensor_destroy(NULL);
    moe_mesh_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_init_defaults),
        cmocka_unit_test(test_config_init_bad_args),
        cmocka_unit_test(test_config_init_larger_struct),
        cmocka_unit_test(test_truncated_struct_gets_defaults),
        cmocka_unit_test(test_truncated_struct_log_level_default),
        cmocka_unit_test(test_create_invalid_fields),
        cmocka_unit_test(test_create_valid_edges),
        cmocka_unit_test(test_create_cuda_without_gpu),
        cmocka_unit_test(test_create_cuda_index_out_of_range),
        cmocka_unit_test(test_log_callback_on_failure),
        cmocka_unit_test(test_log_level_respected),
        cmocka_unit_test(test_ctx_last_error),
        cmocka_unit_test(test_ctx_device_query),
        cmocka_unit_test(test_ctx_memory_accounting),
        cmocka_unit_test(test_destroy_from_other_thread),
        cmocka_unit_test(test_destroy_ctx_other_thread),
        cmocka_unit_test(test_destroy_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
