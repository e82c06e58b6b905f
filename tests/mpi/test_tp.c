/* Tensor parallelism (and sequence parallelism) computes what one rank computes: under mpirun a
 * model trained on tp2, tp2 + sequence parallel, tp2·dp2, tp4, tp2·pp2 and tp with expert
 * parallelism over the dp·tp ranks follows the single-rank run on the same global batch for 3 AdamW steps with
 * clipping active — loss, router losses, grad norm, token and drop counts, expert bias, every
 * parameter slice and the gathered logits within 1e-5 relative. Each rank holds only its slice
 * (element counts from the shard formula written here), and the bytes the tp group's communicator
 * counted per step equal the formula of docs/parallelism.md, evaluated here independently.
 * The single-rank reference runs in the same process on the self communicator. */
#include <math.h>
#include <stdlib.h>

#include "mpi/mpi_harness.h"
#include "nn/model.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"

enum { MICRO_LOCAL = 2, MBS = 2, SEQ = 6, STEPS = 3, VOCAB = 13 };

typedef struct tcase {
    const char *name;
    int32_t tp, dp, ep, sp;
    int moe;               /* 1: layer 0 dense, layer 1 MoE; 2: both MoE; 0: both dense */
    int32_t position, norm, tie, activation, kv;
    float jitter;
    int32_t pp;   /* 0 or 1: no pipeline */
    int32_t zero; /* the optimizer's zero_stage */
} tcase;

static void make_config(const tcase *t, moe_model_config *c)
{
    moe_model_config_init(c, sizeof *c);
    c->vocab_size = VOCAB;
    c->max_seq_len = SEQ;
    c->d_model = 16;
    c->num_layers = 2;
    c->num_heads = 4;
    c->num_kv_heads = t->kv;
    c->position = t->position;
    c->norm = t->norm;
    c->tie_embeddings = (uint32_t)t->tie;
    c->ffn_hidden = 24;
    c->ffn_activation = t->activation;
    c->init_std = 0.2f;
    c->moe_num_experts = t->moe ? 4 : 0;
    c->moe_first_dense = t->moe == 2 ? 0 : 1;
    c->moe_top_k = 2;
    c->moe_expert_hidden = 12;
    c->moe_activation = t->activation;
    c->moe_shared_expert_hidden = 8;
    c->moe_aux_loss_coef = 0.05f;
    c->moe_z_loss_coef = 0.01f;
    c->moe_bias_update_rate = 0.01f;
    c->moe_jitter = t->jitter;
}

/* Micro-batch g of the global batch (tokens and targets), the same on every rank. */
static void global_micro(int64_t g, int32_t *tok, int32_t *tgt)
{
    for (int i = 0; i < MBS * SEQ; i++) {
        tok[i] = (int32_t)(h_mix((uint64_t)(g * 1000 + i)) % VOCAB);
        tgt[i] = (i % 7 == 3) ? -100 : (int32_t)(h_mix((uint64_t)(g * 1000 + i + 500)) % VOCAB);
    }
}

static double rel(double a, double b) { return fabs(a - b) / (fabs(b) > 1e-12 ? fabs(b) : 1.0); }

/* The chunk of `total` rank r holds when it is split near-evenly over p ranks (larger first). */
static void chunk(int64_t total, int32_t p, int32_t r, int64_t *start, int64_t *count)
{
    *count = total / p + (r < total % p ? 1 : 0);
    *start = (int64_t)r * (total / p) + (r < total % p ? r : total % p);
}

/* ---- the documented volume formula (docs/parallelism.md, "Bytes per step") ---------------------- */

/* all_reduce_sum of s elements on rank r of p (one segment): (s - c_r + (p-1) c_r) esize */
static uint64_t ar(int64_t s, int32_t p, int32_t r, int64_t esize)
{
    int64_t c0, c;
    chunk(s, p, r, &c0, &c);
    return (uint64_t)((s - c + (int64_t)(p - 1) * c) * esize);
}
static uint64_t ag(int64_t per_rank, int32_t p, int64_t esize) { return (uint64_t)((p - 1) * per_rank * esize); }

/* Pipeline stage s of P holds an even split of the layers (the extra ones on the first stages),
 * the embedding on stage 0 and the final norm and LM head on the last. */
