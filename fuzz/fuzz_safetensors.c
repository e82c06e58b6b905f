/* libFuzzer target: the safetensors parser on arbitrary bytes. A parse either fails cleanly or yields a
 * handle whose every view lies inside the input; each accepted file is also re-written with the writer
 * and must parse again to the same tensors. Any sanitizer report or abort() is a finding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "moe/ctx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static moe_ctx *fuzz_ctx(void)
{
    static moe_ctx *ctx;
    if (!ctx && moe_ctx_create(NULL, &ctx) != MOE_OK) abort();
    return ctx;
}

/* Check the handle's invariants and touch every byte it hands out. */
static void check_file(moe_ctx *ctx, const moei_st_file *f, const uint8_t *base, size_t size)
{
    uint64_t expect = 0;
    volatile uint8_t sink = 0;
    for (int64_t i = 0; i < moei_st_count(f); i++) {
        const moei_st_tensor *t = moei_st_at(f, i);
        if (!t || t->offset != expect || moei_st_find(f, t->name) != t) abort();
        expect = t->offset + t->nbytes;
        if (t->nbytes) {
            const uint8_t *p = t->data;
            if (p < base || p + t->nbytes > base + size) abort();
            for (uint64_t k = 0; k < t->nbytes; k++) sink ^= p[k];
        }
        for (int32_t d = 0; d < t->ndim; d++)
            if (t->shape[d] < 0) abort();
        if ((t->dtype == MOE_DTYPE_F32 || t->dtype == MOE_DTYPE_BF16 || t->dtype == MOE_DTYPE_F16) && t->numel > 0) {
            float v[16];
            int64_t n = t->numel < 16 ? t->numel : 16;
            if (moei_st_read_f32(ctx, t, t->numel - n, n, v) != MOE_OK) abort();
        }
    }
    if (expect != moei_st_data_size(f)) abort();
    for (int64_t i = 0; i < moei_st_metadata_count(f); i++) {
        const char *k = NULL, *v = NULL;
        if (moei_st_metadata_at(f, i, &k, &v) != 0 || moei_st_metadata_find(f, k) != v) abort();
    }
    (void)sink;
}

/* Write the accepted tensors back out (when the writer can express them) and parse the result. */
static void rewrite(moe_ctx *ctx, const moei_st_file *f)
{
    moei_st_writer *w = NULL;
    if (moei_st_writer_create(ctx, &w) != MOE_OK) abort();
    for (int64_t i = 0; i < moei_st_count(f); i++) {
        const moei_st_tensor *t = moei_st_at(f, i);
        /* Names the writer refuses: empty, cut short by an escaped NUL, or dtypes/ranks it lacks. */
        if (moei_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes) != MOE_OK) goto out;
    }
    for (int64_t i = 0; i < moei_st_metadata_count(f); i++) {
        const char *k = NULL, *v = NULL;
        moei_st_metadata_at(f, i, &k, &v);
        if (moei_st_writer_set_metadata(w, k, v) != MOE_OK) goto out;
    }
    void *buf = NULL;
    uint64_t n = 0;
    if (moei_st_writer_serialize(w, &buf, &n) != MOE_OK) goto out; /* e.g. names equal after NUL cuts */
    moei_st_file *g = NULL;
    if (moei_st_open_memory(ctx, buf, n, &g) != MOE_OK) abort();
    if (moei_st_count(g) != moei_st_count(f)) abort();
    for (int64_t i = 0; i < moei_st_count(f); i++) {
        const moei_st_tensor *a = moei_st_at(f, i), *b = moei_st_find(g, a->name);
        if (!b || b->dtype != a->dtype || b->ndim != a->ndim || b->nbytes != a->nbytes) abort();
        if (a->nbytes && memcmp(a->data, b->data, a->nbytes) != 0) abort();
    }
    moei_st_close(g);
    free(buf);
out:
    moei_st_writer_destroy(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moe_ctx *ctx = fuzz_ctx();
    moei_st_file *f = NULL;
    moe_status st = moei_st_open_memory(ctx, data, size, &f);
    if (st != MOE_OK) {
        if (st != MOE_ERR_FORMAT && st != MOE_ERR_OUT_OF_MEMORY) abort();
        return 0;
    }
    check_file(ctx, f, data, size);
    rewrite(ctx, f);
    moei_st_close(f);
    return 0;
}
