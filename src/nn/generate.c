/* KV-cached decoding over a model's blocks, and the public moe_decoder. The decoder runs the same
 * ops as moei_model_forward on the new tokens only: norm, the q/k/v GEMMs with the model's
 * weights, RoPE at each token's absolute position, the keys and values appended to the cache,
 * attention against the cache, the output projection, the FFN (MLP or MoE without training), and
 * the final norm and LM head on each sequence's last token. A prompt fed into an empty cache runs
 * the training attention kernel itself, so prefill matches the full forward's attention bit for bit. */
#include "nn/generate.h"
#include "parallel/mesh.h"

#include <stdlib.h>
#include <string.h>

#include "core/ctx.h"
#include "core/error.h"
#include "core/ops.h"
#include "cpu/attention.h"
#include "cpu/attention_decode.h"
#include "cpu/embed.h"
#include "cpu/rope.h"
#include "nn/model.h"

static moe_status reserve_f32(moe_ctx *ctx, moei_buf *b, int64_t count)
{
    return moei_buf_reserve(ctx, b, (uint64_t)count * sizeof(float));
}

/* Start of the cache block of (layer, k or v, sequence) in `base`. */
static float *cache_at(const moei_decoder *d, float *base, int32_t layer, int kv, int32_t seq)
{
    return base + (((int64_t)layer * 2 + kv) * d->cap + seq) * d->max_len * d->kvd;
}

moe_status moei_decoder_init(moei_decoder *d, moe_model *model, int32_t max_len, int32_t cap, int with_spare)
{
    /* The cache and the decode path hold whole layers and the full vocabulary on one rank. */
    /* (Expert parallelism works when every rank decodes the same prompt in step.) */
    if (model->tp.size > 1 || model->pipe)
        return moei_fail(model->ctx, MOE_ERR_UNSUPPORTED,
                         "generation needs whole layers and the full vocabulary (this model has tp = %d, pp = %d); "
                         "load its checkpoint on one rank to generate",
                         (int)model->tp.size, (int)model->mesh->size[MOE_AXIS_PP]);
    memset(d, 0, sizeof *d);
    d->model = model;
    d->ctx = model->ctx;
    d->max_len = max_len;
    d->cap = cap;
    d->kvd = (int64_t)model->cfg.num_kv_heads * model->head_dim;
    const int64_t floats = (int64_t)model->cfg.num_layers * 2 * cap * max_len * d->kvd;
    moe_status st = reserve_f32(d->ctx, &d->cache, floats);
    if (st == MOE_OK && with_spare) st = reserve_f32(d->ctx, &d->spare, floats);
    if (st != MOE_OK) {
        moei_buf_free(d->ctx, &d->cache);
        d->ctx = NULL; /* nothing retained: release is a no-op */
        return st;
    }
    moei_ctx_retain(d->ctx);
    return MOE_OK;
}

void moei_decoder_release(moei_decoder *d)
{
    if (!d->ctx) return;
    moei_buf *bufs[] = {&d->cache, &d->spare, &d->x, &d->h,   &d->q,  &d->k,
                        &d->v,     &d->o,     &d->x2, &d->pos, &d->last, &d->hf, &d->attn_ws};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) moei_buf_free(d->ctx, bufs[i]);
    moei_ctx_release(d->ctx);
    d->ctx = NULL;
}

/* Attention of the new tokens of every sequence, their keys and values already in the cache. */
static moe_status decode_attention(moei_decoder *d, const moei_attn *a, int32_t layer, int32_t batch, int32_t n)
{
    moe_ctx *ctx = d->ctx;
    const int64_t qd = (int64_t)a->heads * a->head_dim;
    const float *alibi = a->position == MOE_POSITION_ALIBI ? a->alibi : NULL;
    float *q = MOEI_BUF_F32(d->q), *o = MOEI_BUF_F32(d->o), *base = MOEI_BUF_F32(d->cache);
    size_t ws_bytes = 0;
    moe_status st;
    if (d->len == 0) {
        /* Prefill: plain causal attention over the new tokens, the kernel the full forward uses. */
        st = moei_attention_workspace_size(ctx, 1, n, a->heads, 0, &ws_bytes);
        if (st == MOE_OK) st = moei_buf_reserve(ctx, &d->attn_ws, ws_bytes);
        for (int32_t b = 0; st == MOE_OK && b < batch; b++)
            st = moei_attention_fwd(ctx, 1, n, a->heads, a->kv_heads, a->head_dim, 0.0f, alibi, q + (int64_t)b * n * qd,
                                    cache_at(d, base, layer, 0, b), cache_at(d, base, layer, 1, b),
                                    o + (int64_t)b * n * qd, NULL, d->attn_ws.ptr, ws_bytes);
        return st;
    }
    st = moei_attention_decode_workspace_size(ctx, a->heads, a->kv_heads, (int64_t)d->len + n, 0, &ws_bytes);
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &d->attn_ws, ws_bytes);
    if (st == MOE_OK)
        st = moei_attention_decode(ctx, batch, n, d->len, a->heads, a->kv_heads, a->head_dim, 0.0f, alibi, q,
                                   cache_at(d, base, layer, 0, 0), cache_at(d, base, layer, 1, 0), d->max_len, o,
                                   d->attn_ws.ptr, ws_bytes);
    return st;
}

