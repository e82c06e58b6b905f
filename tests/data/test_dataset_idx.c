/* Megatron indexed datasets, white-box: .idx/.bin pairs written byte by byte in this file for every
 * integer dtype (the oracle for both reader and writer), every kind of malformed index (truncation at
 * every byte, bad magic, version, dtype, counts, sizes, pointers, document indices, .bin size) rejected
 * with MOE_ERR_FORMAT and a message naming the field, random corruption that must never crash,
 * fault injection on every file-system call of the writer, and the sample permutation as a bijection. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
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

#include "io/dataset.h"
#include "io/fsio.h"
#include "moe/ctx.h"
#include "moe/data.h"

static moe_ctx *g_ctx;
static char g_dir[256];

#define ASSERT_OK(expr)                                                                                               \
    do {                                                                                                              \
        moe_status st_ = (expr);                                                                                      \
        if (st_ != MOE_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, moe_last_error());                              \
    } while (0)

#define ASSERT_FAILS(expr, code, needle)                                                                              \
    do {                                                                                                              \
        moe_status st_ = (expr);                                                                                      \
        if (st_ != (code)) fail_msg("%s -> %d, expected %d (%s)", #expr, (int)st_, (int)(code), moe_last_error());  \
        if (!strstr(moe_last_error(), (needle)))                                                                     \
            fail_msg("%s: message '%s' lacks '%s'", #expr, moe_last_error(), (needle));                               \
    } while (0)

static int setup(void **state)
{
    (void)state;
    if (moe_ctx_create(NULL, &g_ctx) != MOE_OK) return -1;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_dir, sizeof g_dir, "%s/moe_idx_XXXXXX", tmp && *tmp ? tmp : "/tmp");
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

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Whole file into a malloc'ed buffer; NULL when absent. */
static unsigned char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)len + 1);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* ---- the hand-written format -------------------------------------------------------------------- */

typedef struct buf {
    unsigned char *p;
    size_t n;
} buf;

