/* safetensors: writer -> reader round trips for every dtype and shape, the writer's exact bytes
 * against a hand-written expected header, hand-built malformed files (each rejected with
 * MOE_ERR_FORMAT and a message naming what is wrong), truncation at every byte, I/O errors, and
 * fault injection on every file-system call of an atomic write. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "io/fsio.h"
#include "io/safetensors.h"
#include "moe/ctx.h"

static moe_ctx *g_ctx;
static char g_dir[256];

#define ASSERT_OK(expr)                                                                                               \
    do {                                                                                                              \
        moe_status st_ = (expr);                                                                                      \
        if (st_ != MOE_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, moe_last_error());                              \
    } while (0)

static int setup(void **state)
{
    (void)state;
    if (moe_ctx_create(NULL, &g_ctx) != MOE_OK) return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/moe_st_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(g_dir) ? 0 : -1;
}

static void remove_dir_contents(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static int teardown(void **state)
{
    (void)state;
    moei_fs_reset_faults();
    remove_dir_contents(g_dir);
    rmdir(g_dir);
    moe_ctx_destroy(g_ctx);
    return 0;
}

static void path_in_dir(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

/* ---- independent conversions (the oracle for moei_st_read_f32) -------------------------------- */

static float ref_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0) v = ldexp(m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

/* ---- building raw files by hand ---------------------------------------------------------------- */

/* 8-byte little-endian `hlen` + `json` (hlen bytes of it are taken; when hlen exceeds strlen the
 * caller's length field lies) + `ndata` data bytes. Returns a malloc'ed buffer of exactly *size bytes. */
static unsigned char *raw_file(const char *json, uint64_t hlen, size_t ndata, size_t *size)
{
    size_t jl = strlen(json);
    *size = 8 + jl + ndata;
    unsigned char *b = malloc(*size ? *size : 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(b + 8, json, jl);
    for (size_t i = 0; i < ndata; i++) b[8 + jl + i] = (unsigned char)(i * 7 + 1);
    return b;
}

static moe_status open_raw(const char *json, size_t ndata, moei_st_file **f)
{
    size_t size;
    unsigned char *b = raw_file(json, strlen(json), ndata, &size);
    moe_status st = moei_st_open_memory(g_ctx, b, size, f);
    if (st == MOE_OK) moei_st_close(*f);
    free(b);
    return st;
}

static void expect_format(const char *json, size_t ndata, const char *needle)
{
    moei_st_file *f = NULL;
    moe_status st = open_raw(json, ndata, &f);
    if (st != MOE_ERR_FORMAT) fail_msg("expected MOE_ERR_FORMAT for %s, got %d", json, (int)st);
    if (!strstr(moe_last_error(), needle)) fail_msg("message '%s' lacks '%s' (header %s)", moe_last_error(), needle, json);
    if (!strstr(moe_ctx_last_error(g_ctx), needle)) fail_msg("ctx message lacks '%s'", needle);
}

/* ---- round trip ----------------------------------------------------------------------------------- */

typedef struct rt_case {
    const char *name;
    int32_t dtype;
    int32_t ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];
} rt_case;

static const rt_case rt_cases[] = {
    {"scalar.f32", MOE_DTYPE_F32, 0, {0}},
    {"empty.f32", MOE_DTYPE_F32, 1, {0}},
    {"vec.f32", MOE_DTYPE_F32, 1, {7}},
    {"mat.bf16", MOE_DTYPE_BF16, 2, {3, 5}},
    {"scalar.bf16", MOE_DTYPE_BF16, 0, {0}},
    {"t3.f16", MOE_DTYPE_F16, 3, {2, 3, 3}},
    {"zero-mid.f16", MOE_DTYPE_F16, 3, {3, 0, 2}},
    {"ids.i32", MOE_DTYPE_I32, 1, {9}},
    {"ids.i64", MOE_DTYPE_I64, 2, {1, 3}},
    {"scalar.i64", MOE_DTYPE_I64, 0, {0}},
    {"bytes.u8", MOE_DTYPE_U8, 1, {13}},
    {"empty.u8", MOE_DTYPE_U8, 2, {0, 0}},
    {"eight.dims", MOE_DTYPE_F32, 8, {1, 2, 1, 1, 3, 1, 1, 2}},
    {"model.layers.0.block_sparse_moe.experts.7.w1.weight", MOE_DTYPE_BF16, 2, {4, 3}},
    {"quote\"back\\slash\nnl\x01ctl \xc3\xa9", MOE_DTYPE_U8, 1, {2}},
};
#define RT_N (sizeof rt_cases / sizeof rt_cases[0])

static size_t dtype_size(int32_t dt)
{
    size_t s = 0;
    assert_int_equal(moe_dtype_size(dt, &s), MOE_OK);
    return s;
}

static int64_t case_numel(const rt_case *c)
{
    int64_t n = 1;
    for (int d = 0; d < c->ndim; d++) n *= c->shape[d];
    return n;
}

/* Fill the writer with the cases; data[i] receives each case's bytes (random, with some specials). */
static moei_st_writer *make_writer(unsigned char **data)
{
    moei_st_writer *w = NULL;
    ASSERT_OK(moei_st_writer_create(g_ctx, &w));
    for (size_t i = 0; i < RT_N; i++) {
        const rt_case *c = &rt_cases[i];
        size_t nb = (size_t)case_numel(c) * dtype_size(c->dtype);
        data[i] = malloc(nb ? nb : 1);
        assert_non_null(data[i]);
        for (size_t k = 0; k < nb; k++) data[i][k] = (unsigned char)rnd();
        if (c->dtype == MOE_DTYPE_F16 || c->dtype == MOE_DTYPE_BF16) {
            /* keep NaNs out so values compare with == */
            for (size_t k = 0; k + 1 < nb; k += 2) data[i][k + 1] &= 0x3f;
        }
        if (c->dtype == MOE_DTYPE_F32)
            for (size_t k = 0; k + 3 < nb; k += 4) {
                float v = (float)((double)(int64_t)rnd() / 9.2e18);
                memcpy(data[i] + k, &v, 4);
            }
        ASSERT_OK(moei_st_writer_add(w, c->name, c->dtype, c->ndim, c->ndim ? c->shape : NULL, nb ? data[i] : NULL, nb));
    }
    ASSERT_OK(moei_st_writer_set_metadata(w, "format", "pt"));
    ASSERT_OK(moei_st_writer_set_metadata(w, "note", "first"));
    ASSERT_OK(moei_st_writer_set_metadata(w, "note", "tab\there \"q\" \xe2\x82\xac"));
    ASSERT_OK(moei_st_writer_set_metadata(w, "", "empty key"));
    return w;
}

static void check_roundtrip_file(moei_st_file *f, unsigned char **data)
{
    assert_int_equal(moei_st_count(f), RT_N);
    uint64_t prev_end = 0;
    for (int64_t i = 0; i < moei_st_count(f); i++) {
        const moei_st_tensor *t = moei_st_at(f, i);
        assert_non_null(t);
        assert_true(t->offset == prev_end); /* data order */
        assert_true(t->offset % t->elem_size == 0);
        prev_end = t->offset + t->nbytes;
    }
    assert_true(prev_end == moei_st_data_size(f));
    assert_null(moei_st_at(f, -1));
    assert_null(moei_st_at(f, (int64_t)RT_N));
    for (size_t i = 0; i < RT_N; i++) {
        const rt_case *c = &rt_cases[i];
        const moei_st_tensor *t = moei_st_find(f, c->name);
        if (!t) fail_msg("tensor %s not found", c->name);
        assert_string_equal(t->name, c->name);
        assert_int_equal(t->dtype, c->dtype);
        assert_string_equal(t->dtype_name, moei_st_dtype_name(c->dtype));
        assert_int_equal(t->ndim, c->ndim);
        for (int d = 0; d < c->ndim; d++) assert_true(t->shape[d] == c->shape[d]);
        if (c->ndim == 0) assert_null(t->shape);
        assert_true(t->numel == case_numel(c));
        assert_int_equal(t->elem_size, dtype_size(c->dtype));
        assert_true(t->nbytes == (uint64_t)t->numel * t->elem_size);
        if (t->nbytes) assert_memory_equal(t->data, data[i], t->nbytes);
        else assert_null(t->data);
        if (c->dtype == MOE_DTYPE_F32 || c->dtype == MOE_DTYPE_BF16 || c->dtype == MOE_DTYPE_F16) {
            int64_t n = t->numel;
            float *v = malloc((size_t)(n ? n : 1) * sizeof *v);
            assert_non_null(v);
            ASSERT_OK(moei_st_read_f32(g_ctx, t, 0, n, v));
            for (int64_t k = 0; k < n; k++) {
                float e;
                if (c->dtype == MOE_DTYPE_F32) memcpy(&e, data[i] + 4 * k, 4);
                else {
                    uint16_t h = (uint16_t)(data[i][2 * k] | (data[i][2 * k + 1] << 8));
                    e = c->dtype == MOE_DTYPE_BF16 ? ref_bf16(h) : ref_f16(h);
                }
                assert_true(v[k] == e);
            }
            /* A sub-range lands at out[0]. */
            if (n >= 3) {
                float sub[2];
                ASSERT_OK(moei_st_read_f32(g_ctx, t, n - 2, 2, sub));
                assert_true(sub[0] == v[n - 2] && sub[1] == v[n - 1]);
            }
            free(v);
        } else {
            float v;
            assert_int_equal(moei_st_read_f32(g_ctx, t, 0, t->numel ? 1 : 0, &v), MOE_ERR_UNSUPPORTED);
            assert_non_null(strstr(moe_last_error(), c->name));
        }
    }
    assert_int_equal(moei_st_metadata_count(f), 3);
    const char *k, *v;
    assert_int_equal(moei_st_metadata_at(f, 0, &k, &v), 0);
    assert_string_equal(k, "");
    assert_string_equal(v, "empty key");
    assert_int_equal(moei_st_metadata_at(f, 1, &k, &v), 0);
    assert_string_equal(k, "format");
    assert_int_equal(moei_st_metadata_at(f, 3, &k, &v), -1);
    assert_string_equal(moei_st_metadata_find(f, "format"), "pt");
    assert_string_equal(moei_st_metadata_find(f, "note"), "tab\there \"q\" \xe2\x82\xac");
    assert_null(moei_st_metadata_find(f, "absent"));
    assert_null(moei_st_find(f, "absent"));
    const moei_st_tensor *t = NULL;
    assert_int_equal(moei_st_get(g_ctx, f, "absent.weight", &t), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "no tensor named 'absent.weight'"));
    assert_null(t);
    ASSERT_OK(moei_st_get(g_ctx, f, "vec.f32", &t));
    assert_string_equal(t->name, "vec.f32");
}