/* The FFN of a block on [batch * n, d] rows. Routing that depends on the other tokens of the
 * micro-batch (expert choice, capacity) runs per sequence, so a sequence decodes the same way
 * whichever other sequences (beams) share the call. */
static moe_status block_ffn(moei_decoder *d, moei_block *blk, const float *h, int32_t batch, int32_t n, float *y)
{
    moe_model *m = d->model;
    moe_ctx *ctx = d->ctx;
    const int64_t dm = m->cfg.d_model, rows = (int64_t)batch * n;
    if (!blk->is_moe) return moei_mlp_forward(ctx, &blk->mlp, &m->params, h, rows, y);
    const int per_seq = blk->moe.s.router == MOE_ROUTER_EXPERT_CHOICE || blk->moe.s.capacity_factor > 0.0f;
    if (!per_seq || batch == 1)
        return moei_moe_forward(ctx, &blk->moe, &m->params, h, rows, 0, ctx->seed, m->rng_step, y);
    moe_status st = MOE_OK;
    for (int32_t b = 0; st == MOE_OK && b < batch; b++)
        st = moei_moe_forward(ctx, &blk->moe, &m->params, h + (int64_t)b * n * dm, n, 0, ctx->seed, m->rng_step,
                              y + (int64_t)b * n * dm);
    return st;
}

