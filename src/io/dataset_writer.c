/* Writer of Megatron indexed datasets (.bin + .idx, MMIDIDX version 1), as Megatron's builder lays
 * them out: one sequence per document (split at 2^31 - 1 tokens), pointers back to back from byte 0,
 * document indices with a leading 0. Invariant: prefix.idx only ever appears beside the complete
 * prefix.bin it describes, because both are written to synced temp files and the .idx is renamed
 * into place last; every file-system call goes through io/fsio.h so tests can fail each one. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/ctx.h"
#include "core/error.h"
#include "io/dataset.h"
#include "io/fsio.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "indexed datasets are little-endian; this writer assumes a little-endian host"
#endif

/* Bytes of .bin collected before one write: few, large writes. */
#define DW_BUF_CAP ((size_t)1 << 20)

enum { DW_OPEN = 0, DW_COMMITTED = 1, DW_FAILED = 2 };

struct moe_dataset_writer {
    moe_ctx *ctx;
    char *bin_path, *idx_path, *bin_tmp, *idx_tmp;
    int32_t dtype;
    uint32_t itemsize;
    int64_t max_token; /* largest token the dtype holds */
    int fd;            /* the .bin temp file, -1 once closed */
    uint8_t *buf;      /* pending .bin bytes */
    size_t buf_len;
    int32_t *sizes; /* finished sequences */
    int64_t nseq, cap_seq;
    int64_t *docs; /* document indices, docs[0] = 0 */
    int64_t ndoc, cap_doc;
    int64_t cur;        /* tokens of the sequence being written */
    int64_t doc_tokens; /* tokens of the document being written */
    int state;
    int retained; /* the ctx counts this writer (set once create succeeds) */
};

static char *dw_strcat(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    char *s = malloc(n + m + 1);
    if (!s) return NULL;
    memcpy(s, a, n);
    memcpy(s + n, b, m + 1);
    return s;
}

static char *dw_temp(const char *path)
{
    size_t n = strlen(path) + 32;
    char *t = malloc(n);
    if (t) snprintf(t, n, "%s.tmp.%ld", path, (long)getpid());
    return t;
}

static int64_t dw_max_token(int32_t dtype)
{
    switch (dtype) {
    case MOE_DATASET_DTYPE_U8: return 255;
    case MOE_DATASET_DTYPE_I8: return 127;
    case MOE_DATASET_DTYPE_I16: return 32767;
    case MOE_DATASET_DTYPE_U16: return 65535;
    case MOE_DATASET_DTYPE_I32:
    case MOE_DATASET_DTYPE_I64: return (int64_t)INT32_MAX - 1;
    default: return -1;
    }
}

static moe_status dw_check_dtype(moe_ctx *ctx, const char *fn, int32_t dtype)
{
    if (dw_max_token(dtype) >= 0) return MOE_OK;
    const char *name = moei_dataset_dtype_name(dtype);
    if (name)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: dtype = %d (%s) is not an integer type; tokens are integers", fn,
                         (int)dtype, name);
    return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: dtype = %d is not a moe_dataset_dtype", fn, (int)dtype);
}

/* The first token outside [0, max]: its index, or -1. */
static int64_t dw_find_bad(const int32_t *tokens, int64_t count, int64_t max)
{
    for (int64_t i = 0; i < count; i++)
        if (tokens[i] < 0 || tokens[i] > max) return i;
    return -1;
}

static void dw_cleanup_files(moe_dataset_writer *w)
{
    if (w->fd >= 0) {
        (void)moei_fs_close(w->fd);
        w->fd = -1;
        (void)moei_fs_unlink(w->bin_tmp);
    }
}

