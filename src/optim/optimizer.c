/* moe_optimizer: the gradient reduction over data-parallel replicas (all-reduce, or ZeRO-1
 * reduce-scatter/all-gather: optim/zero.c), global-norm clipping, non-finite step skipping (agreed
 * by every rank), LR schedule, and the AdamW/SGD update over the part of the model's contiguous
 * parameter buffer this rank owns. After an applied update it also runs the MoE layers'
 * once-per-step work (the aux-loss-free bias update from the step's counts). */
#include "optim/optimizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/ctx.h"
#include "core/error.h"
#include "cpu/optim_kernels.h"
#include "comm/comm.h"
#include "nn/model.h"
#include "optim/zero.h"
#include "parallel/mesh.h"

static void optimizer_config_defaults(moe_optimizer_config *c)
{
    memset(c, 0, sizeof *c); /* padding too: configs compare bytewise */
    c->type = MOE_OPTIMIZER_ADAMW;
    c->lr = 1e-3f;
    c->min_lr = 1e-4f;
    c->warmup_steps = 0;
    c->decay_steps = 0;
    c->decay = MOE_LR_CONSTANT;
    c->beta1 = 0.9f;
    c->beta2 = 0.95f;
    c->eps = 1e-8f;
    c->weight_decay = 0.1f;
    c->momentum = 0.9f;
    c->nesterov = 0;
    c->clip_grad_norm = 1.0f;
    c->decay_norms_and_biases = 0;
    c->decay_embeddings = 0;
    c->zero_stage = 0;
}

MOE_API moe_status moe_optimizer_config_init(moe_optimizer_config *cfg, uint32_t struct_size)
{
    moe_optimizer_config d;
    optimizer_config_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_optimizer_config_init");
}

