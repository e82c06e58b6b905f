/* moe_mesh: validation, coordinates, and the communicators underneath (self for a world of one,
 * MPI across processes), with one group communicator per axis made by splitting the world.
 * Invariant: creation is collective and fails on every rank or on none (checks are agreed on). */
#include "parallel/mesh.h"

#include <stdlib.h>
#include <string.h>

#include "core/config.h"
#include "core/ctx.h"
#include "core/error.h"

static void mesh_config_defaults(moe_mesh_config *c)
{
    c->dp = c->tp = c->pp = c->ep = c->etp = 1;
    c->sequence_parallel = 0;
    c->comm_backend = MOE_COMM_AUTO;
}

MOE_API moe_status moe_mesh_config_init(moe_mesh_config *cfg, uint32_t struct_size)
{
    moe_mesh_config d;
    mesh_config_defaults(&d);
    return moei_config_init(cfg, struct_size, &d, sizeof d, "moe_mesh_config_init");
}

void moei_mesh_coords(const moe_mesh_config *cfg, int32_t r, int32_t size[MOEI_AXIS_COUNT],
                      int32_t rank[MOEI_AXIS_COUNT])
{
    int32_t world = cfg->dp * cfg->tp * cfg->pp;
    int32_t stage_ranks = cfg->dp * cfg->tp;
    size[MOE_AXIS_WORLD] = world;
    size[MOE_AXIS_DP] = cfg->dp;
    size[MOE_AXIS_TP] = cfg->tp;
    size[MOE_AXIS_PP] = cfg->pp;
    size[MOE_AXIS_EP] = cfg->ep;
    size[MOE_AXIS_ETP] = cfg->etp;
    size[MOE_AXIS_EDP] = stage_ranks / (cfg->ep * cfg->etp);
    rank[MOE_AXIS_WORLD] = r;
    rank[MOE_AXIS_TP] = r % cfg->tp;
    rank[MOE_AXIS_DP] = (r / cfg->tp) % cfg->dp;
    rank[MOE_AXIS_PP] = r / stage_ranks;
    int32_t in_stage = r % stage_ranks; /* the expert fold re-reads the same stage ranks */
    rank[MOE_AXIS_ETP] = in_stage % cfg->etp;
    rank[MOE_AXIS_EP] = (in_stage / cfg->etp) % cfg->ep;
    rank[MOE_AXIS_EDP] = in_stage / (cfg->etp * cfg->ep);
}

void moei_mesh_group_color(const moe_mesh_config *cfg, int32_t r, int32_t axis, int32_t *color, int32_t *key)
{
    int32_t size[MOEI_AXIS_COUNT], rank[MOEI_AXIS_COUNT];
    moei_mesh_coords(cfg, r, size, rank);
    const int32_t pp = rank[MOE_AXIS_PP], dp = rank[MOE_AXIS_DP], tp = rank[MOE_AXIS_TP];
    const int32_t ep = rank[MOE_AXIS_EP], etp = rank[MOE_AXIS_ETP], edp = rank[MOE_AXIS_EDP];
    /* The color enumerates the coordinates the group shares; the key is the coordinate that varies
     * inside it, so a rank's place in its group is its coordinate on the axis. */
    switch (axis) {
    case MOE_AXIS_TP: *color = pp * size[MOE_AXIS_DP] + dp; *key = tp; break;
    case MOE_AXIS_DP: *color = pp * size[MOE_AXIS_TP] + tp; *key = dp; break;
    case MOE_AXIS_PP: *color = dp * size[MOE_AXIS_TP] + tp; *key = pp; break;
    case MOE_AXIS_EP: *color = (pp * size[MOE_AXIS_EDP] + edp) * size[MOE_AXIS_ETP] + etp; *key = ep; break;
    case MOE_AXIS_ETP: *color = (pp * size[MOE_AXIS_EDP] + edp) * size[MOE_AXIS_EP] + ep; *key = etp; break;
    case MOE_AXIS_EDP: *color = (pp * size[MOE_AXIS_EP] + ep) * size[MOE_AXIS_ETP] + etp; *key = edp; break;
    case MOEI_MESH_STAGE: *color = pp; *key = r % (size[MOE_AXIS_DP] * size[MOE_AXIS_TP]); break;
    default: *color = 0; *key = r; break; /* the world */
    }
}