moe_status moei_decoder_forward(moei_decoder *d, const int32_t *tokens, int32_t batch, int32_t n, float *logits)
{
    moe_model *m = d->model;
    moe_ctx *ctx = d->ctx;
    const moei_ops *ops = moei_ctx_ops(ctx);
    if (!ops) return MOE_ERR_UNSUPPORTED;
    const moe_model_config *c = &m->cfg;
    const moei_params *p = &m->params;
    const int64_t N = (int64_t)batch * n, dm = c->d_model, V = c->vocab_size, kvd = d->kvd,
                  qd = (int64_t)c->num_heads * m->head_dim;
    if (batch < 1 || batch > d->cap || n < 1 || d->len + (int64_t)n > d->max_len)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "moei_decoder_forward: %d x %d tokens do not fit (%d of %d held)",
                         (int)batch, (int)n, (int)d->len, (int)d->max_len);
    m->forward_count++; /* the blocks' saved activations are replaced (borrowed layers must notice) */
    moe_status st = reserve_f32(ctx, &d->x, N * dm);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->h, N * dm);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->x2, N * dm);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->q, N * qd);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->o, N * qd);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->k, N * kvd);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->v, N * kvd);
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &d->pos, (uint64_t)N * sizeof(int32_t));
    if (st == MOE_OK) st = reserve_f32(ctx, &d->last, (int64_t)batch * dm);
    if (st == MOE_OK) st = reserve_f32(ctx, &d->hf, (int64_t)batch * dm);
    if (st != MOE_OK) return st;
    float *x = MOEI_BUF_F32(d->x), *h = MOEI_BUF_F32(d->h), *x2 = MOEI_BUF_F32(d->x2), *q = MOEI_BUF_F32(d->q),
          *k = MOEI_BUF_F32(d->k), *v = MOEI_BUF_F32(d->v), *o = MOEI_BUF_F32(d->o), *base = MOEI_BUF_F32(d->cache);
    int32_t *pos = MOEI_BUF_I32(d->pos);
    for (int64_t i = 0; i < N; i++) pos[i] = d->len + (int32_t)(i % n);

    st = moei_cpu_embedding_forward(ctx, N, V, dm, moei_param_data(p, m->embed), tokens, x);
    if (st == MOE_OK && m->pos_embed >= 0)
        st = moei_cpu_pos_embed_add(ctx, N, c->max_seq_len, dm, moei_param_data(p, m->pos_embed), pos, x);
    for (int32_t l = 0; st == MOE_OK && l < c->num_layers; l++) {
        moei_block *blk = &m->blocks[l];
        moei_attn *a = &blk->attn;
        st = moei_norm_forward(ctx, &blk->norm1, p, x, N, h);
        if (st == MOE_OK) st = ops->gemm(ctx, 0, 1, N, qd, dm, 1.0f, h, dm, moei_param_data(p, a->wq), dm, 0.0f, q, qd);
        if (st == MOE_OK)
            st = ops->gemm(ctx, 0, 1, N, kvd, dm, 1.0f, h, dm, moei_param_data(p, a->wk), dm, 0.0f, k, kvd);
        if (st == MOE_OK)
            st = ops->gemm(ctx, 0, 1, N, kvd, dm, 1.0f, h, dm, moei_param_data(p, a->wv), dm, 0.0f, v, kvd);
        if (st == MOE_OK && a->position == MOE_POSITION_ROPE)
            st = moei_rope_fwd(ctx, N, a->heads, a->kv_heads, a->head_dim, pos, a->max_seq, a->rope_cos, a->rope_sin,
                               q, k);
        if (st != MOE_OK) break;
        for (int32_t b = 0; b < batch; b++) {
            const size_t bytes = (size_t)n * (size_t)kvd * sizeof(float);
            memcpy(cache_at(d, base, l, 0, b) + (int64_t)d->len * kvd, k + (int64_t)b * n * kvd, bytes);
            memcpy(cache_at(d, base, l, 1, b) + (int64_t)d->len * kvd, v + (int64_t)b * n * kvd, bytes);
        }
        st = decode_attention(d, a, l, batch, n);
        if (st == MOE_OK)
            st = ops->gemm(ctx, 0, 1, N, dm, qd, 1.0f, o, qd, moei_param_data(p, a->wo), qd, 0.0f, x2, dm);
        if (st != MOE_OK) break;
        for (int64_t i = 0; i < N * dm; i++) x2[i] += x[i];
        st = moei_norm_forward(ctx, &blk->norm2, p, x2, N, h);
        if (st == MOE_OK) st = block_ffn(d, blk, h, batch, n, x);
        if (st != MOE_OK) break;
        for (int64_t i = 0; i < N * dm; i++) x[i] += x2[i];
    }
    if (st != MOE_OK) return st;
    /* Norms are row-wise: only each sequence's last row feeds the LM head. */
    float *last = MOEI_BUF_F32(d->last), *hf = MOEI_BUF_F32(d->hf);
    for (int32_t b = 0; b < batch; b++)
        memcpy(last + (int64_t)b * dm, x + ((int64_t)b * n + n - 1) * dm, (size_t)dm * sizeof(float));
    st = moei_norm_forward(ctx, &m->final_norm, p, last, batch, hf);
    const float *w_head = moei_param_data(p, m->lm_head >= 0 ? m->lm_head : m->embed);
    if (st == MOE_OK && logits) st = ops->gemm(ctx, 0, 1, batch, V, dm, 1.0f, hf, dm, w_head, dm, 0.0f, logits, V);
    if (st == MOE_OK) d->len += n;
    return st;
}

moe_status moei_decoder_reorder(moei_decoder *d, const int32_t *parent, int32_t batch)
{
    if (batch < 0 || batch > d->cap || !d->spare.ptr)
        return moei_fail(d->ctx, MOE_ERR_INVALID_ARG, "moei_decoder_reorder: %d sequences (capacity %d, spare %s)",
                         (int)batch, (int)d->cap, d->spare.ptr ? "present" : "absent");
    int identity = 1;
    for (int32_t b = 0; b < batch; b++) {
        if (parent[b] < 0 || parent[b] >= d->cap)
            return moei_fail(d->ctx, MOE_ERR_INVALID_ARG, "moei_decoder_reorder: parent[%d] = %d is outside [0, %d)",
                             (int)b, (int)parent[b], (int)d->cap);
        identity &= parent[b] == b;
    }
    if (identity || d->len == 0) return MOE_OK;
    float *from = MOEI_BUF_F32(d->cache), *to = MOEI_BUF_F32(d->spare);
    const int64_t items = (int64_t)d->model->cfg.num_layers * 2 * batch;
    const size_t bytes = (size_t)d->len * (size_t)d->kvd * sizeof(float);
#pragma omp parallel for schedule(static) if ((double)items * (double)bytes >= 1e6)
    for (int64_t it = 0; it < items; it++) {
        int32_t b = (int32_t)(it % batch), kv = (int32_t)(it / batch % 2), l = (int32_t)(it / batch / 2);
        memcpy(cache_at(d, to, l, kv, b), cache_at(d, from, l, kv, parent[b]), bytes);
    }
    moei_buf t = d->cache;
    d->cache = d->spare;
    d->spare = t;
    return MOE_OK;
}

