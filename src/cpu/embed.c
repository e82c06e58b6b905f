/* CPU embedding gather / scatter-add and learned position embeddings (see embed.h).
 * Invariants: ids are checked before any write; the scatter-add splits the work by embedding
 * column, so each output element is summed by one thread in token order (no atomics, no races,
 * the same bits for any thread count). */
#include "cpu/embed.h"

#include <omp.h>
#include <string.h>

#include "core/error.h"

/* Below this many elements a parallel region costs more than it saves. */
#define MOEI_EMBED_PAR_MIN (1 << 15)
/* Columns are handed to threads in whole cache lines, so no two threads write the same line. */
#define MOEI_EMBED_COL_CHUNK 16

static moe_status check_sizes(moe_ctx *ctx, const char *fn, int64_t n, const char *rows_name, int64_t rows,
                              int64_t dim)
{
    if (n < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n = %lld is negative", fn, (long long)n);
    if (rows < 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: %s = %lld is negative", fn, rows_name, (long long)rows);
    if (dim < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: dim = %lld is negative", fn, (long long)dim);
    if (dim > 0 && (n > INT64_MAX / dim || rows > INT64_MAX / dim))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: n * dim or %s * dim overflows int64", fn, rows_name);
    return MOE_OK;
}

/* The first id outside [0, limit) fails the call; scanning serially names the first such position. */
static moe_status check_ids(moe_ctx *ctx, const char *fn, const char *name, int64_t n, const int32_t *ids,
                            int64_t limit)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || (int64_t)ids[i] >= limit)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: %s[%lld] = %d is outside [0, %lld)", fn, name,
                             (long long)i, (int)ids[i], (long long)limit);
    return MOE_OK;
}

/* Row gather; accumulate = 0 overwrites out, 1 adds into it. Rows outside [row_begin,
 * row_begin + rows) give zeros (overwrite) or leave out alone (accumulate). */
static void gather_rows(int64_t n, int64_t row_begin, int64_t rows, int64_t dim, const float *table,
                        const int32_t *ids, float *out, int accumulate)
{
#pragma omp parallel for schedule(static) if (n * dim >= MOEI_EMBED_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        int64_t r = (int64_t)ids[i] - row_begin;
        float *dst = out + i * dim;
        if (r < 0 || r >= rows) {
            if (!accumulate) memset(dst, 0, (size_t)dim * sizeof(float));
            continue;
        }
        const float *src = table + r * dim;
        if (accumulate)
            for (int64_t c = 0; c < dim; c++) dst[c] += src[c];
        else
            memcpy(dst, src, (size_t)dim * sizeof(float));
    }
}

/* d_table[ids[i] - row_begin, :] += d_out[i, :]. Each thread owns a contiguous range of columns and
 * walks every token in order: the sum for one element never depends on how columns were split. */