static void test_roundtrip_file_and_memory(void **state)
{
    (void)state;
    unsigned char *data[RT_N];
    moei_st_writer *w = make_writer(data);
    char path[512];
    path_in_dir(path, sizeof path, "rt.safetensors");
    ASSERT_OK(moei_st_writer_write(w, path));

    moei_st_file *f = NULL;
    ASSERT_OK(moei_st_open(g_ctx, path, &f));
    assert_string_equal(moei_st_origin(f), path);
    check_roundtrip_file(f, data);
    moei_st_close(f);

    void *buf = NULL;
    uint64_t size = 0;
    ASSERT_OK(moei_st_writer_serialize(w, &buf, &size));
    /* Same bytes as the file. */
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    unsigned char *fb = malloc((size_t)size + 1);
    assert_non_null(fb);
    assert_int_equal(fread(fb, 1, (size_t)size + 1, fp), size);
    fclose(fp);
    assert_memory_equal(fb, buf, (size_t)size);
    free(fb);
    /* Header length field and 8-byte alignment of the data start. */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | ((unsigned char *)buf)[i];
    assert_true((8 + hlen) % 8 == 0);
    ASSERT_OK(moei_st_open_memory(g_ctx, buf, size, &f));
    assert_string_equal(moei_st_origin(f), "(memory)");
    check_roundtrip_file(f, data);
    moei_st_close(f);
    free(buf);
    moei_st_writer_destroy(w);
    for (size_t i = 0; i < RT_N; i++) free(data[i]);
    unlink(path);
}

