/* Rotary position embedding as Hugging Face Llama/Mixtral apply it (the rotate_half convention:
 * element i of a head is paired with element i + D/2), and ALiBi slopes. Tables are caller-owned
 * [max_seq, D/2] fp32 arrays; the rotation is applied in place to q [tokens, heads, D] and
 * k [tokens, kv_heads, D], each token at its own position within its sequence. */
#ifndef MOEI_CPU_ROPE_H
#define MOEI_CPU_ROPE_H

#include <stdint.h>

#include "moe/ctx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fill cos_tab and sin_tab [max_seq, head_dim / 2] with cos/sin(p * inv_freq[i]) the way HF's
 * default rotary embedding computes them in fp32: inv_freq[i] = 1 / theta^((float)(2i) / D) in fp32,
 * angle = (float)p * inv_freq[i] rounded to fp32, then cos/sin of that fp32 angle, evaluated in
 * double and rounded to fp32 (HF evaluates them in fp32; the two agree to about one ulp).
 * max_seq >= 1, head_dim even >= 2, theta > 1 and finite. */
moe_status moei_rope_table(moe_ctx *ctx, int64_t max_seq, int64_t head_dim, float theta, float *cos_tab,
                           float *sin_tab);

/* Rotate q [tokens, heads, head_dim] and k [tokens, kv_heads, head_dim] in place: for i < D/2,
 * (x[i], x[i + D/2]) <- (x[i] c - x[i + D/2] s, x[i + D/2] c + x[i] s), c/s from the tables at
 * row pos[t]. pos [tokens] holds each token's position within its sequence, 0 <= pos[t] < max_seq
 * (max_seq = the rows of the tables). tokens may be 0. heads = 0 (q unused, may be NULL) or
 * kv_heads = 0 (k unused) rotates only the other one. */
moe_status moei_rope_fwd(moe_ctx *ctx, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                         const int32_t *pos, int64_t max_seq, const float *cos_tab, const float *sin_tab, float *q,
                         float *k);

/* Backward of moei_rope_fwd: the transpose of the rotation (rotation by the negative angle), in place
 * on dq [tokens, heads, D] and dk [tokens, kv_heads, D]; same arguments and rules. */
moe_status moei_rope_bwd(moe_ctx *ctx, int64_t tokens, int64_t heads, int64_t kv_heads, int64_t head_dim,
                         const int32_t *pos, int64_t max_seq, const float *cos_tab, const float *sin_tab, float *dq,
                         float *dk);

/* ALiBi slopes for `heads` heads (Press et al.): for n a power of two, slope[h] = 2^(-8 (h + 1) / n);
 * otherwise the slopes of the closest lower power of two c, followed by every other slope of 2c
 * (2^(-8 (2 j + 1) / (2c)), j = 0 .. heads - c - 1). Computed in double, stored as fp32. A
 * tensor-parallel rank passes the slice of the full head count's slopes that its heads own. */
moe_status moei_alibi_slopes(moe_ctx *ctx, int64_t heads, float *slopes);

#ifdef __cplusplus
}
#endif

#endif
