/* The communicator interface every parallel mode is written against. A communicator is a group
 * of ranks; backends (self: a world of one; MPI, NCCL later) fill the vtable. All buffers are in
 * the ctx's memory space; counts are elements of `dtype` (a moe_dtype). Reductions are sums.
 * Every call returns a status and records a message on the ctx. */
#ifndef MOEI_COMM_COMM_H
#define MOEI_COMM_COMM_H

#include <stdint.h>

#include "moe/ctx.h"

typedef struct moei_comm moei_comm;

/* A posted non-blocking send (isend), completed by test or wait. Zero-initialise; `active` is 1
 * while the send may still read its buffer. The handle is the backend's (an MPI_Request). */
typedef struct moei_comm_request {
    uint64_t handle[2];
    int32_t active;
} moei_comm_request;

typedef struct moei_comm_ops {
    const char *name;
    moe_status (*all_reduce_sum)(moei_comm *c, void *buf, int64_t count, int32_t dtype);
    /* in: size*count elements; out: count elements (this rank's block) */
    moe_status (*reduce_scatter_sum)(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype);
    /* in: count elements; out: size*count elements, rank-major */
    moe_status (*all_gather)(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype);
    moe_status (*all_to_all_v)(moei_comm *c, const void *in, const int64_t *send_counts, const int64_t *send_offsets,
                               void *out, const int64_t *recv_counts, const int64_t *recv_offsets, int32_t dtype);
    moe_status (*broadcast)(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t root);
    moe_status (*send)(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag);
    moe_status (*recv)(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag);
    moe_status (*barrier)(moei_comm *c);
    /* Ranks with the same color form a new communicator, ordered by key then old rank. */
    moe_status (*split)(moei_comm *c, int32_t color, int32_t key, moei_comm **out);
    void (*destroy)(moei_comm *c);
    /* Non-blocking send: posts the message and returns; the buffer must stay unchanged until test
     * reports it done or wait returns. Matches a blocking recv; counted in bytes_sent like send.
     * Counts above 2^30 elements are refused (MOE_ERR_UNSUPPORTED). */
    moe_status (*isend)(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag,
                        moei_comm_request *req);
    /* *done = 1 once the send has completed (the request is then inactive); never blocks. An
     * inactive request is done. */
    moe_status (*test)(moei_comm *c, moei_comm_request *req, int32_t *done);
    /* Block until the send has completed; an inactive request returns at once. */
    moe_status (*wait)(moei_comm *c, moei_comm_request *req);
} moei_comm_ops;

struct moei_comm {
    const moei_comm_ops *ops;
    moe_ctx *ctx;
    int32_t rank;
    int32_t size;
    uint64_t bytes_sent; /* counted by every backend, so tests can check communication volume */
    void *impl;
};

/* A world of one rank. */
moe_status moei_comm_self_create(moe_ctx *ctx, moei_comm **out);

/* ---- MPI backend (src/comm/comm_mpi.c) ---------------------------------------------------------
 * Collective: every rank of MPI_COMM_WORLD calls it. Initialises MPI on first use when the caller
 * has not (MPI_THREAD_FUNNELED; finalised at exit only if the library initialised it). Returns
 * MOE_ERR_UNSUPPORTED "built without MPI" in a build without MOE_MPI. Host buffers only. */
moe_status moei_comm_mpi_create(moe_ctx *ctx, moei_comm **out);

/* 1 when the library was built with the MPI backend, else 0. */
int32_t moei_comm_mpi_built(void);

/* The world size a launcher (mpirun, mpiexec, srun) announced in this process's environment,
 * read without initialising MPI: OMPI_COMM_WORLD_SIZE, PMI_SIZE, then (under PMIx or Slurm)
 * SLURM_STEP_NUM_TASKS. 1 when no launcher is detected; 0 when a launcher is detected (PMIX_RANK,
 * PMI_RANK) but announced no size. Malformed values are ignored. */
int32_t moei_comm_world_size_hint(void);

/* Failure agreement. Collective over `c`: every rank passes its local status, and every rank
 * receives in *global (and as the return value) MOE_OK only if every rank passed MOE_OK; otherwise
 * the status of the lowest failing rank. Other ranks get that rank's message on their ctx
 * ("rank R failed: ...", with their own reason appended if they failed for another one); a rank
 * whose own message is the same keeps it. If the agreement itself cannot
 * communicate, the result is MOE_ERR_COMM. Control traffic: not counted in bytes_sent.
 * Layers call it after any step that can fail on some ranks only (a file, an allocation, a
 * rank-local argument) and before the next collective, so no rank is left waiting in a collective
 * that a failed rank never enters. `global` may be NULL. */
moe_status moei_comm_agree(moei_comm *c, moe_status local, moe_status *global);

/* Gather `bytes` of host memory from every rank into `out` (rank-major, size*bytes), whatever the
 * ctx's device: for control data (statuses, configs, counts) outside the data path. Not counted in
 * bytes_sent. `in` may not overlap `out`. */
moe_status moei_comm_host_all_gather(moei_comm *c, const void *in, void *out, size_t bytes);

static inline void moei_comm_destroy(moei_comm *c)
{
    if (c) c->ops->destroy(c);
}

#endif