static void put(buf *b, const void *src, size_t n)
{
    b->p = realloc(b->p, b->n + n + 1);
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

/* Little-endian integer of `width` bytes, written byte by byte (independent of the host). */
static void put_le(buf *b, uint64_t v, int width)
{
    unsigned char c[8];
    for (int i = 0; i < width; i++) c[i] = (unsigned char)(v >> (8 * i));
    put(b, c, (size_t)width);
}

static void set_le(buf *b, size_t off, uint64_t v, int width)
{
    for (int i = 0; i < width; i++) b->p[off + i] = (unsigned char)(v >> (8 * i));
}

static int itemsize_of(int code)
{
    static const int sz[] = {0, 1, 1, 2, 4, 8, 8, 4, 2};
    return code >= 1 && code <= 8 ? sz[code] : 0;
}

/* An .idx as Megatron's builder writes it: header, sizes, pointers (running byte offsets), doc_idx. */
static buf make_idx(int code, int nseq, const int32_t *sizes, int ndoc, const int64_t *docs)
{
    buf b = {NULL, 0};
    put(&b, "MMIDIDX\0\0", 9);
    put_le(&b, 1, 8);
    put_le(&b, (uint64_t)code, 1);
    put_le(&b, (uint64_t)nseq, 8);
    put_le(&b, (uint64_t)ndoc, 8);
    for (int i = 0; i < nseq; i++) put_le(&b, (uint64_t)(uint32_t)sizes[i], 4);
    uint64_t ptr = 0;
    for (int i = 0; i < nseq; i++) {
        put_le(&b, ptr, 8);
        ptr += (uint64_t)sizes[i] * (uint64_t)itemsize_of(code);
    }
    for (int d = 0; d < ndoc; d++) put_le(&b, (uint64_t)docs[d], 8);
    return b;
}

static buf make_bin(int code, int n, const int64_t *tokens)
{
    buf b = {NULL, 0};
    for (int i = 0; i < n; i++) put_le(&b, (uint64_t)tokens[i], itemsize_of(code));
    return b;
}

/* Offsets of the fields of an index with nseq sequences. */
#define OFF_VERSION 9
#define OFF_DTYPE 17
#define OFF_NSEQ 18
#define OFF_NDOC 26
#define OFF_SIZE(i) (34 + 4 * (size_t)(i))
#define OFF_PTR(nseq, i) (34 + 4 * (size_t)(nseq) + 8 * (size_t)(i))
#define OFF_DOC(nseq, d) (34 + 12 * (size_t)(nseq) + 8 * (size_t)(d))

/* The base dataset: 3 sequences of 3, 0 and 4 tokens; document 0 = sequence 0, document 1 = 1 and 2. */
static const int32_t base_sizes[] = {3, 0, 4};
static const int64_t base_docs[] = {0, 1, 3};

/* Copies behind the memory dataset now open (one at a time); freed by close_mem(). */
static void *g_mem_idx, *g_mem_bin;

static moe_status open_mem(const buf *idx, const buf *bin, int32_t seq_len, uint32_t verify, moe_dataset **out)
{
    moe_dataset_config cfg;
    moe_dataset_config_init(&cfg, sizeof cfg);
    cfg.kind = MOE_DATASET_KIND_INDEXED;
    cfg.seq_len = seq_len;
    cfg.validation_fraction = 0.0;
    cfg.verify_tokens = verify;
    /* Exact-size copies, so the sanitizer sees any read past the end. */
    void *i = malloc(idx->n ? idx->n : 1), *b = malloc(bin->n ? bin->n : 1);
    if (idx->n) memcpy(i, idx->p, idx->n);
    if (bin->n) memcpy(b, bin->p, bin->n);
    moe_status st = moei_dataset_open_memory(g_ctx, &cfg, i, idx->n, b, bin->n, out);
    if (st != MOE_OK) {
        free(i);
        free(b);
    } else {
        assert_null(g_mem_idx);
        g_mem_idx = i;
        g_mem_bin = b;
    }
    return st;
}

static void close_mem(moe_dataset *ds)
{
    moe_dataset_destroy(ds);
    free(g_mem_idx);
    free(g_mem_bin);
    g_mem_idx = g_mem_bin = NULL;
}

/* The stream read back through batches of seq_len 1. */
static void check_stream(moe_dataset *ds, const int64_t *expect, int64_t T)
{
    int64_t n = -1, nt = -1;
    ASSERT_OK(moe_dataset_num_tokens(ds, &nt));
    assert_int_equal(nt, T);
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &n));
    assert_int_equal(n, T - 1);
    for (int64_t i = 0; i < n; i++) {
        int64_t pos;
        int32_t tok, tgt;
        ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, i, &pos));
        ASSERT_OK(moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, i, 1, &tok, &tgt));
        assert_int_equal(tok, expect[pos]);
        assert_int_equal(tgt, expect[pos + 1]);
    }
}

/* ---- every dtype, hand-built ---------------------------------------------------------------------- */