#define CHECK_FIELD(cond, field, rule)                                                                 \
    do {                                                                                               \
        if (!(cond)) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_optimizer_config.%s %s", fn, field, rule); \
    } while (0)

static moe_status check_config(moe_ctx *ctx, const moe_optimizer_config *c, const char *fn)
{
    CHECK_FIELD(c->type == MOE_OPTIMIZER_ADAMW || c->type == MOE_OPTIMIZER_SGD, "type", "is not a moe_optimizer_type");
    CHECK_FIELD(isfinite(c->lr) && c->lr >= 0.0f, "lr", "must be finite and >= 0");
    CHECK_FIELD(isfinite(c->min_lr) && c->min_lr >= 0.0f && c->min_lr <= c->lr, "min_lr", "must be in [0, lr]");
    CHECK_FIELD(c->warmup_steps >= 0, "warmup_steps", "must be >= 0");
    CHECK_FIELD(c->decay_steps >= 0, "decay_steps", "must be >= 0");
    CHECK_FIELD(c->decay >= MOE_LR_CONSTANT && c->decay <= MOE_LR_LINEAR, "decay", "is not a moe_lr_decay");
    CHECK_FIELD(c->decay == MOE_LR_CONSTANT || c->decay_steps > 0, "decay_steps", "must be > 0 for a decaying schedule");
    CHECK_FIELD(c->beta1 >= 0.0f && c->beta1 < 1.0f, "beta1", "must be in [0, 1)");
    CHECK_FIELD(c->beta2 >= 0.0f && c->beta2 < 1.0f, "beta2", "must be in [0, 1)");
    CHECK_FIELD(isfinite(c->eps) && c->eps > 0.0f, "eps", "must be finite and > 0");
    CHECK_FIELD(isfinite(c->weight_decay) && c->weight_decay >= 0.0f, "weight_decay", "must be finite and >= 0");
    CHECK_FIELD(c->momentum >= 0.0f && c->momentum < 1.0f, "momentum", "must be in [0, 1)");
    CHECK_FIELD(c->nesterov <= 1, "nesterov", "must be 0 or 1");
    CHECK_FIELD(c->nesterov == 0 || c->momentum > 0.0f, "nesterov", "needs momentum > 0");
    CHECK_FIELD(isfinite(c->clip_grad_norm) && c->clip_grad_norm >= 0.0f, "clip_grad_norm",
                "must be finite and >= 0 (0 = off)");
    CHECK_FIELD(c->decay_norms_and_biases <= 1, "decay_norms_and_biases", "must be 0 or 1");
    CHECK_FIELD(c->decay_embeddings <= 1, "decay_embeddings", "must be 0 or 1");
    CHECK_FIELD(c->zero_stage <= 1, "zero_stage", "must be 0 or 1");
    return MOE_OK;
}

MOE_API moe_status moe_optimizer_create(moe_model *model, const moe_optimizer_config *cfg, moe_optimizer **out)
{
    static const char *fn = "moe_optimizer_create";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, cfg, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    moe_optimizer_config c;
    optimizer_config_defaults(&c);
    c.struct_size = sizeof c;
    moe_status st = moei_config_read(&c, sizeof c, cfg, "moe_optimizer_config", fn);
    if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    st = check_config(ctx, &c, fn);
    if (st != MOE_OK) return st;
    moe_optimizer *o = calloc(1, sizeof *o);
    if (!o) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    o->ctx = ctx;
    o->model = model;
    o->cfg = c;
    st = moei_zero_layout(o, fn);
    const int32_t world = model->mesh->size[MOE_AXIS_WORLD];
    if (st == MOE_OK && c.zero_stage == 1) {
        o->gather = malloc((size_t)world * 2 * sizeof(double));
        if (!o->gather) st = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    if (st != MOE_OK) {
        free(o);
        return st;
    }
    uint64_t bytes = (uint64_t)o->count * sizeof(float);
    void *m = NULL, *v = NULL, *mask = NULL;
    st = moei_ctx_alloc(ctx, bytes, &m);
    if (st == MOE_OK && c.type == MOE_OPTIMIZER_ADAMW) st = moei_ctx_alloc(ctx, bytes, &v);
    if (st == MOE_OK) st = moei_ctx_alloc(ctx, (uint64_t)o->count, &mask);
    if (st != MOE_OK) {
        moei_ctx_free(ctx, m, bytes);
        moei_ctx_free(ctx, v, bytes);
        free(o->gather);
        free(o);
        return st;
    }
    o->m = m;
    o->v = v;
    o->decay_mask = mask; /* zeroed: padding is never decayed (it stays 0 anyway) */
    const moei_params *p = &model->params;
    for (int32_t i = 0; i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        int decay = e->role == MOEI_PARAM_MATRIX ||
                    ((e->role == MOEI_PARAM_NORM || e->role == MOEI_PARAM_BIAS) && c.decay_norms_and_biases) ||
                    (e->role == MOEI_PARAM_EMBEDDING && c.decay_embeddings);
        int64_t first, count, state;
        moei_optimizer_param_state(o, e, &first, &count, &state);
        if (count > 0) memset(o->decay_mask + state, decay, (size_t)count);
    }
    moei_ctx_retain(ctx);
    *out = o;
    return MOE_OK;
}

MOE_API void moe_optimizer_destroy(moe_optimizer *opt)
{
    if (!opt) return;
    uint64_t bytes = (uint64_t)opt->count * sizeof(float);
    moei_ctx_free(opt->ctx, opt->m, bytes);
    if (opt->v) moei_ctx_free(opt->ctx, opt->v, bytes);
    moei_ctx_free(opt->ctx, opt->decay_mask, (uint64_t)opt->count);
    free(opt->gather);
    moei_ctx_release(opt->ctx);
    free(opt);
}

double moei_optimizer_lr(const moe_optimizer_config *c, int64_t step)
{
    const double lr = c->lr, floor_lr = c->min_lr;
    if (step < c->warmup_steps) return lr * (double)(step + 1) / (double)c->warmup_steps;
    if (c->decay == MOE_LR_CONSTANT) return lr;
    double t = (double)(step - c->warmup_steps) / (double)c->decay_steps;
    if (t > 1.0) t = 1.0;
    if (c->decay == MOE_LR_COSINE) return floor_lr + (lr - floor_lr) * 0.5 * (1.0 + cos(3.14159265358979323846 * t));
    return lr - (lr - floor_lr) * t;
}

MOE_API moe_status moe_optimizer_lr_at(const moe_optimizer *opt, int64_t step, double *lr)
{
    MOEI_CHECK_NOT_NULL(NULL, opt, "moe_optimizer_lr_at");
    MOEI_CHECK_NOT_NULL(opt->ctx, lr, "moe_optimizer_lr_at");
    if (step < 0) return moei_fail(opt->ctx, MOE_ERR_INVALID_ARG, "moe_optimizer_lr_at: step = %lld (must be >= 0)",
                                   (long long)step);
    *lr = moei_optimizer_lr(&opt->cfg, step);
    return MOE_OK;
}

MOE_API moe_status moe_optimizer_step(moe_optimizer *opt, moe_optimizer_stats *stats)
{
    return moei_optimizer_step(opt, 0, stats);
}

moe_status moei_optimizer_step(moe_optimizer *opt, int force_skip, moe_optimizer_stats *stats)
{
    static const char *fn = "moe_optimizer_step";
    MOEI_CHECK_NOT_NULL(NULL, opt, fn);
    moe_ctx *ctx = opt->ctx;
    if (stats && stats->struct_size < sizeof(uint32_t))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: stats->struct_size = %u; set it to sizeof(moe_optimizer_stats)",
                         fn, (unsigned)stats->struct_size);
    moe_model *model = opt->model;
    moei_params *p = &model->params;
    const int zero = opt->cfg.zero_stage == 1;
    int saved = moei_threads_enter(ctx);
    double sumsq = 0.0;
    int32_t finite = 1;
    /* The reduction runs even when this rank skips: its replicas wait for it in the collective. */
    moe_status st = zero ? moei_zero_reduce(opt) : moei_model_reduce_grads(model);
    if (st == MOE_OK && zero) {
        st = moei_zero_grad_sumsq(opt, force_skip, &sumsq, &finite);
        if (force_skip) sumsq = NAN;
    } else if (st == MOE_OK && force_skip) {
        sumsq = NAN;
    } else if (st == MOE_OK) {
        st = moei_model_grad_sumsq(model, &sumsq, &finite);
    }
    double norm = sqrt(sumsq);
    double lr = moei_optimizer_lr(&opt->cfg, opt->step);
    int skip = st == MOE_OK && (!finite || !isfinite(norm));
    if (st == MOE_OK && !skip) {
        float scale = 1.0f;
        if (opt->cfg.clip_grad_norm > 0.0f && norm > opt->cfg.clip_grad_norm)
            scale = (float)(opt->cfg.clip_grad_norm / (norm + 1e-6)); /* torch.nn.utils.clip_grad_norm_ */
        /* Each region's owned range: the whole buffer with zero_stage 0, this rank's chunks with 1. */
        for (int32_t g = 0; st == MOE_OK && g < MOEI_GROUP_COUNT; g++) {
            const int64_t n = opt->own_len[g], at = p->region_offset[g] + opt->own_start[g];
            if (n == 0) continue;
            float *m = opt->m + opt->state_offset[g];
            const uint8_t *mask = opt->decay_mask + opt->state_offset[g];
            if (opt->cfg.type == MOE_OPTIMIZER_ADAMW) {
                moei_adamw_hparams hp = {lr, opt->cfg.beta1, opt->cfg.beta2, opt->cfg.eps, opt->cfg.weight_decay,
                                         opt->step + 1, scale};
                st = moei_cpu_adamw_step(ctx, n, p->data + at, p->grad + at, m, opt->v + opt->state_offset[g], mask,
                                         &hp);
            } else {
                moei_sgd_hparams hp = {lr, opt->cfg.momentum, 0.0, opt->cfg.weight_decay, (int32_t)opt->cfg.nesterov,
                                       opt->step + 1, scale};
                st = moei_cpu_sgd_step(ctx, n, p->data + at, p->grad + at, opt->cfg.momentum > 0.0f ? m : NULL, mask,
                                       &hp);
            }
        }
        /* every rank skips or updates alike (the agreement above), so all enter the gather */
        if (st == MOE_OK && zero) st = moei_zero_gather(opt);
    }
    /* Once-per-step MoE work: the bias update uses the counts of every micro-batch of this step. */
    for (int32_t l = 0; st == MOE_OK && l < model->cfg.num_layers; l++)
        if (model->blocks[l].is_moe) {
            moei_moe *mo = &model->blocks[l].moe;
            if (skip) {
                memset(mo->step_counts, 0, (size_t)mo->s.num_experts * sizeof(int64_t));
                continue;
            }
            /* the bias follows the load of the whole global batch */
            if (model->mesh->size[MOE_AXIS_DP] > 1 && mo->s.bias_rate > 0.0f) {
                moei_comm *dp = moei_mesh_comm(model->mesh, MOE_AXIS_DP);
                st = dp->ops->all_reduce_sum(dp, mo->step_counts, mo->s.num_experts, MOE_DTYPE_I64);
            }
            if (st == MOE_OK) st = moei_moe_end_step(ctx, mo);
        }
    moei_threads_leave(saved);
    if (st != MOE_OK) return st;
    if (skip) {
        opt->skipped_total++;
        moei_log(ctx, MOE_LOG_WARN, "%s: gradients are not finite (norm %g); step skipped (%lld so far)", fn, norm,
                 (long long)opt->skipped_total);
    } else {
        opt->step++;
    }
    if (stats) {
        moe_optimizer_stats r;
        memset(&r, 0, sizeof r);
        r.struct_size = stats->struct_size;
        r.grad_norm = norm;
        r.lr = lr;
        r.skipped = (uint32_t)skip;
        r.step = opt->step;
        r.skipped_total = opt->skipped_total;
        memcpy(stats, &r, stats->struct_size < sizeof r ? stats->struct_size : sizeof r);
    }
    return MOE_OK;
}
