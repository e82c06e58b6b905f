/* Token datasets: open (text file or Megatron .bin/.idx, memory-mapped), validate, and cut the token
 * stream into samples whose order is a pure function of (seed, sample index). Invariant: a dataset
 * handle exists only over a stream whose every byte range was checked against the mapped sizes, so
 * moe_dataset_batch() reads without further bounds checks; with verify_tokens every token is also
 * known to be in range. The handle is never written after open, which is what makes concurrent
 * batch calls safe. */
#include "io/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "indexed datasets are little-endian; this reader assumes a little-endian host"
#endif

const unsigned char moei_idx_magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};

/* Tokens are int32 for the model and a vocabulary size must itself fit int32, so the largest token
 * is INT32_MAX - 1. */
#define DS_TOKEN_LIMIT ((int64_t)INT32_MAX)

/* Feistel rounds of the sample permutation: enough for Philox round functions to mix fully. */
#define DS_FEISTEL_ROUNDS 8

/* ------------------------------------------------------------------------------------------------
 * dtypes
 * ---------------------------------------------------------------------------------------------- */

uint32_t moei_dataset_dtype_size(int32_t code)
{
    switch (code) {
    case MOE_DATASET_DTYPE_U8:
    case MOE_DATASET_DTYPE_I8: return 1;
    case MOE_DATASET_DTYPE_I16:
    case MOE_DATASET_DTYPE_U16: return 2;
    case MOE_DATASET_DTYPE_I32:
    case MOE_DATASET_DTYPE_F32: return 4;
    case MOE_DATASET_DTYPE_I64:
    case MOE_DATASET_DTYPE_F64: return 8;
    default: return 0;
    }
}

const char *moei_dataset_dtype_name(int32_t code)
{
    switch (code) {
    case MOE_DATASET_DTYPE_U8: return "uint8";
    case MOE_DATASET_DTYPE_I8: return "int8";
    case MOE_DATASET_DTYPE_I16: return "int16";
    case MOE_DATASET_DTYPE_I32: return "int32";
    case MOE_DATASET_DTYPE_I64: return "int64";
    case MOE_DATASET_DTYPE_F64: return "float64";
    case MOE_DATASET_DTYPE_F32: return "float32";
    case MOE_DATASET_DTYPE_U16: return "uint16";
    default: return NULL;
    }
}

/* Token i of a stream of `dtype` (little-endian, no alignment assumed). */
static inline int64_t ds_token(const uint8_t *base, int32_t dtype, int64_t i)
{
    switch (dtype) {
    case MOE_DATASET_DTYPE_U8: return base[i];
    case MOE_DATASET_DTYPE_I8: return (int8_t)base[i];
    case MOE_DATASET_DTYPE_I16: {
        int16_t v;
        memcpy(&v, base + 2 * i, 2);
        return v;
    }
    case MOE_DATASET_DTYPE_U16: {
        uint16_t v;
        memcpy(&v, base + 2 * i, 2);
        return v;
    }
    case MOE_DATASET_DTYPE_I32: {
        int32_t v;
        memcpy(&v, base + 4 * i, 4);
        return v;
    }
    default: {
        int64_t v;
        memcpy(&v, base + 8 * i, 8);
        return v;
    }
    }
}

/* Convert n valid tokens starting at stream position pos into dst; the switch sits outside the loop. */
static void ds_convert(const uint8_t *base, int32_t dtype, int64_t pos, int64_t n, int32_t *dst)
{
    switch (dtype) {
    case MOE_DATASET_DTYPE_U8:
        for (int64_t t = 0; t < n; t++) dst[t] = base[pos + t];
        break;
    case MOE_DATASET_DTYPE_I8:
        for (int64_t t = 0; t < n; t++) dst[t] = (int8_t)base[pos + t];
        break;
    default:
        for (int64_t t = 0; t < n; t++) dst[t] = (int32_t)ds_token(base, dtype, pos + t);
        break;
    }
}

/* ------------------------------------------------------------------------------------------------
 * the .idx parser
 * ---------------------------------------------------------------------------------------------- */