static void scatter_add_rows(int64_t n, int64_t row_begin, int64_t rows, int64_t dim, const float *d_out,
                             const int32_t *ids, float *d_table)
{
    int64_t nchunks = (dim + MOEI_EMBED_COL_CHUNK - 1) / MOEI_EMBED_COL_CHUNK;
#pragma omp parallel if (n * dim >= MOEI_EMBED_PAR_MIN && nchunks > 1)
    {
        int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
        int64_t c0 = nchunks * t / nt * MOEI_EMBED_COL_CHUNK;
        int64_t c1 = nchunks * (t + 1) / nt * MOEI_EMBED_COL_CHUNK;
        if (c1 > dim) c1 = dim;
        for (int64_t i = 0; i < n && c0 < c1; i++) {
            int64_t r = (int64_t)ids[i] - row_begin;
            if (r < 0 || r >= rows) continue;
            float *dst = d_table + r * dim;
            const float *src = d_out + i * dim;
            for (int64_t c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}

static moe_status check_shard(moe_ctx *ctx, const char *fn, int64_t n, int64_t vocab, int64_t row_begin,
                              int64_t rows, int64_t dim, const void *table, const char *table_name,
                              const int32_t *ids, const void *out, const char *out_name)
{
    if (vocab < 0) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: vocab = %lld is negative", fn, (long long)vocab);
    moe_status st = check_sizes(ctx, fn, n, "rows", rows, dim);
    if (st != MOE_OK) return st;
    if (row_begin < 0 || row_begin > vocab || rows > vocab - row_begin)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: shard rows [%lld, %lld + %lld) do not fit in vocab = %lld", fn,
                         (long long)row_begin, (long long)row_begin, (long long)rows, (long long)vocab);
    if (n > 0 && !ids) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'ids' is NULL", fn);
    if (n > 0 && dim > 0 && !out)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", fn, out_name);
    if (rows > 0 && dim > 0 && !table)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", fn, table_name);
    return check_ids(ctx, fn, "ids", n, ids, vocab);
}

moe_status moei_cpu_embedding_forward_shard(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t row_begin, int64_t rows,
                                            int64_t dim, const float *table_shard, const int32_t *ids, float *out)
{
    moe_status st = check_shard(ctx, "embedding_forward", n, vocab, row_begin, rows, dim, table_shard, "table", ids,
                                out, "out");
    if (st != MOE_OK) return st;
    if (dim > 0) gather_rows(n, row_begin, rows, dim, table_shard, ids, out, 0);
    return MOE_OK;
}

moe_status moei_cpu_embedding_backward_shard(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t row_begin, int64_t rows,
                                             int64_t dim, const float *d_out, const int32_t *ids,
                                             float *d_table_shard)
{
    moe_status st = check_shard(ctx, "embedding_backward", n, vocab, row_begin, rows, dim, d_table_shard, "d_table",
                                ids, d_out, "d_out");
    if (st != MOE_OK) return st;
    if (dim > 0 && rows > 0) scatter_add_rows(n, row_begin, rows, dim, d_out, ids, d_table_shard);
    return MOE_OK;
}

moe_status moei_cpu_embedding_forward(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t dim, const float *table,
                                      const int32_t *ids, float *out)
{
    return moei_cpu_embedding_forward_shard(ctx, n, vocab, 0, vocab, dim, table, ids, out);
}

moe_status moei_cpu_embedding_backward(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t dim, const float *d_out,
                                       const int32_t *ids, float *d_table)
{
    return moei_cpu_embedding_backward_shard(ctx, n, vocab, 0, vocab, dim, d_out, ids, d_table);
}

static moe_status check_pos(moe_ctx *ctx, const char *fn, int64_t n, int64_t max_pos, int64_t dim,
                            const void *table, const char *table_name, const int32_t *pos, const void *rows,
                            const char *rows_name)
{
    moe_status st = check_sizes(ctx, fn, n, "max_pos", max_pos, dim);
    if (st != MOE_OK) return st;
    if (n > 0 && !pos) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument 'pos' is NULL", fn);
    if (n > 0 && dim > 0 && !rows)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", fn, rows_name);
    if (max_pos > 0 && dim > 0 && !table)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: argument '%s' is NULL", fn, table_name);
    return check_ids(ctx, fn, "pos", n, pos, max_pos);
}

moe_status moei_cpu_pos_embed_add(moe_ctx *ctx, int64_t n, int64_t max_pos, int64_t dim, const float *pos_table,
                                  const int32_t *pos, float *out)
{
    moe_status st = check_pos(ctx, "pos_embed_add", n, max_pos, dim, pos_table, "pos_table", pos, out, "out");
    if (st != MOE_OK) return st;
    if (dim > 0) gather_rows(n, 0, max_pos, dim, pos_table, pos, out, 1);
    return MOE_OK;
}

moe_status moei_cpu_pos_embed_backward(moe_ctx *ctx, int64_t n, int64_t max_pos, int64_t dim, const float *d_out,
                                       const int32_t *pos, float *d_pos_table)
{
    moe_status st =
        check_pos(ctx, "pos_embed_backward", n, max_pos, dim, d_pos_table, "d_pos_table", pos, d_out, "d_out");
    if (st != MOE_OK) return st;
    if (dim > 0 && max_pos > 0) scatter_add_rows(n, 0, max_pos, dim, d_out, pos, d_pos_table);
    return MOE_OK;
}