/* ---- the public decoder ----------------------------------------------------------------------- */

struct moe_decoder {
    moei_decoder d;
    moei_buf logits;
};

MOE_API moe_status moe_decoder_create(moe_model *model, int32_t max_len, moe_decoder **out)
{
    static const char *fn = "moe_decoder_create";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    if (max_len < 0 || max_len > model->cfg.max_seq_len)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: max_len = %d (must be 0..max_seq_len = %d; 0 = max_seq_len)",
                         fn, (int)max_len, (int)model->cfg.max_seq_len);
    if (!moei_ctx_ops(ctx)) return MOE_ERR_UNSUPPORTED;
    moe_decoder *dec = calloc(1, sizeof *dec);
    if (!dec) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    moe_status st = moei_decoder_init(&dec->d, model, max_len > 0 ? max_len : model->cfg.max_seq_len, 1, 0);
    if (st == MOE_OK) st = reserve_f32(ctx, &dec->logits, model->cfg.vocab_size);
    if (st != MOE_OK) {
        moe_decoder_destroy(dec);
        return st;
    }
    *out = dec;
    return MOE_OK;
}

MOE_API void moe_decoder_destroy(moe_decoder *decoder)
{
    if (!decoder) return;
    if (decoder->d.ctx) moei_buf_free(decoder->d.ctx, &decoder->logits);
    moei_decoder_release(&decoder->d);
    free(decoder);
}

MOE_API moe_status moe_decoder_reset(moe_decoder *decoder)
{
    MOEI_CHECK_NOT_NULL(NULL, decoder, "moe_decoder_reset");
    decoder->d.len = 0;
    return MOE_OK;
}

MOE_API moe_status moe_decoder_length(const moe_decoder *decoder, int32_t *length)
{
    static const char *fn = "moe_decoder_length";
    MOEI_CHECK_NOT_NULL(NULL, decoder, fn);
    MOEI_CHECK_NOT_NULL(decoder->d.ctx, length, fn);
    *length = decoder->d.len;
    return MOE_OK;
}

MOE_API moe_status moe_decoder_feed(moe_decoder *decoder, const int32_t *tokens, int32_t count, float *logits,
                                    uint64_t logits_capacity)
{
    static const char *fn = "moe_decoder_feed";
    MOEI_CHECK_NOT_NULL(NULL, decoder, fn);
    moei_decoder *d = &decoder->d;
    moe_ctx *ctx = d->ctx;
    MOEI_CHECK_NOT_NULL(ctx, tokens, fn);
    const int32_t V = d->model->cfg.vocab_size;
    if (count < 1) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: count = %d (must be >= 1)", fn, (int)count);
    if (count > d->max_len - d->len)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: count = %d does not fit: the decoder holds %d of max_len = %d tokens", fn, (int)count,
                         (int)d->len, (int)d->max_len);
    for (int32_t i = 0; i < count; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tokens[%d] = %d is outside [0, vocab_size = %d)", fn,
                             (int)i, (int)tokens[i], (int)V);
    if (logits && logits_capacity < (uint64_t)V)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: logits_capacity = %llu but vocab_size = %d floats are needed",
                         fn, (unsigned long long)logits_capacity, (int)V);
    int saved = moei_threads_enter(ctx);
    moe_status st = moei_decoder_forward(d, tokens, 1, count, logits ? MOEI_BUF_F32(decoder->logits) : NULL);
    moei_threads_leave(saved);
    if (st == MOE_OK && logits) memcpy(logits, decoder->logits.ptr, (size_t)V * sizeof(float));
    return st;
}
