/**
 * @file moe/mesh.h
 * @brief The parallel layout: how the world's ranks split into data, tensor, pipeline and expert groups.
 *
 * world = dp * tp * pp. Rank order follows Megatron-Core: tp varies fastest, then dp, then pp
 * (tp_rank = r % tp, dp_rank = (r / tp) % dp, pp_rank = r / (tp * dp)). Expert layers re-fold the
 * dp * tp ranks of one pipeline stage as edp * ep * etp, with etp fastest, then ep, then edp.
 * Model and optimizer constructors take a mesh, so the same code runs on one rank and on many.
 * Thread-safety: as its ctx (one thread at a time; destroy from any thread).
 */
#ifndef MOE_MESH_H
#define MOE_MESH_H

#include "moe/common.h"
#include "moe/ctx.h"

MOE_EXTERN_C_BEGIN

/**
 * @defgroup moe_mesh Device mesh
 * @brief Parallel layout over the ranks of a communicator.
 * @{
 */

/** @brief An opaque mesh. Created by moe_mesh_create(), freed by moe_mesh_destroy(). */
typedef struct moe_mesh moe_mesh;

/** @brief Which transport connects the ranks of a mesh. */
typedef enum moe_comm_backend {
    MOE_COMM_AUTO = 0, /**< MPI when the process was launched with more than one rank, else self. */
    MOE_COMM_SELF = 1, /**< A world of one rank; needs no MPI. */
    MOE_COMM_MPI = 2,  /**< MPI_COMM_WORLD; needs a build with MOE_MPI. */
    MOE_COMM_BACKEND_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_comm_backend;

/** @brief The parallel groups a rank belongs to. */
typedef enum moe_mesh_axis {
    MOE_AXIS_WORLD = 0, /**< Every rank. */
    MOE_AXIS_DP = 1,    /**< Data-parallel replicas of dense parameters. */
    MOE_AXIS_TP = 2,    /**< Tensor-parallel (and sequence-parallel) shards. */
    MOE_AXIS_PP = 3,    /**< Pipeline stages. */
    MOE_AXIS_EP = 4,    /**< Expert-parallel shards of the expert set. */
    MOE_AXIS_ETP = 5,   /**< Tensor-parallel shards inside each expert. */
    MOE_AXIS_EDP = 6,   /**< Data-parallel replicas of expert parameters. */
    MOE_MESH_AXIS_FORCE32 = 0x7FFFFFFF /**< Forces a 32-bit enum. */
} moe_mesh_axis;

/** @brief Sizes of a mesh. Fill with moe_mesh_config_init() before setting fields. */
typedef struct moe_mesh_config {
    uint32_t struct_size;       /**< sizeof(moe_mesh_config) as compiled by the caller. */
    int32_t dp;                 /**< Data-parallel size, >= 1. Default 1. */
    int32_t tp;                 /**< Tensor-parallel size, >= 1. Default 1. */
    int32_t pp;                 /**< Pipeline-parallel size, >= 1. Default 1. */
    int32_t ep;                 /**< Expert-parallel size, >= 1; ep * etp must divide dp * tp. Default 1. */
    int32_t etp;                /**< Expert tensor-parallel size, >= 1. Default 1. */
    uint32_t sequence_parallel; /**< 1 to shard norms and residuals over the tp group, else 0. Default 0. */
    int32_t comm_backend;       /**< A ::moe_comm_backend. Default MOE_COMM_AUTO. */
} moe_mesh_config;

/**
 * @brief Fill a mesh config with its defaults (every size 1, no sequence parallelism, auto backend).
 * @param cfg The config; the library writes at most @p struct_size bytes.
 * @param struct_size sizeof(moe_mesh_config) as the caller compiled it.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG if @p cfg is NULL or @p struct_size is too small.
 */
MOE_API moe_status moe_mesh_config_init(moe_mesh_config *cfg, uint32_t struct_size);

/**
 * @brief Create a mesh over the ranks of the chosen communicator.
 * @param ctx The ctx; must outlive the mesh.
 * @param cfg Sizes; NULL means a world of one. Copied, not kept.
 * @param out Receives the mesh; the caller owns it and frees it with moe_mesh_destroy().
 * @return MOE_OK; MOE_ERR_INVALID_ARG for a size < 1, ep * etp not dividing dp * tp, an unknown
 *         backend, or dp * tp * pp differing from the communicator's world size (the message names
 *         the field); MOE_ERR_UNSUPPORTED for the MPI backend in a build without MPI;
 *         MOE_ERR_OUT_OF_MEMORY.
 */
MOE_API moe_status moe_mesh_create(moe_ctx *ctx, const moe_mesh_config *cfg, moe_mesh **out);

/**
 * @brief Free a mesh.
 * @param mesh The mesh; NULL is a no-op. Safe from any thread.
 */
MOE_API void moe_mesh_destroy(moe_mesh *mesh);

/**
 * @brief Size of the group of this rank along one axis.
 * @param mesh The mesh.
 * @param axis A ::moe_mesh_axis.
 * @param size Receives the group size.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for NULL arguments or an unknown axis.
 */
MOE_API moe_status moe_mesh_group_size(const moe_mesh *mesh, int32_t axis, int32_t *size);

/**
 * @brief This rank's index inside its group along one axis (its coordinate on that axis).
 * @param mesh The mesh.
 * @param axis A ::moe_mesh_axis; MOE_AXIS_WORLD gives the global rank.
 * @param rank Receives the index, in [0, group size).
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for NULL arguments or an unknown axis.
 */
MOE_API moe_status moe_mesh_group_rank(const moe_mesh *mesh, int32_t axis, int32_t *rank);

/**
 * @brief Whether the mesh shards norms and residuals over its tp group.
 * @param mesh The mesh.
 * @param enabled Receives 1 or 0.
 * @return MOE_OK, or MOE_ERR_INVALID_ARG for NULL arguments.
 */
MOE_API moe_status moe_mesh_sequence_parallel(const moe_mesh *mesh, uint32_t *enabled);

/** @} */

MOE_EXTERN_C_END

#endif /* MOE_MESH_H */