static void test_hand_built_every_dtype(void **state)
{
    (void)state;
    static const struct {
        int code;
        int64_t tokens[7];
        int64_t max;
    } cases[] = {
        {MOE_DATASET_DTYPE_U8, {0, 255, 7, 1, 2, 3, 200}, 255},
        {MOE_DATASET_DTYPE_I8, {0, 127, 7, 1, 2, 3, 100}, 127},
        {MOE_DATASET_DTYPE_I16, {0, 32767, 7, 1, 2, 300, 100}, 32767},
        {MOE_DATASET_DTYPE_U16, {0, 65535, 7, 1, 50000, 3, 100}, 65535},
        {MOE_DATASET_DTYPE_I32, {0, 2147483646, 7, 1, 2, 3, 100000}, 2147483646},
        {MOE_DATASET_DTYPE_I64, {0, 2147483646, 7, 1, 2, 3, 100000}, 2147483646},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int code = cases[c].code;
        buf idx = make_idx(code, 3, base_sizes, 3, base_docs);
        buf bin = make_bin(code, 7, cases[c].tokens);
        char prefix[512], p[600];
        snprintf(prefix, sizeof prefix, "%s/hand%d", g_dir, code);
        snprintf(p, sizeof p, "%s.idx", prefix);
        write_file(p, idx.p, idx.n);
        snprintf(p, sizeof p, "%s.bin", prefix);
        write_file(p, bin.p, bin.n);

        moe_dataset_config cfg;
        ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
        cfg.path = prefix;
        cfg.seq_len = 1;
        cfg.validation_fraction = 0.0;
        moe_dataset *ds = NULL;
        ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
        int32_t kind, dtype, vocab;
        int64_t nd;
        ASSERT_OK(moe_dataset_format(ds, &kind, &dtype));
        ASSERT_OK(moe_dataset_vocab_size(ds, &vocab));
        ASSERT_OK(moe_dataset_num_documents(ds, &nd));
        assert_int_equal(kind, MOE_DATASET_KIND_INDEXED);
        assert_int_equal(dtype, code);
        assert_int_equal(vocab, cases[c].max + 1);
        assert_int_equal(nd, 2);
        check_stream(ds, cases[c].tokens, 7);
        moe_dataset_destroy(ds);

        /* The same bytes from memory, and the parser's own view. */
        ASSERT_OK(open_mem(&idx, &bin, 1, 1, &ds));
        check_stream(ds, cases[c].tokens, 7);
        close_mem(ds);
        moei_idx_info info;
        ASSERT_OK(moei_idx_parse(g_ctx, "t", "hand", idx.p, idx.n, bin.n, &info));
        assert_int_equal(info.dtype, code);
        assert_int_equal(info.itemsize, itemsize_of(code));
        assert_int_equal(info.num_sequences, 3);
        assert_int_equal(info.num_documents, 2);
        assert_int_equal(info.num_tokens, 7);
        assert_int_equal(info.has_modes, 0);

        /* A multimodal index (one int8 mode per sequence after doc_idx) reads the same. */
        put(&idx, "\1\0\1", 3);
        ASSERT_OK(moei_idx_parse(g_ctx, "t", "hand", idx.p, idx.n, bin.n, &info));
        assert_int_equal(info.has_modes, 1);
        ASSERT_OK(open_mem(&idx, &bin, 1, 1, &ds));
        check_stream(ds, cases[c].tokens, 7);
        close_mem(ds);
        free(idx.p);
        free(bin.p);
    }
}

/* Tokens outside [0, 2^31 - 1): refused at open when verified, by the batch otherwise. */
static void test_token_range(void **state)
{
    (void)state;
    static const struct {
        int code;
        int64_t bad;
        const char *needle;
    } cases[] = {
        {MOE_DATASET_DTYPE_I8, -1, "token 5 = -1"},
        {MOE_DATASET_DTYPE_I16, -300, "token 5 = -300"},
        {MOE_DATASET_DTYPE_I32, 2147483647, "token 5 = 2147483647"},
        {MOE_DATASET_DTYPE_I32, -2147483647 - 1, "token 5 = -2147483648"},
        {MOE_DATASET_DTYPE_I64, (int64_t)1 << 40, "token 5 = 1099511627776"},
        {MOE_DATASET_DTYPE_I64, -5, "token 5 = -5"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int64_t toks[7] = {1, 2, 3, 4, 5, cases[c].bad, 6};
        buf idx = make_idx(cases[c].code, 3, base_sizes, 3, base_docs);
        buf bin = make_bin(cases[c].code, 7, toks);
        moe_dataset *ds = NULL;
        ASSERT_FAILS(open_mem(&idx, &bin, 1, 1, &ds), MOE_ERR_FORMAT, cases[c].needle);
        ASSERT_OK(open_mem(&idx, &bin, 2, 0, &ds));
        int32_t tok[2], tgt[2];
        int failed = 0;
        for (int64_t i = 0; i < 3; i++) {
            int64_t pos;
            ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, i, &pos));
            tok[0] = tok[1] = tgt[0] = tgt[1] = -9;
            moe_status st = moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, i, 1, tok, tgt);
            if (pos <= 5 && 5 <= pos + 2) {
                failed++;
                assert_int_equal(st, MOE_ERR_FORMAT);
                assert_non_null(strstr(moe_last_error(), cases[c].needle));
                assert_true(tok[0] == -9 && tok[1] == -9 && tgt[0] == -9 && tgt[1] == -9);
            } else {
                assert_int_equal(st, MOE_OK);
            }
        }
        assert_true(failed >= 1);
        close_mem(ds);
        free(idx.p);
        free(bin.p);
    }
}