/* The exact bytes, against a header written out by hand from the format description. */
static void test_writer_exact_bytes(void **state)
{
    (void)state;
    moei_st_writer *w = NULL;
    ASSERT_OK(moei_st_writer_create(g_ctx, &w));
    const float b[2] = {1.0f, -2.0f};
    const uint16_t a[3] = {0x3f80, 0x4000, 0xc040};
    const int64_t c = -5;
    const int64_t sb[1] = {2}, sa[1] = {3};
    ASSERT_OK(moei_st_writer_add(w, "b", MOE_DTYPE_F32, 1, sb, b, sizeof b));
    ASSERT_OK(moei_st_writer_add(w, "a", MOE_DTYPE_BF16, 1, sa, a, sizeof a));
    ASSERT_OK(moei_st_writer_add(w, "c", MOE_DTYPE_I64, 0, NULL, &c, sizeof c));
    ASSERT_OK(moei_st_writer_set_metadata(w, "format", "pt"));
    void *buf = NULL;
    uint64_t size = 0;
    ASSERT_OK(moei_st_writer_serialize(w, &buf, &size));
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
                       "\"a\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]}}";
    size_t jl = strlen(json), padded = jl + (8 - (8 + jl) % 8) % 8;
    assert_true(size == 8 + padded + 22);
    const unsigned char *p = buf;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    assert_true(hlen == padded);
    assert_memory_equal(p + 8, json, jl);
    for (size_t i = jl; i < padded; i++) assert_int_equal(p[8 + i], ' ');
    assert_memory_equal(p + 8 + padded, &c, 8);
    assert_memory_equal(p + 8 + padded + 8, b, 8);
    assert_memory_equal(p + 8 + padded + 16, a, 6);
    free(buf);
    moei_st_writer_destroy(w);

    /* Nothing at all: "{}" padded to 8 bytes. */
    ASSERT_OK(moei_st_writer_create(g_ctx, &w));
    ASSERT_OK(moei_st_writer_serialize(w, &buf, &size));
    assert_true(size == 16);
    assert_memory_equal(buf, "\x08\0\0\0\0\0\0\0{}      ", 16);
    moei_st_file *f = NULL;
    ASSERT_OK(moei_st_open_memory(g_ctx, buf, size, &f));
    assert_int_equal(moei_st_count(f), 0);
    assert_int_equal(moei_st_metadata_count(f), 0);
    moei_st_close(f);
    free(buf);
    moei_st_writer_destroy(w);
}

/* Files written by other tools: any key order, whitespace, unknown fields, dtypes without a
 * moe_dtype, a 0-d tensor, empty tensors sharing an offset. */
