/* Datasets through the public API: text batches against the file's own bytes at the reported
 * offsets, the order (a bijection per epoch, a pure function of the seed, resumable at any sample),
 * disjoint train and validation splits, writer -> reader round trips for every integer dtype, kind
 * detection, the token range checks, the built-in corpus, and every bad argument named. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
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

#include "moe/ctx.h"
#include "moe/data.h"

static moe_ctx *g_ctx;
static char g_dir[256];

#define ASSERT_OK(expr)                                                                                               \
    do {                                                                                                              \
        moe_status st_ = (expr);                                                                                      \
        if (st_ != MOE_OK) fail_msg("%s -> %d: %s", #expr, (int)st_, moe_last_error());                              \
    } while (0)

/* The call fails with `code` and its message (thread and ctx) contains `needle`. */
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
    snprintf(g_dir, sizeof g_dir, "%s/moe_ds_XXXXXX", tmp && *tmp ? tmp : "/tmp");
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
        if (unlink(p) != 0) rmdir(p);
    }
    closedir(d);
}

static int teardown(void **state)
{
    (void)state;
    remove_dir_contents(g_dir);
    rmdir(g_dir);
    moe_ctx_destroy(g_ctx);
    return 0;
}

static void path_in_dir(char *out, size_t cap, const char *name) { snprintf(out, cap, "%s/%s", g_dir, name); }

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* Test data with a fixed, platform-independent generator (xorshift64). */
static uint64_t g_rng = 88172645463325252ull;
static uint64_t xrand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static moe_dataset *open_text(const char *path, int32_t seq_len, double frac, uint64_t seed)
{
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = path;
    cfg.kind = MOE_DATASET_KIND_TEXT;
    cfg.seq_len = seq_len;
    cfg.validation_fraction = frac;
    cfg.seed = seed;
    moe_dataset *ds = NULL;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    return ds;
}

/* A text file of n random bytes; returns the bytes (caller frees). */
static unsigned char *make_text(const char *name, size_t n, char *path, size_t cap)
{
    unsigned char *b = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) b[i] = (unsigned char)(xrand() >> 24);
    path_in_dir(path, cap, name);
    write_file(path, b, n);
    return b;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* ---- defaults ----------------------------------------------------------------------------------- */

static void test_config_defaults(void **state)
{
    (void)state;
    moe_dataset_config cfg;
    memset(&cfg, 0xAB, sizeof cfg);
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    assert_int_equal(cfg.struct_size, sizeof cfg);
    assert_int_equal(cfg.kind, MOE_DATASET_KIND_AUTO);
    assert_null(cfg.path);
    assert_int_equal(cfg.seq_len, 256);
    assert_int_equal(cfg.vocab_size, 0);
    assert_true(cfg.seed == 1234);
    assert_true(cfg.validation_fraction == 0.05);
    assert_int_equal(cfg.verify_tokens, 1);
    /* An older caller's shorter struct: nothing past its size is written. */
    unsigned char buf[sizeof cfg + 8];
    memset(buf, 0x5A, sizeof buf);
    ASSERT_OK(moe_dataset_config_init((moe_dataset_config *)(void *)buf, (uint32_t)offsetof(moe_dataset_config, seq_len)));
    for (size_t i = offsetof(moe_dataset_config, seq_len); i < sizeof buf; i++) assert_int_equal(buf[i], 0x5A);
    ASSERT_FAILS(moe_dataset_config_init(NULL, sizeof cfg), MOE_ERR_INVALID_ARG, "cfg");
    ASSERT_FAILS(moe_dataset_config_init(&cfg, 2), MOE_ERR_INVALID_ARG, "struct_size");
}

/* ---- text: batches are the file's bytes ---------------------------------------------------------- */

static void check_batch_against_bytes(moe_dataset *ds, const unsigned char *bytes, int64_t T, int32_t L,
                                      int32_t split, int64_t first, int32_t count)
{
    int32_t *tok = malloc((size_t)count * (size_t)L * sizeof *tok);
    int32_t *tgt = malloc((size_t)count * (size_t)L * sizeof *tgt);
    ASSERT_OK(moe_dataset_batch(ds, split, first, count, tok, tgt));
    for (int32_t k = 0; k < count; k++) {
        int64_t pos = -1;
        ASSERT_OK(moe_dataset_sample_position(ds, split, first + k, &pos));
        assert_true(pos >= 0 && pos % L == 0);
        assert_true(pos + L + 1 <= T);
        for (int32_t t = 0; t < L; t++) {
            assert_int_equal(tok[(size_t)k * L + t], bytes[pos + t]);
            assert_int_equal(tgt[(size_t)k * L + t], bytes[pos + t + 1]);
        }
    }
    free(tok);
    free(tgt);
}

