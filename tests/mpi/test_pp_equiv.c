/* Pipeline parallelism computes what one rank computes: a model split over pp stages (GPipe, 1F1B,
 * interleaved 1F1B; even and explicit layer partitions; combined with dp and ep) follows the
 * single-rank run on the same global batch — loss, router losses, grad norm and every parameter
 * within 1e-5 relative, expert biases bit for bit — while each rank holds only its stage's tensors,
 * sends exactly the bytes of the documented formula over the pp group, and executes exactly its
 * schedule's action list. The single-rank reference runs in the same process on the self
 * communicator. Router jitter, aux/z losses, capacity drops and bias balancing are on. */
#include <math.h>
#include <stdlib.h>

#include "mpi/mpi_harness.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"
#include "parallel/pipeline.h"
#include "parallel/schedule.h"

enum { MBS = 2, SEQ = 5, D = 16, V = 13, E = 4, STEPS = 3 };

typedef struct pp_case {
    int32_t pp, dp, ep;
    int32_t schedule, chunks, layers, micro_local;
    const int32_t *counts; /* explicit layers per virtual stage, or NULL */
    float capacity;
    int32_t position;
} pp_case;

static void tiny_config(moe_model_config *c, const pp_case *k)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = V;
    c->max_seq_len = SEQ;
    c->d_model = D;
    c->num_layers = k->layers;
    c->num_heads = 2;
    c->num_kv_heads = 1;
    c->position = k->position;
    c->moe_num_experts = E;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 12;
    c->moe_shared_expert_hidden = 8;
    c->moe_first_dense = 1; /* a dense block too */
    c->ffn_hidden = 20;
    c->init_std = 0.2f;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
    c->moe_bias_update_rate = 0.01f;
    c->moe_jitter = 0.1f; /* keyed by rng_step: recomputation must repeat it */
    c->moe_capacity_factor = k->capacity;
    c->pipeline_virtual_stages = k->chunks;
    if (k->counts)
        for (int32_t i = 0; i < k->pp * k->chunks; i++) c->pipeline_layers[i] = k->counts[i];
}