/* ---- the writer's bytes ------------------------------------------------------------------------- */

static void test_writer_bytes(void **state)
{
    (void)state;
    static const int codes[] = {MOE_DATASET_DTYPE_U8, MOE_DATASET_DTYPE_I8, MOE_DATASET_DTYPE_I16,
                                MOE_DATASET_DTYPE_U16, MOE_DATASET_DTYPE_I32, MOE_DATASET_DTYPE_I64};
    for (size_t c = 0; c < sizeof codes / sizeof codes[0]; c++) {
        const int32_t tokens[] = {5, 6, 7, 1, 2, 3, 4};
        const int64_t tokens64[] = {5, 6, 7, 1, 2, 3, 4};
        const int64_t lens[] = {3, 0, 4};
        char prefix[512], p[600];
        snprintf(prefix, sizeof prefix, "%s/wb%d", g_dir, codes[c]);
        ASSERT_OK(moe_dataset_write_indexed(g_ctx, prefix, codes[c], tokens, 7, lens, 3));
        /* One sequence per non-empty document; the empty document repeats its index. */
        const int32_t sizes[] = {3, 4};
        const int64_t docs[] = {0, 1, 1, 2};
        buf want_idx = make_idx(codes[c], 2, sizes, 4, docs);
        buf want_bin = make_bin(codes[c], 7, tokens64);
        size_t n = 0;
        snprintf(p, sizeof p, "%s.idx", prefix);
        unsigned char *got = read_file(p, &n);
        assert_non_null(got);
        assert_int_equal(n, want_idx.n);
        assert_memory_equal(got, want_idx.p, n);
        free(got);
        snprintf(p, sizeof p, "%s.bin", prefix);
        got = read_file(p, &n);
        assert_non_null(got);
        assert_int_equal(n, want_bin.n);
        assert_memory_equal(got, want_bin.p, n);
        free(got);
        free(want_idx.p);
        free(want_bin.p);
    }
}

/* ---- malformed indexes -------------------------------------------------------------------------- */

typedef struct corruption {
    const char *what;
    size_t off;   /* field to overwrite (SIZE_MAX: none) */
    uint64_t val; /* new value */
    int width;
    const char *needle; /* expected in the message */
} corruption;

