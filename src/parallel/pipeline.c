/* Pipeline parallelism: the layer layout over virtual stages and the executor of one training step.
 * The executor walks this rank's action list from moei_pp_schedule. The model keeps one micro-batch
 * of saved activations per block, so a chunk's input is stashed per micro-batch in flight and its
 * forward is recomputed before the backward whenever another micro-batch went through the chunk in
 * between; the recomputation is bitwise the forward (same rng_step) and its expert counts are taken
 * back out. Sends are posted (isend) from copies that live until completed; receives block. */
#include "parallel/pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/ctx.h"
#include "core/error.h"
#include "nn/model.h"
#include "nn/tp.h"
#include "parallel/mesh.h"

#define MAX_VIRTUAL 1024 /* chunks per stage, as the schedules allow */
#define LIST_STAGES ((int32_t)(sizeof(((moe_model_config *)0)->pipeline_layers) / sizeof(int32_t)))
#define TAG_GRAD 16384 /* tags: activations 0..16383, gradients 16384..32767 */

enum { SLOT_FREE = 0, SLOT_INPUT = 1, SLOT_GRAD = 2, SLOT_SEND = 3 };

/* One [tokens, d_model] buffer: a chunk's stashed input (until its backward), a received output
 * gradient (until its backward), or an outgoing copy (until its isend completes). */
typedef struct slot {
    float *buf;
    int32_t kind, mb, chunk, is_grad, posted;
    moei_comm_request req;
} slot;

struct moei_pipe {
    int32_t p, v, rank;
    int32_t *first;  /* [p * v + 1]: virtual stage s holds layers [first[s], first[s+1]) */
    int32_t layers;  /* num_layers */
    moei_comm *comm; /* the pp group, borrowed from the mesh */
    /* executor state, grown on demand and kept across steps */
    slot *slots;
    int32_t nslots;
    int64_t slot_floats;
    moei_pp_action *actions, *log;
    int64_t action_cap, log_count;
    int32_t *resident; /* [v]: the micro-batch whose activations chunk c's blocks hold, or -1 */
    double *stats;     /* this rank's statistics vector, then every rank's */
    int64_t stats_cap;
    int64_t *counts; /* counted targets per micro-batch */
    int64_t counts_cap;
    int64_t *expert_counts; /* [layers][experts]: the bias-update counts from before a recompute */
    int64_t expert_counts_cap;
};

/* ---- layout ------------------------------------------------------------------------------------ */

moe_status moei_pipe_layout(moe_ctx *ctx, const moe_model_config *cfg, int32_t pp, int32_t *chunks, int32_t *first,
                            const char *fn)
{
    int32_t v = cfg->pipeline_virtual_stages;
    if (v < 0 || v > MAX_VIRTUAL)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.pipeline_virtual_stages = %d (must be 0..%d)", fn,
                         (int)v, MAX_VIRTUAL);
    if (v == 0) v = 1;
    if (cfg->tie_embeddings && pp > 1)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                         "%s: moe_model_config.tie_embeddings = 1 with pp = %d: the embedding lives on the first "
                         "pipeline stage and the LM head on the last; untie them for pipeline parallelism",
                         fn, (int)pp);
    const int64_t total = (int64_t)pp * v;
    int listed = 0;
    for (int32_t i = 0; i < LIST_STAGES; i++) {
        if (cfg->pipeline_layers[i] < 0)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_model_config.pipeline_layers[%d] = %d is negative", fn,
                             (int)i, (int)cfg->pipeline_layers[i]);
        if (cfg->pipeline_layers[i] > 0) listed = 1;
    }
    moe_status st;
    if (listed) {
        if (total > LIST_STAGES)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                             "%s: moe_model_config.pipeline_layers lists at most %d virtual stages but pp * "
                             "pipeline_virtual_stages = %lld",
                             fn, (int)LIST_STAGES, (long long)total);
        int64_t sum = 0;
        for (int32_t i = 0; i < LIST_STAGES; i++) {
            if (i >= total && cfg->pipeline_layers[i] != 0)
                return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                                 "%s: moe_model_config.pipeline_layers[%d] = %d lies past pp * pipeline_virtual_stages "
                                 "= %lld virtual stages",
                                 fn, (int)i, (int)cfg->pipeline_layers[i], (long long)total);
            sum += cfg->pipeline_layers[i];
        }
        if (sum != cfg->num_layers)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                             "%s: moe_model_config.pipeline_layers sum to %lld but num_layers = %d", fn, (long long)sum,
                             (int)cfg->num_layers);
        st = moei_pp_partition(ctx, cfg->num_layers, (int32_t)total, cfg->pipeline_layers, first);
    } else {
        if (cfg->num_layers < total)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                             "%s: moe_model_config.num_layers = %d is fewer than pp * pipeline_virtual_stages = %lld "
                             "(an even split gives every virtual stage a layer; list moe_model_config.pipeline_layers "
                             "to leave some empty)",
                             fn, (int)cfg->num_layers, (long long)total);
        st = moei_pp_partition(ctx, cfg->num_layers, (int32_t)total, NULL, first);
    }
    if (st == MOE_OK) *chunks = v;
    return st;
}