MOE_API moe_status moe_dataset_writer_create(moe_ctx *ctx, const char *prefix, int32_t dtype,
                                             moe_dataset_writer **out)
{
    static const char *fn = "moe_dataset_writer_create";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, prefix, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    MOEI_CHECK_ARG(ctx, prefix[0] != '\0', fn, "argument 'prefix' is empty");
    moe_status st = dw_check_dtype(ctx, fn, dtype);
    if (st != MOE_OK) return st;
    moe_dataset_writer *w = calloc(1, sizeof *w);
    if (!w) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    w->ctx = ctx;
    w->fd = -1;
    w->dtype = dtype;
    w->itemsize = moei_dataset_dtype_size(dtype);
    w->max_token = dw_max_token(dtype);
    w->bin_path = dw_strcat(prefix, ".bin");
    w->idx_path = dw_strcat(prefix, ".idx");
    w->bin_tmp = w->bin_path ? dw_temp(w->bin_path) : NULL;
    w->idx_tmp = w->idx_path ? dw_temp(w->idx_path) : NULL;
    w->buf = malloc(DW_BUF_CAP);
    w->cap_doc = 16;
    w->docs = malloc((size_t)w->cap_doc * sizeof *w->docs);
    if (!w->bin_path || !w->idx_path || !w->bin_tmp || !w->idx_tmp || !w->buf || !w->docs) {
        moe_dataset_writer_destroy(w);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    w->docs[0] = 0;
    w->ndoc = 1;
    w->fd = moei_fs_open(w->bin_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (w->fd < 0) {
        int e = errno;
        st = moei_fail(ctx, MOE_ERR_IO, "%s: open of '%.300s' failed: %s", fn, w->bin_tmp, strerror(e));
        moe_dataset_writer_destroy(w);
        return st;
    }
    moei_ctx_retain(ctx);
    w->retained = 1;
    *out = w;
    return MOE_OK;
}

MOE_API void moe_dataset_writer_destroy(moe_dataset_writer *w)
{
    if (!w) return;
    dw_cleanup_files(w);
    if (w->retained) moei_ctx_release(w->ctx);
    free(w->bin_path);
    free(w->idx_path);
    free(w->bin_tmp);
    free(w->idx_tmp);
    free(w->buf);
    free(w->sizes);
    free(w->docs);
    free(w);
}

static moe_status dw_check_state(moe_dataset_writer *w, const char *fn)
{
    if (w->state == DW_COMMITTED)
        return moei_fail(w->ctx, MOE_ERR_STATE, "%s: the writer has already committed its dataset", fn);
    if (w->state == DW_FAILED)
        return moei_fail(w->ctx, MOE_ERR_STATE, "%s: an earlier call on this writer failed; destroy it", fn);
    return MOE_OK;
}

static moe_status dw_flush(moe_dataset_writer *w, const char *fn)
{
    if (w->buf_len == 0) return MOE_OK;
    if (moei_fs_write(w->fd, w->buf, w->buf_len) != 0) {
        int e = errno;
        w->state = DW_FAILED;
        dw_cleanup_files(w);
        return moei_fail(w->ctx, MOE_ERR_IO, "%s: write of '%.300s' failed: %s", fn, w->bin_tmp, strerror(e));
    }
    w->buf_len = 0;
    return MOE_OK;
}

static moe_status dw_push_sequence(moe_dataset_writer *w, const char *fn)
{
    if (w->nseq == w->cap_seq) {
        int64_t cap = w->cap_seq ? 2 * w->cap_seq : 64;
        int32_t *s = realloc(w->sizes, (size_t)cap * sizeof *s);
        if (!s) {
            w->state = DW_FAILED;
            dw_cleanup_files(w);
            return moei_fail(w->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        }
        w->sizes = s;
        w->cap_seq = cap;
    }
    w->sizes[w->nseq++] = (int32_t)w->cur;
    w->cur = 0;
    return MOE_OK;
}

/* Append valid tokens to the .bin buffer, starting new sequences at 2^31 - 1 tokens. */
static moe_status dw_append(moe_dataset_writer *w, const char *fn, const int32_t *tokens, int64_t count)
{
    const uint32_t isz = w->itemsize;
    int64_t done = 0;
    while (done < count) {
        if (w->cur == INT32_MAX) {
            moe_status st = dw_push_sequence(w, fn);
            if (st != MOE_OK) return st;
        }
        int64_t room = (int64_t)((DW_BUF_CAP - w->buf_len) / isz);
        if (room == 0) {
            moe_status st = dw_flush(w, fn);
            if (st != MOE_OK) return st;
            continue;
        }
        int64_t take = count - done;
        if (take > room) take = room;
        if (take > INT32_MAX - w->cur) take = INT32_MAX - w->cur;
        uint8_t *dst = w->buf + w->buf_len;
        const int32_t *src = tokens + done;
        switch (w->dtype) {
        case MOE_DATASET_DTYPE_U8:
        case MOE_DATASET_DTYPE_I8:
            for (int64_t i = 0; i < take; i++) dst[i] = (uint8_t)src[i];
            break;
        case MOE_DATASET_DTYPE_I16:
        case MOE_DATASET_DTYPE_U16:
            for (int64_t i = 0; i < take; i++) {
                uint16_t v = (uint16_t)src[i];
                memcpy(dst + 2 * i, &v, 2);
            }
            break;
        case MOE_DATASET_DTYPE_I32:
            memcpy(dst, src, (size_t)take * 4);
            break;
        default:
            for (int64_t i = 0; i < take; i++) {
                int64_t v = src[i];
                memcpy(dst + 8 * i, &v, 8);
            }
            break;
        }
        w->buf_len += (size_t)take * isz;
        w->cur += take;
        w->doc_tokens += take;
        done += take;
    }
    return MOE_OK;
}

MOE_API moe_status moe_dataset_writer_add_tokens(moe_dataset_writer *w, const int32_t *tokens, int64_t count)
{
    static const char *fn = "moe_dataset_writer_add_tokens";
    MOEI_CHECK_NOT_NULL(NULL, w, fn);
    moe_status st = dw_check_state(w, fn);
    if (st != MOE_OK) return st;
    if (count < 0)
        return moei_fail(w->ctx, MOE_ERR_INVALID_ARG, "%s: count = %lld is negative", fn, (long long)count);
    if (count == 0) return MOE_OK;
    MOEI_CHECK_NOT_NULL(w->ctx, tokens, fn);
    int64_t bad = dw_find_bad(tokens, count, w->max_token);
    if (bad >= 0)
        return moei_fail(w->ctx, MOE_ERR_INVALID_ARG, "%s: tokens[%lld] = %d is outside [0, %lld] of dtype %s", fn,
                         (long long)bad, (int)tokens[bad], (long long)w->max_token,
                         moei_dataset_dtype_name(w->dtype));
    return dw_append(w, fn, tokens, count);
}

static moe_status dw_end_document(moe_dataset_writer *w, const char *fn)
{
    if (w->cur > 0) {
        moe_status st = dw_push_sequence(w, fn);
        if (st != MOE_OK) return st;
    }
    if (w->ndoc == w->cap_doc) {
        int64_t cap = 2 * w->cap_doc;
        int64_t *d = realloc(w->docs, (size_t)cap * sizeof *d);
        if (!d) {
            w->state = DW_FAILED;
            dw_cleanup_files(w);
            return moei_fail(w->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        }
        w->docs = d;
        w->cap_doc = cap;
    }
    w->docs[w->ndoc++] = w->nseq;
    w->doc_tokens = 0;
    return MOE_OK;
}

MOE_API moe_status moe_dataset_writer_end_document(moe_dataset_writer *w)
{
    static const char *fn = "moe_dataset_writer_end_document";
    MOEI_CHECK_NOT_NULL(NULL, w, fn);
    moe_status st = dw_check_state(w, fn);
    if (st != MOE_OK) return st;
    return dw_end_document(w, fn);
}

/* The .idx bytes for the sequences and documents collected so far. */
static uint8_t *dw_build_index(const moe_dataset_writer *w, size_t *len)
{
    size_t n = MOEI_IDX_HEADER_SIZE + (size_t)w->nseq * 12 + (size_t)w->ndoc * 8;
    uint8_t *b = malloc(n);
    if (!b) return NULL;
    uint8_t *p = b;
    memcpy(p, moei_idx_magic, 9);
    p += 9;
    uint64_t u = 1;
    memcpy(p, &u, 8);
    p += 8;
    *p++ = (uint8_t)w->dtype;
    u = (uint64_t)w->nseq;
    memcpy(p, &u, 8);
    p += 8;
    u = (uint64_t)w->ndoc;
    memcpy(p, &u, 8);
    p += 8;
    memcpy(p, w->sizes ? (const void *)w->sizes : (const void *)"", (size_t)w->nseq * 4);
    p += (size_t)w->nseq * 4;
    int64_t ptr = 0;
    for (int64_t i = 0; i < w->nseq; i++) {
        memcpy(p, &ptr, 8);
        p += 8;
        ptr += (int64_t)w->sizes[i] * w->itemsize;
    }
    memcpy(p, w->docs, (size_t)w->ndoc * 8);
    *len = n;
    return b;
}

MOE_API moe_status moe_dataset_writer_commit(moe_dataset_writer *w)
{
    static const char *fn = "moe_dataset_writer_commit";
    MOEI_CHECK_NOT_NULL(NULL, w, fn);
    moe_ctx *ctx = w->ctx;
    moe_status st = dw_check_state(w, fn);
    if (st != MOE_OK) return st;
    if (w->doc_tokens > 0) {
        st = dw_end_document(w, fn);
        if (st != MOE_OK) return st;
    }
    st = dw_flush(w, fn);
    if (st != MOE_OK) return st;

    const char *what = NULL, *where = w->bin_tmp;
    int err = 0, idx_fd = -1, idx_created = 0, idx_removed = 0, bin_renamed = 0;
    size_t idx_len = 0;
    uint8_t *idx = dw_build_index(w, &idx_len);
    if (!idx) {
        w->state = DW_FAILED;
        dw_cleanup_files(w);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory for the index", fn);
    }
    if (moei_fs_fsync(w->fd) != 0) {
        what = "fsync";
        err = errno;
        goto fail;
    }
    {
        int r = moei_fs_close(w->fd);
        w->fd = -1;
        if (r != 0) {
            what = "close";
            err = errno;
            goto fail;
        }
    }
    where = w->idx_tmp;
    idx_fd = moei_fs_open(w->idx_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (idx_fd < 0) {
        what = "open";
        err = errno;
        goto fail;
    }
    idx_created = 1;
    if (moei_fs_write(idx_fd, idx, idx_len) != 0) {
        what = "write";
        err = errno;
        goto fail;
    }
    if (moei_fs_fsync(idx_fd) != 0) {
        what = "fsync";
        err = errno;
        goto fail;
    }
    {
        int r = moei_fs_close(idx_fd);
        idx_fd = -1;
        if (r != 0) {
            what = "close";
            err = errno;
            goto fail;
        }
    }
    /* A previous dataset stops existing before its .bin is replaced, so no reader ever pairs an old
     * .idx with the new .bin. */
    where = w->idx_path;
    if (moei_fs_unlink(w->idx_path) != 0 && errno != ENOENT) {
        what = "unlink";
        err = errno;
        goto fail;
    }
    idx_removed = 1;
    where = w->bin_path;
    if (moei_fs_rename(w->bin_tmp, w->bin_path) != 0) {
        what = "rename";
        err = errno;
        goto fail;
    }
    bin_renamed = 1;
    where = w->idx_path;
    if (moei_fs_rename(w->idx_tmp, w->idx_path) != 0) {
        what = "rename";
        err = errno;
        goto fail;
    }
    free(idx);
    w->state = DW_COMMITTED;
    if (moei_fs_fsync_parent(w->idx_path) != 0) {
        err = errno;
        return moei_fail(ctx, MOE_ERR_IO, "%s: fsync of the directory of '%.300s' failed: %s", fn, w->idx_path,
                         strerror(err));
    }
    return MOE_OK;

fail:
    free(idx);
    w->state = DW_FAILED;
    if (idx_fd >= 0) (void)moei_fs_close(idx_fd);
    if (idx_created) (void)moei_fs_unlink(w->idx_tmp);
    if (w->fd >= 0) {
        (void)moei_fs_close(w->fd);
        w->fd = -1;
    }
    if (!bin_renamed) (void)moei_fs_unlink(w->bin_tmp);
    /* Once the old index is gone, a .bin at the destination (the old one or the new one) belongs
     * to no dataset: remove it, so a failure leaves nothing rather than a stray file. */
    if (idx_removed) (void)moei_fs_unlink(w->bin_path);
    return moei_fail(ctx, MOE_ERR_IO, "%s: %s of '%.300s' failed: %s", fn, what, where, strerror(err));
}

MOE_API moe_status moe_dataset_write_indexed(moe_ctx *ctx, const char *prefix, int32_t dtype, const int32_t *tokens,
                                             int64_t num_tokens, const int64_t *doc_lengths, int64_t num_docs)
{
    static const char *fn = "moe_dataset_write_indexed";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, prefix, fn);
    MOEI_CHECK_ARG(ctx, prefix[0] != '\0', fn, "argument 'prefix' is empty");
    moe_status st = dw_check_dtype(ctx, fn, dtype);
    if (st != MOE_OK) return st;
    if (num_tokens < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: num_tokens = %lld is negative", fn, (long long)num_tokens);
    if (num_docs < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: num_docs = %lld is negative", fn, (long long)num_docs);
    MOEI_CHECK_ARG(ctx, tokens || num_tokens == 0, fn, "argument 'tokens' is NULL");
    MOEI_CHECK_ARG(ctx, doc_lengths || num_docs == 0, fn, "argument 'doc_lengths' is NULL");
    int64_t sum = 0;
    for (int64_t d = 0; d < num_docs; d++) {
        if (doc_lengths[d] < 0 || doc_lengths[d] > num_tokens - sum)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                             "%s: doc_lengths[%lld] = %lld is %s", fn, (long long)d, (long long)doc_lengths[d],
                             doc_lengths[d] < 0 ? "negative" : "more than the tokens left (num_tokens is too small)");
        sum += doc_lengths[d];
    }
    if (sum != num_tokens)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: doc_lengths sum to %lld but num_tokens = %lld", fn,
                         (long long)sum, (long long)num_tokens);
    int64_t bad = dw_find_bad(tokens, num_tokens, dw_max_token(dtype));
    if (bad >= 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tokens[%lld] = %d is outside [0, %lld] of dtype %s", fn,
                         (long long)bad, (int)tokens[bad], (long long)dw_max_token(dtype),
                         moei_dataset_dtype_name(dtype));
    moe_dataset_writer *w = NULL;
    st = moe_dataset_writer_create(ctx, prefix, dtype, &w);
    if (st != MOE_OK) return st;
    int64_t off = 0;
    for (int64_t d = 0; d < num_docs && st == MOE_OK; d++) {
        st = dw_append(w, fn, tokens + off, doc_lengths[d]);
        if (st == MOE_OK) st = dw_end_document(w, fn);
        off += doc_lengths[d];
    }
    if (st == MOE_OK) st = moe_dataset_writer_commit(w);
    moe_dataset_writer_destroy(w);
    return st;
}
