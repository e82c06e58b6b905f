/* moe_layer: a standalone MoE or dense-MLP layer (FastMoE's FMoE as a C object), or a view of one
 * sub-layer of a model. Inputs are copied into layer-owned buffers, because the backward needs
 * them and the library never keeps a caller's pointer (API_STYLE rule 13). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/ctx.h"
#include "core/error.h"
#include "nn/layer_internal.h"
#include "nn/model.h"
#include "nn/model_config.h"
#include "parallel/mesh.h"

struct moe_layer {
    moe_ctx *ctx;
    int32_t kind;
    int borrowed;
    /* borrowed */
    moe_model *model;
    int32_t block;
    /* standalone */
    moei_params own;
    moei_mlp mlp;
    moei_moe moe;
    /* both */
    moei_params *params;
    int32_t *param_index; /* this layer's tensors, as indices into *params */
    int32_t param_count;
    int64_t batch, seq;
    int has_forward;
    uint64_t model_forwards; /* borrowed: the model's forward count when this layer ran its forward */
    moei_buf x, h, dh, scratch;
};

static void layer_config_defaults(moe_layer_config *c)
{
    c->kind = MOE_LAYER_MOE;
    c->d_model = 128;
    c->hidden = 256;
    c->activation = MOE_ACTIVATION_SWIGLU;
    c->num_experts = 8;
    c->top_k = 2;
    c->shared_expert_hidden = 0;
    c->router = MOE_ROUTER_TOKEN_CHOICE;
    c->score_function = MOE_SCORE_SOFTMAX;
    c->renormalize = 1;
    c->capacity_factor = 0.0f;
    c->jitter = 0.0f;
    c->aux_loss_coef = 0.01f;
    c->z_loss_coef = 0.001f;
    c->bias_update_rate = 0.0f;
    c->init_std = 0.02f;
}

MOE_API moe_status moe_layer_config_init(moe_layer_config *cfg, uint32_t struct_size)
{
    moe_layer_config d;
    layer_config_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_layer_config_init");
}

/* A standalone layer's config is checked by mapping it onto the model rules it shares. */
static moe_status check_layer_config(moe_ctx *ctx, const moe_layer_config *c, const char *fn)
{
#define BAD(field, rule) moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_layer_config.%s %s", fn, field, rule)
    if (c->kind != MOE_LAYER_MOE && c->kind != MOE_LAYER_DENSE_MLP)
        return BAD("kind", "must be MOE_LAYER_MOE or MOE_LAYER_DENSE_MLP");
    moe_model_config m;
    moei_model_config_defaults(&m);
    m.d_model = c->d_model;
    m.num_heads = 1;
    m.num_kv_heads = 1;
    m.head_dim = 2;
    m.init_std = c->init_std;
    m.ffn_hidden = c->hidden;
    m.ffn_activation = c->activation;
    m.moe_num_experts = c->kind == MOE_LAYER_MOE ? c->num_experts : 0;
    m.moe_top_k = c->top_k;
    m.moe_expert_hidden = c->hidden;
    m.moe_activation = c->activation;
    m.moe_shared_expert_hidden = c->shared_expert_hidden;
    m.moe_router = c->router;
    m.moe_score_function = c->score_function;
    m.moe_renormalize = c->renormalize;
    m.moe_capacity_factor = c->capacity_factor;
    m.moe_jitter = c->jitter;
    m.moe_aux_loss_coef = c->aux_loss_coef;
    m.moe_z_loss_coef = c->z_loss_coef;
    m.moe_bias_update_rate = c->bias_update_rate;
    if (c->kind == MOE_LAYER_MOE && c->num_experts < 1) return BAD("num_experts", "must be >= 1");
    moe_status st = moei_model_config_check(ctx, &m, fn);
    if (st != MOE_OK) {
        /* Re-word the model field names as layer field names. */
        const char *msg = moe_last_error();
        static const struct {
            const char *model, *layer;
        } names[] = {{"moe_num_experts", "num_experts"}, {"moe_top_k", "top_k"}, {"moe_expert_hidden", "hidden"},
                     {"ffn_hidden", "hidden"}, {"moe_activation", "activation"}, {"ffn_activation", "activation"},
                     {"moe_shared_expert_hidden", "shared_expert_hidden"}, {"moe_router", "router"},
                     {"moe_score_function", "score_function"}, {"moe_renormalize", "renormalize"},
                     {"moe_capacity_factor", "capacity_factor"}, {"moe_jitter", "jitter"},
                     {"moe_aux_loss_coef", "aux_loss_coef"}, {"moe_z_loss_coef", "z_loss_coef"},
                     {"moe_bias_update_rate", "bias_update_rate"}, {"d_model", "d_model"}, {"init_std", "init_std"}};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            char key[64];
            snprintf(key, sizeof key, "moe_model_config.%s ", names[i].model);
            const char *at = strstr(msg, key);
            if (at) return BAD(names[i].layer, at + strlen(key));
        }
        return st;
    }
    return MOE_OK;