static void test_text_batches(void **state)
{
    (void)state;
    char path[512];
    const size_t T = 5003;
    unsigned char *bytes = make_text("text.txt", T, path, sizeof path);
    const int32_t lens[] = {1, 7, 64, 5002};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int32_t L = lens[li];
        double frac = L == 5002 ? 0.0 : 0.1;
        moe_dataset *ds = open_text(path, L, frac, 99);
        int64_t n = ((int64_t)T - 1) / L; /* samples of L + 1 tokens at stride L */
        int64_t nt = -1, nv = -1, tokens = -1, docs = -1;
        int32_t vocab = -1, kind = -1, dtype = -1, sl = -1;
        ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
        ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nv));
        ASSERT_OK(moe_dataset_num_tokens(ds, &tokens));
        ASSERT_OK(moe_dataset_num_documents(ds, &docs));
        ASSERT_OK(moe_dataset_vocab_size(ds, &vocab));
        ASSERT_OK(moe_dataset_format(ds, &kind, &dtype));
        ASSERT_OK(moe_dataset_seq_len(ds, &sl));
        int64_t expect_nv = frac > 0 ? (int64_t)llround(frac * (double)n) : 0;
        if (frac > 0 && expect_nv < 1) expect_nv = 1;
        assert_int_equal(nv, expect_nv);
        assert_int_equal(nt + nv, n);
        assert_int_equal(tokens, (int64_t)T);
        assert_int_equal(docs, 1);
        assert_int_equal(vocab, 256);
        assert_int_equal(kind, MOE_DATASET_KIND_TEXT);
        assert_int_equal(dtype, MOE_DATASET_DTYPE_U8);
        assert_int_equal(sl, L);
        int32_t count = n < 13 ? (int32_t)n : 13;
        check_batch_against_bytes(ds, bytes, (int64_t)T, L, MOE_DATASET_SPLIT_TRAIN, 0, count);
        check_batch_against_bytes(ds, bytes, (int64_t)T, L, MOE_DATASET_SPLIT_TRAIN, 3 * nt + 1, count);
        if (nv > 0) check_batch_against_bytes(ds, bytes, (int64_t)T, L, MOE_DATASET_SPLIT_VALIDATION, 0,
                                              nv < 5 ? (int32_t)nv : 5);
        /* count 0 is a no-op that accepts NULL buffers. */
        ASSERT_OK(moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, 5, 0, NULL, NULL));
        moe_dataset_destroy(ds);
    }
    free(bytes);
}

/* ---- order -------------------------------------------------------------------------------------- */

/* Positions of `count` samples of a split starting at `first`. */
static int64_t *positions(moe_dataset *ds, int32_t split, int64_t first, int64_t count)
{
    int64_t *p = malloc((size_t)(count ? count : 1) * sizeof *p);
    for (int64_t i = 0; i < count; i++) ASSERT_OK(moe_dataset_sample_position(ds, split, first + i, &p[i]));
    return p;
}

static void test_order_bijection_and_splits(void **state)
{
    (void)state;
    char path[512];
    unsigned char *bytes = make_text("order.txt", 4001, path, sizeof path);
    const int32_t L = 4;
    const int64_t n = 4000 / L;
    moe_dataset *ds = open_text(path, L, 0.07, 3);
    int64_t nt, nv;
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nv));
    assert_int_equal(nv, 70);
    assert_int_equal(nt + nv, n);

    /* Every sample belongs to exactly one split. */
    char *owner = calloc((size_t)n, 1);
    int64_t *val = positions(ds, MOE_DATASET_SPLIT_VALIDATION, 0, nv);
    for (int64_t i = 0; i < nv; i++) {
        assert_int_equal(val[i] % L, 0);
        assert_true(val[i] / L < n);
        assert_int_equal(owner[val[i] / L], 0);
        owner[val[i] / L] = 'v';
    }
    /* Validation indices wrap around the fixed set. */
    int64_t *val2 = positions(ds, MOE_DATASET_SPLIT_VALIDATION, nv, nv);
    assert_memory_equal(val, val2, (size_t)nv * sizeof *val);

    int64_t *epochs[3];
    for (int e = 0; e < 3; e++) {
        epochs[e] = positions(ds, MOE_DATASET_SPLIT_TRAIN, e * nt, nt);
        char *seen = calloc((size_t)n, 1);
        for (int64_t i = 0; i < nt; i++) {
            int64_t s = epochs[e][i] / L;
            assert_int_equal(epochs[e][i] % L, 0);
            assert_true(s >= 0 && s < n);
            assert_int_not_equal(owner[s], 'v'); /* never a validation sample */
            assert_int_equal(seen[s], 0);        /* each training sample once per epoch */
            seen[s] = 1;
        }
        free(seen);
    }
    /* A fresh order each epoch, and not the identity. */
    assert_memory_not_equal(epochs[0], epochs[1], (size_t)nt * sizeof(int64_t));
    assert_memory_not_equal(epochs[1], epochs[2], (size_t)nt * sizeof(int64_t));
    int64_t *sorted = malloc((size_t)nt * sizeof *sorted);
    memcpy(sorted, epochs[0], (size_t)nt * sizeof *sorted);
    qsort(sorted, (size_t)nt, sizeof *sorted, cmp_i64);
    assert_memory_not_equal(sorted, epochs[0], (size_t)nt * sizeof(int64_t));
    /* The held-out samples are spread over the data, not one block (a shuffled choice). */
    int64_t vmin = n, vmax = -1;
    for (int64_t i = 0; i < nv; i++) {
        vmin = val[i] / L < vmin ? val[i] / L : vmin;
        vmax = val[i] / L > vmax ? val[i] / L : vmax;
    }
    assert_true(vmax - vmin > n / 2);

    /* A huge sample index (epoch ~ 2^40) still maps into the training set. */
    int64_t far = -1;
    ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, INT64_MAX - 1, &far));
    assert_true(far % L == 0 && far / L < n && owner[far / L] != 'v');

    for (int e = 0; e < 3; e++) free(epochs[e]);
    free(sorted);
    free(val);
    free(val2);
    free(owner);
    moe_dataset_destroy(ds);
    free(bytes);
}