static void test_malformed(void **state)
{
    (void)state;
    const int code = MOE_DATASET_DTYPE_U16;
    const int64_t toks[] = {1, 2, 3, 4, 5, 6, 7};
    buf good = make_idx(code, 3, base_sizes, 3, base_docs);
    buf bin = make_bin(code, 7, toks); /* 14 bytes */
    moe_dataset *ds = NULL;
    ASSERT_OK(open_mem(&good, &bin, 1, 1, &ds));
    close_mem(ds);

    /* Truncation at every byte, from memory. */
    for (size_t len = 0; len < good.n; len++) {
        buf t = {good.p, len};
        ds = NULL;
        moe_status st = open_mem(&t, &bin, 1, 1, &ds);
        if (st != MOE_ERR_FORMAT) fail_msg("truncated to %zu bytes: status %d (%s)", len, (int)st, moe_last_error());
        assert_true(moe_last_error()[0] != '\0');
        assert_null(ds);
    }

    const corruption cs[] = {
        {"magic first byte", 0, 'm', 1, "bad magic"},
        {"magic last byte", 8, 1, 1, "bad magic"},
        {"version 0", OFF_VERSION, 0, 8, "version = 0"},
        {"version 2", OFF_VERSION, 2, 8, "version = 2"},
        {"version huge", OFF_VERSION, UINT64_MAX, 8, "version = 18446744073709551615"},
        {"dtype 0", OFF_DTYPE, 0, 1, "dtype code 0 is unknown"},
        {"dtype 9", OFF_DTYPE, 9, 1, "dtype code 9 is unknown"},
        {"dtype 255", OFF_DTYPE, 255, 1, "dtype code 255 is unknown"},
        {"dtype float64", OFF_DTYPE, 6, 1, "dtype code 6 (float64) is not an integer type"},
        {"dtype float32", OFF_DTYPE, 7, 1, "dtype code 7 (float32) is not an integer type"},
        {"sequence count 2^63", OFF_NSEQ, (uint64_t)1 << 63, 8, "sequence count = 9223372036854775808"},
        {"sequence count max", OFF_NSEQ, UINT64_MAX, 8, "sequence count"},
        {"sequence count 6", OFF_NSEQ, 6, 8, "sequence count = 6"},
        {"sequence count 4", OFF_NSEQ, 4, 8, "document count"},
        {"document count 2^61", OFF_NDOC, (uint64_t)1 << 61, 8, "document count = 2305843009213693952"},
        {"document count 4", OFF_NDOC, 4, 8, "document count = 4"},
        {"document count 2", OFF_NDOC, 2, 8, "8 bytes follow the document indices"},
        {"sizes[1] negative", OFF_SIZE(1), (uint32_t)-1, 4, "sizes[1] = -1 is negative"},
        {"sizes[0] too long", OFF_SIZE(0), 4, 4, "pointers[1] = 6, expected 8"},
        {"sizes[2] past the .bin", OFF_SIZE(2), 5, 4, "pointers[2] = 6 with sizes[2] = 5 (10 bytes) lies outside"},
        {"sizes[2] short", OFF_SIZE(2), 3, 4, "cover 12 bytes but the .bin has 14 bytes"},
        {"pointers[2] out of range", OFF_PTR(3, 2), 1000, 8, "pointers[2] = 1000"},
        {"pointers[2] max", OFF_PTR(3, 2), INT64_MAX, 8, "lies outside the .bin of 14 bytes"},
        {"pointers[1] negative", OFF_PTR(3, 1), (uint64_t)-8, 8, "pointers[1] = -8"},
        {"pointers[0] not at 0", OFF_PTR(3, 0), 2, 8, "pointers[0] = 2, expected 0"},
        {"pointers[1] gap", OFF_PTR(3, 1), 8, 8, "pointers[1] = 8, expected 6"},
        {"doc_idx[1] past the sequences", OFF_DOC(3, 1), 4, 8, "doc_idx[1] = 4 is outside [0, 3]"},
        {"doc_idx[1] negative", OFF_DOC(3, 1), (uint64_t)-1, 8, "doc_idx[1] = -1 is outside"},
        {"doc_idx[0] not 0", OFF_DOC(3, 0), 1, 8, "doc_idx[0] = 1, expected 0"},
        {"doc_idx decreasing", OFF_DOC(3, 2), 0, 8, "doc_idx[2] = 0 is less than doc_idx[1] = 1"},
        {"doc_idx last short", OFF_DOC(3, 2), 2, 8, "doc_idx[2] = 2, expected the sequence count 3"},
    };
    for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
        buf b = {malloc(good.n), good.n};
        memcpy(b.p, good.p, good.n);
        set_le(&b, cs[i].off, cs[i].val, cs[i].width);
        ds = NULL;
        moe_status st = open_mem(&b, &bin, 1, 1, &ds);
        if (st != MOE_ERR_FORMAT || !strstr(moe_last_error(), cs[i].needle))
            fail_msg("%s: status %d, message '%s' (expected '%s')", cs[i].what, (int)st, moe_last_error(),
                     cs[i].needle);
        assert_null(ds);
        free(b.p);
    }
    /* doc_idx decreasing names the smaller value. */
    {
        const int64_t docs[] = {0, 2, 1, 3};
        buf b = make_idx(code, 3, base_sizes, 4, docs);
        ASSERT_FAILS(open_mem(&b, &bin, 1, 1, &ds), MOE_ERR_FORMAT, "doc_idx[2] = 1 is less than doc_idx[1] = 2");
        free(b.p);
    }
    /* No document indices at all. */
    {
        buf b = make_idx(code, 3, base_sizes, 0, base_docs);
        ASSERT_FAILS(open_mem(&b, &bin, 1, 1, &ds), MOE_ERR_FORMAT, "document count = 0");
        free(b.p);
    }
    /* A trailing byte that is not a mode array. */
    {
        buf b = {malloc(good.n), good.n};
        memcpy(b.p, good.p, good.n);
        put(&b, "x", 1);
        ASSERT_FAILS(open_mem(&b, &bin, 1, 1, &ds), MOE_ERR_FORMAT, "1 bytes follow the document indices");
        free(b.p);
    }
    /* The .bin too short or too long. */
    for (size_t len = 0; len < bin.n; len++) {
        buf s = {bin.p, len};
        moe_status st = open_mem(&good, &s, 1, 1, &ds);
        if (st != MOE_ERR_FORMAT || !strstr(moe_last_error(), ".bin"))
            fail_msg(".bin of %zu bytes: status %d, message '%s'", len, (int)st, moe_last_error());
    }
    {
        buf l = {malloc(bin.n + 2), bin.n + 2};
        memcpy(l.p, bin.p, bin.n);
        l.p[bin.n] = l.p[bin.n + 1] = 0;
        ASSERT_FAILS(open_mem(&good, &l, 1, 1, &ds), MOE_ERR_FORMAT, "cover 14 bytes but the .bin has 16 bytes");
        free(l.p);
    }

    /* The same through files: truncated indexes, a short .bin, a missing .bin. */
    char prefix[512], pi[600], pb[600];
    snprintf(prefix, sizeof prefix, "%s/bad", g_dir);
    snprintf(pi, sizeof pi, "%s.idx", prefix);
    snprintf(pb, sizeof pb, "%s.bin", prefix);
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = prefix;
    cfg.seq_len = 1;
    cfg.validation_fraction = 0.0;
    write_file(pb, bin.p, bin.n);
    for (size_t len = 0; len < good.n; len++) {
        write_file(pi, good.p, len);
        moe_status st = moe_dataset_open(g_ctx, &cfg, &ds);
        if (st != MOE_ERR_FORMAT || !strstr(moe_last_error(), "bad.idx"))
            fail_msg("file truncated to %zu: status %d '%s'", len, (int)st, moe_last_error());
    }
    write_file(pi, good.p, good.n);
    write_file(pb, bin.p, bin.n - 1);
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_FORMAT, "lies outside the .bin of 13 bytes");
    unlink(pb);
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_IO, "bad.bin");
    assert_null(ds);
    free(good.p);
    free(bin.p);
}

