/* Causal self-attention on the CPU (MHA, GQA, MQA; optional ALiBi), flash-attention style: per
 * (batch, head, block of queries) an online softmax runs over key blocks, so no T x T matrix is
 * ever held. The forward saves the per-row log-sum-exp; the backward recomputes the probabilities
 * from it. Results are bitwise independent of the thread count. Scratch is caller-owned. */
#ifndef MOEI_CPU_ATTENTION_H
#define MOEI_CPU_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows of queries and of keys handled as one block (tests use them to cover partial blocks). */
#define MOEI_ATTN_BLOCK_Q 64
#define MOEI_ATTN_BLOCK_K 64

/* Bytes of workspace that moei_attention_fwd and moei_attention_bwd need to run on up to `threads`
 * OpenMP threads (threads <= 0: omp_get_max_threads() of the calling thread). The forward needs
 * less (no [batch, heads, seq] part); both accept more. With a workspace sized for fewer threads
 * than are available, the ops simply use fewer threads. */
moe_status moei_attention_workspace_size(moe_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int32_t threads,
                                         size_t *bytes);

/* Causal attention. q [batch, seq, heads, head_dim]; k, v [batch, seq, kv_heads, head_dim]; query
 * head h reads kv head h / (heads / kv_heads), so heads must be a multiple of kv_heads (MHA:
 * equal, MQA: kv_heads = 1). Query i of a sequence attends to keys j <= i of the same sequence
 * with score scale * q_i . k_j - alibi[h] * (i - j).
 *   scale  > 0, or 0 for 1 / sqrt(head_dim).
 *   alibi  [heads] slopes (moei_alibi_slopes), or NULL for none.
 *   out    [batch, seq, heads, head_dim], overwritten; must not overlap the inputs.
 *   lse    [batch, heads, seq], overwritten with each row's log-sum-exp of the scores (what the
 *          backward needs); may be NULL when no backward follows.
 *   ws     workspace, at least moei_attention_workspace_size(...) bytes for one thread, float
 *          aligned; not shared by concurrent calls.
 * batch or seq may be 0 (nothing to do); heads, kv_heads, head_dim >= 1. */
moe_status moei_attention_fwd(moe_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                              int64_t head_dim, float scale, const float *alibi, const float *q, const float *k,
                              const float *v, float *out, float *lse, void *ws, size_t ws_bytes);

/* Backward of moei_attention_fwd, given the forward's inputs, out and lse (required here), and
 * dout [batch, seq, heads, head_dim]. dq [like q], dk and dv [like k] are overwritten (not
 * accumulated); dk and dv sum over the query heads that share a kv head. No output may overlap an
 * input. ws: moei_attention_workspace_size(...) bytes (it holds rowsum(dout * out) [batch, heads,
 * seq], a bounded store of score-gradient blocks that spares recomputing them, and per-thread
 * scratch; with less room for the store the backward recomputes, with identical results). */
moe_status moei_attention_bwd(moe_ctx *ctx, int64_t batch, int64_t seq, int64_t heads, int64_t kv_heads,
                              int64_t head_dim, float scale, const float *alibi, const float *q, const float *k,
                              const float *v, const float *out, const float *lse, const float *dout, float *dq,
                              float *dk, float *dv, void *ws, size_t ws_bytes);

#ifdef __cplusplus
}
#endif

#endif
