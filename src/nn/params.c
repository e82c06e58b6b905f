/* See params.h. Invariant: entries tile [0, total) in registration order without gaps. */
#include "nn/params.h"

#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/error.h"
#include "core/rng.h"

void moei_params_init(moei_params *p, moe_ctx *ctx)
{
    memset(p, 0, sizeof *p);
    p->ctx = ctx;
}

int64_t moei_param_full_index(const moei_param *e, int64_t j)
{
    int64_t off = 0, stride = 1;
    for (int32_t d = e->ndim - 1; d >= 0; d--) {
        off += (e->start[d] + j % e->shape[d]) * stride;
        j /= e->shape[d];
        stride *= e->full_shape[d];
    }
    return off;
}

int32_t moei_params_find(const moei_params *p, const char *name)
{
    for (int32_t i = 0; i < p->count; i++)
        if (strcmp(p->entries[i].name, name) == 0) return i;
    return -1;
}

moe_status moei_params_add(moei_params *p, const char *name, int32_t ndim, const int64_t *shape, int32_t role,
                           int32_t *index)
{
    return moei_params_add_shard(p, name, ndim, shape, role, MOEI_GROUP_DENSE, ndim > 0 ? shape[0] : 1, 0, index);
}

moe_status moei_params_add_shard(moei_params *p, const char *name, int32_t ndim, const int64_t *shape, int32_t role,
                                 int32_t group, int64_t full_dim0, int64_t shard_start, int32_t *index)
{
    int64_t full[MOE_TENSOR_MAX_DIMS], start[MOE_TENSOR_MAX_DIMS] = {0};
    for (int32_t d = 0; d < ndim && d < MOE_TENSOR_MAX_DIMS; d++) full[d] = shape[d];
    if (ndim > 0) {
        full[0] = full_dim0;
        start[0] = shard_start;
    }
    return moei_params_add_slice(p, name, ndim, shape, full, start, role, group, index);
}

moe_status moei_params_add_slice(moei_params *p, const char *name, int32_t ndim, const int64_t *shape,
                                 const int64_t *full_shape, const int64_t *start, int32_t role, int32_t group,
                                 int32_t *index)
{
    if (ndim < 0 || ndim > MOE_TENSOR_MAX_DIMS)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "parameter '%s': ndim = %d", name, (int)ndim);
    for (int32_t d = 0; d < ndim; d++)
        if (shape[d] < 0 || start[d] < 0 || start[d] + shape[d] > full_shape[d])
            return moei_fail(p->ctx, MOE_ERR_INVALID_ARG,
                             "parameter '%s': slice [%lld, %lld) of dimension %d lies outside its size %lld", name,
                             (long long)start[d], (long long)(start[d] + shape[d]), (int)d, (long long)full_shape[d]);
    if (strlen(name) >= MOEI_PARAM_NAME_CAP)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "parameter name '%s' is too long", name);
    if (moei_params_find(p, name) >= 0)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "parameter '%s' registered twice", name);
    if (p->count == p->capacity) {
        int32_t cap = p->capacity ? p->capacity * 2 : 64;
        moei_param *e = realloc(p->entries, (size_t)cap * sizeof *e);
        if (!e) return moei_fail(p->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory registering parameters");
        p->entries = e;
        p->capacity = cap;
    }
    moei_param *e = &p->entries[p->count];
    memset(e, 0, sizeof *e);
    strcpy(e->name, name);
    e->ndim = ndim;
    e->numel = 1;
    for (int32_t d = 0; d < ndim; d++) {
        e->shape[d] = shape[d];
        e->full_shape[d] = full_shape[d];
        e->start[d] = start[d];
        e->numel *= shape[d];
    }
    e->shard_start = ndim > 0 ? start[0] : 0;
    e->tp = MOEI_TP_REPLICATED;
    e->group = group;
    e->active_numel = e->numel;
    e->role = role;
    e->offset = -1; /* assigned by moei_params_alloc */
    if (index) *index = p->count;
    p->count++;
    return MOE_OK;
}

moe_status moei_params_slice(moei_params *p, int32_t index, int32_t dim, int64_t start, int64_t count)
{
    moei_param *e = &p->entries[index];
    if (dim < 0 || dim >= e->ndim || start < 0 || count < 0 || start + count > e->shape[dim])
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "parameter '%s': cannot keep [%lld, %lld) of dimension %d (%lld held)",
                         e->name, (long long)start, (long long)(start + count), (int)dim, (long long)e->shape[dim]);
    /* the active share (experts: top_k of them per token) keeps its ratio to the elements held */
    e->active_numel = e->shape[dim] > 0 ? e->active_numel / e->shape[dim] * count : 0;
    e->shape[dim] = count;
    e->numel = 1;
    for (int32_t d = 0; d < e->ndim; d++) e->numel *= e->shape[d];
    if (e->active_numel == 0) e->active_numel = e->numel;
    e->start[dim] += start;
    e->shard_start = e->start[0];
    return MOE_OK;
}

void moei_params_set_tp(moei_params *p, int32_t index, int32_t tp) { p->entries[index].tp = tp; }

