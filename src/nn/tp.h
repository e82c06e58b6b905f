/* Tensor parallelism (Megatron style) and sequence parallelism: where a layer's rows live and the
 * two collectives that open and close a tensor-parallel region. Without sequence parallelism every
 * tp rank holds all n rows of the residual stream; a column-parallel weight reads them as they are,
 * and the row-parallel output is all-reduced. With it, tp rank r holds rows [r·n/tp, (r+1)·n/tp);
 * the region gathers them first and reduce-scatters its output. A zeroed moei_tp (size 0 or 1)
 * means no tensor parallelism: layers then never call these helpers. */
#ifndef MOEI_NN_TP_H
#define MOEI_NN_TP_H

#include <stdint.h>

#include "moe/ctx.h"

struct moei_comm;
struct moe_mesh;

typedef struct moei_tp {
    int32_t size, rank;     /* the tp group; size <= 1 = no tensor parallelism */
    int32_t sp;             /* 1: sequence parallel (only with size > 1) */
    struct moei_comm *comm; /* the mesh's tp group, borrowed; NULL when size <= 1 */
} moei_tp;

/* The tp layout of this rank of `mesh` (sequence parallelism only counts with tp > 1). */
void moei_tp_from_mesh(const struct moe_mesh *mesh, moei_tp *tp);

static inline int moei_tp_on(const moei_tp *tp) { return tp->size > 1; }

/* Rows of the residual stream this rank holds for a micro-batch of n rows. */
static inline int64_t moei_tp_rows(const moei_tp *tp, int64_t n)
{
    return tp->size > 1 && tp->sp ? n / tp->size : n;
}

/* Near-equal split of `total` items over `size` ranks, the larger chunks first (as the
 * communicator cuts its buffers): rank r gets [*start, *start + *count). */
void moei_tp_chunk(int64_t total, int32_t size, int32_t rank, int64_t *start, int64_t *count);

/* Entering a column-parallel region with `rows` rows of width d in x: with sequence parallelism
 * the rows of every tp rank are gathered into `full` ([rows·tp, d]) and *in = full; otherwise
 * *in = x and nothing moves. */
moe_status moei_tp_region_input(const moei_tp *tp, const float *x, int64_t rows, int64_t d, float *full,
                                const float **in);

/* Leaving a row-parallel region: `partial` [n, d] holds this rank's partial sums over every row of
 * the micro-batch. Without sequence parallelism they are all-reduced and written (or added, when
 * accumulate != 0) to out [n, d]; with it they are reduce-scattered and this rank's n/tp rows are
 * written (or added) to out. `partial` is overwritten; out may equal partial only without sequence
 * parallelism and without accumulate. `tmp` [n/tp, d] is needed with sequence parallelism and
 * accumulate (else it may be NULL). */
moe_status moei_tp_region_output(const moei_tp *tp, float *partial, int64_t n, int64_t d, float *out, int accumulate,
                                 float *tmp);

#endif
