/* Attention of a few new queries against a key/value cache, for incremental decoding (CPU). The
 * new tokens' keys and values must already be in the cache, so query r of a sequence (at absolute
 * position past + r) sees cached keys 0 .. past + r: the causal mask of the full forward. One work
 * item is (sequence, kv head, query) and covers every query head of that kv head's group, so each
 * cached key and value row is read once per group. Results do not depend on the thread count. */
#ifndef MOEI_CPU_ATTENTION_DECODE_H
#define MOEI_CPU_ATTENTION_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bytes of workspace moei_attention_decode needs for caches of up to `keys` rows (past + n_new)
 * on up to `threads` OpenMP threads (threads <= 0: omp_get_max_threads() of the caller). With a
 * workspace sized for fewer threads than are available, the kernel uses fewer threads. */
moe_status moei_attention_decode_workspace_size(moe_ctx *ctx, int64_t heads, int64_t kv_heads, int64_t keys,
                                                int32_t threads, size_t *bytes);

/* out = attention of q against the cache, per sequence b < batch:
 *   q        [batch, n_new, heads, head_dim]: the new queries (after RoPE when RoPE is used).
 *   k_cache, v_cache [batch, cache_rows, kv_heads, head_dim]: rows 0 .. past + n_new - 1 of each
 *            sequence are read (the new tokens' rows included); past + n_new <= cache_rows.
 *   Query r of sequence b scores key j <= past + r as scale * q . k_j - alibi[h] * (past + r - j),
 *   then softmax over those keys and the weighted sum of v. Query head h reads kv head
 *   h / (heads / kv_heads).
 *   scale    > 0, or 0 for 1 / sqrt(head_dim).
 *   alibi    [heads] slopes, or NULL.
 *   out      [batch, n_new, heads, head_dim], overwritten; must not overlap the inputs.
 *   ws       moei_attention_decode_workspace_size(..., keys >= past + n_new, ...) bytes, float aligned.
 * batch or n_new may be 0 (nothing to do); past >= 0; heads a multiple of kv_heads >= 1. */
moe_status moei_attention_decode(moe_ctx *ctx, int64_t batch, int64_t n_new, int64_t past, int64_t heads,
                                 int64_t kv_heads, int64_t head_dim, float scale, const float *alibi, const float *q,
                                 const float *k_cache, const float *v_cache, int64_t cache_rows, float *out, void *ws,
                                 size_t ws_bytes);

#ifdef __cplusplus
}
#endif

#endif