moe_status moei_params_alloc(moei_params *p)
{
    int64_t off = 0;
    p->tp_partial_offset = p->tp_partial_size = 0;
    for (int32_t g = 0; g < MOEI_GROUP_COUNT; g++) {
        int64_t align = p->region_align[g] > 0 ? p->region_align[g] : 1, start = off;
        /* two passes: the tensors whose gradients are summed over tp go last, side by side */
        for (int32_t partial = 0; partial < 2; partial++) {
            if (partial && g == MOEI_GROUP_DENSE) p->tp_partial_offset = off;
            for (int32_t i = 0; i < p->count; i++)
                if (p->entries[i].group == g && (p->entries[i].tp == MOEI_TP_PARTIAL) == partial) {
                    p->entries[i].offset = off;
                    off += p->entries[i].numel;
                }
            if (partial && g == MOEI_GROUP_DENSE) p->tp_partial_size = off - p->tp_partial_offset;
        }
        off = start + (off - start + align - 1) / align * align;
        p->region_offset[g] = start;
        p->region_size[g] = off - start;
    }
    p->total = off;
    uint64_t bytes = (uint64_t)p->total * sizeof(float);
    void *data = NULL, *grad = NULL;
    moe_status st = moei_ctx_alloc(p->ctx, bytes, &data);
    if (st != MOE_OK) return st;
    st = moei_ctx_alloc(p->ctx, bytes, &grad);
    if (st != MOE_OK) {
        moei_ctx_free(p->ctx, data, bytes);
        return st;
    }
    p->data = data;
    p->grad = grad;
    return MOE_OK;
}

void moei_params_free(moei_params *p)
{
    uint64_t bytes = (uint64_t)p->total * sizeof(float);
    if (p->data) moei_ctx_free(p->ctx, p->data, bytes);
    if (p->grad) moei_ctx_free(p->ctx, p->grad, bytes);
    free(p->entries);
    memset(p, 0, sizeof *p);
}

/* Normal init of a slice: the slice is a set of runs that are contiguous in the logical tensor
 * (the innermost sliced dimension and the whole dimensions after it); each run draws its logical
 * elements. */
static void init_slice(const moei_param *e, uint64_t seed, float init_std, float *d)
{
    if (e->numel <= 0) return;
    int32_t k = e->ndim - 1;
    int64_t run = 1;
    while (k >= 0 && e->start[k] == 0 && e->shape[k] == e->full_shape[k]) run *= e->shape[k--];
    if (k < 0) {
        moei_rng_normal_fill(seed, e->name, 0, e->numel, 0.0f, init_std, d);
        return;
    }
    const int64_t inner = run; /* logical elements per index of dimension k */
    run *= e->shape[k];
    const int64_t runs = e->numel / run;
    for (int64_t r = 0; r < runs; r++) {
        /* logical offset of run r: its indices in dimensions 0..k-1, shifted by the slice starts */
        int64_t rem = r, logical = e->start[k] * inner, stride = inner * e->full_shape[k];
        for (int32_t j = k - 1; j >= 0; j--) {
            logical += (e->start[j] + rem % e->shape[j]) * stride;
            rem /= e->shape[j];
            stride *= e->full_shape[j];
        }
        moei_rng_normal_fill(seed, e->name, logical, run, 0.0f, init_std, d + r * run);
    }
}

void moei_params_init_values(moei_params *p, uint64_t seed, float init_std)
{
    for (int32_t i = 0; i < p->count; i++) {
        moei_param *e = &p->entries[i];
        float *d = moei_param_data(p, i);
        switch (e->role) {
        case MOEI_PARAM_NORM:
            for (int64_t j = 0; j < e->numel; j++) d[j] = 1.0f;
            break;
        case MOEI_PARAM_BIAS: memset(d, 0, (size_t)e->numel * sizeof *d); break;
        default:
            /* a shard draws the logical elements it holds, so every mesh initialises alike */
            init_slice(e, seed, init_std, d);
            break;
        }
    }
}

void moei_params_zero_grad(moei_params *p)
{
    if (p->grad) memset(p->grad, 0, (size_t)p->total * sizeof(float));
}

moe_status moei_params_info(const moei_params *p, int32_t index, char *name, uint32_t name_capacity, int32_t *ndim,
                            int64_t *shape, const char *fn)
{
    if (index < 0 || index >= p->count)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: index %d is not in [0, %d)", fn, (int)index, (int)p->count);
    const moei_param *e = &p->entries[index];
    if (name) {
        size_t n = strlen(e->name);
        if (name_capacity <= n)
            return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: name_capacity = %u but the name needs %zu bytes", fn,
                             (unsigned)name_capacity, n + 1);
        memcpy(name, e->name, n + 1);
    }
    if (ndim) *ndim = e->ndim;
    if (shape)
        for (int32_t d = 0; d < e->ndim; d++) shape[d] = e->full_shape[d];
    return MOE_OK;
}

moe_status moei_params_copy_out(const moei_params *p, int32_t index, uint32_t gradient, float *dst, int64_t count,
                                const char *fn)
{
    if (index < 0 || index >= p->count)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: index %d is not in [0, %d)", fn, (int)index, (int)p->count);
    const moei_param *e = &p->entries[index];
    if (gradient > 1) return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: gradient = %u (must be 0 or 1)", fn, (unsigned)gradient);
    if (count != e->numel)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: count = %lld but '%s' has %lld elements", fn, (long long)count,
                         e->name, (long long)e->numel);
    if (count > 0 && !dst) return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: dst is NULL", fn);
    memcpy(dst, (gradient ? p->grad : p->data) + e->offset, (size_t)count * sizeof(float));
    return MOE_OK;
}

moe_status moei_params_copy_in(moei_params *p, int32_t index, const float *src, int64_t count, const char *fn)
{
    if (index < 0 || index >= p->count)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: index %d is not in [0, %d)", fn, (int)index, (int)p->count);
    moei_param *e = &p->entries[index];
    if (count != e->numel)
        return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: count = %lld but '%s' has %lld elements", fn, (long long)count,
                         e->name, (long long)e->numel);
    if (count > 0 && !src) return moei_fail(p->ctx, MOE_ERR_INVALID_ARG, "%s: src is NULL", fn);
    memcpy(p->data + e->offset, src, (size_t)count * sizeof(float));
    return MOE_OK;
}