static uint64_t expected_tp_bytes(const tcase *t, const moe_model_config *c, int32_t r, int32_t stage)
{
    const int32_t T = t->tp, P = t->pp > 1 ? t->pp : 1;
    const int64_t n = MBS * SEQ, d = c->d_model, rows = n / T, E = c->moe_num_experts;
    const int64_t sh = c->moe_shared_expert_hidden, sw = c->moe_activation == MOE_ACTIVATION_SWIGLU ? 3 : 2;
    const int first = stage == 0, last = stage == P - 1;
    int64_t L = 0, nd = 0, nm = 0, l0 = 0;
    for (int32_t s = 0; s < stage; s++) l0 += c->num_layers / P + (s < c->num_layers % P);
    const int64_t count = c->num_layers / P + (stage < c->num_layers % P);
    for (int64_t l = l0; l < l0 + count; l++, L++) (t->moe && l >= c->moe_first_dense) ? nm++ : nd++;
    uint64_t micro = last ? ag(3 * n, T, 4) : 0; /* vocab-parallel cross-entropy statistics */
    if (!t->sp) {
        /* embedding forward, attention and dense MLP forward and backward, LM head backward */
        micro += ar(n * d, T, r, 4) * ((uint64_t)first + 2 * (uint64_t)(L + nd) + (uint64_t)last);
        micro += (uint64_t)nm * (2 * ag(rows * d, T, 4) + ar(2 * E, T, r, 4) + ar(2, T, r, 4));
    } else {
        /* each tp region: gather in + reduce-scatter out, forward and backward; embed RS and its
         * backward AG; head AG and its backward RS */
        micro += (4 * (uint64_t)(L + nd) + 2 * (uint64_t)first + 2 * (uint64_t)last) * ag(rows * d, T, 4);
        micro += (uint64_t)nm * (ar(2 * E, T, r, 4) + ar(2, T, r, 4));
    }
    /* once per step: the gradients summed over tp (routers, shared experts; with SP also norms
     * and learned positions) */
    int64_t partial = nm * (E * d + sw * sh * d);
    if (t->sp) {
        int64_t norm = c->norm == MOE_NORM_LAYERNORM ? 2 * d : d;
        partial += (2 * L + last) * norm;
        if (first && c->position == MOE_POSITION_LEARNED) partial += (int64_t)c->max_seq_len * d;
    }
    return MICRO_LOCAL * micro + (partial > 0 ? ar(partial, T, r, 4) : 0);
}

/* ---- the shard formula ------------------------------------------------------------------------- */

static int64_t expected_numel(const tcase *t, const moei_param *e, int32_t tp_rank)
{
    int64_t full = 1;
    for (int32_t k = 0; k < e->ndim; k++) full *= e->full_shape[k];
    if (strstr(e->name, "embed.weight") == e->name || strcmp(e->name, "lm_head.weight") == 0) {
        int64_t v0, vl;
        chunk(VOCAB, t->tp, tp_rank, &v0, &vl);
        return vl * e->full_shape[1];
    }
    if (strstr(e->name, ".experts.")) return full / t->ep;
    if (strstr(e->name, ".attn.w") || strstr(e->name, ".mlp.w")) return full / t->tp;
    return full; /* norms, learned positions, routers, shared experts */
}

/* Copy the slice this entry describes out of the reference's whole tensor. */
static void ref_slice(const moei_param *e, const float *full, float *out)
{
    for (int64_t j = 0; j < e->numel; j++) out[j] = full[moei_param_full_index(e, j)];
}

