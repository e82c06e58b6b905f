/* A parameter store: every parameter of a model (or standalone layer) lives in one contiguous fp32
 * buffer, with its gradient at the same offset of a second buffer (API_STYLE rule 19), so the
 * optimizer, clipping and all-reduce are flat loops over one array, and checkpoints are simple.
 * Building is two-phase: layers register named tensors (moei_params_add), then one allocation
 * (moei_params_alloc) gives every tensor its place; layers then resolve pointers by index. */
#ifndef MOEI_NN_PARAMS_H
#define MOEI_NN_PARAMS_H

#include <stdint.h>

#include "moe/ctx.h"
#include "moe/tensor.h"

#define MOEI_PARAM_NAME_CAP 128

/* How a parameter is initialised and whether weight decay applies. */
typedef enum moei_param_role {
    MOEI_PARAM_MATRIX = 0,    /* normal(0, init_std); decayed */
    MOEI_PARAM_NORM = 1,      /* ones; not decayed by default */
    MOEI_PARAM_BIAS = 2,      /* zeros; not decayed by default */
    MOEI_PARAM_EMBEDDING = 3, /* normal(0, init_std); not decayed by default */
} moei_param_role;

/* Which ranks hold copies of a tensor, and so over which group its gradient is summed and its norm
 * is counted once: dense tensors are replicated over dp, expert tensors over edp (each ep rank
 * holds its own slice of the experts). Memory holds the dense region first, then the expert one. */
typedef enum moei_param_group {
    MOEI_GROUP_DENSE = 0,
    MOEI_GROUP_EXPERT = 1,
    MOEI_GROUP_COUNT = 2,
} moei_param_group;

/* How a dense tensor lies over the tensor-parallel group, which decides how its gradient is reduced
 * and counted in the global norm:
 *   REPLICATED  every tp rank holds the whole tensor and computes the same gradient (norms without
 *               sequence parallelism): not summed over tp, counted once;
 *   SHARDED     each tp rank holds its own slice (column/row-parallel weights, vocab shards): not
 *               summed over tp, squares summed over tp;
 *   PARTIAL     every tp rank holds the whole tensor but sees only its share of the tokens (norms
 *               with sequence parallelism, routers, shared experts): gradients summed over tp
 *               before the dp reduction, then counted once. */
typedef enum moei_param_tp {
    MOEI_TP_REPLICATED = 0,
    MOEI_TP_SHARDED = 1,
    MOEI_TP_PARTIAL = 2,
} moei_param_tp;

typedef struct moei_param {
    char name[MOEI_PARAM_NAME_CAP];
    int32_t ndim;
    int64_t shape[MOE_TENSOR_MAX_DIMS];      /* this rank's shard */
    int64_t full_shape[MOE_TENSOR_MAX_DIMS]; /* the logical tensor */
    int64_t start[MOE_TENSOR_MAX_DIMS];      /* where the shard begins in each dimension of the logical tensor */
    int64_t shard_start;                     /* start[0] (first index along dimension 0 held here) */
    int32_t tp;                              /* a moei_param_tp */
    int32_t group;                           /* a moei_param_group */
    int64_t offset; /* in floats, into data and grad */
    int64_t numel;
    int32_t role;
    int64_t active_numel; /* elements used per token (for MoE experts: top_k / num_experts of them) */
} moei_param;

typedef struct moei_params {
    moe_ctx *ctx;
    moei_param *entries;
    int32_t count;
    int32_t capacity;
    int64_t total;              /* floats in data/grad, regions and padding included */
    int64_t region_offset[MOEI_GROUP_COUNT];
    int64_t region_size[MOEI_GROUP_COUNT]; /* padded to region_align[g] */
    int64_t region_align[MOEI_GROUP_COUNT]; /* set before alloc (e.g. to the ZeRO shard count); default 1 */
    /* The MOEI_TP_PARTIAL tensors of the dense region, placed together at its end (before the
     * padding) so one all-reduce over tp sums them; size 0 when there are none. */
    int64_t tp_partial_offset, tp_partial_size;
    float *data;
    float *grad;
} moei_params;

void moei_params_init(moei_params *p, moe_ctx *ctx);
/* Register a tensor; *index receives its position. Fails on a duplicate or over-long name. */
moe_status moei_params_add(moei_params *p, const char *name, int32_t ndim, const int64_t *shape, int32_t role,
                           int32_t *index);
/* Register a tensor of which this rank holds rows [shard_start, shard_start + shape[0]) of a
 * logical tensor whose dimension 0 is full_dim0 (expert parallelism slices experts this way). */
moe_status moei_params_add_shard(moei_params *p, const char *name, int32_t ndim, const int64_t *shape, int32_t role,
                                 int32_t group, int64_t full_dim0, int64_t shard_start, int32_t *index);
/* General form: this rank holds shape[d] elements from start[d] of every dimension d of a logical
 * tensor of full_shape (tensor parallelism slices rows of column-parallel weights and columns of
 * row-parallel ones). The init draws the logical elements of the slice. */
moe_status moei_params_add_slice(moei_params *p, const char *name, int32_t ndim, const int64_t *shape,
                                 const int64_t *full_shape, const int64_t *start, int32_t role, int32_t group,
                                 int32_t *index);
/* Before moei_params_alloc: keep only [start, start + count) of dimension `dim` of a registered
 * tensor (of what it holds now), e.g. a vocabulary shard of an embedding registered whole. */
moe_status moei_params_slice(moei_params *p, int32_t index, int32_t dim, int64_t start, int64_t count);
/* Before moei_params_alloc: how the tensor lies over tp (a moei_param_tp; default REPLICATED). */
void moei_params_set_tp(moei_params *p, int32_t index, int32_t tp);
/* Give every tensor its place (dense region, then expert region, each padded to its alignment;
 * within a region the MOEI_TP_PARTIAL tensors come last) and allocate data and grad (zeroed). */
moe_status moei_params_alloc(moei_params *p);
void moei_params_free(moei_params *p);

static inline float *moei_param_data(const moei_params *p, int32_t i) { return p->data + p->entries[i].offset; }
static inline float *moei_param_grad(const moei_params *p, int32_t i) { return p->grad + p->entries[i].offset; }

int32_t moei_params_find(const moei_params *p, const char *name);
/* Flat (row-major) index in the logical tensor of element j of this rank's slice of it. */
int64_t moei_param_full_index(const moei_param *e, int64_t j);
/* Initialise every tensor from its name and role: element i of tensor n is drawn from
 * Philox(seed, hash(n), i), so any shard on any mesh gets the same values. */
void moei_params_init_values(moei_params *p, uint64_t seed, float init_std);
void moei_params_zero_grad(moei_params *p);

/* Public-API helpers shared by model and standalone layers. */
moe_status moei_params_info(const moei_params *p, int32_t index, char *name, uint32_t name_capacity, int32_t *ndim,
                            int64_t *shape, const char *fn);
moe_status moei_params_copy_out(const moei_params *p, int32_t index, uint32_t gradient, float *dst, int64_t count,
                                const char *fn);
moe_status moei_params_copy_in(moei_params *p, int32_t index, const float *src, int64_t count, const char *fn);

#endif