static void test_order_pure_and_resumable(void **state)
{
    (void)state;
    char path[512];
    unsigned char *bytes = make_text("pure.txt", 3001, path, sizeof path);
    const int32_t L = 10;
    moe_dataset *a = open_text(path, L, 0.05, 42);
    moe_dataset *b = open_text(path, L, 0.05, 42);
    moe_dataset *c = open_text(path, L, 0.05, 43);
    int64_t nt;
    ASSERT_OK(moe_dataset_num_samples(a, MOE_DATASET_SPLIT_TRAIN, &nt));
    const int64_t total = 2 * nt + 17;
    int64_t *pa = positions(a, MOE_DATASET_SPLIT_TRAIN, 0, total);
    int64_t *pb = positions(b, MOE_DATASET_SPLIT_TRAIN, 0, total);
    int64_t *pc = positions(c, MOE_DATASET_SPLIT_TRAIN, 0, total);
    assert_memory_equal(pa, pb, (size_t)total * sizeof *pa);     /* same seed: same order */
    assert_memory_not_equal(pa, pc, (size_t)total * sizeof *pa); /* other seed: other order */
    int64_t *va = positions(a, MOE_DATASET_SPLIT_VALIDATION, 0, 15);
    int64_t *vc = positions(c, MOE_DATASET_SPLIT_VALIDATION, 0, 15);
    assert_memory_not_equal(va, vc, 15 * sizeof *va); /* the seed also picks the held-out set */

    /* Resume: a run restarted at sample k gets the batches of an uninterrupted run, across epochs. */
    const int32_t B = 8;
    const int64_t steps = total / B;
    int32_t *run = malloc((size_t)steps * B * L * sizeof *run), *run_t = malloc((size_t)steps * B * L * sizeof *run);
    for (int64_t s = 0; s < steps; s++)
        ASSERT_OK(moe_dataset_batch(a, MOE_DATASET_SPLIT_TRAIN, s * B, B, run + s * B * L, run_t + s * B * L));
    int32_t tok[8 * 10], tgt[8 * 10];
    const int64_t resume_at[] = {0, 1, 7, nt - 3, nt, nt + 5, steps * B - B};
    for (size_t r = 0; r < sizeof resume_at / sizeof resume_at[0]; r++) {
        int64_t k = resume_at[r];
        moe_dataset *fresh = open_text(path, L, 0.05, 42);
        ASSERT_OK(moe_dataset_batch(fresh, MOE_DATASET_SPLIT_TRAIN, k, B, tok, tgt));
        assert_memory_equal(tok, run + k * L, sizeof tok);
        assert_memory_equal(tgt, run_t + k * L, sizeof tgt);
        moe_dataset_destroy(fresh);
    }
    free(run);
    free(run_t);
    free(pa);
    free(pb);
    free(pc);
    free(va);
    free(vc);
    moe_dataset_destroy(a);
    moe_dataset_destroy(b);
    moe_dataset_destroy(c);
    free(bytes);
}