/* Random corruption of a valid pair: every result is a clean open or MOE_ERR_FORMAT, never a crash. */
static void test_random_corruption(void **state)
{
    (void)state;
    uint64_t r = 0x9E3779B97F4A7C15ull;
    const int64_t toks[] = {1, 2, 3, 4, 5, 6, 7};
    int opened = 0;
    for (int iter = 0; iter < 20000; iter++) {
        int code = 1 + (int)(r % 8);
        buf idx = make_idx(code == 6 || code == 7 ? 4 : code, 3, base_sizes, 3, base_docs);
        buf bin = make_bin(code == 6 || code == 7 ? 4 : code, 7, toks);
        int flips = 1 + (int)((r >> 8) % 4);
        for (int f = 0; f < flips; f++) {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            size_t at = (size_t)(r % idx.n);
            idx.p[at] = (unsigned char)(r >> 32);
        }
        if ((r >> 40) % 5 == 0) idx.n = (size_t)((r >> 20) % (idx.n + 1));
        if ((r >> 44) % 7 == 0) bin.n = (size_t)((r >> 24) % (bin.n + 1));
        moe_dataset *ds = NULL;
        moe_status st = open_mem(&idx, &bin, 1 + (int32_t)((r >> 50) % 3), (uint32_t)((r >> 56) & 1), &ds);
        if (st == MOE_OK) {
            opened++;
            int64_t n = 0;
            ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &n));
            int32_t tok[3 * 8], tgt[3 * 8];
            for (int64_t i = 0; i < n && i < 8; i++) {
                moe_status bs = moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, i, 1, tok, tgt);
                assert_true(bs == MOE_OK || bs == MOE_ERR_FORMAT);
            }
            close_mem(ds);
        } else if (st != MOE_ERR_FORMAT && st != MOE_ERR_INVALID_ARG) {
            fail_msg("iteration %d: status %d (%s)", iter, (int)st, moe_last_error());
        } else if (st == MOE_ERR_INVALID_ARG && !strstr(moe_last_error(), "seq_len")) {
            fail_msg("iteration %d: invalid argument '%s'", iter, moe_last_error());
        }
        free(idx.p);
        free(bin.p);
        r = r * 6364136223846793005ull + 1442695040888963407ull;
    }
    assert_true(opened > 0);
}