moe_status moei_pipe_create(moe_ctx *ctx, const moe_mesh *mesh, const moe_model_config *cfg, moei_pipe **out,
                            const char *fn)
{
    const int32_t pp = mesh->size[MOE_AXIS_PP];
    int32_t v = cfg->pipeline_virtual_stages;
    if (v < 0 || v > MAX_VIRTUAL) v = 1; /* moei_pipe_layout reports it */
    if (v == 0) v = 1;
    moei_pipe *p = calloc(1, sizeof *p);
    int32_t *first = malloc(((size_t)pp * (size_t)v + 1) * sizeof *first);
    int32_t *resident = malloc((size_t)v * sizeof *resident);
    if (!p || !first || !resident) {
        free(p);
        free(first);
        free(resident);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    moe_status st = moei_pipe_layout(ctx, cfg, pp, &v, first, fn);
    if (st != MOE_OK) {
        free(p);
        free(first);
        free(resident);
        return st;
    }
    p->p = pp;
    p->v = v;
    p->rank = mesh->rank[MOE_AXIS_PP];
    p->first = first;
    p->layers = cfg->num_layers;
    p->comm = moei_mesh_comm(mesh, MOE_AXIS_PP);
    p->resident = resident;
    *out = p;
    return MOE_OK;
}

static void free_slots(moe_ctx *ctx, moei_pipe *p)
{
    /* no request is active here: every step waits for its sends before it returns */
    for (int32_t i = 0; i < p->nslots; i++) free(p->slots[i].buf);
    (void)ctx;
    free(p->slots);
    p->slots = NULL;
    p->nslots = 0;
}

void moei_pipe_destroy(moe_ctx *ctx, moei_pipe *p)
{
    if (!p) return;
    free_slots(ctx, p);
    free(p->first);
    free(p->resident);
    free(p->actions);
    free(p->log);
    free(p->stats);
    free(p->counts);
    free(p->expert_counts);
    free(p);
}

/* The virtual stage holding `layer` (the last one whose range starts at or before it, among
 * non-empty stages). */
static int64_t stage_of_layer(const moei_pipe *p, int32_t layer)
{
    int64_t lo = 0, hi = (int64_t)p->p * p->v - 1; /* first[s] <= layer < first[s+1] */
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (p->first[mid] <= layer) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

int moei_pipe_holds_layer(const moei_pipe *p, int32_t layer)
{
    if (!p) return 1;
    if (layer < 0 || layer >= p->layers) return 0;
    return stage_of_layer(p, layer) % p->p == p->rank;
}

int moei_pipe_holds_embed(const moei_pipe *p) { return !p || p->rank == 0; }

int moei_pipe_holds_head(const moei_pipe *p) { return !p || p->rank == p->p - 1; }

int moei_pipe_needs_input(const moei_pipe *p, int32_t layer)
{
    if (!p) return 1;
    for (int32_t c = 0; c < p->v; c++) {
        int64_t s = (int64_t)c * p->p + p->rank;
        if (layer >= p->first[s] && layer <= p->first[s + 1]) return 1;
    }
    return 0;
}

moe_status moei_pipe_chunk_layers(const moei_pipe *p, int32_t chunk, int32_t *begin, int32_t *end)
{
    if (!p || chunk < 0 || chunk >= p->v) return MOE_ERR_INVALID_ARG;
    int64_t s = (int64_t)chunk * p->p + p->rank;
    *begin = p->first[s];
    *end = p->first[s + 1];
    return MOE_OK;
}

/* ---- slots ------------------------------------------------------------------------------------- */

static slot *find_slot(moei_pipe *p, int32_t kind, int32_t mb, int32_t chunk, int32_t is_grad)
{
    for (int32_t i = 0; i < p->nslots; i++) {
        slot *s = &p->slots[i];
        if (s->kind == kind && s->mb == mb && s->chunk == chunk && s->is_grad == is_grad) return s;
    }
    return NULL;
}

/* A free slot: an unused one, else one whose send has completed, else a new one. No wait: a send
 * completes only when its receiver gets there, which may need this rank to move on first. */
static moe_status acquire_slot(moe_ctx *ctx, moei_pipe *p, int32_t kind, int32_t mb, int32_t chunk, int32_t is_grad,
                               slot **out)
{
    slot *s = NULL;
    for (int32_t i = 0; !s && i < p->nslots; i++)
        if (p->slots[i].kind == SLOT_FREE) s = &p->slots[i];
    for (int32_t i = 0; !s && i < p->nslots; i++) {
        slot *t = &p->slots[i];
        if (t->kind != SLOT_SEND || !t->posted) continue;
        int32_t done = 0;
        moe_status st = p->comm->ops->test(p->comm, &t->req, &done);
        if (st != MOE_OK) return st;
        if (done) {
            t->kind = SLOT_FREE;
            s = t;
        }
    }
    if (!s) {
        slot *grown = realloc(p->slots, ((size_t)p->nslots + 1) * sizeof *grown);
        if (!grown) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moe_train_step: out of host memory (pipeline slots)");
        p->slots = grown;
        s = &p->slots[p->nslots];
        memset(s, 0, sizeof *s);
        /* zeroed: a stage that failed still sends its (meaningless) buffers, never uninitialised ones */
        s->buf = calloc((size_t)p->slot_floats > 0 ? (size_t)p->slot_floats : 1, sizeof(float));
        if (!s->buf) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moe_train_step: out of host memory (pipeline slots)");
        p->nslots++;
    }
    s->kind = kind;
    s->mb = mb;
    s->chunk = chunk;
    s->is_grad = is_grad;
    s->posted = 0;
    *out = s;
    return MOE_OK;
}

/* ---- the step ---------------------------------------------------------------------------------- */

typedef struct step_ctx {
    moe_model *m;
    moei_pipe *p;
    const moe_batch *b;
    int64_t n, act, total; /* tokens per micro-batch; floats of one activation held here */
    uint64_t rng_base;
    int32_t L, last_vs;
    double *lm, *aux; /* [mb], [mb][layer] */
    int64_t dropped;
    double max_load;
} step_ctx;

static int64_t vstage(const moei_pipe *p, int32_t chunk) { return (int64_t)chunk * p->p + p->rank; }

/* The forward of (mb, chunk) from its stashed input (or the tokens on virtual stage 0), exactly as
 * the single-rank loop runs it: rng_step keyed by the micro-batch, training mode. */
static moe_status chunk_forward(step_ctx *s, int32_t mb, int32_t chunk, int recompute)
{
    moe_model *m = s->m;
    moei_pipe *p = s->p;
    const int64_t vs = vstage(p, chunk);
    const int32_t lb = p->first[vs], le = p->first[vs + 1];
    const int32_t E = m->cfg.moe_num_experts;
    for (int32_t l = lb; recompute && l < le; l++) /* the bias update counts every micro-batch once */
        if (m->blocks[l].is_moe)
            memcpy(p->expert_counts + (int64_t)l * E, m->blocks[l].moe.step_counts, (size_t)E * sizeof(int64_t));
    m->rng_step = s->rng_base + (uint64_t)mb;
    moe_status st = moei_model_prepare(m, vs == 0 ? s->b->tokens + (int64_t)mb * s->n : NULL, s->b->micro_batch_size,
                                       s->b->seq_len, 1);
    if (st != MOE_OK) return st;
    if (vs == 0) {
        st = moei_model_embed_forward(m);
    } else {
        slot *in = find_slot(p, SLOT_INPUT, mb, chunk, 0);
        if (!in)
            return moei_fail(m->ctx, MOE_ERR_STATE, "moe_train_step: pipeline input of micro-batch %d chunk %d is missing",
                             (int)mb, (int)chunk);
        memcpy(moei_model_block_input(m, lb), in->buf, (size_t)s->act * sizeof(float));
    }
    for (int32_t l = lb; st == MOE_OK && l < le; l++) st = moei_block_forward(m, l, 1);
    if (st == MOE_OK && vs == s->last_vs) st = moei_model_head_forward(m);
    if (st != MOE_OK) return st;
    p->resident[chunk] = mb;
    for (int32_t l = lb; l < le; l++) {
        if (!m->blocks[l].is_moe) continue;
        moei_moe *mo = &m->blocks[l].moe;
        if (recompute) {
            memcpy(mo->step_counts, p->expert_counts + (int64_t)l * E, (size_t)E * sizeof(int64_t));
            continue;
        }
        s->aux[(int64_t)mb * s->L + l] = mo->aux_loss + mo->z_loss;
        if (!mo->has_stats) continue;
        s->dropped += mo->stats.n_dropped;
        double mean = (double)mo->stats.n_rows / (double)mo->s.num_experts;
        double ratio = mean > 0.0 ? (double)mo->stats.max_kept / mean : 0.0;
        if (ratio > s->max_load) s->max_load = ratio;
    }
    return MOE_OK;
}

static moe_status chunk_backward(step_ctx *s, int32_t mb, int32_t chunk)
{
    moe_model *m = s->m;
    moei_pipe *p = s->p;
    const int64_t vs = vstage(p, chunk);
    const int32_t lb = p->first[vs], le = p->first[vs + 1];
    const size_t bytes = (size_t)s->act * sizeof(float);
    moe_status st = MOE_OK;
    if (p->resident[chunk] != mb) st = chunk_forward(s, mb, chunk, 1);
    if (st != MOE_OK) return st;
    const int64_t count = p->counts[mb];
    const float weight = s->total > 0 ? (float)((double)count / (double)s->total) : 0.0f;
    p->resident[chunk] = -1; /* the backward uses the saved activations as scratch */
    if (vs == s->last_vs) {
        double loss_sum = 0.0;
        int64_t counted = 0;
        st = moei_model_head_backward(m, s->b->targets + (int64_t)mb * s->n, weight, &loss_sum, &counted);
        s->lm[mb] = counted > 0 ? loss_sum / (double)counted : 0.0;
    } else {
        slot *g = find_slot(p, SLOT_GRAD, mb, chunk, 0);
        if (!g)
            return moei_fail(m->ctx, MOE_ERR_STATE,
                             "moe_train_step: pipeline gradient of micro-batch %d chunk %d is missing", (int)mb,
                             (int)chunk);
        memcpy(MOEI_BUF_F32(m->dx), g->buf, bytes);
        g->kind = SLOT_FREE;
    }
    for (int32_t l = le - 1; st == MOE_OK && l >= lb; l--) st = moei_block_backward(m, l, weight);
    if (st == MOE_OK && vs == 0) st = moei_model_embed_backward(m);
    return st;
}

/* A copy of the chunk's output (activation) or input gradient, to be posted by the send action. */
static moe_status stage_send(step_ctx *s, int32_t mb, int32_t chunk, int is_grad, int computed)
{
    moei_pipe *p = s->p;
    slot *out = NULL;
    moe_status st = acquire_slot(s->m->ctx, p, SLOT_SEND, mb, chunk, is_grad, &out);
    if (st != MOE_OK || !computed) return st;
    const float *src =
        is_grad ? MOEI_BUF_F32(s->m->dx) : moei_model_block_input(s->m, p->first[vstage(p, chunk) + 1]);
    memcpy(out->buf, src, (size_t)s->act * sizeof(float));
    return MOE_OK;
}

static int32_t tag_of(const moei_pipe *p, int32_t mb, int32_t chunk, int is_grad)
{
    return (is_grad ? TAG_GRAD : 0) + (int32_t)(((int64_t)mb * p->v + chunk) % TAG_GRAD);
}

static moe_status grow(moe_ctx *ctx, void **ptr, int64_t *cap, int64_t need, size_t elem)
{
    if (need <= *cap) return MOE_OK;
    void *q = realloc(*ptr, (size_t)need * elem);
    if (!q) return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moe_train_step: out of host memory (pipeline state)");
    *ptr = q;
    *cap = need;
    return MOE_OK;
}

/* Checks and buffers before the first message; rank-local, so the caller agrees on the result. */
static moe_status prepare_step(moe_model *m, const moe_batch *b, int64_t *nact)
{
    static const char *fn = "moe_train_step";
    moe_ctx *ctx = m->ctx;
    moei_pipe *p = m->pipe;
    const int32_t kind = b->pipeline_schedule, nmb = b->num_micro_batches;
    if (kind < MOE_PIPELINE_GPIPE || kind > MOE_PIPELINE_INTERLEAVED)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_batch.pipeline_schedule = %d is not a moe_pipeline_schedule",
                         fn, (int)kind);
    if (p->v > 1 && kind != MOE_PIPELINE_INTERLEAVED)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: moe_batch.pipeline_schedule = %d but the model has %d chunks per pipeline stage "
                         "(moe_model_config.pipeline_virtual_stages); use MOE_PIPELINE_INTERLEAVED",
                         fn, (int)kind, (int)p->v);
    if (p->v > 1 && nmb % p->p != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: moe_batch.num_micro_batches = %d must be a multiple of pp = %d for the interleaved "
                         "schedule",
                         fn, (int)nmb, (int)p->p);
    /* sizes, tokens and targets were checked (and agreed on) by the train step. An activation is
     * this rank's rows of the residual stream: n / tp of them with sequence parallelism. */
    const int64_t act = moei_tp_rows(&m->tp, (int64_t)b->micro_batch_size * b->seq_len) * m->cfg.d_model;
    moe_status st = moei_pp_schedule(ctx, kind, p->p, nmb, p->v, p->rank, NULL, 0, nact);
    if (st != MOE_OK) return st;
    int64_t cap = p->action_cap;
    st = grow(ctx, (void **)&p->actions, &cap, *nact, sizeof *p->actions);
    if (st == MOE_OK) {
        cap = p->action_cap;
        st = grow(ctx, (void **)&p->log, &cap, *nact, sizeof *p->log);
    }
    if (st != MOE_OK) return st;
    p->action_cap = cap;
    st = moei_pp_schedule(ctx, kind, p->p, nmb, p->v, p->rank, p->actions, *nact, nact);
    if (st == MOE_OK) st = grow(ctx, (void **)&p->counts, &p->counts_cap, nmb, sizeof *p->counts);
    if (st == MOE_OK)
        st = grow(ctx, (void **)&p->expert_counts, &p->expert_counts_cap,
                  (int64_t)m->cfg.num_layers * m->cfg.moe_num_experts, sizeof *p->expert_counts);
    const int64_t width = (int64_t)nmb * (m->cfg.num_layers + 1) + 3;
    if (st == MOE_OK) st = grow(ctx, (void **)&p->stats, &p->stats_cap, width * (p->p + 1), sizeof *p->stats);
    if (st != MOE_OK) return st;
    /* slots hold one activation; a new micro-batch size re-makes them (none is in use between steps) */
    if (p->slot_floats != act) {
        free_slots(ctx, p);
        p->slot_floats = act;
    }
    return MOE_OK;
}