#undef BAD
}

static moe_status collect_params(moe_layer *l, const char *prefix)
{
    size_t plen = strlen(prefix);
    l->param_index = calloc((size_t)l->params->count + 1, sizeof *l->param_index);
    if (!l->param_index) return moei_fail(l->ctx, MOE_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int32_t i = 0; i < l->params->count; i++)
        if (strncmp(l->params->entries[i].name, prefix, plen) == 0) l->param_index[l->param_count++] = i;
    return MOE_OK;
}

MOE_API moe_status moe_layer_create(moe_ctx *ctx, const moe_mesh *mesh, const moe_layer_config *cfg, moe_layer **out)
{
    static const char *fn = "moe_layer_create";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, mesh, fn);
    MOEI_CHECK_NOT_NULL(ctx, cfg, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    moe_layer_config c;
    layer_config_defaults(&c);
    c.struct_size = sizeof c;
    moe_status st = moei_config_read(&c, sizeof c, cfg, "moe_layer_config", fn);
    if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    st = check_layer_config(ctx, &c, fn);
    if (st != MOE_OK) return st;
    if (!moei_ctx_ops(ctx)) return MOE_ERR_UNSUPPORTED;
    moe_layer *l = calloc(1, sizeof *l);
    if (!l) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    l->ctx = ctx;
    l->kind = c.kind;
    l->params = &l->own;
    moei_params_init(&l->own, ctx);
    if (c.kind == MOE_LAYER_MOE) {
        moei_moe_settings s = {c.d_model, c.num_experts, c.top_k, c.hidden, c.activation, c.router,
                               c.score_function, c.shared_expert_hidden, c.renormalize, c.capacity_factor,
                               c.jitter, c.aux_loss_coef, c.z_loss_coef, c.bias_update_rate, 1, 0, NULL};
        moei_mesh_expert_settings(mesh, &s);
        st = moei_moe_register(&l->moe, &l->own, "layer", &s);
    } else {
        st = moei_mlp_register(&l->mlp, &l->own, "layer", c.d_model, c.hidden, c.activation);
    }
    if (st == MOE_OK) st = moei_params_alloc(&l->own);
    if (st == MOE_OK) st = collect_params(l, "layer.");
    if (st != MOE_OK) {
        if (c.kind == MOE_LAYER_MOE) moei_moe_free(ctx, &l->moe);
        moei_params_free(&l->own);
        free(l->param_index);
        free(l);
        return st;
    }
    moei_params_init_values(&l->own, ctx->seed, c.init_std);
    moei_ctx_retain(ctx);
    *out = l;
    return MOE_OK;
}

static void layer_free_buffers(moe_layer *l)
{
    moei_buf_free(l->ctx, &l->x);
    moei_buf_free(l->ctx, &l->h);
    moei_buf_free(l->ctx, &l->dh);
    moei_buf_free(l->ctx, &l->scratch);
}

MOE_API void moe_layer_destroy(moe_layer *layer)
{
    if (!layer || layer->borrowed) return;
    moe_ctx *ctx = layer->ctx;
    if (layer->kind == MOE_LAYER_MOE)
        moei_moe_free(ctx, &layer->moe);
    else
        moei_mlp_free(ctx, &layer->mlp);
    layer_free_buffers(layer);
    moei_params_free(&layer->own);
    free(layer->param_index);
    moei_ctx_release(ctx);
    free(layer);
}