static void global_micro(int64_t g, int32_t *tok, int32_t *tgt)
{
    for (int i = 0; i < MBS * SEQ; i++) {
        tok[i] = (int32_t)(h_mix((uint64_t)(g * 1000 + i)) % V);
        tgt[i] = (i % 7 == 3) ? -100 : (int32_t)(h_mix((uint64_t)(g * 1000 + i + 500)) % V);
    }
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

/* The test's own layout: layers of virtual stage s are [first[s], first[s+1]); an even split gives
 * the extra layers to the first stages. Returns the pp rank that holds `layer`. */
static int32_t owner_of(const pp_case *k, int32_t layer)
{
    const int32_t S = k->pp * k->chunks;
    int32_t begin = 0;
    for (int32_t s = 0; s < S; s++) {
        int32_t n = k->counts ? k->counts[s] : k->layers / S + (s < k->layers % S ? 1 : 0);
        if (layer >= begin && layer < begin + n) return s % k->pp;
        begin += n;
    }
    return -1;
}

/* Should pp rank `r` hold the tensor named `name`? */
static int expect_held(const pp_case *k, int32_t r, const char *name)
{
    int layer = -1;
    if (sscanf(name, "layers.%d.", &layer) == 1) return owner_of(k, layer) == r;
    if (strncmp(name, "embed.", 6) == 0 || strncmp(name, "pos_embed.", 10) == 0) return r == 0;
    return r == k->pp - 1; /* final_norm, lm_head */
}

static void run_case(const pp_case *k)
{
    moe_ctx *ctx = NULL, *rctx = NULL;
    moe_mesh *mesh = NULL, *self = NULL;
    moe_model *m = NULL, *ref = NULL;
    moe_optimizer *o = NULL, *ro = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    CHECK_OK(moe_ctx_create(NULL, &rctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.pp = k->pp;
    mc.dp = k->dp;
    mc.ep = k->ep;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    moe_mesh_config sc;
    moe_mesh_config_init(&sc, sizeof sc);
    sc.comm_backend = MOE_COMM_SELF;
    CHECK_OK(moe_mesh_create(rctx, &sc, &self));
    if (!mesh || !self) return;
    moe_model_config c;
    tiny_config(&c, k);
    CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
    CHECK_OK(moe_model_create(rctx, self, &c, &ref));
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    oc.clip_grad_norm = 0.5f; /* clipping active: the global norm must agree */
    if (m) CHECK_OK(moe_optimizer_create(m, &oc, &o));
    if (ref) CHECK_OK(moe_optimizer_create(ref, &oc, &ro));
    if (!m || !ref || !o || !ro) return;

    const int32_t dp_rank = mesh->rank[MOE_AXIS_DP], pp_rank = mesh->rank[MOE_AXIS_PP];
    const int64_t G = (int64_t)k->dp * k->micro_local, per = MBS * SEQ;
    int32_t *gtok = malloc((size_t)(G * per) * sizeof *gtok), *gtgt = malloc((size_t)(G * per) * sizeof *gtgt);
    for (int64_t g = 0; g < G; g++) global_micro(g, gtok + g * per, gtgt + g * per);
    moe_batch local, global;
    moe_batch_init(&local, sizeof local);
    CHECK(local.pipeline_schedule == MOE_PIPELINE_ONE_F_ONE_B, "default schedule %d", (int)local.pipeline_schedule);
    local.tokens = gtok + (int64_t)dp_rank * k->micro_local * per;
    local.targets = gtgt + (int64_t)dp_rank * k->micro_local * per;
    local.micro_batch_size = MBS;
    local.seq_len = SEQ;
    local.num_micro_batches = k->micro_local;
    local.pipeline_schedule = k->schedule;
    global = local;
    global.tokens = gtok;
    global.targets = gtgt;
    global.num_micro_batches = (int32_t)G;

    /* the schedule this rank must execute, from the schedule module */
    int64_t want_n = 0;
    CHECK_OK(moei_pp_schedule(ctx, k->schedule, k->pp, k->micro_local, k->chunks, pp_rank, NULL, 0, &want_n));
    moei_pp_action *want = calloc((size_t)want_n + 1, sizeof *want);
    CHECK_OK(moei_pp_schedule(ctx, k->schedule, k->pp, k->micro_local, k->chunks, pp_rank, want, want_n, &want_n));
    /* bytes over the pp group per step: one [MBS*SEQ, D] fp32 activation forward and one gradient
     * backward per micro-batch and virtual-stage boundary; rank r sends the activations of its v
     * chunks (not the model's last) and the gradients of its v chunks (not the model's first) */
    const int64_t sends = 2 * (int64_t)k->chunks - (pp_rank == 0) - (pp_rank == k->pp - 1);
    const uint64_t want_bytes = (uint64_t)(sends * k->micro_local * per * D * 4);
    moei_comm *ppc = moei_mesh_comm(mesh, MOE_AXIS_PP);

    char tag[96];
    snprintf(tag, sizeof tag, "pp%d dp%d ep%d sched %d v%d L%d", k->pp, k->dp, k->ep, k->schedule, k->chunks,
             k->layers);
    for (int step = 0; step < STEPS; step++) {
        moe_step_stats s = {.struct_size = sizeof s}, r = {.struct_size = sizeof r};
        uint64_t before = ppc->bytes_sent;
        CHECK_OK(moe_train_step(m, o, &local, &s));
        CHECK(ppc->bytes_sent - before == want_bytes, "%s: pp bytes %llu, formula %llu", tag,
              (unsigned long long)(ppc->bytes_sent - before), (unsigned long long)want_bytes);
        CHECK_OK(moe_train_step(ref, ro, &global, &r));
        CHECK(rel(s.loss, r.loss) < 1e-5, "%s step %d: loss %.9g vs single rank %.9g", tag, step, s.loss, r.loss);
        CHECK(rel(s.aux_loss, r.aux_loss) < 1e-5, "%s step %d: aux %.9g vs %.9g", tag, step, s.aux_loss, r.aux_loss);
        CHECK(rel(s.grad_norm, r.grad_norm) < 1e-5, "%s step %d: grad norm %.9g vs %.9g", tag, step, s.grad_norm,
              r.grad_norm);
        CHECK(rel(s.max_load, r.max_load) < 1e-12, "%s step %d: max load %.9g vs %.9g", tag, step, s.max_load,
              r.max_load);
        CHECK(s.tokens == r.tokens && s.dropped == r.dropped, "%s: tokens %lld/%lld dropped %lld/%lld", tag,
              (long long)s.tokens, (long long)r.tokens, (long long)s.dropped, (long long)r.dropped);
        CHECK(s.skipped == 0 && s.step == r.step, "%s: skipped %u step %lld/%lld", tag, s.skipped, (long long)s.step,
              (long long)r.step);
        const moei_pp_action *got = NULL;
        int64_t got_n = -1;
        CHECK_OK(moei_pipe_executed(m, &got, &got_n));
        CHECK(got_n == want_n && got && memcmp(got, want, (size_t)want_n * sizeof *want) == 0,
              "%s: rank %d executed %lld actions, the schedule has %lld (or they differ)", tag, (int)pp_rank,
              (long long)got_n, (long long)want_n);
    }
    /* this rank's tensors are exactly its stage's, each equal to the single-rank tensor's slice */
    const moei_params *p = &m->params, *rp = &ref->params;
    int64_t expect_count = 0, expect_local = 0, held = 0;
    for (int32_t j = 0; j < rp->count; j++) {
        const moei_param *re = &rp->entries[j];
        if (!expect_held(k, pp_rank, re->name)) {
            CHECK(moei_params_find(p, re->name) < 0, "%s: rank %d holds %s of another stage", tag, (int)pp_rank,
                  re->name);
            continue;
        }
        expect_count++;
        int32_t i = moei_params_find(p, re->name);
        CHECK(i >= 0, "%s: rank %d lacks %s", tag, (int)pp_rank, re->name);
        if (i < 0) continue;
        const moei_param *e = &p->entries[i];
        int64_t row = e->shape[0] > 0 ? e->numel / e->shape[0] : 0;
        const float *a = moei_param_data(p, i), *b = moei_param_data(rp, j) + e->shard_start * row;
        double d2 = 0.0, r2 = 0.0;
        for (int64_t x = 0; x < e->numel; x++) {
            d2 += ((double)a[x] - b[x]) * ((double)a[x] - b[x]);
            r2 += (double)b[x] * b[x];
        }
        CHECK(sqrt(d2 / (r2 > 0 ? r2 : 1)) < 1e-5, "%s: %s differs by %.3g relative", tag, e->name,
              sqrt(d2 / (r2 > 0 ? r2 : 1)));
        int64_t full = re->numel; /* the single-rank tensor is whole */
        int64_t want_numel = e->group == MOEI_GROUP_EXPERT ? full / k->ep : full;
        CHECK(e->numel == want_numel, "%s: %s holds %lld elements, the shard formula says %lld", tag, e->name,
              (long long)e->numel, (long long)want_numel);
        expect_local += want_numel;
        held += e->numel;
    }
    CHECK(p->count == expect_count, "%s: rank %d holds %d tensors, expected %lld", tag, (int)pp_rank, (int)p->count,
          (long long)expect_count);
    CHECK(held == expect_local, "%s: parameter elements %lld != %lld", tag, (long long)held, (long long)expect_local);
    /* parameter memory: the regions hold no more than the shard plus alignment padding */
    CHECK(p->region_size[0] + p->region_size[1] >= expect_local &&
              p->region_size[0] + p->region_size[1] < expect_local + 2 * (int64_t)k->dp * k->pp + 2,
          "%s: parameter regions %lld for %lld elements", tag, (long long)(p->region_size[0] + p->region_size[1]),
          (long long)expect_local);
    /* the aux-loss-free bias follows the global counts, each micro-batch counted once */
    for (int32_t l = 0; l < c.num_layers; l++) {
        if (owner_of(k, l) != pp_rank) {
            CHECK(m->blocks[l].absent && !m->blocks[l].is_moe, "%s: layer %d should be absent", tag, (int)l);
            continue;
        }
        if (ref->blocks[l].is_moe)
            CHECK(memcmp(m->blocks[l].moe.bias, ref->blocks[l].moe.bias, E * sizeof(float)) == 0,
                  "%s: layer %d expert bias differs", tag, (int)l);
    }
    free(want);
    free(gtok);
    free(gtgt);
    moe_optimizer_destroy(o);
    moe_optimizer_destroy(ro);
    moe_model_destroy(m);
    moe_model_destroy(ref);
    moe_mesh_destroy(mesh);
    moe_mesh_destroy(self);
    moe_ctx_destroy(ctx);
    moe_ctx_destroy(rctx);
}

/* The expert counts for the bias update hold each micro-batch once, even though GPipe recomputes
 * every forward before its backward: compare the counts after the micro-batches, before the
 * optimizer clears them, with the single-rank model's. */
static void test_counts_once(void)
{
    const pp_case k = {h_size, 1, 1, MOE_PIPELINE_GPIPE, 1, h_size, 3, NULL, 0.0f, MOE_POSITION_ROPE};
    moe_ctx *ctx = NULL, *rctx = NULL;
    moe_mesh *mesh = NULL, *self = NULL;
    moe_model *m = NULL, *ref = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    CHECK_OK(moe_ctx_create(NULL, &rctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.pp = h_size;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    moe_mesh_config sc;
    moe_mesh_config_init(&sc, sizeof sc);
    sc.comm_backend = MOE_COMM_SELF;
    CHECK_OK(moe_mesh_create(rctx, &sc, &self));
    moe_model_config c;
    tiny_config(&c, &k);
    if (mesh) CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
    if (self) CHECK_OK(moe_model_create(rctx, self, &c, &ref));
    if (m && ref) {
        const int64_t per = MBS * SEQ;
        int32_t tok[3 * MBS * SEQ], tgt[3 * MBS * SEQ];
        for (int g = 0; g < 3; g++) global_micro(g, tok + g * per, tgt + g * per);
        moe_batch b;
        moe_batch_init(&b, sizeof b);
        b.tokens = tok;
        b.targets = tgt;
        b.micro_batch_size = MBS;
        b.seq_len = SEQ;
        b.num_micro_batches = 3;
        b.pipeline_schedule = MOE_PIPELINE_GPIPE;
        int64_t total = 0;
        for (int64_t i = 0; i < 3 * per; i++) total += tgt[i] != -100;
        moei_pipe_stats ps;
        CHECK_OK(moei_pipe_train(m, &b, total, 0, 3, &ps));
        for (int g = 0; g < 3; g++) {
            ref->rng_step = (uint64_t)g;
            CHECK_OK(moe_model_forward_backward(ref, tok + g * per, tgt + g * per, MBS, SEQ, 1.0f, NULL, NULL));
        }
        for (int32_t l = 0; l < c.num_layers; l++)
            if (!m->blocks[l].absent && m->blocks[l].is_moe)
                CHECK(memcmp(m->blocks[l].moe.step_counts, ref->blocks[l].moe.step_counts, E * sizeof(int64_t)) == 0,
                      "layer %d: expert counts differ from one pass per micro-batch", (int)l);
    }
    moe_model_destroy(m);
    moe_model_destroy(ref);
    moe_mesh_destroy(mesh);
    moe_mesh_destroy(self);
    moe_ctx_destroy(ctx);
    moe_ctx_destroy(rctx);
}

/* Shapes a pipelined model refuses, on every rank and with a message naming the field. */
static void test_refusals(void)
{
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.pp = h_size;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    if (!mesh) return;
    const pp_case k = {h_size, 1, 1, MOE_PIPELINE_INTERLEAVED, 2, 2 * h_size, h_size, NULL, 0.0f, MOE_POSITION_ROPE};
    moe_model_config c;
    moe_model *m = NULL;
    tiny_config(&c, &k);
    c.tie_embeddings = 1;
    CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_UNSUPPORTED, "tie_embeddings");
    tiny_config(&c, &k);
    c.num_layers = 2 * h_size - 1;
    CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "pipeline_layers");
    tiny_config(&c, &k);
    c.pipeline_layers[0] = 1;
    CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "pipeline_layers sum to 1");
    tiny_config(&c, &k);
    c.pipeline_layers[2 * h_size] = 1;
    CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "lies past");
    tiny_config(&c, &k);
    c.pipeline_virtual_stages = 2000;
    CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "pipeline_virtual_stages");
    CHECK(m == NULL, "a failed create wrote its out-param");
    tiny_config(&c, &k);
    CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
    moe_optimizer *o = NULL;
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    if (m) CHECK_OK(moe_optimizer_create(m, &oc, &o));
    if (m && o) {
        int32_t tok[16 * MBS * SEQ] = {0}, tgt[16 * MBS * SEQ] = {0};
        moe_batch b;
        moe_batch_init(&b, sizeof b);
        b.tokens = tok;
        b.targets = tgt;
        b.micro_batch_size = MBS;
        b.seq_len = SEQ;
        b.num_micro_batches = h_size; /* 1F1B (the default) cannot run two chunks per stage */
        moe_step_stats s = {.struct_size = sizeof s};
        CHECK_FAILS(moe_train_step(m, o, &b, &s), MOE_ERR_INVALID_ARG, "MOE_PIPELINE_INTERLEAVED");
        b.pipeline_schedule = MOE_PIPELINE_INTERLEAVED;
        b.num_micro_batches = h_size + 1;
        CHECK_FAILS(moe_train_step(m, o, &b, &s), MOE_ERR_INVALID_ARG, "num_micro_batches");
        b.num_micro_batches = h_size;
        b.pipeline_schedule = 7;
        CHECK_FAILS(moe_train_step(m, o, &b, &s), MOE_ERR_INVALID_ARG, "pipeline_schedule = 7");
        b.pipeline_schedule = MOE_PIPELINE_INTERLEAVED;
        tok[3] = V;
        CHECK_FAILS(moe_train_step(m, o, &b, &s), MOE_ERR_INVALID_ARG, "tokens[3]");
        tok[3] = 0;
        CHECK_OK(moe_train_step(m, o, &b, &s));
        CHECK_FAILS(moe_model_forward(m, tok, MBS, SEQ, NULL, 0), MOE_ERR_UNSUPPORTED, "pipeline");
        CHECK_FAILS(moe_model_forward_backward(m, tok, tgt, MBS, SEQ, 1.0f, NULL, NULL), MOE_ERR_UNSUPPORTED,
                    "pipeline");
        int32_t other = owner_of(&k, 0) == mesh->rank[MOE_AXIS_PP] ? 2 * h_size - 1 : 0;
        if (owner_of(&k, other) != mesh->rank[MOE_AXIS_PP]) {
            moe_routing_stats rs = {.struct_size = sizeof rs};
            CHECK_FAILS(moe_model_routing_stats(m, other, &rs, NULL, 0), MOE_ERR_INVALID_ARG, "another pipeline stage");
        }
    }
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
}