static void test_read_hand_built(void **state)
{
    (void)state;
    const char *json = " {\n \"z\" : {\"data_offsets\":[8, 16], \"shape\": [ 1 ], \"dtype\":\"F64\", \"extra\": {\"x\":[1]}},"
                       "\"__metadata__\": {\"k\": \"v\"},"
                       "\"e1\": {\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[8,8]},"
                       "\"e0\": {\"dtype\":\"BF16\",\"shape\":[4, 0],\"data_offsets\":[8,8]},"
                       "\"huge0\": {\"dtype\":\"F32\",\"shape\":[9007199254740992, 9007199254740992, 0],\"data_offsets\":[16,16]},"
                       "\"s\": {\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]},"
                       "\"b\": {\"dtype\":\"BOOL\",\"shape\":[4],\"data_offsets\":[4,8]}}\t\r\n  ";
    /* header[0] must be '{': skip the leading space by building the buffer by hand. */
    size_t size;
    unsigned char *buf = raw_file(json + 1, strlen(json + 1), 16, &size);
    moei_st_file *f = NULL;
    ASSERT_OK(moei_st_open_memory(g_ctx, buf, size, &f));
    assert_int_equal(moei_st_count(f), 6);
    const char *order[] = {"s", "b", "e0", "e1", "z", "huge0"};
    for (int i = 0; i < 6; i++) assert_string_equal(moei_st_at(f, i)->name, order[i]);
    const moei_st_tensor *z = moei_st_find(f, "z");
    assert_int_equal(z->dtype, MOEI_ST_DTYPE_OTHER);
    assert_string_equal(z->dtype_name, "F64");
    assert_true(z->data == buf + 8 + strlen(json + 1) + 8);
    const moei_st_tensor *s = moei_st_find(f, "s");
    assert_int_equal(s->ndim, 0);
    assert_true(s->numel == 1);
    assert_true(moei_st_find(f, "huge0")->numel == 0);
    float v;
    assert_int_equal(moei_st_read_f32(g_ctx, z, 0, 1, &v), MOE_ERR_UNSUPPORTED);
    assert_non_null(strstr(moe_last_error(), "F64"));
    /* Bad ranges name the tensor. */
    const moei_st_tensor *e1 = moei_st_find(f, "e1");
    ASSERT_OK(moei_st_read_f32(g_ctx, e1, 0, 0, NULL));
    assert_int_equal(moei_st_read_f32(g_ctx, e1, 0, 1, &v), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'e1'"));
    assert_int_equal(moei_st_read_f32(g_ctx, e1, -1, 0, &v), MOE_ERR_INVALID_ARG);
    assert_int_equal(moei_st_read_f32(g_ctx, NULL, 0, 0, &v), MOE_ERR_INVALID_ARG);
    assert_string_equal(moei_st_metadata_find(f, "k"), "v");
    moei_st_close(f);
    free(buf);
}

/* Each malformed header is refused with MOE_ERR_FORMAT and a message naming the problem. */
static void test_malformed_headers(void **state)
{
    (void)state;
    /* JSON text */
    expect_format("{\"a\":", 0, "not valid JSON");
    expect_format("{\"a\":{}} x", 0, "bytes after its JSON object");
    expect_format("[1, 2]", 0, "does not start with '{'");
    expect_format(" {}", 0, "does not start with '{'");
    expect_format("{", 0, "does not start with '{'"); /* too short to be an object */
    expect_format("{\"a\xff\":1}", 0, "invalid byte 0xff");
    expect_format("{\"\xc0\xaf\":1}", 0, "invalid byte 0xc0"); /* overlong */
    expect_format("{\"a\x01\":1}", 0, "invalid byte 0x01");    /* raw control byte */
    expect_format("{\"a\":\"\\ud800\"}", 0, "not valid JSON");  /* lone surrogate escape */
    /* entries */
    expect_format("{\"w\":5}", 0, "tensor 'w': entry is not a JSON object");
    expect_format("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': field 'dtype' is missing");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'w': field 'shape' is missing");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'w': field 'data_offsets' is missing");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'w': field 'dtype' appears twice");
    expect_format("{\"w\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': field 'dtype' is not a string");
    expect_format("{\"w\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': unknown dtype 'F128'");
    expect_format("{\"w\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unknown dtype 'f32'");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, "tensor 'w': field 'shape' is not an array");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "tensor 'w': shape[0] is negative");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1, 1.5],\"data_offsets\":[0,4]}}", 4, "tensor 'w': shape[1] is not an integer");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, "shape[0] is not a number");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1e30],\"data_offsets\":[0,4]}}", 4, "shape[0] is too large");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[18446744073709551617],\"data_offsets\":[0,4]}}", 4, "is too large");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
                  "tensor 'w': shape element count overflows");
    expect_format("{\"w\":{\"dtype\":\"F64\",\"shape\":[2147483648,2147483648],\"data_offsets\":[0,4]}}", 4,
                  "needs more than"); /* numel fits in 64 bits, bytes do not */
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{\"a\":0}}}", 4, "field 'data_offsets' is not an array");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 4, "must have 2 entries, has 3");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "must have 2 entries, has 1");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, "data_offsets[0] is negative");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,null]}}", 4, "data_offsets[1] is not a number");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "tensor 'w': data_offsets [4, 0] end before");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 3, "reach past the 3-byte data region");
    expect_format("{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8,
                  "tensor 'w': data_offsets [0, 8] hold 8 bytes but dtype F32 with 3 elements needs 12");
    expect_format("{\"w\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,0]}}", 0, "hold 0 bytes but dtype BF16 with 1 elements needs 2");
    /* layout */
    expect_format("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                  12, "tensor 'b': data_offsets [4, 12] overlap tensor 'a'");
    expect_format("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
                  12, "tensor 'b': gap of 4 unused bytes");
    expect_format("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, "tensor 'a': gap of 4 unused bytes");
    expect_format("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 6,
                  "tensors cover 4 bytes but the data region has 6");
    expect_format("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                  8, "tensor name 'a' appears twice");
    expect_format("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                  "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                  4, "tensor name 'a' appears twice");
    expect_format("{}", 3, "no tensors, but 3 bytes follow the header");
    /* metadata */
    expect_format("{\"__metadata__\":{\"k\":1}}", 0, "'__metadata__' value of key 'k' is not a string");
    expect_format("{\"__metadata__\":{\"k\":null}}", 0, "value of key 'k' is not a string");
    expect_format("{\"__metadata__\":[\"k\"]}", 0, "'__metadata__' is not a JSON object");
    expect_format("{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0, "'__metadata__' key 'k' appears twice");
    expect_format("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "'__metadata__' appears twice");
}

static void test_bad_lengths(void **state)
{
    (void)state;
    moei_st_file *f = NULL;
    size_t size;
    /* Shorter than the length field, at every size (exact-size buffers, so reads past them trap). */
    for (size_t n = 0; n < 8; n++) {
        unsigned char *b = malloc(n ? n : 1);
        memset(b, 0, n ? n : 1);
        assert_int_equal(moei_st_open_memory(g_ctx, n ? b : NULL, n, &f), MOE_ERR_FORMAT);
        assert_non_null(strstr(moe_last_error(), "shorter than the 8-byte header length"));
        free(b);
    }
    unsigned char *b = raw_file("{}", 100000001ull, 0, &size);
    assert_int_equal(moei_st_open_memory(g_ctx, b, size, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "header length 100000001 exceeds the 100000000-byte limit"));
    free(b);
    b = raw_file("{}", UINT64_MAX, 0, &size);
    assert_int_equal(moei_st_open_memory(g_ctx, b, size, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "exceeds the 100000000-byte limit"));
    free(b);
    b = raw_file("{}", 3, 0, &size);
    assert_int_equal(moei_st_open_memory(g_ctx, b, size, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "header length 3 exceeds the 2 bytes that follow"));
    free(b);
    b = raw_file("{}", 0, 0, &size);
    assert_int_equal(moei_st_open_memory(g_ctx, b, size, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "not a JSON object"));
    free(b);
    /* A length shorter than the JSON cuts it. */
    b = raw_file("{\"__metadata__\":{}}", 5, 0, &size);
    assert_int_equal(moei_st_open_memory(g_ctx, b, size, &f), MOE_ERR_FORMAT);
    free(b);
    /* NUL inside the header. */
    b = raw_file("{}xxxx", 6, 0, &size);
    b[8 + 2] = 0;
    assert_int_equal(moei_st_open_memory(g_ctx, b, size, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "invalid byte 0x00"));
    free(b);
    /* Argument checks. */
    assert_int_equal(moei_st_open_memory(g_ctx, NULL, 16, &f), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'buf'"));
    assert_int_equal(moei_st_open_memory(g_ctx, "", 0, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'out'"));
    assert_int_equal(moei_st_open(g_ctx, NULL, &f), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'path'"));
}

/* A valid file cut at every length: always MOE_ERR_FORMAT, never a read past the bytes given. */
static void test_truncated_everywhere(void **state)
{
    (void)state;
    unsigned char *data[RT_N];
    moei_st_writer *w = make_writer(data);
    void *full = NULL;
    uint64_t size = 0;
    ASSERT_OK(moei_st_writer_serialize(w, &full, &size));
    for (uint64_t n = 0; n < size; n++) {
        unsigned char *b = malloc((size_t)(n ? n : 1));
        assert_non_null(b);
        memcpy(b, full, (size_t)n);
        moei_st_file *f = NULL;
        moe_status st = moei_st_open_memory(g_ctx, b, n, &f);
        if (st != MOE_ERR_FORMAT) fail_msg("truncated to %llu bytes: status %d", (unsigned long long)n, (int)st);
        assert_true(strlen(moe_last_error()) > 0);
        free(b);
    }
    /* Every byte of the header flipped to a few values: a clean status, never a crash. */
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | ((unsigned char *)full)[i];
    unsigned char *b = malloc((size_t)size);
    assert_non_null(b);
    const unsigned char vals[] = {0x00, '"', '{', '}', '[', ']', ',', ':', '9', '-', 'x', 0x80, 0xff};
    for (uint64_t i = 0; i < 8 + hlen; i++)
        for (size_t k = 0; k < sizeof vals; k++) {
            memcpy(b, full, (size_t)size);
            b[i] = vals[k];
            moei_st_file *f = NULL;
            moe_status st = moei_st_open_memory(g_ctx, b, size, &f);
            assert_true(st == MOE_OK || st == MOE_ERR_FORMAT);
            if (st == MOE_OK) moei_st_close(f);
        }
    free(b);
    /* The same file on disk, truncated: moei_st_open gives MOE_ERR_FORMAT too. */
    char path[512];
    path_in_dir(path, sizeof path, "trunc.safetensors");
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(full, 1, (size_t)size - 1, fp), size - 1);
    fclose(fp);
    moei_st_file *f = NULL;
    assert_int_equal(moei_st_open(g_ctx, path, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), path));
    /* An empty file. */
    fp = fopen(path, "wb");
    fclose(fp);
    assert_int_equal(moei_st_open(g_ctx, path, &f), MOE_ERR_FORMAT);
    assert_non_null(strstr(moe_last_error(), "0 bytes is shorter"));
    unlink(path);
    free(full);
    moei_st_writer_destroy(w);
    for (size_t i = 0; i < RT_N; i++) free(data[i]);
}

static void test_io_errors(void **state)
{
    (void)state;
    moei_st_file *f = NULL;
    char path[512];
    path_in_dir(path, sizeof path, "does-not-exist.safetensors");
    assert_int_equal(moei_st_open(g_ctx, path, &f), MOE_ERR_IO);
    assert_non_null(strstr(moe_last_error(), strerror(ENOENT)));
    assert_non_null(strstr(moe_last_error(), "does-not-exist.safetensors"));
    assert_null(f);
    assert_int_equal(moei_st_open(g_ctx, g_dir, &f), MOE_ERR_IO);
    assert_non_null(strstr(moe_last_error(), "not a regular file"));
    /* Writing into a directory that does not exist. */
    moei_st_writer *w = NULL;
    ASSERT_OK(moei_st_writer_create(g_ctx, &w));
    path_in_dir(path, sizeof path, "no-such-dir/x.safetensors");
    assert_int_equal(moei_st_writer_write(w, path), MOE_ERR_IO);
    assert_non_null(strstr(moe_last_error(), "open of"));
    assert_non_null(strstr(moe_last_error(), strerror(ENOENT)));
    moei_st_writer_destroy(w);
}

static void test_writer_bad_args(void **state)
{
    (void)state;
    moei_st_writer *w = NULL;
    assert_int_equal(moei_st_writer_create(g_ctx, NULL), MOE_ERR_INVALID_ARG);
    ASSERT_OK(moei_st_writer_create(g_ctx, &w));
    const float x[6] = {0};
    const int64_t s23[2] = {2, 3}, sneg[1] = {-1}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct {
        const char *name;
        int32_t dtype, ndim;
        const int64_t *shape;
        const void *data;
        uint64_t nbytes;
        const char *needle;
    } bad[] = {
        {NULL, MOE_DTYPE_F32, 2, s23, x, 24, "'name'"},
        {"", MOE_DTYPE_F32, 2, s23, x, 24, "'name' is empty"},
        {"__metadata__", MOE_DTYPE_F32, 2, s23, x, 24, "may not be '__metadata__'"},
        {"bad\xff", MOE_DTYPE_F32, 2, s23, x, 24, "not valid UTF-8"},
        {"w", 6, 2, s23, x, 24, "tensor 'w': dtype 6 is not a moe_dtype"},
        {"w", -1, 2, s23, x, 24, "dtype -1 is not a moe_dtype"},
        {"w", MOE_DTYPE_F32, 9, s9, x, 4, "ndim 9 is outside 0..8"},
        {"w", MOE_DTYPE_F32, -1, s23, x, 4, "ndim -1"},
        {"w", MOE_DTYPE_F32, 2, NULL, x, 24, "'shape' is NULL"},
        {"w", MOE_DTYPE_F32, 1, sneg, x, 0, "shape[0] = -1 is negative"},
        {"w", MOE_DTYPE_F32, 2, s23, x, 20, "nbytes 20 does not match F32 of 6 elements"},
        {"w", MOE_DTYPE_BF16, 2, s23, x, 24, "nbytes 24 does not match BF16 of 6 elements"},
        {"w", MOE_DTYPE_F32, 2, s23, NULL, 24, "'data' is NULL"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        moe_status st = moei_st_writer_add(w, bad[i].name, bad[i].dtype, bad[i].ndim, bad[i].shape, bad[i].data, bad[i].nbytes);
        if (st != MOE_ERR_INVALID_ARG) fail_msg("case %zu: status %d", i, (int)st);
        if (!strstr(moe_last_error(), bad[i].needle)) fail_msg("case %zu: '%s' lacks '%s'", i, moe_last_error(), bad[i].needle);
    }
    assert_int_equal(moei_st_writer_add(NULL, "w", MOE_DTYPE_F32, 0, NULL, x, 4), MOE_ERR_INVALID_ARG);
    assert_int_equal(moei_st_writer_set_metadata(w, NULL, "v"), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'key'"));
    assert_int_equal(moei_st_writer_set_metadata(w, "k", NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'value'"));
    assert_int_equal(moei_st_writer_set_metadata(w, "k", "\xc3"), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "not valid UTF-8"));
    /* A name added twice (with different dtypes, so they are not neighbours in the layout). */
    ASSERT_OK(moei_st_writer_add(w, "dup", MOE_DTYPE_F32, 2, s23, x, 24));
    ASSERT_OK(moei_st_writer_add(w, "mid", MOE_DTYPE_BF16, 0, NULL, x, 2));
    ASSERT_OK(moei_st_writer_add(w, "dup", MOE_DTYPE_U8, 0, NULL, x, 1));
    void *buf = NULL;
    uint64_t size = 0;
    assert_int_equal(moei_st_writer_serialize(w, &buf, &size), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "tensor name 'dup' was added twice"));
    assert_null(buf);
    char path[512];
    path_in_dir(path, sizeof path, "dup.safetensors");
    assert_int_equal(moei_st_writer_write(w, path), MOE_ERR_INVALID_ARG);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(moei_st_writer_write(w, NULL), MOE_ERR_INVALID_ARG);
    assert_non_null(strstr(moe_last_error(), "'path'"));
    moei_st_writer_destroy(w);
    moei_st_writer_destroy(NULL);
    moei_st_close(NULL);
}

/* ---- fault injection ---------------------------------------------------------------------------- */

static moei_fs_op rec_ops[256];
static int rec_n;
static int record_hook(moei_fs_op op, const char *path, uint64_t n, void *user)
{
    (void)path;
    (void)user;
    if (n <= 256) rec_ops[n - 1] = op;
    rec_n = (int)n;
    return 0;
}

static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *size = (size_t)n;
    return b;
}

static void put_file(const char *path, const void *b, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b, 1, n, fp), n);
    fclose(fp);
}

static int dir_entries(void)
{
    DIR *d = opendir(g_dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void test_fault_injection(void **state)
{
    (void)state;
    char path[512];
    path_in_dir(path, sizeof path, "ckpt.safetensors");
    unsigned char *data[RT_N];
    moei_st_writer *w = make_writer(data);
    void *newb = NULL;
    uint64_t newn = 0;
    ASSERT_OK(moei_st_writer_serialize(w, &newb, &newn));
    /* The previous complete file: a different, valid safetensors file. */
    moei_st_writer *w0 = NULL;
    ASSERT_OK(moei_st_writer_create(g_ctx, &w0));
    const float old[3] = {1, 2, 3};
    const int64_t s3[1] = {3};
    ASSERT_OK(moei_st_writer_add(w0, "old", MOE_DTYPE_F32, 1, s3, old, sizeof old));
    void *oldb = NULL;
    uint64_t oldn = 0;
    ASSERT_OK(moei_st_writer_serialize(w0, &oldb, &oldn));
    moei_st_writer_destroy(w0);

    /* Record the calls of a clean write. */
    remove_dir_contents(g_dir);
    moei_fs_set_fault_hook(record_hook, NULL);
    ASSERT_OK(moei_st_writer_write(w, path));
    moei_fs_reset_faults();
    int ncalls = rec_n, rename_at = -1;
    assert_true(ncalls >= 6 && ncalls <= 256); /* open, writes, fsync, close, rename, dir fsync */
    for (int i = 0; i < ncalls; i++)
        if (rec_ops[i] == MOEI_FS_RENAME) rename_at = i + 1;
    assert_true(rename_at > 0);
    /* The durable-write protocol: open, writes, fsync, close, rename, directory fsync. */
    assert_int_equal(rec_ops[0], MOEI_FS_OPEN);
    for (int i = 1; i < ncalls - 4; i++) assert_int_equal(rec_ops[i], MOEI_FS_WRITE);
    assert_int_equal(rec_ops[ncalls - 4], MOEI_FS_FSYNC);
    assert_int_equal(rec_ops[ncalls - 3], MOEI_FS_CLOSE);
    assert_int_equal(rec_ops[ncalls - 2], MOEI_FS_RENAME);
    assert_int_equal(rec_ops[ncalls - 1], MOEI_FS_FSYNC_DIR);

    const int errs[] = {EIO, ENOSPC};
    for (int with_previous = 0; with_previous < 2; with_previous++)
        for (int ei = 0; ei < 2; ei++)
            for (int k = 1; k <= ncalls; k++) {
                remove_dir_contents(g_dir);
                if (with_previous) put_file(path, oldb, (size_t)oldn);
                moei_fs_fail_nth(k, errs[ei]);
                moe_status st = moei_st_writer_write(w, path);
                moei_fs_reset_faults();
                if (st != MOE_ERR_IO) fail_msg("fault at call %d: status %d", k, (int)st);
                if (!strstr(moe_last_error(), strerror(errs[ei])))
                    fail_msg("fault at call %d: message '%s' lacks strerror", k, moe_last_error());
                /* No temp file left behind, whatever failed. */
                assert_int_equal(dir_entries(), (with_previous || k > rename_at) ? 1 : 0);
                size_t n = 0;
                unsigned char *got = slurp(path, &n);
                if (k <= rename_at) {
                    /* Failed before or at the rename: the previous state. */
                    if (with_previous) {
                        assert_non_null(got);
                        assert_true(n == oldn);
                        assert_memory_equal(got, oldb, n);
                    } else
                        assert_null(got);
                } else {
                    /* Only the directory fsync comes after the rename: the new file is complete. */
                    assert_non_null(got);
                    assert_true(n == newn);
                    assert_memory_equal(got, newb, n);
                }
                free(got);
            }
    /* And with no fault the write still works afterwards. */
    ASSERT_OK(moei_st_writer_write(w, path));
    moei_st_file *f = NULL;
    ASSERT_OK(moei_st_open(g_ctx, path, &f));
    check_roundtrip_file(f, data);
    moei_st_close(f);
    assert_int_equal(dir_entries(), 1);
    unlink(path);
    free(newb);
    free(oldb);
    moei_st_writer_destroy(w);
    for (size_t i = 0; i < RT_N; i++) free(data[i]);
}

/* The fault hook itself: k-th call fails once, calls are counted, closes release the descriptor. */
static void test_fsio_hook(void **state)
{
    (void)state;
    char path[512];
    path_in_dir(path, sizeof path, "fsio.bin");
    moei_fs_fail_nth(2, ENOSPC);
    int fd = moei_fs_open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    errno = 0;
    assert_int_equal(moei_fs_write(fd, "abcdefgh", 8), -1);
    assert_int_equal(errno, ENOSPC);
    assert_int_equal(moei_fs_write(fd, "XY", 2), 0); /* only once */
    assert_true(moei_fs_call_count() == 3);
    assert_int_equal(moei_fs_close(fd), 0);
    size_t n = 0;
    unsigned char *got = slurp(path, &n);
    assert_non_null(got);
    assert_true(n == 6); /* the torn write left its first half */
    assert_memory_equal(got, "abcdXY", 6);
    free(got);
    moei_fs_fail_nth(1, EIO);
    fd = moei_fs_open(path, O_RDONLY, 0);
    assert_int_equal(fd, -1);
    assert_int_equal(errno, EIO);
    moei_fs_reset_faults();
    assert_true(moei_fs_call_count() == 0);
    assert_int_equal(moei_fs_fsync_parent(path), 0);
    assert_int_equal(moei_fs_fsync_parent("relative-name"), 0);
    assert_int_equal(moei_fs_unlink(path), 0);
}

/* The reference checkpoint produced by the reference script, when it has been generated. */
static void test_reference_mixtral(void **state)
{
    (void)state;
    const char *names[] = {"model.safetensors", "reference.safetensors"};
    int found = 0;
    for (int i = 0; i < 2; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/tests/reference/mixtral/%s", MOE_TEST_SOURCE_DIR, names[i]);
        if (access(path, R_OK) != 0) continue;
        found++;
        moei_st_file *f = NULL;
        ASSERT_OK(moei_st_open(g_ctx, path, &f));
        assert_true(moei_st_count(f) > 0);
        if (i == 0) assert_non_null(moei_st_find(f, "model.embed_tokens.weight")); /* HF Mixtral naming */
        for (int64_t j = 0; j < moei_st_count(f); j++) {
            const moei_st_tensor *t = moei_st_at(f, j);
            assert_true(moei_st_find(f, t->name) == t);
            if (t->dtype != MOE_DTYPE_F32 && t->dtype != MOE_DTYPE_BF16 && t->dtype != MOE_DTYPE_F16) continue;
            float *v = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *v);
            assert_non_null(v);
            ASSERT_OK(moei_st_read_f32(g_ctx, t, 0, t->numel, v));
            for (int64_t k = 0; k < t->numel; k++)
                if (!isfinite(v[k])) fail_msg("%s: %s[%lld] is not finite", names[i], t->name, (long long)k);
            free(v);
        }
        moei_st_close(f);
    }
    if (!found) skip();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_file_and_memory),
        cmocka_unit_test(test_writer_exact_bytes),
        cmocka_unit_test(test_read_hand_built),
        cmocka_unit_test(test_malformed_headers),
        cmocka_unit_test(test_bad_lengths),
        cmocka_unit_test(test_truncated_everywhere),
        cmocka_unit_test(test_io_errors),
        cmocka_unit_test(test_writer_bad_args),
        cmocka_unit_test(test_fault_injection),
        cmocka_unit_test(test_fsio_hook),
        cmocka_unit_test(test_reference_mixtral),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