static uint64_t rd_u64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int64_t rd_i64(const uint8_t *p)
{
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int32_t rd_i32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

moe_status moei_idx_parse(moe_ctx *ctx, const char *fn, const char *origin, const void *idx, uint64_t idx_size,
                          uint64_t bin_size, moei_idx_info *out)
{
    const uint8_t *p = idx;
    if (!p && idx_size) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: index buffer is NULL", fn);
    if (idx_size < MOEI_IDX_HEADER_SIZE)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': the index has %llu bytes, fewer than its %u-byte header (magic, version, "
                         "dtype, sequence count, document count)",
                         fn, origin, (unsigned long long)idx_size, MOEI_IDX_HEADER_SIZE);
    if (memcmp(p, moei_idx_magic, sizeof moei_idx_magic) != 0)
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': bad magic: not a Megatron indexed dataset index (MMIDIDX)",
                         fn, origin);
    uint64_t version = rd_u64(p + 9);
    if (version != 1)
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': version = %llu, only version 1 is supported", fn, origin,
                         (unsigned long long)version);
    int32_t code = p[17];
    uint32_t itemsize = moei_dataset_dtype_size(code);
    if (itemsize == 0)
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': dtype code %d is unknown (Megatron codes are 1 to 8)", fn,
                         origin, (int)code);
    if (code == MOE_DATASET_DTYPE_F32 || code == MOE_DATASET_DTYPE_F64)
        return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': dtype code %d (%s) is not an integer type; tokens must be "
                         "integers", fn, origin, (int)code, moei_dataset_dtype_name(code));
    uint64_t nseq = rd_u64(p + 18);
    uint64_t ndoc = rd_u64(p + 26);
    uint64_t rest = idx_size - MOEI_IDX_HEADER_SIZE;
    /* Divide rather than multiply, so a huge count cannot overflow into a plausible size. */
    if (nseq > rest / 12)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': sequence count = %llu needs %s bytes of sizes and pointers, but only %llu "
                         "bytes follow the header",
                         fn, origin, (unsigned long long)nseq, nseq > UINT64_MAX / 12 ? "more than 2^64" : "more",
                         (unsigned long long)rest);
    rest -= nseq * 12;
    if (ndoc > rest / 8)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': document count = %llu needs more than the %llu bytes left after the sequence "
                         "sizes and pointers",
                         fn, origin, (unsigned long long)ndoc, (unsigned long long)rest);
    rest -= ndoc * 8;
    uint32_t has_modes = 0;
    if (rest == nseq && nseq > 0)
        has_modes = 1; /* multimodal: one int8 mode per sequence, not needed for tokens */
    else if (rest != 0)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': %llu bytes follow the document indices; expected none (or %llu sequence "
                         "modes)",
                         fn, origin, (unsigned long long)rest, (unsigned long long)nseq);
    if (ndoc == 0)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': document count = 0; the document indices must hold at least the leading 0",
                         fn, origin);

    const uint8_t *sizes = p + MOEI_IDX_HEADER_SIZE;
    const uint8_t *ptrs = sizes + nseq * 4;
    const uint8_t *docs = ptrs + nseq * 8;
    uint64_t expect = 0; /* byte offset where sequence i must start: right after sequence i - 1 */
    for (uint64_t i = 0; i < nseq; i++) {
        int32_t sz = rd_i32(sizes + 4 * i);
        int64_t ptr = rd_i64(ptrs + 8 * i);
        if (sz < 0)
            return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': sizes[%llu] = %d is negative", fn, origin,
                             (unsigned long long)i, (int)sz);
        uint64_t nbytes = (uint64_t)sz * itemsize;
        if (ptr < 0 || (uint64_t)ptr > bin_size || nbytes > bin_size - (uint64_t)ptr)
            return moei_fail(ctx, MOE_ERR_FORMAT,
                             "%s: '%.300s': pointers[%llu] = %lld with sizes[%llu] = %d (%llu bytes) lies outside the "
                             ".bin of %llu bytes",
                             fn, origin, (unsigned long long)i, (long long)ptr, (unsigned long long)i, (int)sz,
                             (unsigned long long)nbytes, (unsigned long long)bin_size);
        if ((uint64_t)ptr != expect)
            return moei_fail(ctx, MOE_ERR_FORMAT,
                             "%s: '%.300s': pointers[%llu] = %lld, expected %llu (sequences are stored back to back "
                             "from byte 0)",
                             fn, origin, (unsigned long long)i, (long long)ptr, (unsigned long long)expect);
        expect += nbytes; /* <= bin_size, checked above */
    }
    if (expect != bin_size)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': the sequences cover %llu bytes but the .bin has %llu bytes%s", fn, origin,
                         (unsigned long long)expect, (unsigned long long)bin_size,
                         expect > bin_size ? " (the .bin is too short)" : "");
    int64_t prev = 0;
    for (uint64_t d = 0; d < ndoc; d++) {
        int64_t v = rd_i64(docs + 8 * d);
        if (v < 0 || (uint64_t)v > nseq)
            return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': doc_idx[%llu] = %lld is outside [0, %llu]", fn,
                             origin, (unsigned long long)d, (long long)v, (unsigned long long)nseq);
        if (d == 0 && v != 0)
            return moei_fail(ctx, MOE_ERR_FORMAT, "%s: '%.300s': doc_idx[0] = %lld, expected 0", fn, origin,
                             (long long)v);
        if (v < prev)
            return moei_fail(ctx, MOE_ERR_FORMAT,
                             "%s: '%.300s': doc_idx[%llu] = %lld is less than doc_idx[%llu] = %lld (document indices "
                             "must not decrease)",
                             fn, origin, (unsigned long long)d, (long long)v, (unsigned long long)(d - 1),
                             (long long)prev);
        prev = v;
    }
    if ((uint64_t)prev != nseq)
        return moei_fail(ctx, MOE_ERR_FORMAT,
                         "%s: '%.300s': doc_idx[%llu] = %lld, expected the sequence count %llu (the last document "
                         "must end at the last sequence)",
                         fn, origin, (unsigned long long)(ndoc - 1), (long long)prev, (unsigned long long)nseq);
    out->dtype = code;
    out->itemsize = itemsize;
    out->num_sequences = nseq;
    out->num_documents = ndoc - 1;
    out->num_tokens = (int64_t)(expect / itemsize);
    out->has_modes = has_modes;
    return MOE_OK;
}

