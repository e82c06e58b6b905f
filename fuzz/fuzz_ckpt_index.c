/* libFuzzer target: the checkpoint index parser (index.json) on arbitrary bytes, from memory. A parse
 * either fails cleanly (a format or version error with a message) or yields an index whose every
 * promise holds: names valid and unique in order, slices inside their shapes and tiling each tensor;
 * an accepted index is also written back and must parse again to the same values. Any sanitizer
 * report or abort() is a finding. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/checkpoint_index.h"
#include "moe/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_index(const moei_ckpt_index *ix)
{
    for (int64_t i = 0; i < ix->ntensors; i++) {
        const moei_ckpt_tensor *t = &ix->tensors[i];
        if (!moei_ckpt_valid_name(t->name) || moei_ckpt_index_find(ix, t->name) != t) abort();
        if (i > 0 && strcmp(ix->tensors[i - 1].name, t->name) >= 0) abort();
        if (t->ndim < 0 || t->ndim > MOE_TENSOR_MAX_DIMS || t->nshards < 1) abort();
        int64_t numel = 1, sum = 0;
        for (int32_t d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (numel != t->numel) abort();
        for (int32_t s = 0; s < t->nshards; s++) {
            const moei_ckpt_shard *sh = &t->shards[s];
            if (!moei_ckpt_valid_file(sh->file) || !moei_ckpt_valid_name(sh->tensor)) abort();
            int64_t vol = 1;
            for (int32_t d = 0; d < t->ndim; d++) {
                if (sh->start[d] < 0 || sh->start[d] > sh->end[d] || sh->end[d] > t->shape[d]) abort();
                vol *= sh->end[d] - sh->start[d];
            }
            sum += vol;
        }
        if (sum != numel) abort();
    }
    if (ix->user && !moei_ckpt_valid_text(ix->user)) abort();
}

static void same(const moei_ckpt_index *a, const moei_ckpt_index *b)
{
    if (a->step != b->step || a->data_position != b->data_position || a->rng_seed != b->rng_seed ||
        a->rng_step != b->rng_step || memcmp(&a->config, &b->config, sizeof a->config) != 0 ||
        a->has_optimizer != b->has_optimizer || a->ntensors != b->ntensors ||
        memcmp(a->mesh, b->mesh, sizeof a->mesh) != 0)
        abort();
    if (a->has_optimizer && (a->opt_type != b->opt_type || a->opt_step != b->opt_step ||
                             a->opt_skipped != b->opt_skipped ||
                             memcmp(&a->opt_config, &b->opt_config, sizeof a->opt_config) != 0))
        abort();
    if ((a->user == NULL) != (b->user == NULL) || (a->user && strcmp(a->user, b->user) != 0)) abort();
    for (int64_t i = 0; i < a->ntensors; i++) {
        const moei_ckpt_tensor *x = &a->tensors[i], *y = &b->tensors[i];
        if (strcmp(x->name, y->name) != 0 || x->ndim != y->ndim || x->nshards != y->nshards ||
            memcmp(x->shape, y->shape, sizeof x->shape) != 0)
            abort();
        for (int32_t s = 0; s < x->nshards; s++) {
            const moei_ckpt_shard *p = &x->shards[s], *q = &y->shards[s];
            if (strcmp(p->file, q->file) != 0 || strcmp(p->tensor, q->tensor) != 0 || p->xxh64 != q->xxh64 ||
                memcmp(p->start, q->start, sizeof p->start) != 0 || memcmp(p->end, q->end, sizeof p->end) != 0)
                abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    moei_ckpt_index *ix = NULL;
    moe_status st = moei_ckpt_index_parse(NULL, (const char *)data, size, "fuzz", &ix);
    if (st != MOE_OK) {
        if (st != MOE_ERR_FORMAT && st != MOE_ERR_UNSUPPORTED && st != MOE_ERR_OUT_OF_MEMORY) abort();
        if (ix != NULL || moe_last_error()[0] == '\0') abort();
        return 0;
    }
    check_index(ix);
    char *text = NULL;
    size_t len = 0;
    if (moei_ckpt_index_write(NULL, ix, &text, &len) != MOE_OK) abort();
    moei_ckpt_index *again = NULL;
    if (moei_ckpt_index_parse(NULL, text, len, "rewritten", &again) != MOE_OK) abort();
    same(ix, again);
    moei_ckpt_index_free(again);
    free(text);
    moei_ckpt_index_free(ix);
    return 0;
}