void moei_layer_handle_free(moe_layer *layer)
{
    if (!layer) return;
    layer_free_buffers(layer);
    free(layer->param_index);
    free(layer);
}

MOE_API moe_status moe_model_layer(moe_model *model, int32_t block, int32_t kind, moe_layer **out)
{
    static const char *fn = "moe_model_layer";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    MOEI_CHECK_NOT_NULL(model->ctx, out, fn);
    if (block < 0 || block >= model->cfg.num_layers)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: block %d is not in [0, %d)", fn, (int)block,
                         (int)model->cfg.num_layers);
    moei_block *b = &model->blocks[block];
    if (b->absent)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: block %d lives on another pipeline stage", fn, (int)block);
    if (model->tp.size > 1 && model->tp.sp)
        return moei_fail(model->ctx, MOE_ERR_UNSUPPORTED,
                         "%s: borrowed layers take whole sequences, but this model is sequence parallel", fn);
    int32_t ffn_kind = b->is_moe ? MOE_LAYER_MOE : MOE_LAYER_DENSE_MLP;
    if (kind != MOE_LAYER_ATTENTION && kind != ffn_kind)
        return moei_fail(model->ctx, MOE_ERR_INVALID_ARG, "%s: block %d has no layer of kind %d (its FFN is %s)", fn,
                         (int)block, (int)kind, b->is_moe ? "MOE_LAYER_MOE" : "MOE_LAYER_DENSE_MLP");
    moe_layer **slot = kind == MOE_LAYER_ATTENTION ? &b->attn_handle : &b->ffn_handle;
    if (!*slot) {
        moe_layer *l = calloc(1, sizeof *l);
        if (!l) return moei_fail(model->ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
        l->ctx = model->ctx;
        l->kind = kind;
        l->borrowed = 1;
        l->model = model;
        l->block = block;
        l->params = &model->params;
        char prefix[64];
        const char *part = kind == MOE_LAYER_ATTENTION ? "attn" : b->is_moe ? "moe" : "mlp";
        snprintf(prefix, sizeof prefix, "layers.%d.%s.", (int)block, part);
        /* the sub-layer's norm belongs to it too: "attn_norm." / "ffn_norm." */
        moe_status st = collect_params(l, prefix);
        if (st != MOE_OK) {
            free(l);
            return st;
        }
        char norm_prefix[64];
        snprintf(norm_prefix, sizeof norm_prefix, "layers.%d.%s.", (int)block,
                 kind == MOE_LAYER_ATTENTION ? "attn_norm" : "ffn_norm");
        for (int32_t i = 0; i < l->params->count; i++)
            if (strncmp(l->params->entries[i].name, norm_prefix, strlen(norm_prefix)) == 0)
                l->param_index[l->param_count++] = i;
        *slot = l;
    }
    *out = *slot;
    return MOE_OK;
}

MOE_API moe_status moe_layer_kind_of(const moe_layer *layer, int32_t *kind)
{
    MOEI_CHECK_NOT_NULL(NULL, layer, "moe_layer_kind_of");
    MOEI_CHECK_NOT_NULL(layer->ctx, kind, "moe_layer_kind_of");
    *kind = layer->kind;
    return MOE_OK;
}

static int32_t layer_d_model(const moe_layer *l)
{
    if (l->borrowed) return l->model->cfg.d_model;
    return l->kind == MOE_LAYER_MOE ? l->moe.s.d : l->mlp.d;
}