/* ------------------------------------------------------------------------------------------------
 * the permutation
 * ---------------------------------------------------------------------------------------------- */

uint64_t moei_dataset_permute(uint64_t seed, uint64_t stream, uint64_t n, uint64_t x)
{
    if (n <= 1) return 0;
    unsigned bits = 64u - (unsigned)__builtin_clzll(n - 1); /* covers [0, n) */
    bits += bits & 1u;                                     /* two equal halves */
    unsigned h = bits / 2;                                 /* <= 32 */
    uint64_t mask = (1ull << h) - 1;
    /* Cycle walking: the network permutes [0, 2^bits); following x's cycle until it re-enters
     * [0, n) restricts it to a permutation of [0, n). Expected steps < 4, as 2^bits < 4n. */
    do {
        uint64_t l = x >> h, r = x & mask;
        for (uint64_t round = 0; round < DS_FEISTEL_ROUNDS; round++) {
            uint32_t w[4];
            moei_rng_block(seed, stream, (round << 32) | r, w);
            uint64_t f = (((uint64_t)w[1] << 32) | w[0]) & mask;
            uint64_t t = l ^ f;
            l = r;
            r = t;
        }
        x = (l << h) | r;
    } while (x >= n);
    return x;
}

/* ------------------------------------------------------------------------------------------------
 * the dataset
 * ---------------------------------------------------------------------------------------------- */

/* A file's bytes: mapped, read into the heap (when mapping fails), or borrowed from the caller. */
typedef struct ds_region {
    const uint8_t *p;
    uint64_t size;
    void *map; /* munmap(map, size) when non-NULL */
    void *heap; /* free(heap) when non-NULL */
} ds_region;

static void region_release(ds_region *r)
{
    if (r->map) munmap(r->map, (size_t)r->size);
    free(r->heap);
    memset(r, 0, sizeof *r);
}

struct moe_dataset {
    moe_ctx *ctx;
    char *origin; /* the text file or the .bin path, for messages */
    int32_t kind;
    int32_t dtype;
    const uint8_t *stream; /* num_tokens tokens of dtype */
    int64_t num_tokens;
    int64_t num_documents;
    int32_t seq_len;
    int32_t vocab_hint;
    int64_t limit;      /* every token must be in [0, limit) */
    uint32_t verified;  /* every token was checked at open */
    uint64_t seed;
    uint64_t split_stream; /* Philox stream of the train/validation split */
    uint64_t epoch_stream; /* stream of epoch e is epoch_stream + e */
    int64_t num_samples, num_train, num_val;
    ds_region idx, bin;
};