moe_status moei_pipe_train(moe_model *m, const moe_batch *b, int64_t total, uint64_t rng_base, int64_t global_micro,
                           moei_pipe_stats *out)
{
    moe_ctx *ctx = m->ctx;
    moei_pipe *p = m->pipe;
    moei_comm *comm = p->comm;
    int64_t nact = 0;
    p->log_count = 0;
    moe_status st = prepare_step(m, b, &nact);
    st = moei_comm_agree(comm, st, NULL);
    if (st != MOE_OK) return st;

    const int32_t nmb = b->num_micro_batches, L = m->cfg.num_layers;
    const int64_t n = (int64_t)b->micro_batch_size * b->seq_len, width = (int64_t)nmb * (L + 1) + 3;
    const int64_t act = moei_tp_rows(&m->tp, n) * m->cfg.d_model;
    double *local = p->stats, *gathered = p->stats + width;
    memset(local, 0, (size_t)width * sizeof *local);
    for (int32_t mb = 0; mb < nmb; mb++) {
        int64_t c = 0;
        for (int64_t i = 0; i < n; i++) c += b->targets[(int64_t)mb * n + i] != -100;
        p->counts[mb] = c;
    }
    for (int32_t c = 0; c < p->v; c++) p->resident[c] = -1;
    step_ctx s = {m, p, b, n, act, total, rng_base, L, p->p * p->v - 1, local, local + nmb, 0, 0.0};

    /* Run the list. After a compute failure the rank keeps exchanging (meaningless) buffers so that
     * no peer waits forever, and every rank learns the failure in the agreement below. A failed
     * exchange ends the walk: the communicator is broken. */
    int saved = moei_threads_enter(ctx);
    moe_status failed = MOE_OK, comm_st = MOE_OK;
    int numeric = 0;
    for (int64_t k = 0; k < nact && comm_st == MOE_OK; k++) {
        const moei_pp_action *a = &p->actions[k];
        moe_status cs = MOE_OK;
        slot *sl = NULL;
        switch (a->op) {
        case MOEI_PP_FORWARD:
        case MOEI_PP_BACKWARD: {
            const int bwd = a->op == MOEI_PP_BACKWARD;
            const int64_t vs = vstage(p, a->chunk);
            if (failed == MOE_OK) {
                cs = bwd ? chunk_backward(&s, a->microbatch, a->chunk) : chunk_forward(&s, a->microbatch, a->chunk, 0);
                if (cs == MOE_ERR_NUMERIC) numeric = 1;
                if (cs != MOE_OK) failed = cs;
            }
            if (bwd && vs > 0) { /* the stashed input (and a gradient left by a skipped compute) are done */
                slot *in = find_slot(p, SLOT_INPUT, a->microbatch, a->chunk, 0);
                if (in) in->kind = SLOT_FREE;
                slot *g = find_slot(p, SLOT_GRAD, a->microbatch, a->chunk, 0);
                if (g) g->kind = SLOT_FREE;
            }
            /* the copy for the send action, made even after a failure so the peer is not left waiting */
            if (bwd ? vs > 0 : vs < s.last_vs)
                comm_st = stage_send(&s, a->microbatch, a->chunk, bwd, failed == MOE_OK);
            break;
        }
        case MOEI_PP_SEND_ACT:
        case MOEI_PP_SEND_GRAD: {
            int is_grad = a->op == MOEI_PP_SEND_GRAD;
            sl = find_slot(p, SLOT_SEND, a->microbatch, a->chunk, is_grad);
            if (!sl || sl->posted) {
                comm_st = moei_fail(ctx, MOE_ERR_STATE, "moe_train_step: nothing to send for %s of micro-batch %d",
                                    moei_pp_op_name(a->op), (int)a->microbatch);
                break;
            }
            comm_st = comm->ops->isend(comm, sl->buf, act, MOE_DTYPE_F32, a->peer,
                                       tag_of(p, a->microbatch, a->chunk, is_grad), &sl->req);
            sl->posted = comm_st == MOE_OK;
            break;
        }
        case MOEI_PP_RECV_ACT:
        case MOEI_PP_RECV_GRAD: {
            int is_grad = a->op == MOEI_PP_RECV_GRAD;
            comm_st = acquire_slot(ctx, p, is_grad ? SLOT_GRAD : SLOT_INPUT, a->microbatch, a->chunk, 0, &sl);
            /* the sender's tag names its own chunk: the neighbouring virtual stage */
            int32_t peer_chunk = is_grad ? (p->rank == p->p - 1 ? a->chunk + 1 : a->chunk)
                                         : (p->rank == 0 ? a->chunk - 1 : a->chunk);
            if (comm_st == MOE_OK)
                comm_st = comm->ops->recv(comm, sl->buf, act, MOE_DTYPE_F32, a->peer,
                                          tag_of(p, a->microbatch, peer_chunk, is_grad));
            break;
        }
        default: comm_st = moei_fail(ctx, MOE_ERR_STATE, "moe_train_step: unknown pipeline action %d", (int)a->op);
        }
        if (comm_st == MOE_OK && failed == MOE_OK) p->log[p->log_count++] = *a;
    }
    /* every posted send completes before the buffers are reused or the step returns */
    for (int32_t i = 0; i < p->nslots; i++) {
        slot *t = &p->slots[i];
        if (t->kind == SLOT_SEND && t->posted) {
            moe_status w = comm->ops->wait(comm, &t->req);
            if (w != MOE_OK && comm_st == MOE_OK) comm_st = w;
        }
        t->kind = SLOT_FREE;
    }
    moei_threads_leave(saved);
    if (comm_st != MOE_OK) return comm_st;
    /* A non-finite value skips the update (as in the single-rank loop); any other failure fails the
     * step on every stage. */
    st = moei_comm_agree(comm, failed == MOE_ERR_NUMERIC ? MOE_OK : failed, NULL);
    if (st != MOE_OK) return st;

    /* Statistics: each value has one producer (the loss on the last stage, a layer's router losses
     * on its stage, zeros elsewhere), so the rank-order sums below are exact and equal the
     * single-rank loop's. */
    local[width - 3] = (double)s.dropped;
    local[width - 2] = s.max_load;
    local[width - 1] = numeric;
    st = moei_comm_host_all_gather(comm, local, gathered, (size_t)width * sizeof *local);
    if (st != MOE_OK) return st;
    moei_pipe_stats r = {0.0, 0.0, 0, 0.0, 0};
    for (int32_t q = 0; q < p->p; q++) {
        const double *g = gathered + (int64_t)q * width;
        r.dropped += (int64_t)g[width - 3];
        if (g[width - 2] > r.max_load) r.max_load = g[width - 2];
        if (g[width - 1] != 0.0) r.numeric = 1;
    }
    for (int32_t mb = 0; mb < nmb; mb++) {
        double lm = 0.0, ax = 0.0;
        for (int32_t q = 0; q < p->p; q++) lm += gathered[(int64_t)q * width + mb];
        for (int32_t l = 0; l < L; l++) {
            double v = 0.0; /* dense layers and other stages add exact zeros */
            for (int32_t q = 0; q < p->p; q++) v += gathered[(int64_t)q * width + nmb + (int64_t)mb * L + l];
            ax += v;
        }
        const int64_t count = p->counts[mb];
        r.loss += lm * (double)count;
        r.aux += ax * (total > 0 ? (double)count / (double)total : 1.0 / (double)global_micro);
    }
    if (r.numeric) r.loss = NAN;
    *out = r;
    return MOE_OK;
}

moe_status moei_pipe_executed(const moe_model *m, const moei_pp_action **actions, int64_t *count)
{
    if (!m || !m->pipe || !actions || !count) return MOE_ERR_INVALID_ARG;
    *actions = m->pipe->log;
    *count = m->pipe->log_count;
    return MOE_OK;
}
