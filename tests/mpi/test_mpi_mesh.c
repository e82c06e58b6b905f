/* The mesh across processes, under mpirun (2 and 4 ranks). The library initialises MPI itself
 * here (first mesh creation) and finalises it at exit. Every layout of the world (dp, tp, pp, ep,
 * etp) is created; each rank's coordinates are checked against moei_mesh_coords (tested on its
 * own in tests/core/test_mesh.c) and each group communicator's members against the set of ranks
 * that share the other coordinates, enumerated here; a sum over every group checks the groups
 * carry data. Validation failures (world mismatch, one rank's bad field or layout) fail every rank,
 * quickly, with a message that names the world size or the failing rank. */
#define _POSIX_C_SOURCE 200809L /* setenv, clock_gettime */

#include <pthread.h>
#include <stdlib.h>

#include "comm/comm.h"
#include "mpi_harness.h"
#include "parallel/mesh.h"

static moe_ctx *g_ctx;
static int32_t W, R;

static moe_mesh_config layout(int32_t dp, int32_t tp, int32_t pp, int32_t ep, int32_t etp)
{
    moe_mesh_config c;
    moe_mesh_config_init(&c, sizeof c);
    c.dp = dp;
    c.tp = tp;
    c.pp = pp;
    c.ep = ep;
    c.etp = etp;
    return c;
}

/* Axes whose coordinates the members of a group share. */
static int shared_axes(int32_t axis, int32_t *out)
{
    switch (axis) {
    case MOE_AXIS_DP: out[0] = MOE_AXIS_TP; out[1] = MOE_AXIS_PP; return 2;
    case MOE_AXIS_TP: out[0] = MOE_AXIS_DP; out[1] = MOE_AXIS_PP; return 2;
    case MOE_AXIS_PP: out[0] = MOE_AXIS_DP; out[1] = MOE_AXIS_TP; return 2;
    case MOE_AXIS_EP: out[0] = MOE_AXIS_PP; out[1] = MOE_AXIS_EDP; out[2] = MOE_AXIS_ETP; return 3;
    case MOE_AXIS_ETP: out[0] = MOE_AXIS_PP; out[1] = MOE_AXIS_EDP; out[2] = MOE_AXIS_EP; return 3;
    case MOE_AXIS_EDP: out[0] = MOE_AXIS_PP; out[1] = MOE_AXIS_EP; out[2] = MOE_AXIS_ETP; return 3;
    case MOEI_MESH_STAGE: out[0] = MOE_AXIS_PP; return 1;
    default: return 0; /* world */
    }
}