/* ---- fault injection on the writer -------------------------------------------------------------- */

#define FI_TOKENS 300000 /* int32: two buffer flushes */

static int32_t *fi_tokens(int32_t salt)
{
    int32_t *t = malloc(FI_TOKENS * sizeof *t);
    for (int i = 0; i < FI_TOKENS; i++) t[i] = (int32_t)((i * 7 + salt) % 100000);
    return t;
}

/* The whole streaming write; the first failing status. */
static moe_status fi_write(const char *prefix, const int32_t *tokens)
{
    moe_dataset_writer *w = NULL;
    moe_status st = moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_I32, &w);
    if (st != MOE_OK) return st;
    st = moe_dataset_writer_add_tokens(w, tokens, FI_TOKENS / 2);
    if (st == MOE_OK) st = moe_dataset_writer_end_document(w);
    if (st == MOE_OK) st = moe_dataset_writer_add_tokens(w, tokens + FI_TOKENS / 2, FI_TOKENS - FI_TOKENS / 2);
    if (st == MOE_OK) st = moe_dataset_writer_commit(w);
    moe_dataset_writer_destroy(w);
    return st;
}

/* 1 when the dataset at prefix holds exactly `tokens`. */
static int holds(const char *prefix, const int32_t *tokens)
{
    char p[600];
    snprintf(p, sizeof p, "%s.bin", prefix);
    size_t n = 0;
    unsigned char *b = read_file(p, &n);
    if (!b) return 0;
    int same = n == FI_TOKENS * 4 && memcmp(b, tokens, n) == 0;
    free(b);
    moe_dataset_config cfg;
    moe_dataset_config_init(&cfg, sizeof cfg);
    cfg.path = prefix;
    cfg.kind = MOE_DATASET_KIND_INDEXED;
    cfg.seq_len = 0;
    moe_dataset *ds = NULL;
    if (moe_dataset_open(g_ctx, &cfg, &ds) != MOE_OK) return 0;
    int64_t docs = 0;
    moe_dataset_num_documents(ds, &docs);
    moe_dataset_destroy(ds);
    return same && docs == 2;
}