/* A non-finite router input on the last stage skips the update on every stage (no stage waits for
 * the failed one) and the model is left as it was. */
static void test_numeric_skip(void)
{
    const pp_case k = {h_size, 1, 1, MOE_PIPELINE_ONE_F_ONE_B, 1, 2 * h_size, 3, NULL, 0.0f, MOE_POSITION_ROPE};
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL;
    moe_model *m = NULL;
    moe_optimizer *o = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.pp = h_size;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    moe_model_config c;
    tiny_config(&c, &k);
    if (mesh) CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    if (m) CHECK_OK(moe_optimizer_create(m, &oc, &o));
    if (m && o) {
        char name[64];
        snprintf(name, sizeof name, "layers.%d.moe.router", 2 * h_size - 1);
        int32_t i = moei_params_find(&m->params, name);
        CHECK((i >= 0) == (mesh->rank[MOE_AXIS_PP] == h_size - 1), "%s held on the wrong stage", name);
        if (i >= 0) moei_param_data(&m->params, i)[0] = NAN;
        const int64_t per = MBS * SEQ, total = m->params.total;
        float *before = malloc((size_t)total * sizeof *before);
        memcpy(before, m->params.data, (size_t)total * sizeof *before);
        int32_t tok[3 * MBS * SEQ], tgt[3 * MBS * SEQ];
        for (int g = 0; g < 3; g++) global_micro(g, tok + g * per, tgt + g * per);
        moe_batch b;
        moe_batch_init(&b, sizeof b);
        b.tokens = tok;
        b.targets = tgt;
        b.micro_batch_size = MBS;
        b.seq_len = SEQ;
        b.num_micro_batches = 3;
        moe_step_stats s = {.struct_size = sizeof s};
        CHECK_OK(moe_train_step(m, o, &b, &s));
        CHECK(s.skipped == 1 && isnan(s.loss) && s.step == 0, "skipped %u loss %g step %lld", s.skipped, s.loss,
              (long long)s.step);
        CHECK(memcmp(before, m->params.data, (size_t)total * sizeof *before) == 0, "a skipped step changed parameters");
        free(before);
    }
    moe_optimizer_destroy(o);
    moe_model_destroy(m);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
}