/* Tiny datasets: one or two samples, every seq_len that fits and the first that does not. */
static void test_small_and_seq_len_too_large(void **state)
{
    (void)state;
    char path[512];
    unsigned char *bytes = make_text("small.txt", 10, path, sizeof path);
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = path;
    cfg.validation_fraction = 0.0;
    for (int32_t L = 1; L <= 9; L++) {
        cfg.seq_len = L;
        moe_dataset *ds = NULL;
        ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
        int64_t nt;
        ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
        assert_int_equal(nt, 9 / L);
        check_batch_against_bytes(ds, bytes, 10, L, MOE_DATASET_SPLIT_TRAIN, 0, (int32_t)nt);
        moe_dataset_destroy(ds);
    }
    moe_dataset *ds = NULL;
    cfg.seq_len = 10;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_INVALID_ARG, "larger than the data");
    assert_non_null(strstr(moe_last_error(), "seq_len = 10"));
    assert_non_null(strstr(moe_ctx_last_error(g_ctx), "larger than the data"));
    assert_null(ds);
    /* One sample cannot be split: the held-out share leaves no training sample. */
    cfg.seq_len = 9;
    cfg.validation_fraction = 0.05;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_INVALID_ARG, "validation_fraction");
    /* Two samples: one of each. */
    cfg.seq_len = 4;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int64_t nt, nv, pt, pv;
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nv));
    assert_int_equal(nt, 1);
    assert_int_equal(nv, 1);
    ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, 0, &pt));
    ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_VALIDATION, 0, &pv));
    assert_true((pt == 0 && pv == 4) || (pt == 4 && pv == 0));
    moe_dataset_destroy(ds);
    /* An empty file has no sample at all, but opens for its counts with seq_len 0. */
    char empty[512];
    path_in_dir(empty, sizeof empty, "empty.txt");
    write_file(empty, "", 0);
    cfg.path = empty;
    cfg.seq_len = 1;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_INVALID_ARG, "has 0 bytes");
    cfg.seq_len = 0;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int64_t tokens = -1;
    ASSERT_OK(moe_dataset_num_tokens(ds, &tokens));
    assert_int_equal(tokens, 0);
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
    assert_int_equal(nt, 0);
    int32_t one[1];
    ASSERT_FAILS(moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, 0, 1, one, one), MOE_ERR_STATE, "seq_len = 0");
    ASSERT_FAILS(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, 0, &pt), MOE_ERR_STATE, "seq_len = 0");
    moe_dataset_destroy(ds);
    free(bytes);
}

/* ---- token range -------------------------------------------------------------------------------- */

static void test_vocab_limit(void **state)
{
    (void)state;
    char path[512];
    path_in_dir(path, sizeof path, "vocab.txt");
    /* 'a'..'z' repeated, one 'z' + 1 = '{' at byte 300. */
    unsigned char b[400];
    for (int i = 0; i < 400; i++) b[i] = (unsigned char)('a' + i % 26);
    b[300] = '{';
    write_file(path, b, sizeof b);
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = path;
    cfg.seq_len = 9;
    cfg.validation_fraction = 0.0;
    cfg.vocab_size = '{'; /* '{' itself is one too many */
    moe_dataset *ds = NULL;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_FORMAT, "token 300 = 123");
    assert_non_null(strstr(moe_last_error(), "vocab_size"));
    assert_null(ds);
    cfg.vocab_size = '{' + 1;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int32_t vocab = 0;
    ASSERT_OK(moe_dataset_vocab_size(ds, &vocab));
    assert_int_equal(vocab, '{' + 1);
    moe_dataset_destroy(ds);

    /* Unverified: the batch that reads the bad token fails and leaves the buffers alone. */
    cfg.vocab_size = '{';
    cfg.verify_tokens = 0;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int64_t nt;
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
    int bad_seen = 0;
    for (int64_t i = 0; i < nt; i++) {
        int64_t pos;
        ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, i, &pos));
        int32_t tok[9], tgt[9];
        for (int t = 0; t < 9; t++) tok[t] = tgt[t] = -7;
        moe_status st = moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, i, 1, tok, tgt);
        if (pos <= 300 && 300 <= pos + 9) {
            bad_seen = 1;
            assert_int_equal(st, MOE_ERR_FORMAT);
            assert_non_null(strstr(moe_last_error(), "token 300"));
            for (int t = 0; t < 9; t++) assert_true(tok[t] == -7 && tgt[t] == -7);
        } else {
            assert_int_equal(st, MOE_OK);
            for (int t = 0; t < 9; t++) assert_int_equal(tok[t], b[pos + t]);
        }
    }
    assert_true(bad_seen);
    moe_dataset_destroy(ds);
}

/* ---- writer round trips ------------------------------------------------------------------------- */

static const int32_t dtypes[] = {MOE_DATASET_DTYPE_U8,  MOE_DATASET_DTYPE_I8,  MOE_DATASET_DTYPE_I16,
                                 MOE_DATASET_DTYPE_U16, MOE_DATASET_DTYPE_I32, MOE_DATASET_DTYPE_I64};
static const int64_t dtype_max[] = {255, 127, 32767, 65535, 2147483646, 2147483646};

/* Read the whole stream back: seq_len 1 and every sample gives stream[p] and stream[p + 1]. */
static int32_t *read_stream(moe_dataset *ds, int64_t T)
{
    int32_t *s = malloc((size_t)T * sizeof *s);
    int64_t n;
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &n));
    assert_int_equal(n, T - 1);
    char *got = calloc((size_t)T, 1);
    for (int64_t i = 0; i < n; i++) {
        int64_t pos;
        int32_t tok, tgt;
        ASSERT_OK(moe_dataset_sample_position(ds, MOE_DATASET_SPLIT_TRAIN, i, &pos));
        ASSERT_OK(moe_dataset_batch(ds, MOE_DATASET_SPLIT_TRAIN, i, 1, &tok, &tgt));
        s[pos] = tok;
        s[pos + 1] = tgt;
        got[pos] = got[pos + 1] = 1;
    }
    for (int64_t i = 0; i < T; i++) assert_true(got[i]);
    free(got);
    return s;
}