MOE_API moe_status moe_layer_forward(moe_layer *layer, const float *x, int32_t batch, int32_t seq_len, float *y)
{
    static const char *fn = "moe_layer_forward";
    MOEI_CHECK_NOT_NULL(NULL, layer, fn);
    moe_ctx *ctx = layer->ctx;
    MOEI_CHECK_NOT_NULL(ctx, x, fn);
    MOEI_CHECK_NOT_NULL(ctx, y, fn);
    if (batch < 1 || seq_len < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: batch = %d, seq_len = %d (both must be >= 1)", fn, (int)batch,
                         (int)seq_len);
    if (layer->borrowed && layer->kind == MOE_LAYER_ATTENTION && seq_len > layer->model->cfg.max_seq_len)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: seq_len = %d exceeds max_seq_len = %d", fn, (int)seq_len,
                         (int)layer->model->cfg.max_seq_len);
    const int64_t n = (int64_t)batch * seq_len, d = layer_d_model(layer);
    moe_status st = moei_buf_reserve(ctx, &layer->x, (uint64_t)(n * d) * sizeof(float));
    if (st == MOE_OK) st = moei_buf_reserve(ctx, &layer->h, (uint64_t)(n * d) * sizeof(float));
    if (st != MOE_OK) return st;
    float *xs = MOEI_BUF_F32(layer->x), *h = MOEI_BUF_F32(layer->h);
    memcpy(xs, x, (size_t)(n * d) * sizeof(float));
    layer->has_forward = 0;
    int saved = moei_threads_enter(ctx);
    if (!layer->borrowed) {
        if (layer->kind == MOE_LAYER_MOE)
            st = moei_moe_forward(ctx, &layer->moe, layer->params, xs, n, 1, ctx->seed, 0, y);
        else
            st = moei_mlp_forward(ctx, &layer->mlp, layer->params, xs, n, y);
    } else {
        moei_block *b = &layer->model->blocks[layer->block];
        moei_norm *nm = layer->kind == MOE_LAYER_ATTENTION ? &b->norm1 : &b->norm2;
        st = moei_norm_forward(ctx, nm, layer->params, xs, n, h);
        if (st == MOE_OK) {
            if (layer->kind == MOE_LAYER_ATTENTION)
                st = moei_attn_forward(ctx, &b->attn, layer->params, h, batch, seq_len, y);
            else if (layer->kind == MOE_LAYER_MOE)
                st = moei_moe_forward(ctx, &b->moe, layer->params, h, n, 1, ctx->seed, 0, y);
            else
                st = moei_mlp_forward(ctx, &b->mlp, layer->params, h, n, y);
        }
    }
    moei_threads_leave(saved);
    if (st == MOE_OK) {
        layer->has_forward = 1;
        layer->batch = batch;
        layer->seq = seq_len;
        if (layer->borrowed) layer->model_forwards = ++layer->model->forward_count;
    }
    return st;
}

MOE_API moe_status moe_layer_backward(moe_layer *layer, const float *dy, float *dx)
{
    static const char *fn = "moe_layer_backward";
    MOEI_CHECK_NOT_NULL(NULL, layer, fn);
    moe_ctx *ctx = layer->ctx;
    MOEI_CHECK_NOT_NULL(ctx, dy, fn);
    MOEI_CHECK_NOT_NULL(ctx, dx, fn);
    if (!layer->has_forward) return moei_fail(ctx, MOE_ERR_STATE, "%s: no forward pass to go back through", fn);
    /* The saved activations are consumed by the backward, and a borrowed layer shares them with its
     * model: anything that ran through the model since this layer's forward has replaced them. */
    if (layer->borrowed && layer->model->forward_count != layer->model_forwards) {
        layer->has_forward = 0;
        return moei_fail(ctx, MOE_ERR_STATE,
                         "%s: the model ran another forward since this layer's forward; run the layer's forward again", fn);
    }
    layer->has_forward = 0;
    const int64_t n = layer->batch * layer->seq, d = layer_d_model(layer);
    moe_status st = MOE_OK;
    int saved = moei_threads_enter(ctx);
    if (!layer->borrowed) {
        if (layer->kind == MOE_LAYER_MOE)
            st = moei_moe_backward(ctx, &layer->moe, layer->params, dy, dx, 0, 1.0f);
        else
            st = moei_mlp_backward(ctx, &layer->mlp, layer->params, dy, dx, 0);
    } else {
        moei_block *b = &layer->model->blocks[layer->block];
        st = moei_buf_reserve(ctx, &layer->dh, (uint64_t)(n * d) * sizeof(float));
        float *dh = MOEI_BUF_F32(layer->dh);
        if (st == MOE_OK) {
            if (layer->kind == MOE_LAYER_ATTENTION)
                st = moei_attn_backward(ctx, &b->attn, layer->params, dy, dh, 0);
            else if (layer->kind == MOE_LAYER_MOE)
                st = moei_moe_backward(ctx, &b->moe, layer->params, dy, dh, 0, 1.0f);
            else
                st = moei_mlp_backward(ctx, &b->mlp, layer->params, dy, dh, 0);
        }
        moei_norm *nm = layer->kind == MOE_LAYER_ATTENTION ? &b->norm1 : &b->norm2;
        if (st == MOE_OK) st = moei_norm_backward(ctx, nm, layer->params, MOEI_BUF_F32(layer->x), n, dh, dx, 0, NULL);
    }
    moei_threads_leave(saved);
    return st;
}