static void assert_no_temp_files(void)
{
    DIR *d = opendir(g_dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.")) fail_msg("temporary file '%s' left behind", e->d_name);
    closedir(d);
}

static int count_hook(moei_fs_op op, const char *path, uint64_t n, void *user)
{
    (void)op;
    (void)path;
    (void)n;
    (*(int *)user)++;
    return 0;
}

static void test_writer_fault_injection(void **state)
{
    (void)state;
    int32_t *fresh = fi_tokens(1), *old = fi_tokens(2);
    char prefix[512], pi[600], pb[600];
    snprintf(prefix, sizeof prefix, "%s/fi", g_dir);
    snprintf(pi, sizeof pi, "%s.idx", prefix);
    snprintf(pb, sizeof pb, "%s.bin", prefix);

    /* Count the calls of a clean write. */
    int calls = 0;
    moei_fs_set_fault_hook(count_hook, &calls);
    ASSERT_OK(fi_write(prefix, fresh));
    moei_fs_reset_faults();
    assert_true(holds(prefix, fresh));
    assert_true(calls >= 12);

    const int errs[] = {EIO, ENOSPC};
    for (int with_old = 0; with_old < 2; with_old++) {
        for (int k = 1; k <= calls + 1; k++) {
            for (size_t ei = 0; ei < 2; ei++) {
                unlink(pi);
                unlink(pb);
                if (with_old) ASSERT_OK(fi_write(prefix, old));
                moei_fs_fail_nth(k, errs[ei]);
                moe_status st = fi_write(prefix, fresh);
                moei_fs_reset_faults();
                assert_no_temp_files();
                if (k > calls) {
                    assert_int_equal(st, MOE_OK);
                    assert_true(holds(prefix, fresh));
                    continue;
                }
                if (st != MOE_ERR_IO) fail_msg("fault at call %d: status %d (%s)", k, (int)st, moe_last_error());
                if (!strstr(moe_last_error(), strerror(errs[ei])))
                    fail_msg("fault at call %d: message '%s' lacks strerror", k, moe_last_error());
                /* Either no dataset (and no stray .bin), the previous one intact, or the new one whole. */
                if (!exists(pi)) {
                    if (exists(pb)) fail_msg("fault at call %d: a .bin without its .idx is left", k);
                } else if (!holds(prefix, fresh) && !(with_old && holds(prefix, old))) {
                    fail_msg("fault at call %d (old dataset: %d): the dataset at the prefix is torn", k, with_old);
                }
                if (k == calls) assert_true(holds(prefix, fresh)); /* only the directory fsync failed */
            }
        }
    }
    /* A writer broken by a failed write refuses further calls. */
    moe_dataset_writer *w = NULL;
    ASSERT_OK(moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_I32, &w));
    moei_fs_fail_nth(1, EIO);
    ASSERT_FAILS(moe_dataset_writer_add_tokens(w, fresh, FI_TOKENS), MOE_ERR_IO, "write");
    moei_fs_reset_faults();
    ASSERT_FAILS(moe_dataset_writer_add_tokens(w, fresh, 1), MOE_ERR_STATE, "earlier call");
    ASSERT_FAILS(moe_dataset_writer_commit(w), MOE_ERR_STATE, "earlier call");
    moe_dataset_writer_destroy(w);
    assert_no_temp_files();
    free(fresh);
    free(old);
}

/* ---- the permutation ---------------------------------------------------------------------------- */

static void test_permutation(void **state)
{
    (void)state;
    const uint64_t seeds[] = {0, 1, 0x8000000000000000ull};
    for (size_t s = 0; s < 3; s++) {
        for (uint64_t n = 1; n <= 600; n += (n < 300 ? 1 : 97)) {
            char *seen = calloc(n, 1);
            for (uint64_t x = 0; x < n; x++) {
                uint64_t y = moei_dataset_permute(seeds[s], 77, n, x);
                assert_true(y < n);
                assert_int_equal(seen[y], 0);
                seen[y] = 1;
                assert_true(y == moei_dataset_permute(seeds[s], 77, n, x)); /* pure */
            }
            free(seen);
        }
    }
    const uint64_t big[] = {4096, 4097, 65537};
    for (size_t b = 0; b < 3; b++) {
        uint64_t n = big[b];
        char *seen = calloc(n, 1);
        uint64_t fixed = 0;
        for (uint64_t x = 0; x < n; x++) {
            uint64_t y = moei_dataset_permute(5, 9, n, x);
            assert_true(y < n && !seen[y]);
            seen[y] = 1;
            fixed += y == x;
        }
        assert_true(fixed < 20); /* a shuffle, not the identity */
        free(seen);
    }
    /* Streams and seeds give different permutations; huge domains stay in range. */
    int differ = 0;
    for (uint64_t x = 0; x < 100; x++) differ += moei_dataset_permute(5, 9, 1000, x) != moei_dataset_permute(5, 10, 1000, x);
    assert_true(differ > 80);
    const uint64_t huge = ((uint64_t)1 << 40) + 3;
    for (uint64_t x = 0; x < 1000; x++) assert_true(moei_dataset_permute(5, 9, huge, x * 999983) < huge);
    assert_true(moei_dataset_permute(1, 2, (uint64_t)INT64_MAX, 12345) < (uint64_t)INT64_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hand_built_every_dtype),
        cmocka_unit_test(test_token_range),
        cmocka_unit_test(test_writer_bytes),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_random_corruption),
        cmocka_unit_test(test_writer_fault_injection),
        cmocka_unit_test(test_permutation),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