static moe_status validate_fields(moe_ctx *ctx, const moe_mesh_config *c)
{
    static const char *fn = "moe_mesh_create";
    const struct {
        const char *name;
        int32_t v;
    } sizes[] = {{"dp", c->dp}, {"tp", c->tp}, {"pp", c->pp}, {"ep", c->ep}, {"etp", c->etp}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].v < 1 || sizes[i].v > 65536)
            return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_mesh_config.%s = %d (must be 1..65536)", fn,
                             sizes[i].name, (int)sizes[i].v);
    if (c->sequence_parallel > 1)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_mesh_config.sequence_parallel = %u (must be 0 or 1)", fn,
                         (unsigned)c->sequence_parallel);
    if (c->comm_backend < MOE_COMM_AUTO || c->comm_backend > MOE_COMM_MPI)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG, "%s: moe_mesh_config.comm_backend = %d is not a moe_comm_backend",
                         fn, (int)c->comm_backend);
    int64_t stage = (int64_t)c->dp * c->tp;
    int64_t expert = (int64_t)c->ep * c->etp;
    if (stage % expert != 0)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: moe_mesh_config.ep * etp = %lld does not divide dp * tp = %lld (expert layers fold "
                         "the dp*tp ranks of a stage as edp*ep*etp)",
                         fn, (long long)expert, (long long)stage);
    return MOE_OK;
}

/* `why` explains where the world size came from when it is not what the config asks for. */
static moe_status validate_world(moe_ctx *ctx, const moe_mesh_config *c, int32_t world, const char *why)
{
    int64_t w = (int64_t)c->dp * c->tp * c->pp;
    if (w != world)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "moe_mesh_create: moe_mesh_config.dp * tp * pp = %lld but the communicator has %d rank(s)%s",
                         (long long)w, (int)world, why ? why : "");
    return MOE_OK;
}

moe_status moei_mesh_validate(moe_ctx *ctx, const moe_mesh_config *c, int32_t world)
{
    moe_status st = validate_fields(ctx, c);
    return st != MOE_OK ? st : validate_world(ctx, c, world, NULL);
}

moei_comm *moei_mesh_comm(const moe_mesh *m, int32_t axis)
{
    if (!m || axis < 0 || axis >= MOEI_MESH_COMM_COUNT) return NULL;
    return m->group[axis];
}

/* The backend this process runs on: MOE_COMM_SELF, MOE_COMM_MPI, or -1 when it needs MPI and the
 * build has none. `hint` receives the launcher's world size (moei_comm_world_size_hint). */
static int32_t pick_backend(int32_t requested, int32_t *hint)
{
    *hint = 1;
    if (requested == MOE_COMM_SELF) return MOE_COMM_SELF;
    if (requested == MOE_COMM_AUTO) {
        *hint = moei_comm_world_size_hint();
        if (*hint == 1) return MOE_COMM_SELF;
        /* a launcher that did not say how many ranks it started: without MPI, run alone */
        if (*hint == 0 && !moei_comm_mpi_built()) return MOE_COMM_SELF;
    }
    return moei_comm_mpi_built() ? MOE_COMM_MPI : -1;
}

static moe_status backend_missing(moe_ctx *ctx, int32_t requested, int32_t hint)
{
    static const char *fn = "moe_mesh_create";
    if (requested == MOE_COMM_AUTO)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                         "%s: moe_mesh_config.comm_backend = MOE_COMM_AUTO: the process was launched as one of %d "
                         "ranks, but this build has no MPI backend (built without MPI; configure with -DMOE_MPI=ON, "
                         "or choose MOE_COMM_SELF to run each process alone)",
                         fn, (int)hint);
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                     "%s: moe_mesh_config.comm_backend = MOE_COMM_MPI, but this build has no MPI backend (built "
                     "without MPI; configure with -DMOE_MPI=ON)",
                     fn);
}