MOE_API moe_status moe_layer_zero_grad(moe_layer *layer)
{
    MOEI_CHECK_NOT_NULL(NULL, layer, "moe_layer_zero_grad");
    for (int32_t i = 0; i < layer->param_count; i++) {
        const moei_param *e = &layer->params->entries[layer->param_index[i]];
        memset(moei_param_grad(layer->params, layer->param_index[i]), 0, (size_t)e->numel * sizeof(float));
    }
    return MOE_OK;
}

MOE_API moe_status moe_layer_param_count(const moe_layer *layer, int32_t *count)
{
    MOEI_CHECK_NOT_NULL(NULL, layer, "moe_layer_param_count");
    MOEI_CHECK_NOT_NULL(layer->ctx, count, "moe_layer_param_count");
    *count = layer->param_count;
    return MOE_OK;
}

static moe_status map_index(const moe_layer *layer, int32_t index, int32_t *global, const char *fn)
{
    if (index < 0 || index >= layer->param_count)
        return moei_fail(layer->ctx, MOE_ERR_INVALID_ARG, "%s: index %d is not in [0, %d)", fn, (int)index,
                         (int)layer->param_count);
    *global = layer->param_index[index];
    return MOE_OK;
}

MOE_API moe_status moe_layer_param_info(const moe_layer *layer, int32_t index, char *name, uint32_t name_capacity,
                                        int32_t *ndim, int64_t *shape)
{
    static const char *fn = "moe_layer_param_info";
    MOEI_CHECK_NOT_NULL(NULL, layer, fn);
    int32_t g = -1;
    moe_status st = map_index(layer, index, &g, fn);
    if (st != MOE_OK) return st;
    return moei_params_info(layer->params, g, name, name_capacity, ndim, shape, fn);
}

MOE_API moe_status moe_layer_param_read(const moe_layer *layer, int32_t index, uint32_t gradient, float *dst,
                                        int64_t count)
{
    static const char *fn = "moe_layer_param_read";
    MOEI_CHECK_NOT_NULL(NULL, layer, fn);
    int32_t g = -1;
    moe_status st = map_index(layer, index, &g, fn);
    if (st != MOE_OK) return st;
    return moei_params_copy_out(layer->params, g, gradient, dst, count, fn);
}

MOE_API moe_status moe_layer_param_write(moe_layer *layer, int32_t index, const float *src, int64_t count)
{
    static const char *fn = "moe_layer_param_write";
    MOEI_CHECK_NOT_NULL(NULL, layer, fn);
    int32_t g = -1;
    moe_status st = map_index(layer, index, &g, fn);
    if (st != MOE_OK) return st;
    return moei_params_copy_in(layer->params, g, src, count, fn);
}

MOE_API moe_status moe_layer_routing_stats(const moe_layer *layer, moe_routing_stats *stats,
                                           int64_t *tokens_per_expert, int32_t capacity)
{
    static const char *fn = "moe_layer_routing_stats";
    MOEI_CHECK_NOT_NULL(NULL, layer, fn);
    if (layer->kind != MOE_LAYER_MOE)
        return moei_fail(layer->ctx, MOE_ERR_INVALID_ARG, "%s: the layer is not an MoE layer", fn);
    const moei_moe *m = layer->borrowed ? &layer->model->blocks[layer->block].moe : &layer->moe;
    return moei_moe_stats(layer->ctx, m, stats, tokens_per_expert, capacity, fn);
}