static void test_writer_round_trip(void **state)
{
    (void)state;
    for (size_t di = 0; di < sizeof dtypes / sizeof dtypes[0]; di++) {
        const int64_t docs[] = {5, 0, 1, 37, 0, 12};
        const int64_t ndocs = 6, T = 55;
        int32_t tokens[55];
        int64_t mx = 0;
        for (int64_t i = 0; i < T; i++) {
            tokens[i] = (int32_t)(xrand() % (uint64_t)(dtype_max[di] + 1));
            mx = tokens[i] > mx ? tokens[i] : mx;
        }
        tokens[17] = (int32_t)dtype_max[di]; /* the extreme value survives */
        mx = dtype_max[di];
        char prefix[512];
        path_in_dir(prefix, sizeof prefix, "rt");
        ASSERT_OK(moe_dataset_write_indexed(g_ctx, prefix, dtypes[di], tokens, T, docs, ndocs));
        moe_dataset_config cfg;
        ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
        cfg.path = prefix;
        cfg.seq_len = 1;
        cfg.validation_fraction = 0.0;
        moe_dataset *ds = NULL;
        ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
        int32_t kind, dtype, vocab;
        int64_t nd, nt;
        ASSERT_OK(moe_dataset_format(ds, &kind, &dtype));
        ASSERT_OK(moe_dataset_num_documents(ds, &nd));
        ASSERT_OK(moe_dataset_num_tokens(ds, &nt));
        ASSERT_OK(moe_dataset_vocab_size(ds, &vocab));
        assert_int_equal(kind, MOE_DATASET_KIND_INDEXED);
        assert_int_equal(dtype, dtypes[di]);
        assert_int_equal(nd, ndocs);
        assert_int_equal(nt, T);
        assert_int_equal(vocab, mx + 1);
        int32_t *s = read_stream(ds, T);
        assert_memory_equal(s, tokens, sizeof tokens);
        free(s);
        moe_dataset_destroy(ds);
        /* Unverified: the vocabulary is the dtype's range (0 = unknown for 32/64-bit types). */
        cfg.verify_tokens = 0;
        ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
        ASSERT_OK(moe_dataset_vocab_size(ds, &vocab));
        const int32_t range[] = {256, 128, 32768, 65536, 0, 0};
        assert_int_equal(vocab, range[di]);
        s = read_stream(ds, T);
        assert_memory_equal(s, tokens, sizeof tokens);
        free(s);
        moe_dataset_destroy(ds);

        /* A token the dtype cannot hold is refused by name, before any file is touched. */
        if (dtype_max[di] < 2147483646) {
            tokens[3] = (int32_t)dtype_max[di] + 1;
            char p2[512];
            path_in_dir(p2, sizeof p2, "never");
            ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, p2, dtypes[di], tokens, T, docs, ndocs), MOE_ERR_INVALID_ARG,
                         "tokens[3]");
            strcat(p2, ".bin");
            struct stat sb;
            assert_int_not_equal(stat(p2, &sb), 0);
        }
    }
}

static void test_writer_streaming(void **state)
{
    (void)state;
    char prefix[512];
    path_in_dir(prefix, sizeof prefix, "stream");
    moe_dataset_writer *w = NULL;
    ASSERT_OK(moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_U16, &w));
    const int32_t a[] = {1, 2, 3}, b[] = {4000, 5};
    ASSERT_OK(moe_dataset_writer_add_tokens(w, a, 3));
    ASSERT_OK(moe_dataset_writer_add_tokens(w, b, 2)); /* same document */
    ASSERT_OK(moe_dataset_writer_end_document(w));
    ASSERT_OK(moe_dataset_writer_end_document(w)); /* an empty document */
    ASSERT_OK(moe_dataset_writer_add_tokens(w, a, 0));
    const int32_t bad[] = {1, -1};
    ASSERT_FAILS(moe_dataset_writer_add_tokens(w, bad, 2), MOE_ERR_INVALID_ARG, "tokens[1] = -1");
    ASSERT_FAILS(moe_dataset_writer_add_tokens(w, NULL, 2), MOE_ERR_INVALID_ARG, "tokens");
    ASSERT_FAILS(moe_dataset_writer_add_tokens(w, a, -1), MOE_ERR_INVALID_ARG, "count");
    ASSERT_OK(moe_dataset_writer_add_tokens(w, b, 1)); /* pending: ended by the commit */
    /* Nothing is visible before the commit. */
    char idx[600];
    snprintf(idx, sizeof idx, "%s.idx", prefix);
    struct stat sb;
    assert_int_not_equal(stat(idx, &sb), 0);
    ASSERT_OK(moe_dataset_writer_commit(w));
    ASSERT_FAILS(moe_dataset_writer_add_tokens(w, a, 1), MOE_ERR_STATE, "committed");
    ASSERT_FAILS(moe_dataset_writer_end_document(w), MOE_ERR_STATE, "committed");
    ASSERT_FAILS(moe_dataset_writer_commit(w), MOE_ERR_STATE, "committed");
    moe_dataset_writer_destroy(w);

    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = prefix;
    cfg.seq_len = 1;
    cfg.validation_fraction = 0;
    moe_dataset *ds = NULL;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int64_t nd, nt;
    ASSERT_OK(moe_dataset_num_documents(ds, &nd));
    ASSERT_OK(moe_dataset_num_tokens(ds, &nt));
    assert_int_equal(nd, 3);
    assert_int_equal(nt, 6);
    int32_t *s = read_stream(ds, 6);
    const int32_t expect[] = {1, 2, 3, 4000, 5, 4000};
    assert_memory_equal(s, expect, sizeof expect);
    free(s);
    moe_dataset_destroy(ds);

    /* An abandoned writer leaves nothing behind, and an existing dataset is untouched. */
    char other[512];
    path_in_dir(other, sizeof other, "abandoned");
    ASSERT_OK(moe_dataset_writer_create(g_ctx, other, MOE_DATASET_DTYPE_U8, &w));
    ASSERT_OK(moe_dataset_writer_add_tokens(w, a, 3));
    moe_dataset_writer_destroy(w);
    ASSERT_OK(moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_U8, &w));
    ASSERT_OK(moe_dataset_writer_add_tokens(w, a, 3));
    moe_dataset_writer_destroy(w);
    DIR *d = opendir(g_dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        assert_null(strstr(e->d_name, "abandoned"));
        assert_null(strstr(e->d_name, ".tmp."));
    }
    closedir(d);
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    ASSERT_OK(moe_dataset_num_tokens(ds, &nt));
    assert_int_equal(nt, 6);
    moe_dataset_destroy(ds);
}