/* Create the world communicator of `backend`. `why` receives a hint for a world-size mismatch. */
static moe_status make_world(moe_ctx *ctx, int32_t backend, moei_comm **world, const char **why)
{
    if (backend == MOE_COMM_MPI) {
        *why = " (MPI_COMM_WORLD)";
        return moei_comm_mpi_create(ctx, world);
    }
    *why = moei_comm_mpi_built() ? " (the self backend is a world of one; launch the ranks with mpirun and use "
                                   "MOE_COMM_MPI or MOE_COMM_AUTO)"
                                 : " (the self backend is a world of one, and this build has no MPI backend: "
                                   "built without MPI)";
    return moei_comm_self_create(ctx, world);
}

/* Every rank must ask for the same layout; a rank whose config differs would otherwise join
 * groups that the others do not form. All ranks see the same table, so all reach the same verdict.
 * (The backend may differ in spelling, AUTO or MPI, as long as it reaches the same world.) */
static moe_status check_same_config(moe_ctx *ctx, moei_comm *world, const moe_mesh_config *c)
{
    enum { NF = 6 };
    const int32_t mine[NF] = {c->dp, c->tp, c->pp, c->ep, c->etp, (int32_t)c->sequence_parallel};
    int32_t *all = malloc((size_t)world->size * sizeof mine);
    moe_status st = all ? MOE_OK : moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "moe_mesh_create: out of host memory");
    moe_status g = MOE_OK;
    moei_comm_agree(world, st, &g);
    if (g != MOE_OK) {
        free(all);
        return g;
    }
    st = moei_comm_host_all_gather(world, mine, all, sizeof mine);
    for (int32_t r = 1; r < world->size && st == MOE_OK; r++) {
        const int32_t *a = all, *b = all + (size_t)r * NF;
        if (memcmp(a, b, sizeof mine) != 0)
            st = moei_fail(ctx, MOE_ERR_INVALID_ARG,
                           "moe_mesh_create: moe_mesh_config differs between ranks: rank 0 has dp=%d tp=%d pp=%d ep=%d "
                           "etp=%d sequence_parallel=%d, rank %d has dp=%d tp=%d pp=%d ep=%d etp=%d "
                           "sequence_parallel=%d",
                           (int)a[0], (int)a[1], (int)a[2], (int)a[3], (int)a[4], (int)a[5], (int)r, (int)b[0],
                           (int)b[1], (int)b[2], (int)b[3], (int)b[4], (int)b[5]);
    }
    free(all);
    return st;
}

static void destroy_groups(moe_mesh *m)
{
    for (int32_t a = 1; a < MOEI_MESH_COMM_COUNT; a++) {
        moei_comm_destroy(m->group[a]);
        m->group[a] = NULL;
    }
}

/* Split the world once per axis. Every rank joins every split, even after a local failure, and
 * the outcome is agreed on at the end. */
static moe_status make_groups(moe_mesh *m)
{
    moe_status first = MOE_OK;
    m->group[MOE_AXIS_WORLD] = m->world;
    for (int32_t a = 1; a < MOEI_MESH_COMM_COUNT; a++) {
        int32_t color = 0, key = 0;
        moei_mesh_group_color(&m->cfg, m->world->rank, a, &color, &key);
        moe_status st = m->world->ops->split(m->world, color, key, &m->group[a]);
        if (st == MOE_OK) {
            /* the split must reproduce the coordinates; anything else is a broken backend */
            int32_t want_size = a == MOEI_MESH_STAGE ? m->cfg.dp * m->cfg.tp : m->size[a];
            int32_t want_rank = a == MOEI_MESH_STAGE ? key : m->rank[a];
            if (m->group[a]->size != want_size || m->group[a]->rank != want_rank)
                st = moei_fail(m->ctx, MOE_ERR_COMM,
                               "moe_mesh_create: group %d has rank %d of %d, but the layout gives rank %d of %d",
                               (int)a, (int)m->group[a]->rank, (int)m->group[a]->size, (int)want_rank, (int)want_size);
        }
        if (st != MOE_OK && first == MOE_OK) first = st;
    }
    moe_status g = MOE_OK;
    moei_comm_agree(m->world, first, &g);
    if (g != MOE_OK) destroy_groups(m);
    return g;
}