static void run_case(const tcase *t)
{
    moe_ctx *ctx = NULL, *rctx = NULL;
    moe_mesh *mesh = NULL, *self = NULL;
    moe_model *m = NULL, *ref = NULL;
    moe_optimizer *o = NULL, *ro = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    CHECK_OK(moe_ctx_create(NULL, &rctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.tp = t->tp;
    mc.dp = t->dp;
    mc.ep = t->ep;
    mc.sequence_parallel = (uint32_t)t->sp;
    mc.pp = t->pp > 1 ? t->pp : 1;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    moe_mesh_config sc;
    moe_mesh_config_init(&sc, sizeof sc);
    sc.comm_backend = MOE_COMM_SELF;
    CHECK_OK(moe_mesh_create(rctx, &sc, &self));
    moe_model_config c;
    make_config(t, &c);
    if (mesh) CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
    if (self) CHECK_OK(moe_model_create(rctx, self, &c, &ref));
    if (m && ref) { /* counts describe the logical model, whatever the mesh */
        int64_t t1 = 0, a1 = 0, t2 = 0, a2 = 0;
        double f1 = 0.0, f2 = 0.0;
        CHECK_OK(moe_model_num_params(m, &t1, &a1));
        CHECK_OK(moe_model_num_params(ref, &t2, &a2));
        CHECK_OK(moe_model_flops_per_token(m, 4, &f1));
        CHECK_OK(moe_model_flops_per_token(ref, 4, &f2));
        CHECK(t1 == t2 && a1 == a2 && f1 == f2, "%s: parameter counts %lld/%lld vs one rank %lld/%lld", t->name,
              (long long)t1, (long long)a1, (long long)t2, (long long)a2);
    }
    moe_optimizer_config oc;
    moe_optimizer_config_init(&oc, sizeof oc);
    oc.lr = 1e-2f;
    oc.clip_grad_norm = 0.5f; /* clipping active: the global norm must agree */
    oc.zero_stage = (uint32_t)t->zero;
    if (m) CHECK_OK(moe_optimizer_create(m, &oc, &o));
    if (ref) CHECK_OK(moe_optimizer_create(ref, &oc, &ro));
    if (!m || !ref || !o || !ro) {
        moe_optimizer_destroy(o);
        moe_optimizer_destroy(ro);
        moe_model_destroy(m);
        moe_model_destroy(ref);
        moe_mesh_destroy(mesh);
        moe_mesh_destroy(self);
        moe_ctx_destroy(ctx);
        moe_ctx_destroy(rctx);
        return;
    }
    const int32_t dp_rank = mesh->rank[MOE_AXIS_DP], tp_rank = mesh->rank[MOE_AXIS_TP];
    const int64_t G = (int64_t)t->dp * MICRO_LOCAL, per = MBS * SEQ;
    int32_t *gtok = malloc((size_t)(G * per) * sizeof *gtok), *gtgt = malloc((size_t)(G * per) * sizeof *gtgt);
    for (int64_t g = 0; g < G; g++) global_micro(g, gtok + g * per, gtgt + g * per);
    moe_batch local, global;
    moe_batch_init(&local, sizeof local);
    local.tokens = gtok + (int64_t)dp_rank * MICRO_LOCAL * per;
    local.targets = gtgt + (int64_t)dp_rank * MICRO_LOCAL * per;
    local.micro_batch_size = MBS;
    local.seq_len = SEQ;
    local.num_micro_batches = MICRO_LOCAL;
    global = local;
    global.tokens = gtok;
    global.targets = gtgt;
    global.num_micro_batches = (int32_t)G;
    moei_comm *tpc = moei_mesh_comm(mesh, MOE_AXIS_TP);
    const uint64_t want_bytes = expected_tp_bytes(t, &c, tp_rank, mesh->rank[MOE_AXIS_PP]);
    double worst = 0.0;
    for (int step = 0; step < STEPS; step++) {
        moe_step_stats s = {.struct_size = sizeof s}, r = {.struct_size = sizeof r};
        const uint64_t before = tpc->bytes_sent;
        CHECK_OK(moe_train_step(m, o, &local, &s));
        CHECK_OK(moe_train_step(ref, ro, &global, &r));
        /* (a pipeline recomputes forwards in its backward, which repeats their traffic) */
        CHECK(mc.pp > 1 || tpc->bytes_sent - before == want_bytes, "%s step %d: the tp group counted %llu bytes, the formula says %llu",
              t->name, step, (unsigned long long)(tpc->bytes_sent - before), (unsigned long long)want_bytes);
        CHECK(rel(s.loss, r.loss) < 1e-5, "%s step %d: loss %.9g vs single rank %.9g", t->name, step, s.loss, r.loss);
        CHECK(rel(s.aux_loss, r.aux_loss) < 1e-5, "%s step %d: aux %.9g vs %.9g", t->name, step, s.aux_loss, r.aux_loss);
        CHECK(rel(s.grad_norm, r.grad_norm) < 1e-5, "%s step %d: grad norm %.9g vs %.9g", t->name, step, s.grad_norm,
              r.grad_norm);
        CHECK(r.grad_norm > oc.clip_grad_norm, "%s step %d: grad norm %.3g does not reach the clip", t->name, step,
              r.grad_norm);
        CHECK(s.tokens == r.tokens && s.dropped == r.dropped && rel(s.max_load, r.max_load) < 1e-12,
              "%s: tokens %lld/%lld dropped %lld/%lld max_load %g/%g", t->name, (long long)s.tokens,
              (long long)r.tokens, (long long)s.dropped, (long long)r.dropped, s.max_load, r.max_load);
        double e = fmax(rel(s.loss, r.loss), rel(s.grad_norm, r.grad_norm));
        if (e > worst) worst = e;
    }
    /* every parameter: this rank's slice against the same slice of the single-rank tensor */
    const moei_params *p = &m->params, *rp = &ref->params;
    int64_t held[2] = {0, 0};
    double worst_param = 0.0;
    for (int32_t i = 0; i < p->count; i++) {
        const moei_param *e = &p->entries[i];
        int32_t j = moei_params_find(rp, e->name);
        CHECK(j >= 0, "%s: no reference tensor '%s'", t->name, e->name);
        if (j < 0) continue;
        float *b = malloc((size_t)(e->numel > 0 ? e->numel : 1) * sizeof *b);
        ref_slice(e, moei_param_data(rp, j), b);
        const float *a = moei_param_data(p, i);
        double d2 = 0.0, r2 = 0.0;
        for (int64_t k = 0; k < e->numel; k++) {
            d2 += ((double)a[k] - b[k]) * ((double)a[k] - b[k]);
            r2 += (double)b[k] * b[k];
        }
        free(b);
        double rd = sqrt(d2 / (r2 > 0 ? r2 : 1));
        if (rd > worst_param) worst_param = rd;
        CHECK(rd < 1e-5, "%s: %s differs by %.3g relative", t->name, e->name, rd);
        int64_t want = expected_numel(t, e, tp_rank);
        CHECK(e->numel == want, "%s: %s holds %lld elements, the shard formula says %lld", t->name, e->name,
              (long long)e->numel, (long long)want);
        held[e->group] += e->numel;
    }
    /* the parameter buffer is the shards plus at most the alignment padding of each region */
    const int32_t align[2] = {t->dp, mesh->size[MOE_AXIS_EDP]};
    for (int g = 0; g < 2; g++)
        CHECK(p->region_size[g] >= held[g] && p->region_size[g] - held[g] < align[g],
              "%s: region %d holds %lld floats for %lld of shards", t->name, g, (long long)p->region_size[g],
              (long long)held[g]);
    /* the aux-loss-free bias follows the global counts, so it agrees too */
    for (int32_t l = 0; l < c.num_layers; l++)
        if (m->blocks[l].is_moe)
            CHECK(memcmp(m->blocks[l].moe.bias, ref->blocks[l].moe.bias, 4 * sizeof(float)) == 0,
                  "%s: layer %d expert bias differs", t->name, (int)l);
    /* inference (one pipeline stage): the gathered logits and the routing statistics of the whole
     * micro-batch */
    const int64_t nv = mc.pp == 1 ? per * VOCAB : 0;
    float *la = malloc((size_t)nv * sizeof *la), *lb = malloc((size_t)nv * sizeof *lb);
    if (mc.pp == 1) {
        CHECK_OK(moe_model_forward(m, gtok, MBS, SEQ, la, (uint64_t)nv));
        CHECK_OK(moe_model_forward(ref, gtok, MBS, SEQ, lb, (uint64_t)nv));
    }
    double d2 = 0.0, r2 = 0.0;
    for (int64_t k = 0; k < nv; k++) {
        d2 += ((double)la[k] - lb[k]) * ((double)la[k] - lb[k]);
        r2 += (double)lb[k] * lb[k];
    }
    CHECK(mc.pp > 1 || sqrt(d2 / r2) < 1e-5, "%s: logits differ by %.3g relative", t->name, sqrt(d2 / r2));
    free(la);
    free(lb);
    if (t->moe && mc.pp == 1) {
        moe_routing_stats ra = {.struct_size = sizeof ra}, rb = {.struct_size = sizeof rb};
        int64_t ta[4], tb[4];
        CHECK_OK(moe_model_routing_stats(m, 1, &ra, ta, 4));
        CHECK_OK(moe_model_routing_stats(ref, 1, &rb, tb, 4));
        CHECK(ra.tokens == rb.tokens && ra.assignments == rb.assignments && ra.max_load == rb.max_load &&
                  memcmp(ta, tb, sizeof ta) == 0 && rel(ra.aux_loss, rb.aux_loss) < 1e-5 &&
                  rel(ra.z_loss, rb.z_loss) < 1e-5,
              "%s: routing stats differ (tokens %lld/%lld, aux %.9g/%.9g, z %.9g/%.9g)", t->name, (long long)ra.tokens,
              (long long)rb.tokens, ra.aux_loss, rb.aux_loss, ra.z_loss, rb.z_loss);
    }
    if (h_rank == 0)
        printf("  %-28s worst loss/norm rel %.2e, worst parameter rel %.2e, tp bytes/step %llu\n", t->name, worst,
               worst_param, (unsigned long long)want_bytes);
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

#define R MOE_POSITION_ROPE
#define A MOE_POSITION_ALIBI
#define LP MOE_POSITION_LEARNED
#define RMS MOE_NORM_RMSNORM
#define LN MOE_NORM_LAYERNORM
#define SWI MOE_ACTIVATION_SWIGLU
#define GELU MOE_ACTIVATION_GELU

/* world 2 */
static const tcase cases2[] = {
    {"tp2 dense rope", 2, 1, 1, 0, 0, R, RMS, 0, SWI, 2, 0.0f, 1, 0},
    {"tp2 dense alibi tied gelu ln", 2, 1, 1, 0, 0, A, LN, 1, GELU, 2, 0.0f, 1, 0},
    {"tp2+sp dense rope", 2, 1, 1, 1, 0, R, RMS, 0, SWI, 2, 0.0f, 1, 0},
    {"tp2+sp dense learned tied ln", 2, 1, 1, 1, 0, LP, LN, 1, GELU, 4, 0.0f, 1, 0},
    {"tp2 moe rope", 2, 1, 1, 0, 1, R, RMS, 0, SWI, 2, 0.1f, 1, 0},
    {"tp2+sp moe alibi", 2, 1, 1, 1, 1, A, LN, 0, GELU, 2, 0.1f, 1, 0},
    {"tp2 ep2 moe", 2, 1, 2, 0, 1, R, RMS, 1, SWI, 2, 0.0f, 1, 0},
    {"tp2+sp ep2 moe learned", 2, 1, 2, 1, 1, LP, RMS, 0, SWI, 2, 0.0f, 1, 0},
};
/* world 4 */
static const tcase cases4[] = {
    {"tp2 dp2 dense rope", 2, 2, 1, 0, 0, R, RMS, 0, SWI, 2, 0.0f, 1, 0},
    {"tp2+sp dp2 moe alibi", 2, 2, 1, 1, 1, A, RMS, 0, SWI, 2, 0.1f, 1, 0},
    {"tp2 dp2 ep2 moe", 2, 2, 2, 0, 1, R, LN, 0, GELU, 2, 0.0f, 1, 0},
    {"tp2+sp dp2 ep4 moe", 2, 2, 4, 1, 1, R, RMS, 1, SWI, 2, 0.0f, 1, 0},
    {"tp4 dense alibi", 4, 1, 1, 0, 0, A, RMS, 0, SWI, 4, 0.0f, 1, 0},
    {"tp4+sp moe rope ep2", 4, 1, 2, 1, 1, R, RMS, 0, SWI, 4, 0.0f, 1, 0},
    {"tp2 dp2 ep2 moe zero1", 2, 2, 2, 0, 2, R, RMS, 0, SWI, 2, 0.0f, 1, 1},
    {"tp2+sp dp2 dense zero1", 2, 2, 1, 1, 0, LP, LN, 1, GELU, 2, 0.0f, 1, 1},
    {"tp2 pp2 dense rope", 2, 1, 1, 0, 0, R, RMS, 0, SWI, 2, 0.0f, 2, 0},
    {"tp2 pp2 moe ep2 learned", 2, 1, 2, 0, 2, LP, LN, 0, SWI, 2, 0.0f, 2, 0},
    {"tp2 pp2 moe alibi jitter", 2, 1, 1, 0, 2, A, RMS, 0, GELU, 2, 0.1f, 2, 0},
};

/* world 8: every axis at once (the tp2·ep2·pp2 mesh, with dp2) */
static const tcase cases8[] = {
    {"tp2 dp2 ep2 pp2 moe", 2, 2, 2, 0, 1, R, RMS, 0, SWI, 2, 0.0f, 2, 0},
    {"tp2 dp2 ep4 pp2 moe zero1", 2, 2, 4, 0, 2, R, LN, 0, SWI, 2, 0.0f, 2, 1},
};

static void test_tp_equivalence(void)
{
    const tcase *cs = h_size == 2 ? cases2 : h_size == 4 ? cases4 : cases8;
    size_t count = h_size == 2   ? sizeof cases2 / sizeof cases2[0]
                   : h_size == 4 ? sizeof cases4 / sizeof cases4[0]
                                 : sizeof cases8 / sizeof cases8[0];
    for (size_t i = 0; i < count; i++) run_case(&cs[i]);
}

/* Configs a tp mesh cannot train exactly are refused on every rank with the field named. */
static void test_tp_refusals(void)
{
    moe_ctx *ctx = NULL;
    moe_mesh *mesh = NULL, *etp = NULL;
    moe_model *m = NULL;
    CHECK_OK(moe_ctx_create(NULL, &ctx));
    moe_mesh_config mc;
    moe_mesh_config_init(&mc, sizeof mc);
    mc.tp = 2;
    mc.dp = h_size / 2;
    mc.comm_backend = MOE_COMM_MPI;
    CHECK_OK(moe_mesh_create(ctx, &mc, &mesh));
    mc.etp = 2;
    CHECK_OK(moe_mesh_create(ctx, &mc, &etp));
    tcase t = {"refusals", 2, 1, 1, 0, 1, R, RMS, 0, SWI, 2, 0.0f, 1, 0};
    moe_model_config c;
    if (mesh && etp) {
        make_config(&t, &c);
        c.num_kv_heads = 1;
        CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "num_kv_heads = 1");
        make_config(&t, &c);
        c.num_heads = 3;
        c.head_dim = 4;
        c.num_kv_heads = 3;
        CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "num_heads = 3");
        make_config(&t, &c);
        c.ffn_hidden = 25;
        CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_INVALID_ARG, "ffn_hidden = 25");
        make_config(&t, &c);
        c.moe_capacity_factor = 1.0f;
        CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_UNSUPPORTED, "moe_capacity_factor");
        make_config(&t, &c);
        c.moe_router = MOE_ROUTER_EXPERT_CHOICE;
        c.moe_capacity_factor = 1.0f;
        c.moe_bias_update_rate = 0.0f;
        c.moe_aux_loss_coef = 0.0f;
        CHECK_FAILS(moe_model_create(ctx, mesh, &c, &m), MOE_ERR_UNSUPPORTED, "expert choice");
        make_config(&t, &c);
        CHECK_FAILS(moe_model_create(ctx, etp, &c, &m), MOE_ERR_UNSUPPORTED, "etp = 2");
        /* a micro-batch whose tokens do not split over tp: every rank fails, none hangs */
        make_config(&t, &c);
        CHECK_OK(moe_model_create(ctx, mesh, &c, &m));
        if (m) {
            int32_t tok[5] = {1, 2, 3, 4, 5}, tgt[5] = {2, 3, 4, 5, 6};
            double lm = 0.0, aux = 0.0;
            CHECK_FAILS(moe_model_forward_backward(m, tok, tgt, 1, 5, 1.0f, &lm, &aux), MOE_ERR_INVALID_ARG,
                        "micro_batch_size * seq_len");
        }
    }
    moe_model_destroy(m);
    m = NULL;
    /* sequence parallelism with pipeline stages (which exchange whole activations) */
    if (h_size == 4) {
        moe_mesh *pipe = NULL;
        moe_mesh_config pc;
        moe_mesh_config_init(&pc, sizeof pc);
        pc.tp = 2;
        pc.pp = 2;
        pc.sequence_parallel = 1;
        pc.comm_backend = MOE_COMM_MPI;
        CHECK_OK(moe_mesh_create(ctx, &pc, &pipe));
        make_config(&t, &c);
        if (pipe) CHECK_FAILS(moe_model_create(ctx, pipe, &c, &m), MOE_ERR_UNSUPPORTED, "sequence_parallel with pp = 2");
        moe_model_destroy(m);
        moe_mesh_destroy(pipe);
    }
    moe_mesh_destroy(etp);
    moe_mesh_destroy(mesh);
    moe_ctx_destroy(ctx);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    H_RUN(test_tp_equivalence);
    H_RUN(test_tp_refusals);
    MPI_Finalize();
    return h_total_fail ? 1 : 0;
}