/* ---- kind detection ----------------------------------------------------------------------------- */

static void test_kind_detection(void **state)
{
    (void)state;
    char prefix[512], p[600];
    path_in_dir(prefix, sizeof prefix, "auto");
    const int32_t toks[] = {300, 1, 2, 3, 4, 5, 6, 7, 8};
    const int64_t len[] = {9};
    ASSERT_OK(moe_dataset_write_indexed(g_ctx, prefix, MOE_DATASET_DTYPE_U16, toks, 9, len, 1));
    const char *forms[] = {"%s", "%s.bin", "%s.idx"};
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, forms[i % 3], prefix);
        moe_dataset_config cfg;
        ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
        cfg.path = p;
        cfg.kind = i < 3 ? MOE_DATASET_KIND_AUTO : MOE_DATASET_KIND_INDEXED;
        cfg.seq_len = 2;
        cfg.validation_fraction = 0;
        moe_dataset *ds = NULL;
        ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
        int32_t kind;
        int64_t nt;
        ASSERT_OK(moe_dataset_format(ds, &kind, NULL));
        ASSERT_OK(moe_dataset_num_tokens(ds, &nt));
        assert_int_equal(kind, MOE_DATASET_KIND_INDEXED);
        assert_int_equal(nt, 9);
        moe_dataset_destroy(ds);
    }
    /* The .bin forced to be read as text: its bytes (2 per token). */
    snprintf(p, sizeof p, "%s.bin", prefix);
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = p;
    cfg.kind = MOE_DATASET_KIND_TEXT;
    cfg.seq_len = 2;
    cfg.validation_fraction = 0;
    moe_dataset *ds = NULL;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int64_t nt;
    ASSERT_OK(moe_dataset_num_tokens(ds, &nt));
    assert_int_equal(nt, 18);
    moe_dataset_destroy(ds);
    /* A text file is read as text; a missing indexed dataset is an I/O error naming the file. */
    char text[512];
    path_in_dir(text, sizeof text, "plain.txt");
    write_file(text, "hello, world", 12);
    cfg.path = text;
    cfg.kind = MOE_DATASET_KIND_AUTO;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int32_t kind;
    ASSERT_OK(moe_dataset_format(ds, &kind, NULL));
    assert_int_equal(kind, MOE_DATASET_KIND_TEXT);
    moe_dataset_destroy(ds);
    cfg.kind = MOE_DATASET_KIND_INDEXED;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_IO, "plain.txt.idx");
    path_in_dir(text, sizeof text, "missing");
    cfg.path = text;
    cfg.kind = MOE_DATASET_KIND_AUTO;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_IO, "missing");
    cfg.path = g_dir; /* a directory */
    ds = NULL;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, &ds), MOE_ERR_IO, "not a regular file");
    assert_null(ds);
}

/* ---- the built-in corpus ------------------------------------------------------------------------ */

static void test_builtin_corpus(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/data/corpus.txt", MOE_TEST_SOURCE_DIR);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static unsigned char buf[1 << 21];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(n > 200000 && n <= 1000000);
    for (size_t i = 0; i < n; i++) assert_true(buf[i] == '\n' || (buf[i] >= 32 && buf[i] < 127));
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = path;
    moe_dataset *ds = NULL;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int64_t nt, nv;
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &nt));
    ASSERT_OK(moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nv));
    assert_int_equal(nt + nv, ((int64_t)n - 1) / 256);
    assert_true(nv > 0);
    check_batch_against_bytes(ds, buf, (int64_t)n, 256, MOE_DATASET_SPLIT_TRAIN, 12345, 4);
    moe_dataset_destroy(ds);
}