static void ds_config_defaults(moe_dataset_config *c)
{
    memset(c, 0, sizeof *c);
    c->struct_size = sizeof *c;
    c->kind = MOE_DATASET_KIND_AUTO;
    c->path = NULL;
    c->seq_len = 256;
    c->vocab_size = 0;
    c->seed = 1234;
    c->validation_fraction = 0.05;
    c->verify_tokens = 1;
}

MOE_API moe_status moe_dataset_config_init(moe_dataset_config *cfg, uint32_t struct_size)
{
    moe_dataset_config d;
    ds_config_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_dataset_config_init");
}

/* Read and check the caller's config (everything but the path's existence). */
static moe_status ds_read_config(moe_ctx *ctx, const char *fn, const moe_dataset_config *cfg, int need_path,
                                 moe_dataset_config *c)
{
    MOEI_CHECK_NOT_NULL(ctx, cfg, fn);
    ds_config_defaults(c);
    moe_status st = moei_config_read(c, sizeof *c, cfg, "moe_dataset_config", fn);
    if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    if (need_path && (!c->path || !c->path[0]))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.path is %s", fn,
                         c->path ? "empty" : "NULL");
    if (c->kind < MOE_DATASET_KIND_AUTO || c->kind > MOE_DATASET_KIND_INDEXED)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.kind = %d is not a moe_dataset_kind", fn,
                         (int)c->kind);
    if (c->seq_len < 0 || c->seq_len >= INT32_MAX)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.seq_len = %d must be in [0, 2^31 - 1)", fn,
                         (int)c->seq_len);
    if (c->vocab_size < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.vocab_size = %d is negative", fn,
                         (int)c->vocab_size);
    if (!(c->validation_fraction >= 0.0 && c->validation_fraction < 1.0)) /* also refuses NaN */
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.validation_fraction = %g must be in [0, 1)",
                         fn, c->validation_fraction);
    if (c->verify_tokens > 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.verify_tokens = %u must be 0 or 1", fn,
                         (unsigned)c->verify_tokens);
    return MOE_OK;
}

/* Scan every token: the first one outside [0, limit) fails; *max_out receives the largest (-1 if none). */
static moe_status ds_scan(moe_ctx *ctx, const char *fn, const moe_dataset *ds, int64_t *max_out)
{
    int64_t mx = -1;
    const uint8_t *b = ds->stream;
    int64_t n = ds->num_tokens;
    if (ds->dtype == MOE_DATASET_DTYPE_U8) {
        /* The common byte case in a tight loop the compiler vectorises. */
        uint8_t m = 0;
        for (int64_t i = 0; i < n; i++) m = b[i] > m ? b[i] : m;
        mx = n > 0 ? m : -1;
    } else {
        int64_t mn = 0;
        for (int64_t i = 0; i < n; i++) {
            int64_t v = ds_token(b, ds->dtype, i);
            mx = v > mx ? v : mx;
            mn = v < mn ? v : mn;
        }
        if (mn < 0) mx = ds->limit; /* force the search below */
    }
    if (mx >= ds->limit) {
        for (int64_t i = 0; i < n; i++) {
            int64_t v = ds_token(b, ds->dtype, i);
            if (v < 0 || v >= ds->limit)
                return moei_fail(ctx, MOE_ERR_FORMAT,
                                 "%s: '%.300s': token %lld = %lld is outside [0, %lld)%s", fn, ds->origin,
                                 (long long)i, (long long)v, (long long)ds->limit,
                                 ds->limit < DS_TOKEN_LIMIT ? " (moe_dataset_config.vocab_size)" : "");
        }
    }
    *max_out = mx;
    return MOE_OK;
}