static void check_mesh(const moe_mesh_config *cfg, moe_mesh *m)
{
    int32_t coords[8][MOEI_AXIS_COUNT], sizes[MOEI_AXIS_COUNT];
    for (int32_t q = 0; q < W; q++) moei_mesh_coords(cfg, q, sizes, coords[q]);
    const int32_t stage_size = cfg->dp * cfg->tp;
    for (int32_t a = 0; a < MOEI_MESH_COMM_COUNT; a++) {
        /* the members, in group order: ranks sharing the other coordinates, at their coordinate */
        int32_t shared[3], ns = shared_axes(a, shared), members[8], nm = 0;
        for (int32_t i = 0; i < 8; i++) members[i] = -1;
        for (int32_t q = 0; q < W; q++) {
            int same = 1;
            for (int i = 0; i < ns; i++) same = same && coords[q][shared[i]] == coords[R][shared[i]];
            if (!same) continue;
            int32_t pos = a == MOEI_MESH_STAGE ? q % stage_size : coords[q][a];
            if (pos >= 0 && pos < 8) members[pos] = q;
            nm++;
        }
        moei_comm *g = moei_mesh_comm(m, a);
        CHECK(g != NULL, "axis %d: no communicator", a);
        if (!g) continue;
        int32_t want_rank = a == MOEI_MESH_STAGE ? R % stage_size : coords[R][a];
        CHECK(g->size == nm && g->rank == want_rank, "dp%d tp%d pp%d ep%d etp%d axis %d: group %d/%d, want %d/%d",
              cfg->dp, cfg->tp, cfg->pp, cfg->ep, cfg->etp, a, g->rank, g->size, want_rank, nm);
        CHECK(g->bytes_sent == 0, "axis %d: counter %llu after creation", a, (unsigned long long)g->bytes_sent);
        if (a < MOEI_AXIS_COUNT) {
            int32_t s = -1, r = -1;
            CHECK_OK(moe_mesh_group_size(m, a, &s));
            CHECK_OK(moe_mesh_group_rank(m, a, &r));
            CHECK(s == sizes[a] && r == coords[R][a], "public axis %d: %d/%d, want %d/%d", a, r, s, coords[R][a],
                  sizes[a]);
            CHECK(s == nm, "axis %d: size %d but %d members", a, s, nm);
        }
        if (g->size != nm) continue;
        int32_t got[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
        CHECK_OK(g->ops->all_gather(g, &R, got, 1, MOE_DTYPE_I32));
        for (int32_t i = 0; i < nm; i++)
            CHECK(got[i] == members[i], "axis %d: member %d is rank %d, want %d", a, i, got[i], members[i]);
        int64_t v = R + 1, want = 0;
        CHECK_OK(g->ops->all_reduce_sum(g, &v, 1, MOE_DTYPE_I64));
        for (int32_t i = 0; i < nm; i++) want += members[i] + 1;
        CHECK(v == want, "axis %d: sum %lld, want %lld", a, (long long)v, (long long)want);
    }
}

static void test_all_layouts(void)
{
    int n = 0;
    for (int32_t dp = 1; dp <= W; dp++)
        for (int32_t tp = 1; tp <= W; tp++)
            for (int32_t pp = 1; pp <= W; pp++) {
                if (dp * tp * pp != W) continue;
                for (int32_t ep = 1; ep <= dp * tp; ep++)
                    for (int32_t etp = 1; etp <= dp * tp; etp++) {
                        if ((dp * tp) % (ep * etp) != 0) continue;
                        moe_mesh_config c = layout(dp, tp, pp, ep, etp);
                        c.sequence_parallel = (uint32_t)(n & 1);
                        c.comm_backend = (n & 2) ? MOE_COMM_MPI : MOE_COMM_AUTO;
                        moe_mesh *m = NULL;
                        CHECK_OK(moe_mesh_create(g_ctx, &c, &m));
                        if (m) {
                            check_mesh(&c, m);
                            uint32_t sp = 9;
                            CHECK_OK(moe_mesh_sequence_parallel(m, &sp));
                            CHECK(sp == c.sequence_parallel, "sequence_parallel");
                            CHECK(strcmp(m->world->ops->name, "mpi") == 0, "backend %s", m->world->ops->name);
                        }
                        moe_mesh_destroy(m);
                        n++;
                    }
            }
    CHECK(n >= (W == 4 ? 20 : 5), "only %d layouts", n);
}

static void test_world_mismatch(void)
{
    moe_mesh_config c = layout(2 * W, 1, 1, 1, 1);
    moe_mesh *m = (moe_mesh *)&c;
    char want[80];
    snprintf(want, sizeof want, "dp * tp * pp = %d but the communicator has %d rank(s)", 2 * W, W);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, want);
    CHECK(m == (moe_mesh *)&c, "out untouched");
    /* every rank failed for the same reason: each keeps its own message, with nothing added */
    CHECK(strncmp(moe_last_error(), "moe_mesh_create:", 16) == 0, "message '%s'", moe_last_error());
    CHECK(strcmp(moe_ctx_last_error(g_ctx), moe_last_error()) == 0, "ctx message '%s'", moe_ctx_last_error(g_ctx));
    c = layout(1, 1, 1, 1, 1);
    snprintf(want, sizeof want, "dp * tp * pp = 1 but the communicator has %d rank(s)", W);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, want);
    c = layout(W, 1, 1, W + 1, 1);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, "ep * etp");
    /* the self backend stays a world of one, under mpirun too */
    c = layout(W, 1, 1, 1, 1);
    c.comm_backend = MOE_COMM_SELF;
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, "self backend");
    c = layout(1, 1, 1, 1, 1);
    c.comm_backend = MOE_COMM_SELF;
    CHECK_OK(moe_mesh_create(g_ctx, &c, &m));
    if (m != (moe_mesh *)&c) {
        int32_t s = 0;
        CHECK_OK(moe_mesh_group_size(m, MOE_AXIS_WORLD, &s));
        CHECK(s == 1, "self world %d", s);
        moe_mesh_destroy(m);
    }
}