/* ---- bad arguments ------------------------------------------------------------------------------ */

static void test_bad_arguments(void **state)
{
    (void)state;
    char path[512];
    unsigned char *bytes = make_text("args.txt", 500, path, sizeof path);
    moe_dataset_config cfg;
    ASSERT_OK(moe_dataset_config_init(&cfg, sizeof cfg));
    cfg.path = path;
    cfg.seq_len = 8;
    moe_dataset *ds = NULL;
    ASSERT_FAILS(moe_dataset_open(NULL, &cfg, &ds), MOE_ERR_INVALID_ARG, "ctx");
    ASSERT_FAILS(moe_dataset_open(g_ctx, NULL, &ds), MOE_ERR_INVALID_ARG, "cfg");
    ASSERT_FAILS(moe_dataset_open(g_ctx, &cfg, NULL), MOE_ERR_INVALID_ARG, "out");
    moe_dataset_config c;
    c = cfg, c.path = NULL;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "path is NULL");
    c = cfg, c.path = "";
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "path is empty");
    c = cfg, c.kind = 3;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "kind = 3");
    c = cfg, c.kind = -1;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "kind = -1");
    c = cfg, c.seq_len = -1;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "seq_len = -1");
    c = cfg, c.seq_len = INT32_MAX;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "seq_len = 2147483647");
    c = cfg, c.vocab_size = -5;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "vocab_size = -5");
    c = cfg, c.validation_fraction = -0.1;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "validation_fraction");
    c = cfg, c.validation_fraction = 1.0;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "validation_fraction");
    c = cfg, c.validation_fraction = NAN;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "validation_fraction");
    c = cfg, c.verify_tokens = 2;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "verify_tokens = 2");
    c = cfg, c.struct_size = 0;
    ASSERT_FAILS(moe_dataset_open(g_ctx, &c, &ds), MOE_ERR_INVALID_ARG, "struct_size");
    assert_null(ds);
    /* An old caller's struct without the newer fields gets their defaults. */
    c = cfg;
    c.struct_size = (uint32_t)offsetof(moe_dataset_config, seed);
    c.validation_fraction = 5.0; /* beyond struct_size: ignored */
    ASSERT_OK(moe_dataset_open(g_ctx, &c, &ds));
    moe_dataset_destroy(ds);

    cfg.validation_fraction = 0.1;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    int32_t tok[16], tgt[16];
    int64_t v;
    int32_t i32;
    ASSERT_FAILS(moe_dataset_batch(NULL, 0, 0, 1, tok, tgt), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_batch(ds, 2, 0, 1, tok, tgt), MOE_ERR_INVALID_ARG, "split = 2");
    ASSERT_FAILS(moe_dataset_batch(ds, 0, -1, 1, tok, tgt), MOE_ERR_INVALID_ARG, "first_sample = -1");
    ASSERT_FAILS(moe_dataset_batch(ds, 0, 0, -2, tok, tgt), MOE_ERR_INVALID_ARG, "count = -2");
    ASSERT_FAILS(moe_dataset_batch(ds, 0, 0, 1, NULL, tgt), MOE_ERR_INVALID_ARG, "tokens");
    ASSERT_FAILS(moe_dataset_batch(ds, 0, 0, 1, tok, NULL), MOE_ERR_INVALID_ARG, "targets");
    ASSERT_FAILS(moe_dataset_batch(ds, 0, INT64_MAX, 2, tok, tgt), MOE_ERR_INVALID_ARG, "overflow");
    ASSERT_FAILS(moe_dataset_sample_position(ds, 0, 0, NULL), MOE_ERR_INVALID_ARG, "first_token");
    ASSERT_FAILS(moe_dataset_sample_position(ds, 9, 0, &v), MOE_ERR_INVALID_ARG, "split = 9");
    ASSERT_FAILS(moe_dataset_sample_position(ds, 0, -3, &v), MOE_ERR_INVALID_ARG, "index = -3");
    ASSERT_FAILS(moe_dataset_sample_position(NULL, 0, 0, &v), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_num_samples(ds, 7, &v), MOE_ERR_INVALID_ARG, "split = 7");
    ASSERT_FAILS(moe_dataset_num_samples(ds, 0, NULL), MOE_ERR_INVALID_ARG, "count");
    ASSERT_FAILS(moe_dataset_num_samples(NULL, 0, &v), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_num_tokens(ds, NULL), MOE_ERR_INVALID_ARG, "count");
    ASSERT_FAILS(moe_dataset_num_tokens(NULL, &v), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_num_documents(ds, NULL), MOE_ERR_INVALID_ARG, "count");
    ASSERT_FAILS(moe_dataset_num_documents(NULL, &v), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_vocab_size(ds, NULL), MOE_ERR_INVALID_ARG, "vocab_size");
    ASSERT_FAILS(moe_dataset_vocab_size(NULL, &i32), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_seq_len(ds, NULL), MOE_ERR_INVALID_ARG, "seq_len");
    ASSERT_FAILS(moe_dataset_seq_len(NULL, &i32), MOE_ERR_INVALID_ARG, "ds");
    ASSERT_FAILS(moe_dataset_format(NULL, &i32, &i32), MOE_ERR_INVALID_ARG, "ds");
    /* Failures leave out-params alone. */
    v = 77;
    (void)moe_dataset_sample_position(ds, 0, -3, &v);
    assert_int_equal(v, 77);
    moe_dataset_destroy(ds);
    moe_dataset_destroy(NULL);

    cfg.validation_fraction = 0.0;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    ASSERT_FAILS(moe_dataset_batch(ds, MOE_DATASET_SPLIT_VALIDATION, 0, 1, tok, tgt), MOE_ERR_INVALID_ARG,
                 "validation_fraction = 0");
    moe_dataset_destroy(ds);

    /* Writer arguments. */
    moe_dataset_writer *w = NULL;
    char prefix[512];
    path_in_dir(prefix, sizeof prefix, "w");
    const int32_t toks[] = {1, 2, 3};
    const int64_t lens[] = {2, 1}, bad_lens[] = {2, -1}, long_lens[] = {2, 2};
    ASSERT_FAILS(moe_dataset_writer_create(NULL, prefix, MOE_DATASET_DTYPE_U8, &w), MOE_ERR_INVALID_ARG, "ctx");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, NULL, MOE_DATASET_DTYPE_U8, &w), MOE_ERR_INVALID_ARG, "prefix");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, "", MOE_DATASET_DTYPE_U8, &w), MOE_ERR_INVALID_ARG, "prefix");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_U8, NULL), MOE_ERR_INVALID_ARG, "out");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_F32, &w), MOE_ERR_INVALID_ARG,
                 "not an integer type");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, prefix, MOE_DATASET_DTYPE_F64, &w), MOE_ERR_INVALID_ARG,
                 "not an integer type");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, prefix, 0, &w), MOE_ERR_INVALID_ARG, "dtype = 0");
    ASSERT_FAILS(moe_dataset_writer_create(g_ctx, prefix, 9, &w), MOE_ERR_INVALID_ARG, "dtype = 9");
    assert_null(w);
    ASSERT_FAILS(moe_dataset_writer_add_tokens(NULL, toks, 1), MOE_ERR_INVALID_ARG, "w");
    ASSERT_FAILS(moe_dataset_writer_end_document(NULL), MOE_ERR_INVALID_ARG, "w");
    ASSERT_FAILS(moe_dataset_writer_commit(NULL), MOE_ERR_INVALID_ARG, "w");
    moe_dataset_writer_destroy(NULL);
    ASSERT_FAILS(moe_dataset_write_indexed(NULL, prefix, 1, toks, 3, lens, 2), MOE_ERR_INVALID_ARG, "ctx");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, NULL, 1, toks, 3, lens, 2), MOE_ERR_INVALID_ARG, "prefix");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 7, toks, 3, lens, 2), MOE_ERR_INVALID_ARG, "dtype = 7");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, NULL, 3, lens, 2), MOE_ERR_INVALID_ARG, "tokens");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, toks, -3, lens, 2), MOE_ERR_INVALID_ARG, "num_tokens");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, toks, 3, NULL, 2), MOE_ERR_INVALID_ARG, "doc_lengths");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, toks, 3, lens, -2), MOE_ERR_INVALID_ARG, "num_docs");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, toks, 3, bad_lens, 2), MOE_ERR_INVALID_ARG,
                 "doc_lengths[1] = -1");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, toks, 3, long_lens, 2), MOE_ERR_INVALID_ARG,
                 "doc_lengths[1] = 2");
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, prefix, 1, toks, 3, lens, 1), MOE_ERR_INVALID_ARG,
                 "sum to 2 but num_tokens = 3");
    /* A missing directory: the temporary file cannot be created. */
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/such/dir/x", g_dir);
    ASSERT_FAILS(moe_dataset_write_indexed(g_ctx, nodir, 1, toks, 3, lens, 2), MOE_ERR_IO, "no/such/dir");
    /* Empty dataset: legal, no documents. */
    ASSERT_OK(moe_dataset_write_indexed(g_ctx, prefix, 1, NULL, 0, NULL, 0));
    cfg.path = prefix;
    cfg.seq_len = 0;
    ASSERT_OK(moe_dataset_open(g_ctx, &cfg, &ds));
    ASSERT_OK(moe_dataset_num_documents(ds, &v));
    assert_int_equal(v, 0);
    moe_dataset_destroy(ds);
    free(bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_text_batches),
        cmocka_unit_test(test_order_bijection_and_splits),
        cmocka_unit_test(test_order_pure_and_resumable),
        cmocka_unit_test(test_small_and_seq_len_too_large),
        cmocka_unit_test(test_vocab_limit),
        cmocka_unit_test(test_writer_round_trip),
        cmocka_unit_test(test_writer_streaming),
        cmocka_unit_test(test_kind_detection),
        cmocka_unit_test(test_builtin_corpus),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