/* Build the dataset over checked regions; takes ownership of idx and bin on success only. */
static moe_status ds_build(moe_ctx *ctx, const char *fn, const moe_dataset_config *c, int32_t kind,
                           const char *idx_origin, const char *bin_origin, ds_region *idx, ds_region *bin,
                           moe_dataset **out)
{
    moei_idx_info info;
    memset(&info, 0, sizeof info);
    if (kind == MOE_DATASET_KIND_INDEXED) {
        moe_status st = moei_idx_parse(ctx, fn, idx_origin, idx->p, idx->size, bin->size, &info);
        if (st != MOE_OK) return st;
    } else {
        info.dtype = MOE_DATASET_DTYPE_U8;
        info.itemsize = 1;
        info.num_documents = 1;
        info.num_tokens = (int64_t)bin->size; /* a mapped file is smaller than 2^63 bytes */
    }
    moe_dataset *ds = calloc(1, sizeof *ds);
    char *origin = strdup(bin_origin);
    if (!ds || !origin) {
        free(ds);
        free(origin);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    ds->ctx = ctx;
    ds->origin = origin;
    ds->kind = kind;
    ds->dtype = info.dtype;
    ds->stream = bin->p;
    ds->num_tokens = info.num_tokens;
    ds->num_documents = (int64_t)info.num_documents;
    ds->seq_len = c->seq_len;
    ds->limit = c->vocab_size > 0 ? c->vocab_size : DS_TOKEN_LIMIT;
    ds->seed = c->seed;
    ds->split_stream = moei_name_hash("moe_dataset.split");
    ds->epoch_stream = moei_name_hash("moe_dataset.epoch");

    /* Which tokens could be out of range: none for unsigned types whose whole range is allowed. */
    int64_t range_hi = info.dtype == MOE_DATASET_DTYPE_U8 ? 256 : info.dtype == MOE_DATASET_DTYPE_U16 ? 65536 : -1;
    int safe = range_hi > 0 && range_hi <= ds->limit;
    int64_t vocab = 0;
    if (c->verify_tokens && !(kind == MOE_DATASET_KIND_TEXT && safe)) {
        int64_t mx = -1;
        moe_status st = ds_scan(ctx, fn, ds, &mx);
        if (st != MOE_OK) {
            free(ds->origin);
            free(ds);
            return st;
        }
        vocab = mx + 1 > 0 ? mx + 1 : 1;
    } else {
        switch (info.dtype) {
        case MOE_DATASET_DTYPE_U8: vocab = 256; break;
        case MOE_DATASET_DTYPE_I8: vocab = 128; break;
        case MOE_DATASET_DTYPE_U16: vocab = 65536; break;
        case MOE_DATASET_DTYPE_I16: vocab = 32768; break;
        default: vocab = 0; break;
        }
    }
    ds->verified = c->verify_tokens || safe;
    if (kind == MOE_DATASET_KIND_TEXT) vocab = 256;
    if (c->vocab_size > 0) vocab = c->vocab_size;
    ds->vocab_hint = (int32_t)vocab;

    const char *what = kind == MOE_DATASET_KIND_TEXT ? "bytes" : "tokens";
    if (c->seq_len > 0) {
        int64_t n = ds->num_tokens > 0 ? (ds->num_tokens - 1) / c->seq_len : 0;
        if (n == 0) {
            moe_status st = moei_fail(ctx, MOE_ERR_INVALID_ARG,
                                      "%s: moe_dataset_config.seq_len = %d is larger than the data: '%.300s' has %lld "
                                      "%s and one sample needs seq_len + 1 = %lld",
                                      fn, (int)c->seq_len, ds->origin, (long long)ds->num_tokens, what,
                                      (long long)c->seq_len + 1);
            free(ds->origin);
            free(ds);
            return st;
        }
        int64_t nv = 0;
        if (c->validation_fraction > 0.0) {
            nv = (int64_t)llround(c->validation_fraction * (double)n);
            if (nv < 1) nv = 1;
            if (nv >= n) {
                moe_status st = moei_fail(ctx, MOE_ERR_INVALID_ARG,
                                          "%s: moe_dataset_config.validation_fraction = %g holds out %lld of the %lld "
                                          "samples (seq_len %d), leaving none for training",
                                          fn, c->validation_fraction, (long long)(nv > n ? n : nv), (long long)n,
                                          (int)c->seq_len);
                free(ds->origin);
                free(ds);
                return st;
            }
        }
        ds->num_samples = n;
        ds->num_val = nv;
        ds->num_train = n - nv;
    }
    ds->idx = *idx;
    ds->bin = *bin;
    memset(idx, 0, sizeof *idx);
    memset(bin, 0, sizeof *bin);
    moei_ctx_retain(ctx);
    *out = ds;
    return MOE_OK;
}

/* Map a whole regular file read-only; falls back to reading it when mapping is refused. */
static moe_status map_file(moe_ctx *ctx, const char *fn, const char *path, ds_region *r)
{
    memset(r, 0, sizeof *r);
    int fd;
    do {
        fd = open(path, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return moei_fail(ctx, MOE_ERR_IO, "%s: cannot open '%.300s': %s", fn, path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return moei_fail(ctx, MOE_ERR_IO, "%s: cannot stat '%.300s': %s", fn, path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return moei_fail(ctx, MOE_ERR_IO, "%s: '%.300s' is not a regular file", fn, path);
    }
    uint64_t size = (uint64_t)sb.st_size;
    if (size == 0) {
        close(fd);
        return MOE_OK;
    }
    if (size > (uint64_t)SIZE_MAX) {
        close(fd);
        return moei_fail(ctx, MOE_ERR_IO, "%s: '%.300s' is too large to map", fn, path);
    }
    void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m != MAP_FAILED) {
        close(fd);
        r->map = m;
        r->p = m;
        r->size = size;
        return MOE_OK;
    }
    uint8_t *buf = malloc((size_t)size);
    if (!buf) {
        close(fd);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: cannot map '%.300s' and out of memory to read it", fn, path);
    }
    uint64_t got = 0;
    while (got < size) {
        ssize_t k = pread(fd, buf + got, (size_t)(size - got), (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            int e = k < 0 ? errno : EIO;
            free(buf);
            close(fd);
            return moei_fail(ctx, MOE_ERR_IO, "%s: cannot read '%.300s': %s", fn, path,
                             k < 0 ? strerror(e) : "the file shrank while being read");
        }
        got += (uint64_t)k;
    }
    close(fd);
    r->heap = buf;
    r->p = buf;
    r->size = size;
    return MOE_OK;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* path + suffix in a new string, or NULL when out of memory. */
static char *concat(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    char *s = malloc(alen + blen + 1);
    if (!s) return NULL;
    memcpy(s, a, alen);
    memcpy(s + alen, b, blen + 1);
    return s;
}

MOE_API moe_status moe_dataset_open(moe_ctx *ctx, const moe_dataset_config *cfg, moe_dataset **out)
{
    static const char *fn = "moe_dataset_open";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    moe_dataset_config c;
    moe_status st = ds_read_config(ctx, fn, cfg, 1, &c);
    if (st != MOE_OK) return st;

    /* Resolve the kind and the prefix of an indexed dataset. */
    size_t plen = strlen(c.path);
    int32_t kind = c.kind;
    char *idx_path = concat(c.path, plen, ".idx");
    if (!idx_path) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    if (kind != MOE_DATASET_KIND_TEXT && !file_exists(idx_path) &&
        (ends_with(c.path, ".idx") || ends_with(c.path, ".bin"))) {
        /* "data.bin" or "data.idx" names the dataset "data" when data.idx exists. */
        char *alt = concat(c.path, plen - 4, ".idx");
        if (!alt) {
            free(idx_path);
            return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        }
        if (file_exists(alt)) {
            plen -= 4;
            free(idx_path);
            idx_path = alt;
            kind = MOE_DATASET_KIND_INDEXED;
        } else {
            free(alt);
        }
    }
    if (kind == MOE_DATASET_KIND_AUTO) kind = file_exists(idx_path) ? MOE_DATASET_KIND_INDEXED : MOE_DATASET_KIND_TEXT;

    ds_region idx, bin;
    memset(&idx, 0, sizeof idx);
    memset(&bin, 0, sizeof bin);
    if (kind == MOE_DATASET_KIND_TEXT) {
        free(idx_path);
        st = map_file(ctx, fn, c.path, &bin);
        if (st != MOE_OK) return st;
        st = ds_build(ctx, fn, &c, kind, c.path, c.path, &idx, &bin, out);
        region_release(&bin);
        return st;
    }
    char *bin_path = concat(c.path, plen, ".bin");
    if (!bin_path) {
        free(idx_path);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    st = map_file(ctx, fn, idx_path, &idx);
    if (st == MOE_OK) st = map_file(ctx, fn, bin_path, &bin);
    if (st == MOE_OK) st = ds_build(ctx, fn, &c, kind, idx_path, bin_path, &idx, &bin, out);
    region_release(&idx);
    region_release(&bin);
    free(idx_path);
    free(bin_path);
    return st;
}

moe_status moei_dataset_open_memory(moe_ctx *ctx, const moe_dataset_config *cfg, const void *idx, uint64_t idx_size,
                                    const void *data, uint64_t data_size, moe_dataset **out)
{
    static const char *fn = "moei_dataset_open_memory";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    moe_dataset_config c;
    moe_status st = ds_read_config(ctx, fn, cfg, 0, &c);
    if (st != MOE_OK) return st;
    if (c.kind != MOE_DATASET_KIND_TEXT && c.kind != MOE_DATASET_KIND_INDEXED)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_dataset_config.kind must be TEXT or INDEXED", fn);
    MOEI_CHECK_ARG(ctx, data || data_size == 0, fn, "argument 'data' is NULL");
    MOEI_CHECK_ARG(ctx, idx || idx_size == 0 || c.kind == MOE_DATASET_KIND_TEXT, fn, "argument 'idx' is NULL");
    MOEI_CHECK_ARG(ctx, data_size < ((uint64_t)1 << 62), fn, "argument 'data_size' is too large");
    ds_region ri = {idx, idx_size, NULL, NULL};
    ds_region rb = {data, data_size, NULL, NULL};
    return ds_build(ctx, fn, &c, c.kind, "(memory).idx", c.kind == MOE_DATASET_KIND_TEXT ? "(memory)" : "(memory).bin",
                    &ri, &rb, out);
}

MOE_API void moe_dataset_destroy(moe_dataset *ds)
{
    if (!ds) return;
    region_release(&ds->idx);
    region_release(&ds->bin);
    moei_ctx_release(ds->ctx);
    free(ds->origin);
    free(ds);
}

/* ------------------------------------------------------------------------------------------------
 * queries and sampling
 * ---------------------------------------------------------------------------------------------- */

MOE_API moe_status moe_dataset_num_samples(const moe_dataset *ds, int32_t split, int64_t *count)
{
    static const char *fn = "moe_dataset_num_samples";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    MOEI_CHECK_NOT_NULL(ds->ctx, count, fn);
    if (split == MOE_DATASET_SPLIT_TRAIN)
        *count = ds->num_train;
    else if (split == MOE_DATASET_SPLIT_VALIDATION)
        *count = ds->num_val;
    else
        return moei_fail(ds->ctx, MOE_ERR_INVALID_ARG, "%s: split = %d is not a moe_dataset_split", fn, (int)split);
    return MOE_OK;
}

MOE_API moe_status moe_dataset_num_tokens(const moe_dataset *ds, int64_t *count)
{
    static const char *fn = "moe_dataset_num_tokens";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    MOEI_CHECK_NOT_NULL(ds->ctx, count, fn);
    *count = ds->num_tokens;
    return MOE_OK;
}

MOE_API moe_status moe_dataset_num_documents(const moe_dataset *ds, int64_t *count)
{
    static const char *fn = "moe_dataset_num_documents";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    MOEI_CHECK_NOT_NULL(ds->ctx, count, fn);
    *count = ds->num_documents;
    return MOE_OK;
}

MOE_API moe_status moe_dataset_vocab_size(const moe_dataset *ds, int32_t *vocab_size)
{
    static const char *fn = "moe_dataset_vocab_size";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    MOEI_CHECK_NOT_NULL(ds->ctx, vocab_size, fn);
    *vocab_size = ds->vocab_hint;
    return MOE_OK;
}

MOE_API moe_status moe_dataset_format(const moe_dataset *ds, int32_t *kind, int32_t *dtype)
{
    MOEI_CHECK_NOT_NULL(NULL, ds, "moe_dataset_format");
    if (kind) *kind = ds->kind;
    if (dtype) *dtype = ds->dtype;
    return MOE_OK;
}

MOE_API moe_status moe_dataset_seq_len(const moe_dataset *ds, int32_t *seq_len)
{
    static const char *fn = "moe_dataset_seq_len";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    MOEI_CHECK_NOT_NULL(ds->ctx, seq_len, fn);
    *seq_len = ds->seq_len;
    return MOE_OK;
}

/* Check split and index for sampling; names `index_name` in messages. */
static moe_status ds_check_sampling(const moe_dataset *ds, const char *fn, int32_t split, int64_t index,
                                    const char *index_name)
{
    if (split != MOE_DATASET_SPLIT_TRAIN && split != MOE_DATASET_SPLIT_VALIDATION)
        return moei_fail(ds->ctx, MOE_ERR_INVALID_ARG, "%s: split = %d is not a moe_dataset_split", fn, (int)split);
    if (index < 0)
        return moei_fail(ds->ctx, MOE_ERR_INVALID_ARG, "%s: %s = %lld is negative", fn, index_name, (long long)index);
    if (ds->seq_len == 0)
        return moei_fail(ds->ctx, MOE_ERR_STATE,
                         "%s: the dataset was opened with seq_len = 0 (counts only) and has no samples", fn);
    if (split == MOE_DATASET_SPLIT_VALIDATION && ds->num_val == 0)
        return moei_fail(ds->ctx, MOE_ERR_INVALID_ARG,
                         "%s: split = MOE_DATASET_SPLIT_VALIDATION, but the dataset holds out no samples "
                         "(moe_dataset_config.validation_fraction = 0)",
                         fn);
    return MOE_OK;
}

/* Stream position of the first token of sample `index` of `split` (checked by the caller). */
static int64_t ds_position(const moe_dataset *ds, int32_t split, int64_t index)
{
    uint64_t n = (uint64_t)ds->num_samples, nv = (uint64_t)ds->num_val;
    uint64_t slot; /* position in the split permutation: validation first, then training */
    if (split == MOE_DATASET_SPLIT_VALIDATION) {
        slot = (uint64_t)index % nv;
    } else {
        uint64_t nt = (uint64_t)ds->num_train;
        uint64_t epoch = (uint64_t)index / nt, i = (uint64_t)index % nt;
        slot = nv + moei_dataset_permute(ds->seed, ds->epoch_stream + epoch, nt, i);
    }
    uint64_t sample = moei_dataset_permute(ds->seed, ds->split_stream, n, slot);
    return (int64_t)sample * ds->seq_len;
}

MOE_API moe_status moe_dataset_sample_position(const moe_dataset *ds, int32_t split, int64_t index,
                                               int64_t *first_token)
{
    static const char *fn = "moe_dataset_sample_position";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    MOEI_CHECK_NOT_NULL(ds->ctx, first_token, fn);
    moe_status st = ds_check_sampling(ds, fn, split, index, "index");
    if (st != MOE_OK) return st;
    *first_token = ds_position(ds, split, index);
    return MOE_OK;
}

MOE_API moe_status moe_dataset_batch(const moe_dataset *ds, int32_t split, int64_t first_sample, int32_t count,
                                     int32_t *tokens, int32_t *targets)
{
    static const char *fn = "moe_dataset_batch";
    MOEI_CHECK_NOT_NULL(NULL, ds, fn);
    moe_ctx *ctx = ds->ctx;
    if (count < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: count = %d is negative", fn, (int)count);
    moe_status st = ds_check_sampling(ds, fn, split, first_sample, "first_sample");
    if (st != MOE_OK) return st;
    if (count == 0) return MOE_OK;
    MOEI_CHECK_NOT_NULL(ctx, tokens, fn);
    MOEI_CHECK_NOT_NULL(ctx, targets, fn);
    if (first_sample > INT64_MAX - count)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: first_sample = %lld + count = %d overflows int64", fn,
                         (long long)first_sample, (int)count);
    const int64_t L = ds->seq_len;
    if (!ds->verified) {
        /* Check first, so a bad token leaves the caller's buffers untouched. */
        for (int32_t k = 0; k < count; k++) {
            int64_t pos = ds_position(ds, split, first_sample + k);
            for (int64_t t = 0; t <= L; t++) {
                int64_t v = ds_token(ds->stream, ds->dtype, pos + t);
                if (v < 0 || v >= ds->limit)
                    return moei_fail(ctx, MOE_ERR_FORMAT,
                                     "%s: '%.300s': token %lld = %lld (in sample %lld) is outside [0, %lld)%s", fn,
                                     ds->origin, (long long)(pos + t), (long long)v, (long long)(first_sample + k),
                                     (long long)ds->limit,
                                     ds->limit < DS_TOKEN_LIMIT ? " (moe_dataset_config.vocab_size)" : "");
            }
        }
    }
    for (int32_t k = 0; k < count; k++) {
        int64_t pos = ds_position(ds, split, first_sample + k);
        ds_convert(ds->stream, ds->dtype, pos, L, tokens + (size_t)k * (size_t)L);
        ds_convert(ds->stream, ds->dtype, pos + 1, L, targets + (size_t)k * (size_t)L);
    }
    return MOE_OK;
}
