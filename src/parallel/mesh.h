/* Mesh internals: sizes, this rank's coordinates on every axis, and the world communicator.
 * Coordinates follow DESIGN.md §4 (tp fastest, then dp, then pp; experts: etp, ep, edp). */
#ifndef MOEI_PARALLEL_MESH_H
#define MOEI_PARALLEL_MESH_H

#include "comm/comm.h"
#include "moe/mesh.h"

#define MOEI_AXIS_COUNT 7

struct moe_mesh {
    moe_ctx *ctx;
    moe_mesh_config cfg;
    int32_t size[MOEI_AXIS_COUNT]; /* indexed by moe_mesh_axis */
    int32_t rank[MOEI_AXIS_COUNT];
    moei_comm *world;
};

/* Pure coordinate arithmetic, exposed for tests: fill size[] and rank[] for global rank `r`. */
void moei_mesh_coords(const moe_mesh_config *cfg, int32_t r, int32_t size[MOEI_AXIS_COUNT],
                      int32_t rank[MOEI_AXIS_COUNT]);

/* Validate sizes against a world of `world` ranks; the message names the offending field. */
moe_status moei_mesh_validate(moe_ctx *ctx, const moe_mesh_config *cfg, int32_t world);

#endif
