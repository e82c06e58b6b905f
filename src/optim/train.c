/* moe_train_step: zero grads, run the batch's micro-batches with token-count weights (so the loss
 * is the mean over every counted target of the batch, whatever the split), then clip and update.
 * This is the call the pipeline schedule will live behind. */
#include <math.h>
#include <string.h>

#include "comm/comm.h"
#include "core/config.h"
#include "core/error.h"
#include "moe/train.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"

MOE_API moe_status moe_batch_init(moe_batch *batch, uint32_t struct_size)
{
    moe_batch d;
    memset(&d, 0, sizeof d);
    d.micro_batch_size = 1;
    d.seq_len = 1;
    d.num_micro_batches = 1;
    d.pipeline_schedule = MOE_PIPELINE_ONE_F_ONE_B;
    return moei_config_init(batch, struct_size, &d, sizeof d, "moe_batch_init");
}

MOE_API moe_status moe_train_step(moe_model *model, moe_optimizer *opt, const moe_batch *batch, moe_step_stats *stats)
{
    static const char *fn = "moe_train_step";
    MOEI_CHECK_NOT_NULL(NULL, model, fn);
    moe_ctx *ctx = model->ctx;
    MOEI_CHECK_NOT_NULL(ctx, opt, fn);
    MOEI_CHECK_NOT_NULL(ctx, batch, fn);
    if (opt->model != model) return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: the optimizer belongs to another model", fn);
    moe_batch b;
    moe_batch_init(&b, sizeof b); /* fields newer than the caller's struct keep their defaults */
    moe_status st = moei_config_read(&b, sizeof b, batch, "moe_batch", fn);
    if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    if (stats && stats->struct_size < sizeof(uint32_t))
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: stats->struct_size = %u; set it to sizeof(moe_step_stats)", fn,
                         (unsigned)stats->struct_size);
    if (b.micro_batch_size < 1 || b.num_micro_batches < 1 || b.seq_len < 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: moe_batch sizes micro_batch_size = %d, seq_len = %d, num_micro_batches = %d (all >= 1)",
                         fn, (int)b.micro_batch_size, (int)b.seq_len, (int)b.num_micro_batches);
    MOEI_CHECK_ARG(ctx, b.tokens != NULL, fn, "moe_batch.tokens is NULL");
    MOEI_CHECK_ARG(ctx, b.targets != NULL, fn, "moe_batch.targets is NULL");
    /* Every rank checks its own data first, then all ranks agree: a bad batch on one rank fails
     * every rank with that rank's message instead of leaving the others waiting in a collective. */
    {
        moe_status local = MOE_OK;
        const int64_t all = (int64_t)b.micro_batch_size * b.seq_len * b.num_micro_batches;
        const int32_t vocab = model->cfg.vocab_size;
        if (b.seq_len > model->cfg.max_seq_len)
            local = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_batch.seq_len = %d exceeds max_seq_len = %d", fn,
                              (int)b.seq_len, (int)model->cfg.max_seq_len);
        for (int64_t i = 0; local == MOE_OK && i < all; i++) {
            if (b.tokens[i] < 0 || b.tokens[i] >= vocab)
                local = moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: tokens[%lld] = %d is outside [0, vocab_size = %d)", fn,
                                  (long long)i, (int)b.tokens[i], (int)vocab);
            else if (b.targets[i] != -100 && (b.targets[i] < 0 || b.targets[i] >= vocab))
                local = moei_fail(ctx, MOE_ERR_INVALID_ARG,
                                  "%s: targets[%lld] = %d is outside [0, vocab_size = %d) and is not -100", fn,
                                  (long long)i, (int)b.targets[i], (int)vocab);
        }
        moei_comm *world = moei_mesh_comm(model->mesh, MOE_AXIS_WORLD);
        moe_status agreed = local;
        if (world && world->size > 1) {
            moe_status cst = moei_comm_agree(world, local, &agreed);
            if (cst != MOE_OK) return cst;
        }
        if (agreed != MOE_OK) return agreed;
    }
    const int64_t per_micro = (int64_t)b.micro_batch_size * b.seq_len;
    int64_t total = 0;
    for (int64_t i = 0; i < per_micro * b.num_micro_batches; i++) total += b.targets[i] != -100;
    /* Data parallelism: the loss is the mean over every counted target of the global batch, so each
     * micro-batch is weighted by its share of the global count. */
    moei_comm *dp = moei_mesh_comm(model->mesh, MOE_AXIS_DP);
    const int32_t dp_size = model->mesh->size[MOE_AXIS_DP], dp_rank = model->mesh->rank[MOE_AXIS_DP];
    if (dp_size > 1) {
        st = dp->ops->all_reduce_sum(dp, &total, 1, MOE_DTYPE_I64);
        if (st != MOE_OK) return st;
    }
    const int64_t global_micro = (int64_t)b.num_micro_batches * dp_size;

    st = moe_model_zero_grad(model);
    double loss = 0.0, aux = 0.0, max_load = 0.0;
    int64_t dropped = 0;
    int numeric = 0; /* a micro-batch met a non-finite value: the step is skipped, not failed */
    const int pipelined = model->pipe != NULL; /* pp > 1: the schedule runs the micro-batches */
    if (st == MOE_OK && pipelined) {
        moei_pipe_stats ps;
        const uint64_t rng_base = (uint64_t)(opt->step * global_micro + (int64_t)dp_rank * b.num_micro_batches);
        st = moei_pipe_train(model, &b, total, rng_base, global_micro, &ps);
        loss = ps.loss;
        aux = ps.aux;
        dropped = ps.dropped;
        max_load = ps.max_load;
        numeric = ps.numeric;
    }
    for (int32_t mb = 0; st == MOE_OK && !pipelined && mb < b.num_micro_batches; mb++) {
        const int32_t *tok = b.tokens + mb * per_micro, *tgt = b.targets + mb * per_micro;
        int64_t count = 0;
        for (int64_t i = 0; i < per_micro; i++) count += tgt[i] != -100;
        float weight = total > 0 ? (float)((double)count / (double)total) : 0.0f;
        double lm = 0.0, ax = 0.0;
        /* router jitter is keyed by (step, global micro-batch index): the same on every mesh */
        model->rng_step = (uint64_t)(opt->step * global_micro + (int64_t)dp_rank * b.num_micro_batches + mb);
        st = moe_model_forward_backward(model, tok, tgt, b.micro_batch_size, b.seq_len, weight, &lm, &ax);
        if (st == MOE_ERR_NUMERIC) {
            numeric = 1;
            loss = NAN;
            st = MOE_OK;
            break;
        }
        if (st != MOE_OK) break;
        loss += lm * (double)count;
        aux += ax * (total > 0 ? (double)count / (double)total : 1.0 / (double)global_micro);
        for (int32_t l = 0; l < model->cfg.num_layers; l++) {
            const moei_moe *mo = &model->blocks[l].moe;
            if (!model->blocks[l].is_moe || !mo->has_stats) continue;
            dropped += mo->stats.n_dropped;
            double mean = (double)mo->stats.n_rows / (double)mo->s.num_experts;
            double ratio = mean > 0.0 ? (double)mo->stats.max_kept / mean : 0.0;
            if (ratio > max_load) max_load = ratio;
        }
    }
    /* A non-finite micro-batch on any rank skips the step everywhere. */
    if (dp_size > 1) {
        int32_t flag = numeric;
        if (st == MOE_OK) st = dp->ops->all_reduce_sum(dp, &flag, 1, MOE_DTYPE_I32);
        numeric = flag > 0;
    }
    /* the gradients are summed over the replicas by the optimizer step (all-reduce, or ZeRO-1) */
    if (st != MOE_OK) return st;
    if (dp_size > 1) { /* statistics of the global batch */
        double local[3] = {loss, aux, (double)dropped}, all[3 * 1024];
        double loads[1024];
        if (dp_size > 1024) return moei_fail(ctx, MOE_ERR_UNSUPPORTED, "%s: dp > 1024", fn);
        st = moei_comm_host_all_gather(dp, local, all, sizeof local);
        if (st == MOE_OK) st = moei_comm_host_all_gather(dp, &max_load, loads, sizeof max_load);
        if (st != MOE_OK) return st;
        loss = aux = 0.0;
        dropped = 0;
        for (int32_t r = 0; r < dp_size; r++) { /* rank order: the same sum on every rank */
            loss += all[3 * r];
            aux += all[3 * r + 1];
            dropped += (int64_t)all[3 * r + 2];
            if (loads[r] > max_load) max_load = loads[r];
        }
    }
    moe_optimizer_stats os;
    memset(&os, 0, sizeof os);
    os.struct_size = sizeof os;
    st = moei_optimizer_step(opt, numeric, &os);
    if (st != MOE_OK) return st;
    if (stats) {
        moe_step_stats r;
        memset(&r, 0, sizeof r);
        r.struct_size = stats->struct_size;
        r.loss = total > 0 ? loss / (double)total : 0.0;
        r.aux_loss = aux;
        r.grad_norm = os.grad_norm;
        r.lr = os.lr;
        r.tokens = total;
        r.dropped = dropped;
        r.max_load = max_load;
        r.skipped = os.skipped;
        r.step = os.step;
        memcpy(stats, &r, stats->struct_size < sizeof r ? stats->struct_size : sizeof r);
    }
    return MOE_OK;
}