/* One rank's mistake: every rank returns an error within seconds, and the next create works. */
static void test_one_rank_fails(void)
{
    const int32_t bad = W - 1;
    char who[32];
    snprintf(who, sizeof who, "rank %d failed", (int)bad);
    /* a layout for another world size */
    double t0 = h_now();
    moe_mesh_config c = layout(R == bad ? 2 * W : W, 1, 1, 1, 1);
    moe_mesh *m = NULL;
    char want[64];
    snprintf(want, sizeof want, "the communicator has %d rank(s)", W);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, want);
    if (R != bad) CHECK(strstr(moe_last_error(), who) != NULL, "message '%s' lacks '%s'", moe_last_error(), who);
    CHECK(m == NULL, "no mesh");
    /* a bad field on one rank only */
    c = layout(W, 1, 1, 1, R == bad ? 0 : 1);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, "moe_mesh_config.etp = 0");
    if (R != bad) CHECK(strstr(moe_last_error(), who) != NULL, "message '%s'", moe_last_error());
    c = layout(W, 1, 1, R == bad ? W + 1 : 1, 1);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, "ep * etp");
    /* a valid layout that differs from the others' */
    c = R == bad ? layout(1, W, 1, 1, 1) : layout(W, 1, 1, 1, 1);
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, "differs between ranks");
    c = layout(W, 1, 1, 1, 1);
    c.sequence_parallel = R == bad ? 1 : 0;
    CHECK_FAILS(moe_mesh_create(g_ctx, &c, &m), MOE_ERR_INVALID_ARG, "sequence_parallel=1");
    CHECK(h_now() - t0 < 20.0, "failures took %.1f s", h_now() - t0);
    c = layout(W, 1, 1, 1, 1);
    CHECK_OK(moe_mesh_create(g_ctx, &c, &m));
    if (m) check_mesh(&c, m);
    moe_mesh_destroy(m);
}

/* Two meshes at once, destroyed out of order: their communicators are independent. */
static void test_two_meshes(void)
{
    moe_mesh_config a = layout(1, W, 1, 1, W), b = layout(1, 1, W, 1, 1);
    moe_mesh *ma = NULL, *mb = NULL;
    CHECK_OK(moe_mesh_create(g_ctx, &a, &ma));
    CHECK_OK(moe_mesh_create(g_ctx, &b, &mb));
    moe_mesh_destroy(ma);
    if (mb) check_mesh(&b, mb);
    moe_mesh_destroy(mb);
}

static void *destroy_thread(void *mesh)
{
    moe_mesh_destroy(mesh);
    return NULL;
}

/* Destroy runs wherever a finalizer runs: on another thread it must neither crash nor call MPI
 * from a thread that may not (the library initialised MPI with MPI_THREAD_FUNNELED). */
static void test_destroy_on_another_thread(void)
{
    moe_mesh_config c = layout(1, W, 1, 1, 1);
    moe_mesh *m = NULL;
    CHECK_OK(moe_mesh_create(g_ctx, &c, &m));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, destroy_thread, m) == 0, "pthread_create");
    pthread_join(t, NULL);
    c = layout(W, 1, 1, 1, 1); /* the world still works afterwards */
    CHECK_OK(moe_mesh_create(g_ctx, &c, &m));
    if (m) check_mesh(&c, m);
    moe_mesh_destroy(m);
}

int main(void)
{
    W = moei_comm_world_size_hint();
    if (W < 2 || W > 8) {
        fprintf(stderr, "run this test under mpirun with 2 to 8 ranks (launcher world size %d)\n", (int)W);
        return 1;
    }
    int inited = 1;
    MPI_Initialized(&inited);
    if (moe_ctx_create(NULL, &g_ctx) != MOE_OK) return 1;
    /* the first mesh starts MPI */
    moe_mesh_config c = layout(W, 1, 1, 1, 1);
    moe_mesh *m = NULL;
    moe_status st = moe_mesh_create(g_ctx, &c, &m);
    if (st != MOE_OK) {
        fprintf(stderr, "first mesh: %s\n", moe_last_error());
        return 1;
    }
    int now = 0;
    MPI_Initialized(&now);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    R = h_rank;
    CHECK(!inited && now, "MPI initialised by the library: before %d, after %d", inited, now);
    CHECK(h_size == W, "world %d, launcher said %d", h_size, W);
    int32_t r = -1;
    CHECK_OK(moe_mesh_group_rank(m, MOE_AXIS_WORLD, &r));
    CHECK(r == R, "world rank %d, MPI %d", r, R);
    moe_mesh_destroy(m);
    H_RUN(test_all_layouts);
    H_RUN(test_world_mismatch);
    H_RUN(test_one_rank_fails);
    H_RUN(test_two_meshes);
    H_RUN(test_destroy_on_another_thread);
    int all = 0;
    MPI_Allreduce(&h_fail, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    moe_ctx_destroy(g_ctx);
    return all ? 1 : 0; /* MPI is finalised by the library at exit */
}
