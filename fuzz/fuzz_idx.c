/* libFuzzer target: the Megatron .idx parser and the sampler on arbitrary bytes. Input layout:
 *   byte 0      control: bits 0-2 seq_len - 1, bit 3 verify_tokens, bit 4 hold out 25% for
 *               validation, bit 5 read everything after the header as a text file
 *   bytes 1-4   little-endian length of the .idx part (clamped to what follows)
 *   then        the .idx bytes, then the .bin bytes
 * A parse either fails cleanly (MOE_ERR_FORMAT, or MOE_ERR_INVALID_ARG when seq_len leaves no sample)
 * or yields a dataset whose every batch equals the tokens decoded here from the .bin at the reported
 * positions. Any sanitizer report or abort() is a finding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/dataset.h"
#include "moe/ctx.h"
#include "moe/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static moe_ctx *fuzz_ctx(void)
{
    static moe_ctx *ctx;
    if (!ctx && moe_ctx_create(NULL, &ctx) != MOE_OK) abort();
    return ctx;
}

/* Token i of the stream, decoded independently of the library (little-endian, signed types extended). */
static int64_t decode(const uint8_t *b, int32_t dtype, int64_t i)
{
    uint64_t v = 0;
    int w = dtype == MOE_DATASET_DTYPE_U8 || dtype == MOE_DATASET_DTYPE_I8     ? 1
            : dtype == MOE_DATASET_DTYPE_I16 || dtype == MOE_DATASET_DTYPE_U16 ? 2
            : dtype == MOE_DATASET_DTYPE_I32                                   ? 4
                                                                               : 8;
    for (int k = 0; k < w; k++) v |= (uint64_t)b[(size_t)i * (size_t)w + (size_t)k] << (8 * k);
    switch (dtype) {
    case MOE_DATASET_DTYPE_I8: return (int8_t)v;
    case MOE_DATASET_DTYPE_I16: return (int16_t)v;
    case MOE_DATASET_DTYPE_I32: return (int32_t)v;
    case MOE_DATASET_DTYPE_I64: return (int64_t)v;
    default: return (int64_t)v;
    }
}

static void check_split(moe_ctx *ctx, moe_dataset *ds, int32_t split, const uint8_t *bin, int32_t dtype, int64_t T,
                        int32_t L, uint32_t verified)
{
    int64_t n = 0;
    if (moe_dataset_num_samples(ds, split, &n) != MOE_OK || n < 0) abort();
    if (n == 0) return;
    int32_t tok[8], tgt[8];
    for (int64_t i = 0; i < n && i < 32; i++) {
        int64_t idx = i * 7919 + (i & 1) * n; /* also indices past one epoch */
        int64_t pos = -1;
        if (moe_dataset_sample_position(ds, split, idx, &pos) != MOE_OK) abort();
        if (pos < 0 || pos % L != 0 || pos + L + 1 > T) abort();
        moe_status st = moe_dataset_batch(ds, split, idx, 1, tok, tgt);
        if (st == MOE_ERR_FORMAT && !verified) continue; /* an out-of-range token, reported */
        if (st != MOE_OK) abort();
        for (int32_t t = 0; t < L; t++)
            if (tok[t] != decode(bin, dtype, pos + t) || tgt[t] != decode(bin, dtype, pos + t + 1)) abort();
    }
    (void)ctx;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5) return 0;
    moe_ctx *ctx = fuzz_ctx();
    const uint8_t ctl = data[0];
    size_t idx_len = (size_t)data[1] | (size_t)data[2] << 8 | (size_t)data[3] << 16 | (size_t)data[4] << 24;
    const uint8_t *rest = data + 5;
    size_t nrest = size - 5;
    const int text = (ctl >> 5) & 1;
    if (text) idx_len = 0;
    if (idx_len > nrest) idx_len = nrest;
    /* Separate exact-size copies: a read past either part is a sanitizer report, not a silent
     * read of the neighbouring part. */
    uint8_t *idx = malloc(idx_len ? idx_len : 1), *bin = malloc(nrest - idx_len ? nrest - idx_len : 1);
    if (!idx || !bin) abort();
    memcpy(idx, rest, idx_len);
    memcpy(bin, rest + idx_len, nrest - idx_len);
    const uint64_t bin_len = nrest - idx_len;

    moe_dataset_config cfg;
    moe_dataset_config_init(&cfg, sizeof cfg);
    cfg.kind = text ? MOE_DATASET_KIND_TEXT : MOE_DATASET_KIND_INDEXED;
    cfg.seq_len = 1 + (ctl & 7);
    cfg.verify_tokens = (ctl >> 3) & 1;
    cfg.validation_fraction = (ctl >> 4) & 1 ? 0.25 : 0.0;
    cfg.seed = size;

    moei_idx_info info;
    moe_status pst = text ? MOE_ERR_FORMAT : moei_idx_parse(ctx, "fuzz", "(input)", idx, idx_len, bin_len, &info);
    moe_dataset *ds = NULL;
    moe_status st = moei_dataset_open_memory(ctx, &cfg, idx, idx_len, bin, bin_len, &ds);
    if (st == MOE_OK) {
        int32_t kind = -1, dtype = -1;
        int64_t T = -1, docs = -1, ntrain = 0, nval = 0;
        if (moe_dataset_format(ds, &kind, &dtype) != MOE_OK || moe_dataset_num_tokens(ds, &T) != MOE_OK ||
            moe_dataset_num_documents(ds, &docs) != MOE_OK)
            abort();
        if (!text) {
            /* The dataset is what the parser saw. */
            if (pst != MOE_OK || dtype != info.dtype || T != info.num_tokens || docs != (int64_t)info.num_documents)
                abort();
            if ((uint64_t)T * info.itemsize != bin_len) abort();
        } else if (kind != MOE_DATASET_KIND_TEXT || (uint64_t)T != bin_len) {
            abort();
        }
        moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_TRAIN, &ntrain);
        moe_dataset_num_samples(ds, MOE_DATASET_SPLIT_VALIDATION, &nval);
        if (ntrain + nval != (T - 1) / cfg.seq_len) abort();
        check_split(ctx, ds, MOE_DATASET_SPLIT_TRAIN, bin, dtype, T, cfg.seq_len, cfg.verify_tokens);
        check_split(ctx, ds, MOE_DATASET_SPLIT_VALIDATION, bin, dtype, T, cfg.seq_len, cfg.verify_tokens);
        moe_dataset_destroy(ds);
    } else if (st != MOE_ERR_FORMAT && st != MOE_ERR_INVALID_ARG) {
        abort();
    } else if (st == MOE_ERR_FORMAT && !text && pst == MOE_OK && !cfg.verify_tokens) {
        abort(); /* a valid index must open when its tokens are not scanned */
    } else if (moe_ctx_last_error(ctx)[0] == '\0') {
        abort();
    }
    free(idx);
    free(bin);
    return 0;
}
