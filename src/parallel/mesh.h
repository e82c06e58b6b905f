/* Mesh internals: sizes, this rank's coordinates on every axis, the world communicator and one
 * group communicator per axis. Coordinates follow DESIGN.md §4 (tp fastest, then dp, then pp;
 * experts: etp, ep, edp). Invariant: the rank of this process in group[a] equals rank[a]. */
#ifndef MOEI_PARALLEL_MESH_H
#define MOEI_PARALLEL_MESH_H

#include "comm/comm.h"
#include "moe/mesh.h"

#define MOEI_AXIS_COUNT 7
/* An internal group beside the public axes: every rank of this pipeline stage (dp*tp ranks, the
 * ranks the expert fold re-reads), ordered by position in the stage. */
#define MOEI_MESH_STAGE 7
#define MOEI_MESH_COMM_COUNT 8

struct moe_mesh {
    moe_ctx *ctx;
    moe_mesh_config cfg;
    int32_t size[MOEI_AXIS_COUNT]; /* indexed by moe_mesh_axis */
    int32_t rank[MOEI_AXIS_COUNT];
    moei_comm *world;                        /* == group[MOE_AXIS_WORLD] */
    moei_comm *group[MOEI_MESH_COMM_COUNT];  /* per axis (moe_mesh_axis), then MOEI_MESH_STAGE */
};

/* The communicator of this rank's group along `axis` (a moe_mesh_axis or MOEI_MESH_STAGE),
 * borrowed from the mesh; NULL for an unknown axis. Groups: tp = same (dp, pp); dp = same (tp, pp);
 * pp = same (dp, tp); ep = same (pp, edp, etp); etp = same (pp, edp, ep); edp = same (pp, ep, etp);
 * stage = same pp. Group ranks equal the axis coordinates. */
moei_comm *moei_mesh_comm(const moe_mesh *m, int32_t axis);

/* The split that forms the group of global rank `r` along `axis`: ranks with equal color form the
 * group, ordered by key. Pure arithmetic over moei_mesh_coords; exposed for tests. */
void moei_mesh_group_color(const moe_mesh_config *cfg, int32_t r, int32_t axis, int32_t *color, int32_t *key);

/* Pure coordinate arithmetic, exposed for tests: fill size[] and rank[] for global rank `r`. */
void moei_mesh_coords(const moe_mesh_config *cfg, int32_t r, int32_t size[MOEI_AXIS_COUNT],
                      int32_t rank[MOEI_AXIS_COUNT]);

/* Validate sizes against a world of `world` ranks; the message names the offending field. */
moe_status moei_mesh_validate(moe_ctx *ctx, const moe_mesh_config *cfg, int32_t world);

#endif
