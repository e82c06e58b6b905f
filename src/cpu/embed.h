/* CPU token and position embeddings: gather rows of a table by int32 ids, and scatter-add the
 * gradient back. Every id is validated before anything is written (a failing call changes nothing);
 * the backward is race-free and bitwise independent of the thread count, because each d_table
 * element is accumulated by one thread in token order. All buffers are fp32, row-major, contiguous. */
#ifndef MOEI_CPU_EMBED_H
#define MOEI_CPU_EMBED_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i, :] = table[ids[i], :] for i < n. table is [vocab, dim], out is [n, dim] (overwritten).
 * Every ids[i] must lie in [0, vocab), otherwise MOE_ERR_INVALID_ARG naming the first bad position
 * and its value. out must not overlap table. */
moe_status moei_cpu_embedding_forward(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t dim, const float *table,
                                      const int32_t *ids, float *out);

/* d_table[ids[i], :] += d_out[i, :] for i < n (ACCUMULATES into d_table [vocab, dim]; zero it first
 * for a fresh gradient). Repeated ids sum in token order, so the result does not depend on the thread
 * count. Ids are validated as in the forward. */
moe_status moei_cpu_embedding_backward(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t dim, const float *d_out,
                                       const int32_t *ids, float *d_table);

/* Vocabulary-parallel form: this rank holds rows [row_begin, row_begin + rows) of a [vocab, dim]
 * table as table_shard [rows, dim]. Ids are validated against the full [0, vocab); out[i, :] is the
 * local row for an id inside the shard and 0 for an id outside it (an all-reduce over the shards
 * then yields the full lookup). The plain forward is the case row_begin = 0, rows = vocab. */
moe_status moei_cpu_embedding_forward_shard(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t row_begin, int64_t rows,
                                            int64_t dim, const float *table_shard, const int32_t *ids, float *out);

/* Backward of the shard form: d_table_shard[ids[i] - row_begin, :] += d_out[i, :] for the ids inside
 * the shard; ids outside it are skipped. ACCUMULATES, like moei_cpu_embedding_backward. */
moe_status moei_cpu_embedding_backward_shard(moe_ctx *ctx, int64_t n, int64_t vocab, int64_t row_begin, int64_t rows,
                                             int64_t dim, const float *d_out, const int32_t *ids,
                                             float *d_table_shard);

/* Learned absolute positions: out[i, :] += pos_table[pos[i], :] (ACCUMULATES into out [n, dim]).
 * pos_table is [max_pos, dim]; every pos[i] must lie in [0, max_pos). */
moe_status moei_cpu_pos_embed_add(moe_ctx *ctx, int64_t n, int64_t max_pos, int64_t dim, const float *pos_table,
                                  const int32_t *pos, float *out);

/* Its backward: d_pos_table[pos[i], :] += d_out[i, :] (ACCUMULATES). The gradient with respect to
 * the input of the add is d_out itself, which the caller passes on unchanged. */
moe_status moei_cpu_pos_embed_backward(moe_ctx *ctx, int64_t n, int64_t max_pos, int64_t dim, const float *d_out,
                                       const int32_t *pos, float *d_pos_table);

#ifdef __cplusplus
}
#endif

#endif