static void test_gpipe(void)
{
    pp_case k = {h_size, 1, 1, MOE_PIPELINE_GPIPE, 1, 2 * h_size, 4, NULL, 0.0f, MOE_POSITION_ROPE};
    run_case(&k);
}

/* uneven split (the extra layer on the first stage), and a count that is not a multiple of pp */
static void test_1f1b(void)
{
    pp_case k = {h_size, 1, 1, MOE_PIPELINE_ONE_F_ONE_B, 1, h_size + 1, 3, NULL, 0.0f, MOE_POSITION_ROPE};
    run_case(&k);
}

static void test_interleaved(void)
{
    pp_case k = {h_size, 1, 1, MOE_PIPELINE_INTERLEAVED, 2, 2 * h_size, 2 * h_size, NULL, 0.0f, MOE_POSITION_ROPE};
    run_case(&k);
}

/* explicit partitions with empty virtual stages (the first stage holds only the embedding), learned
 * positions and capacity drops */
static void test_explicit(void)
{
    static const int32_t one[2] = {0, 3}, two[4] = {2, 1, 0, 1};
    pp_case k = {2, 1, 1, MOE_PIPELINE_ONE_F_ONE_B, 1, 3, 3, one, 0.75f, MOE_POSITION_LEARNED};
    run_case(&k);
    pp_case k2 = {2, 1, 1, MOE_PIPELINE_INTERLEAVED, 2, 4, 4, two, 0.75f, MOE_POSITION_LEARNED};
    run_case(&k2);
}

static void test_pp2_dp2(void)
{
    pp_case k = {2, 2, 1, MOE_PIPELINE_ONE_F_ONE_B, 1, 3, 3, NULL, 0.0f, MOE_POSITION_ROPE};
    run_case(&k);
}

static void test_pp2_ep2(void)
{
    pp_case k = {2, 2, 2, MOE_PIPELINE_INTERLEAVED, 2, 4, 2, NULL, 0.75f, MOE_POSITION_ROPE};
    run_case(&k);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    H_RUN(test_gpipe);
    H_RUN(test_1f1b);
    H_RUN(test_interleaved);
    H_RUN(test_counts_once);
    H_RUN(test_refusals);
    H_RUN(test_numeric_skip);
    if (h_size == 2) H_RUN(test_explicit);
    if (h_size == 4) {
        H_RUN(test_pp2_dp2);
        H_RUN(test_pp2_ep2);
    }
    MPI_Finalize();
    return h_total_fail ? 1 : 0;
}