MOE_API moe_status moe_mesh_create(moe_ctx *ctx, const moe_mesh_config *cfg, moe_mesh **out)
{
    static const char *fn = "moe_mesh_create";
    MOEI_CHECK_NOT_NULL(NULL, ctx, fn);
    MOEI_CHECK_NOT_NULL(ctx, out, fn);
    moe_mesh_config c;
    mesh_config_defaults(&c);
    c.struct_size = sizeof c;
    if (cfg) {
        moe_status st = moei_config_read(&c, sizeof c, cfg, "moe_mesh_config", fn);
        if (st != MOE_OK) return moei_fail_msg(ctx, st, moe_last_error());
    }
    /* A field error on one rank must not leave the others inside the world's creation: once the
     * backend is known, the world is made anyway and the error goes through agreement. Only an
     * unknown backend (nothing to agree over) returns at once. */
    moe_status st = validate_fields(ctx, &c);
    if (c.comm_backend < MOE_COMM_AUTO || c.comm_backend > MOE_COMM_MPI) return st;
    int32_t hint = 1, backend = pick_backend(c.comm_backend, &hint);
    if (st != MOE_OK && backend != MOE_COMM_MPI) return st; /* no other rank can be waiting */
    if (backend < 0) return backend_missing(ctx, c.comm_backend, hint);
    moei_comm *world = NULL;
    const char *why = NULL;
    moe_status wst = make_world(ctx, backend, &world, &why);
    if (wst != MOE_OK) return wst;
    moe_mesh *m = NULL;
    if (st == MOE_OK) {
        m = calloc(1, sizeof *m);
        st = m ? MOE_OK : moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    if (st == MOE_OK) st = validate_world(ctx, &c, world->size, why);
    moe_status g = MOE_OK;
    moei_comm_agree(world, st, &g);
    if (g == MOE_OK) g = check_same_config(ctx, world, &c);
    if (g == MOE_OK) {
        m->ctx = ctx;
        m->cfg = c;
        m->world = world;
        moei_mesh_coords(&c, world->rank, m->size, m->rank);
        g = make_groups(m);
    }
    if (g != MOE_OK) {
        free(m);
        moei_comm_destroy(world);
        return g;
    }
    /* creation traffic is control traffic: volume counters start at zero */
    for (int32_t a = 0; a < MOEI_MESH_COMM_COUNT; a++) m->group[a]->bytes_sent = 0;
    moei_ctx_retain(ctx);
    *out = m;
    return MOE_OK;
}

MOE_API void moe_mesh_destroy(moe_mesh *mesh)
{
    if (!mesh) return;
    destroy_groups(mesh);
    moei_comm_destroy(mesh->world);
    moei_ctx_release(mesh->ctx);
    free(mesh);
}

static moe_status check_axis(const moe_mesh *mesh, int32_t axis, const void *outp, const char *fn)
{
    MOEI_CHECK_NOT_NULL(NULL, mesh, fn);
    MOEI_CHECK_NOT_NULL(mesh->ctx, outp, fn);
    if (axis < 0 || axis >= MOEI_AXIS_COUNT)
        return moei_fail(mesh->ctx, MOE_ERR_INVALID_ARG, "%s: axis %d is not a moe_mesh_axis", fn, (int)axis);
    return MOE_OK;
}

MOE_API moe_status moe_mesh_group_size(const moe_mesh *mesh, int32_t axis, int32_t *size)
{
    moe_status st = check_axis(mesh, axis, size, "moe_mesh_group_size");
    if (st != MOE_OK) return st;
    *size = mesh->size[axis];
    return MOE_OK;
}

MOE_API moe_status moe_mesh_group_rank(const moe_mesh *mesh, int32_t axis, int32_t *rank)
{
    moe_status st = check_axis(mesh, axis, rank, "moe_mesh_group_rank");
    if (st != MOE_OK) return st;
    *rank = mesh->rank[axis];
    return MOE_OK;
}

MOE_API moe_status moe_mesh_sequence_parallel(const moe_mesh *mesh, uint32_t *enabled)
{
    MOEI_CHECK_NOT_NULL(NULL, mesh, "moe_mesh_sequence_parallel");
    MOEI_CHECK_NOT_NULL(mesh->ctx, enabled, "moe_mesh_sequence_parallel");
    *enabled = mesh->cfg.sequence_parallel;
    return MOE_OK;
}
