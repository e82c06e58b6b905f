/* moe_mesh: validation, coordinates, and the communicator underneath. In this build every mesh
 * runs on the self communicator (a world of one); the MPI backend plugs in behind the same API. */
#include "parallel/mesh.h"

#include <stdlib.h>

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

moe_status moei_mesh_validate(moe_ctx *ctx, const moe_mesh_config *c, int32_t world)
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
    int64_t w = stage * c->pp;
    if (w != world)
        return moei_fail(ctx, MOE_ERR_INVALID_ARG,
                         "%s: moe_mesh_config.dp * tp * pp = %lld but the communicator has %d rank(s)", fn,
                         (long long)w, (int)world);
    return MOE_OK;
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
    if (c.comm_backend == MOE_COMM_MPI)
        return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                         "%s: moe_mesh_config.comm_backend = MOE_COMM_MPI, but this build has no MPI backend", fn);
    moei_comm *world = NULL;
    moe_status st = moei_comm_self_create(ctx, &world);
    if (st != MOE_OK) return st;
    st = moei_mesh_validate(ctx, &c, world->size);
    if (st != MOE_OK) {
        moei_comm_destroy(world);
        return st;
    }
    moe_mesh *m = calloc(1, sizeof *m);
    if (!m) {
        moei_comm_destroy(world);
        return moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "%s: out of host memory", fn);
    }
    m->ctx = ctx;
    m->cfg = c;
    m->world = world;
    moei_mesh_coords(&c, world->rank, m->size, m->rank);
    moei_ctx_retain(ctx);
    *out = m;
    return MOE_OK;
}

MOE_API void moe_mesh_destroy(moe_mesh *mesh)
{
    if (!mesh) return;
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
