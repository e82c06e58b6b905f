/* The MPI communicator, plus the backend-independent helpers every multi-rank run needs (launcher
 * detection, failure agreement, host-side control gathers). Invariants: every collective is entered
 * by every rank of the group, even a rank that already knows it will fail, so no rank is left
 * waiting; fp sums are reduced in rank order (bitwise independent of MPI's algorithm choice). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm/comm.h"
#include "core/ctx.h"
#include "core/error.h"
#include "moe/tensor.h"

#ifdef MOE_HAVE_MPI
#include <pthread.h>

#include <mpi.h>
#endif

/* ---- launcher detection (no MPI needed) ------------------------------------------------------- */

/* A positive decimal that fits int32, or -1. */
static int32_t env_positive(const char *name)
{
    const char *v = getenv(name);
    if (!v || *v < '0' || *v > '9') return -1; /* strtoll would also take blanks and signs */
    char *end = NULL;
    long long x = strtoll(v, &end, 10);
    if (*end != '\0' || x < 1 || x > INT32_MAX) return -1;
    return (int32_t)x;
}

int32_t moei_comm_world_size_hint(void)
{
    int32_t n = env_positive("OMPI_COMM_WORLD_SIZE"); /* Open MPI's mpirun */
    if (n > 0) return n;
    n = env_positive("PMI_SIZE"); /* MPICH/Hydra, Intel MPI, Slurm PMI-1/2 */
    if (n > 0) return n;
    int launched = getenv("PMIX_RANK") != NULL || getenv("PMI_RANK") != NULL;
    if (launched) {
        /* PMIx announces no size in the environment; under srun the step's task count does. */
        n = env_positive("SLURM_STEP_NUM_TASKS");
        return n > 0 ? n : 0;
    }
    return 1;
}

int32_t moei_comm_mpi_built(void)
{
#ifdef MOE_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

/* ---- the MPI backend -------------------------------------------------------------------------- */

#ifdef MOE_HAVE_MPI

/* Scratch for the rank-ordered reductions, allocated when a communicator is made (so no collective
 * can fail half-way on one rank for want of memory); large calls run in segments that fit it. */
#define MPI_SCRATCH_BYTES ((size_t)4 << 20)
/* Largest element count per MPI call (counts are int). */
#define MPI_MAX_PIECE ((int64_t)1 << 30)

typedef struct mpi_impl {
    MPI_Comm comm; /* send/recv and MPI's own collectives */
    MPI_Comm coll; /* the library's point-to-point collectives: never matches a caller's send/recv */
    void *scratch;
    size_t scratch_bytes;
    /* per-call arrays of `size` entries, made with the communicator so that no call allocates
     * between its first and last message (a failed allocation on one rank would strand the rest) */
    int64_t *len, *off; /* segment chunk lengths and offsets */
    int *icount, *idispl, *icount2, *idispl2; /* MPI's int counts and displacements */
    MPI_Request *reqs;  /* 2 * size */
    /* Destroy may run on any thread (finalizers), but below MPI_THREAD_MULTIPLE only the thread
     * that made the communicator may call MPI; elsewhere the MPI handles are left to MPI_Finalize. */
    pthread_t owner;
    int any_thread;
} mpi_impl;

static const moei_comm_ops mpi_ops;

static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;

static void mpi_finalize_at_exit(void)
{
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

static moe_status mpi_fail(moei_comm *c, moe_ctx *ctx, int rc, const char *what, const char *call)
{
    char text[MPI_MAX_ERROR_STRING + 1];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) len = snprintf(text, sizeof text, "error code %d", rc);
    text[len < 0 ? 0 : (len > MPI_MAX_ERROR_STRING ? MPI_MAX_ERROR_STRING : len)] = '\0';
    if (c) return moei_fail(ctx, MOE_ERR_COMM, "comm(mpi): %s: %s failed on rank %d of %d: %s", what, call,
                            (int)c->rank, (int)c->size, text);
    return moei_fail(ctx, MOE_ERR_COMM, "comm(mpi): %s: %s failed: %s", what, call, text);
}

#define MPI_TRY(c, what, call)                                                                        \
    do {                                                                                              \
        int rc_ = (call);                                                                             \
        if (rc_ != MPI_SUCCESS) return mpi_fail((c), (c)->ctx, rc_, (what), #call);                   \
    } while (0)

static mpi_impl *impl_of(moei_comm *c) { return (mpi_impl *)c->impl; }

/* Checks shared by the data-path calls: a known dtype, a non-negative count and host memory. */
static moe_status check_args(moei_comm *c, const char *what, int64_t count, int32_t dtype, size_t *esize,
                             MPI_Datatype *type)
{
    switch (dtype) {
    case MOE_DTYPE_F32: *type = MPI_FLOAT; break;
    case MOE_DTYPE_BF16:
    case MOE_DTYPE_F16: *type = MPI_UINT16_T; break; /* moved as bits, never reduced by MPI */
    case MOE_DTYPE_I32: *type = MPI_INT32_T; break;
    case MOE_DTYPE_I64: *type = MPI_INT64_T; break;
    case MOE_DTYPE_U8: *type = MPI_UINT8_T; break;
    default: return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: unknown dtype %d", what, (int)dtype);
    }
    moe_dtype_size(dtype, esize);
    if (count < 0)
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: negative count %lld", what, (long long)count);
    if (c->ctx->device_type != MOE_DEVICE_CPU)
        return moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(mpi): %s: device buffers need the NCCL backend", what);
    return MOE_OK;
}

static moe_status check_sum_dtype(moei_comm *c, const char *what, int32_t dtype)
{
    if (dtype == MOE_DTYPE_F32 || dtype == MOE_DTYPE_I32 || dtype == MOE_DTYPE_I64) return MOE_OK;
    return moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(mpi): %s: sums of dtype %d are not supported (f32, i32, i64)",
                     what, (int)dtype);
}

/* dst[i] = ((src_0[i] + src_1[i]) + src_2[i]) + ... in rank order, where src_j is slot j of the
 * scratch (stride `stride` elements) except src_self, which is this rank's own block. dst may be
 * src_self: each element is written only after all its terms are read (blocked through acc). */
#define SUM_BLOCK 256
#define DEFINE_RANK_ORDER_SUM(NAME, T)                                                                \
    static void NAME(T *dst, const T *slots, int64_t stride, const T *own, int32_t self, int32_t p, int64_t n) \
    {                                                                                                 \
        T acc[SUM_BLOCK];                                                                             \
        for (int64_t i0 = 0; i0 < n; i0 += SUM_BLOCK) {                                              \
            int64_t bn = n - i0 < SUM_BLOCK ? n - i0 : SUM_BLOCK;                                     \
            const T *s0 = self == 0 ? own + i0 : slots + i0;                                          \
            for (int64_t i = 0; i < bn; i++) acc[i] = s0[i];                                          \
            for (int32_t j = 1; j < p; j++) {                                                         \
                const T *sj = j == self ? own + i0 : slots + (int64_t)j * stride + i0;                \
                for (int64_t i = 0; i < bn; i++) acc[i] += sj[i];                                     \
            }                                                                                         \
            memcpy(dst + i0, acc, (size_t)bn * sizeof(T));                                            \
        }                                                                                             \
    }
DEFINE_RANK_ORDER_SUM(sum_f32, float)
DEFINE_RANK_ORDER_SUM(sum_i32, int32_t)
DEFINE_RANK_ORDER_SUM(sum_i64, int64_t)

static void rank_order_sum(int32_t dtype, void *dst, const void *slots, int64_t stride, const void *own,
                           int32_t self, int32_t p, int64_t n)
{
    if (dtype == MOE_DTYPE_F32) sum_f32(dst, slots, stride, own, self, p, n);
    else if (dtype == MOE_DTYPE_I32) sum_i32(dst, slots, stride, own, self, p, n);
    else sum_i64(dst, slots, stride, own, self, p, n);
}

/* The exchange step of a rank-ordered reduce-scatter: send block j (at send_base + offs[j]
 * elements, len[j] elements long) to rank j, and receive rank j's copy of our block (len[self]
 * elements) into scratch slot j. *sent receives the number of elements sent. */
static moe_status exchange_blocks(moei_comm *c, const char *what, const uint8_t *send_base, const int64_t *offs,
                                  const int64_t *len, size_t esize, MPI_Datatype type, int64_t *sent)
{
    mpi_impl *im = impl_of(c);
    int32_t p = c->size, self = c->rank;
    MPI_Request *reqs = im->reqs;
    int nreq = 0, rc = MPI_SUCCESS;
    *sent = 0;
    for (int32_t j = 0; j < p && rc == MPI_SUCCESS; j++) {
        if (j == self || len[self] == 0) continue;
        rc = MPI_Irecv((uint8_t *)im->scratch + (size_t)j * (size_t)len[self] * esize, (int)len[self], type, j, 0,
                       im->coll, &reqs[nreq]);
        if (rc == MPI_SUCCESS) nreq++;
    }
    for (int32_t j = 0; j < p && rc == MPI_SUCCESS; j++) {
        if (j == self || len[j] == 0) continue;
        rc = MPI_Isend(send_base + (size_t)offs[j] * esize, (int)len[j], type, j, 0, im->coll, &reqs[nreq]);
        if (rc == MPI_SUCCESS) nreq++;
        *sent += len[j];
    }
    int wrc = nreq ? MPI_Waitall(nreq, reqs, MPI_STATUSES_IGNORE) : MPI_SUCCESS;
    if (rc != MPI_SUCCESS) return mpi_fail(c, c->ctx, rc, what, "MPI_Isend/MPI_Irecv");
    if (wrc != MPI_SUCCESS) return mpi_fail(c, c->ctx, wrc, what, "MPI_Waitall");
    return MOE_OK;
}

/* Per-rank element counts and offsets of a segment of n elements split in p near-equal chunks
 * (the first n % p chunks one longer). */
static void split_chunks(int64_t n, int32_t p, int64_t *len, int64_t *off)
{
    int64_t base = n / p, rem = n % p, o = 0;
    for (int32_t j = 0; j < p; j++) {
        len[j] = base + (j < rem ? 1 : 0);
        off[j] = o;
        o += len[j];
    }
}

/* MIN-agreement of a status among the ranks of c (coll communicator), without touching messages. */
static moe_status agree_min(moei_comm *c, moe_status local, moe_status *global)
{
    int32_t l = local, g = 0;
    int rc = MPI_Allreduce(&l, &g, 1, MPI_INT32_T, MPI_MIN, impl_of(c)->coll);
    if (rc != MPI_SUCCESS) return mpi_fail(c, c->ctx, rc, "agreement", "MPI_Allreduce");
    *global = g;
    return MOE_OK;
}

static moe_status mpi_all_reduce(moei_comm *c, void *buf, int64_t count, int32_t dtype)
{
    static const char *what = "all_reduce_sum";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st == MOE_OK) st = check_sum_dtype(c, what, dtype);
    if (st != MOE_OK) return st;
    int32_t p = c->size;
    if (p == 1 || count == 0) return MOE_OK;
    mpi_impl *im = impl_of(c);
    int64_t *len = im->len, *off = im->off;
    int *icount = im->icount, *idispl = im->idispl;
    /* A segment's own chunk, received from every rank, must fit the scratch: p * ceil(S/p) <= cap. */
    int64_t cap_elems = (int64_t)(im->scratch_bytes / esize);
    int64_t seg_max = (cap_elems / p) * p;
    if (seg_max > MPI_MAX_PIECE) seg_max = MPI_MAX_PIECE;
    uint8_t *b = buf;
    for (int64_t o = 0; o < count && st == MOE_OK; o += seg_max) {
        int64_t seg = count - o < seg_max ? count - o : seg_max;
        split_chunks(seg, p, len, off);
        int64_t sent = 0;
        st = exchange_blocks(c, what, b + (size_t)o * esize, off, len, esize, type, &sent);
        if (st != MOE_OK) break;
        uint8_t *mine = b + (size_t)(o + off[c->rank]) * esize;
        rank_order_sum(dtype, mine, im->scratch, len[c->rank], mine, c->rank, p, len[c->rank]);
        for (int32_t j = 0; j < p; j++) {
            icount[j] = (int)len[j];
            idispl[j] = (int)off[j];
        }
        int rc = MPI_Allgatherv(MPI_IN_PLACE, 0, type, b + (size_t)o * esize, icount, idispl, type, im->coll);
        if (rc != MPI_SUCCESS) {
            st = mpi_fail(c, c->ctx, rc, what, "MPI_Allgatherv");
            break;
        }
        c->bytes_sent += (uint64_t)(sent + (int64_t)(p - 1) * len[c->rank]) * esize;
    }
    return st;
}

static moe_status mpi_reduce_scatter(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype)
{
    static const char *what = "reduce_scatter_sum";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st == MOE_OK) st = check_sum_dtype(c, what, dtype);
    if (st != MOE_OK) return st;
    int32_t p = c->size;
    if (count == 0) return MOE_OK;
    if (p == 1) {
        if (out != in) memmove(out, in, (size_t)count * esize);
        return MOE_OK;
    }
    mpi_impl *im = impl_of(c);
    int64_t *len = im->len, *off = im->off;
    int64_t seg_max = (int64_t)(im->scratch_bytes / esize) / p;
    if (seg_max > MPI_MAX_PIECE) seg_max = MPI_MAX_PIECE;
    const uint8_t *src = in;
    /* Segment [o, o+seg) of every block; writes to out touch only offsets already sent, so out may
     * be any block of in. */
    for (int64_t o = 0; o < count && st == MOE_OK; o += seg_max) {
        int64_t seg = count - o < seg_max ? count - o : seg_max;
        for (int32_t j = 0; j < p; j++) {
            len[j] = seg;
            off[j] = (int64_t)j * count + o;
        }
        int64_t sent = 0;
        st = exchange_blocks(c, what, src, off, len, esize, type, &sent);
        if (st != MOE_OK) break;
        rank_order_sum(dtype, (uint8_t *)out + (size_t)o * esize, im->scratch, seg,
                       src + (size_t)off[c->rank] * esize, c->rank, p, seg);
        c->bytes_sent += (uint64_t)sent * esize;
    }
    return st;
}

static moe_status mpi_all_gather(moei_comm *c, const void *in, void *out, int64_t count, int32_t dtype)
{
    static const char *what = "all_gather";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st != MOE_OK) return st;
    if (count > INT_MAX)
        return moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(mpi): %s: count %lld exceeds MPI's int count limit", what,
                         (long long)count);
    if (count == 0) return MOE_OK;
    const uint8_t *own_slot = (const uint8_t *)out + (size_t)c->rank * (size_t)count * esize;
    const void *sendbuf = (const void *)own_slot == in ? MPI_IN_PLACE : in;
    MPI_TRY(c, what, MPI_Allgather(sendbuf, (int)count, type, out, (int)count, type, impl_of(c)->comm));
    c->bytes_sent += (uint64_t)(c->size - 1) * (uint64_t)count * esize;
    return MOE_OK;
}

static moe_status mpi_all_to_all_v(moei_comm *c, const void *in, const int64_t *send_counts,
                                   const int64_t *send_offsets, void *out, const int64_t *recv_counts,
                                   const int64_t *recv_offsets, int32_t dtype)
{
    static const char *what = "all_to_all_v";
    int32_t p = c->size;
    size_t esize = 1;
    MPI_Datatype type = MPI_BYTE;
    moe_status local = check_args(c, what, 0, dtype, &esize, &type);
    if (local == MOE_OK && (!send_counts || !send_offsets || !recv_counts || !recv_offsets))
        local = moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: a count or offset array is NULL", what);
    mpi_impl *im = impl_of(c);
    int *sc = im->icount, *sd = im->idispl, *rcn = im->icount2, *rd = im->idispl2;
    int64_t sent = 0;
    /* 64-bit counts and offsets must fit MPI's int; each rank checks its own, then all agree, so a
     * bad count on one rank fails every rank instead of leaving the others in MPI_Alltoallv. */
    for (int32_t j = 0; j < p && local == MOE_OK; j++) {
        const struct {
            const char *name;
            int64_t v;
        } f[4] = {{"send_counts", send_counts[j]},
                  {"send_offsets", send_offsets[j]},
                  {"recv_counts", recv_counts[j]},
                  {"recv_offsets", recv_offsets[j]}};
        for (int k = 0; k < 4 && local == MOE_OK; k++) {
            if (f[k].v < 0)
                local = moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: %s[%d] = %lld is negative", what,
                                  f[k].name, (int)j, (long long)f[k].v);
            else if (f[k].v > INT_MAX)
                local = moei_fail(c->ctx, MOE_ERR_UNSUPPORTED,
                                  "comm(mpi): %s: %s[%d] = %lld exceeds MPI's int count limit", what, f[k].name,
                                  (int)j, (long long)f[k].v);
        }
        if (local != MOE_OK) break;
        sc[j] = (int)send_counts[j];
        sd[j] = (int)send_offsets[j];
        rcn[j] = (int)recv_counts[j];
        rd[j] = (int)recv_offsets[j];
        if (j != c->rank) sent += send_counts[j];
    }
    moe_status global = MOE_OK;
    moe_status st = agree_min(c, local, &global);
    if (st == MOE_OK && global != MOE_OK && local == MOE_OK)
        st = moei_fail(c->ctx, global, "comm(mpi): %s: another rank's arguments were rejected (%s)", what,
                       moe_status_string(global));
    if (st == MOE_OK) st = local;
    if (st == MOE_OK) {
        int rc = MPI_Alltoallv(in, sc, sd, type, out, rcn, rd, type, impl_of(c)->comm);
        if (rc != MPI_SUCCESS) st = mpi_fail(c, c->ctx, rc, what, "MPI_Alltoallv");
        else c->bytes_sent += (uint64_t)sent * esize;
    }
    return st;
}

static moe_status mpi_broadcast(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t root)
{
    static const char *what = "broadcast";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st != MOE_OK) return st;
    if (root < 0 || root >= c->size)
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: root %d is not a rank of a group of %d", what,
                         (int)root, (int)c->size);
    for (int64_t o = 0; o < count; o += MPI_MAX_PIECE) {
        int64_t n = count - o < MPI_MAX_PIECE ? count - o : MPI_MAX_PIECE;
        MPI_TRY(c, what, MPI_Bcast((uint8_t *)buf + (size_t)o * esize, (int)n, type, root, impl_of(c)->comm));
    }
    if (c->rank == root) c->bytes_sent += (uint64_t)(c->size - 1) * (uint64_t)count * esize;
    return MOE_OK;
}

static moe_status check_peer(moei_comm *c, const char *what, int32_t peer, int32_t tag)
{
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: peer %d is not another rank of a group of %d",
                         what, (int)peer, (int)c->size);
    if (tag < 0 || tag > 32767) /* MPI guarantees tags up to 32767 */
        return moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): %s: tag %d is outside 0..32767", what, (int)tag);
    return MOE_OK;
}

static moe_status mpi_send(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag)
{
    static const char *what = "send";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st == MOE_OK) st = check_peer(c, what, peer, tag);
    if (st != MOE_OK) return st;
    int64_t o = 0;
    do { /* a zero-count message is still sent: the receiver is waiting for it */
        int64_t n = count - o < MPI_MAX_PIECE ? count - o : MPI_MAX_PIECE;
        MPI_TRY(c, what, MPI_Send((const uint8_t *)buf + (size_t)o * esize, (int)n, type, peer, tag, impl_of(c)->comm));
        o += n;
    } while (o < count);
    c->bytes_sent += (uint64_t)count * esize;
    return MOE_OK;
}

static moe_status mpi_recv(moei_comm *c, void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag)
{
    static const char *what = "recv";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st == MOE_OK) st = check_peer(c, what, peer, tag);
    if (st != MOE_OK) return st;
    int64_t o = 0;
    do {
        int64_t n = count - o < MPI_MAX_PIECE ? count - o : MPI_MAX_PIECE;
        MPI_Status status;
        MPI_TRY(c, what,
                MPI_Recv((uint8_t *)buf + (size_t)o * esize, (int)n, type, peer, tag, impl_of(c)->comm, &status));
        int got = 0;
        MPI_Get_count(&status, type, &got);
        if (got != (int)n)
            return moei_fail(c->ctx, MOE_ERR_COMM, "comm(mpi): recv: expected %lld elements from rank %d, got %d",
                             (long long)n, (int)peer, got);
        o += n;
    } while (o < count);
    return MOE_OK;
}

_Static_assert(sizeof(MPI_Request) <= sizeof(((moei_comm_request *)0)->handle), "MPI_Request fits a moei_comm_request");

static moe_status mpi_isend(moei_comm *c, const void *buf, int64_t count, int32_t dtype, int32_t peer, int32_t tag,
                            moei_comm_request *req)
{
    static const char *what = "isend";
    size_t esize = 0;
    MPI_Datatype type = MPI_DATATYPE_NULL;
    moe_status st = check_args(c, what, count, dtype, &esize, &type);
    if (st == MOE_OK) st = check_peer(c, what, peer, tag);
    if (st != MOE_OK) return st;
    if (req->active) return moei_fail(c->ctx, MOE_ERR_STATE, "comm(mpi): isend: the request is still active");
    /* one MPI message, so it matches a recv of the same count (recv splits at the same size) */
    if (count > MPI_MAX_PIECE)
        return moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(mpi): isend of %lld elements (at most %lld)",
                         (long long)count, (long long)MPI_MAX_PIECE);
    MPI_Request r = MPI_REQUEST_NULL;
    MPI_TRY(c, what, MPI_Isend(buf, (int)count, type, peer, tag, impl_of(c)->comm, &r));
    memset(req->handle, 0, sizeof req->handle);
    memcpy(req->handle, &r, sizeof r);
    req->active = 1;
    c->bytes_sent += (uint64_t)count * esize;
    return MOE_OK;
}

static moe_status mpi_test(moei_comm *c, moei_comm_request *req, int32_t *done)
{
    *done = 1;
    if (!req->active) return MOE_OK;
    MPI_Request r;
    memcpy(&r, req->handle, sizeof r);
    int flag = 0;
    MPI_TRY(c, "test", MPI_Test(&r, &flag, MPI_STATUS_IGNORE));
    memcpy(req->handle, &r, sizeof r);
    if (flag) req->active = 0;
    *done = flag != 0;
    return MOE_OK;
}

static moe_status mpi_wait(moei_comm *c, moei_comm_request *req)
{
    if (!req->active) return MOE_OK;
    MPI_Request r;
    memcpy(&r, req->handle, sizeof r);
    MPI_TRY(c, "wait", MPI_Wait(&r, MPI_STATUS_IGNORE));
    req->active = 0;
    return MOE_OK;
}

static moe_status mpi_barrier(moei_comm *c)
{
    MPI_TRY(c, "barrier", MPI_Barrier(impl_of(c)->comm));
    return MOE_OK;
}

/* Wrap an MPI communicator (ownership passes in) together with a duplicate for library-internal
 * traffic. Collective over `comm`: the duplicate is made even when allocation already failed, so
 * the other ranks are not left inside MPI_Comm_dup. */
static moe_status wrap_comm(moe_ctx *ctx, MPI_Comm comm, moe_status pending, moei_comm **out)
{
    int size = 1, rank = 0;
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    MPI_Comm coll = MPI_COMM_NULL;
    int rc = MPI_Comm_dup(comm, &coll);
    if (rc == MPI_SUCCESS) MPI_Comm_set_errhandler(coll, MPI_ERRORS_RETURN);
    moei_comm *c = NULL;
    mpi_impl *im = NULL;
    void *scratch = NULL;
    size_t scratch_bytes = 0;
    if (pending == MOE_OK && rc != MPI_SUCCESS) pending = mpi_fail(NULL, ctx, rc, "create", "MPI_Comm_dup");
    void *arrays = NULL;
    const size_t n = (size_t)size;
    const size_t arrays_bytes = 2 * n * sizeof(int64_t) + 4 * n * sizeof(int) + 2 * n * sizeof(MPI_Request);
    if (pending == MOE_OK) {
        c = calloc(1, sizeof *c);
        im = calloc(1, sizeof *im);
        /* a rank-ordered sum needs at least one element per rank in scratch */
        scratch_bytes = size > 1 ? MPI_SCRATCH_BYTES : 0;
        if (scratch_bytes && scratch_bytes < n * 8) scratch_bytes = n * 8;
        scratch = scratch_bytes ? malloc(scratch_bytes) : NULL;
        arrays = malloc(arrays_bytes);
        if (!c || !im || (scratch_bytes && !scratch) || !arrays)
            pending = moei_fail(ctx, MOE_ERR_OUT_OF_MEMORY, "comm(mpi): out of host memory for a communicator");
    }
    if (pending != MOE_OK) {
        free(c);
        free(im);
        free(scratch);
        free(arrays);
        if (coll != MPI_COMM_NULL) MPI_Comm_free(&coll);
        if (comm != MPI_COMM_NULL) MPI_Comm_free(&comm);
        return pending;
    }
    im->comm = comm;
    im->coll = coll;
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    im->any_thread = level == MPI_THREAD_MULTIPLE;
    im->owner = pthread_self();
    im->scratch = scratch;
    im->scratch_bytes = scratch_bytes;
    /* one block, largest alignment first */
    im->reqs = arrays;
    im->len = (int64_t *)(im->reqs + 2 * n);
    im->off = im->len + n;
    im->icount = (int *)(im->off + n);
    im->idispl = im->icount + n;
    im->icount2 = im->idispl + n;
    im->idispl2 = im->icount2 + n;
    c->ops = &mpi_ops;
    c->ctx = ctx;
    c->rank = rank;
    c->size = size;
    c->impl = im;
    *out = c;
    return MOE_OK;
}

static moe_status mpi_split(moei_comm *c, int32_t color, int32_t key, moei_comm **out)
{
    /* A negative color is reported, but this rank still joins the split (as MPI_UNDEFINED) so the
     * others are not left waiting. */
    moe_status pending = MOE_OK;
    if (color < 0)
        pending = moei_fail(c->ctx, MOE_ERR_INVALID_ARG, "comm(mpi): split: color %d is negative", (int)color);
    MPI_Comm nc = MPI_COMM_NULL;
    int rc = MPI_Comm_split(impl_of(c)->comm, color < 0 ? MPI_UNDEFINED : color, key, &nc);
    if (rc != MPI_SUCCESS) return mpi_fail(c, c->ctx, rc, "split", "MPI_Comm_split");
    if (nc == MPI_COMM_NULL) return pending;
    return wrap_comm(c->ctx, nc, pending, out);
}

static void mpi_destroy(moei_comm *c)
{
    mpi_impl *im = impl_of(c);
    if (im->any_thread || pthread_equal(im->owner, pthread_self())) {
        int fin = 0;
        MPI_Finalized(&fin); /* callable from any thread, before and after MPI_Finalize */
        if (!fin) { /* after MPI_Finalize the handles are gone already; freeing them would be an error */
            MPI_Comm_free(&im->coll);
            MPI_Comm_free(&im->comm);
        }
    }
    free(im->scratch);
    free(im->reqs);
    free(im);
    free(c);
}

static const moei_comm_ops mpi_ops = {
    "mpi", mpi_all_reduce, mpi_reduce_scatter, mpi_all_gather, mpi_all_to_all_v, mpi_broadcast,
    mpi_send, mpi_recv, mpi_barrier, mpi_split, mpi_destroy, mpi_isend, mpi_test, mpi_wait,
};

static moe_status mpi_ensure_init(moe_ctx *ctx)
{
    moe_status st = MOE_OK;
    pthread_mutex_lock(&g_init_lock);
    int inited = 0, fin = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&fin);
    if (fin) {
        st = moei_fail(ctx, MOE_ERR_STATE, "comm(mpi): MPI was already finalized; a communicator needs it running");
    } else if (!inited) {
        int provided = 0;
        int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) {
            st = mpi_fail(NULL, ctx, rc, "create", "MPI_Init_thread");
        } else {
            /* the library started MPI, so it owns MPI_COMM_WORLD's error handling and its end */
            MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
            atexit(mpi_finalize_at_exit);
        }
    }
    pthread_mutex_unlock(&g_init_lock);
    return st;
}

moe_status moei_comm_mpi_create(moe_ctx *ctx, moei_comm **out)
{
    moe_status st = mpi_ensure_init(ctx);
    if (st != MOE_OK) return st;
    MPI_Comm world = MPI_COMM_NULL;
    int rc = MPI_Comm_dup(MPI_COMM_WORLD, &world);
    if (rc != MPI_SUCCESS) return mpi_fail(NULL, ctx, rc, "create", "MPI_Comm_dup(MPI_COMM_WORLD)");
    return wrap_comm(ctx, world, MOE_OK, out);
}

#else /* !MOE_HAVE_MPI */

moe_status moei_comm_mpi_create(moe_ctx *ctx, moei_comm **out)
{
    (void)out;
    return moei_fail(ctx, MOE_ERR_UNSUPPORTED,
                     "comm(mpi): built without MPI (configure with -DMOE_MPI=ON and an MPI installation)");
}

#endif /* MOE_HAVE_MPI */

/* ---- helpers over any backend ----------------------------------------------------------------- */

moe_status moei_comm_host_all_gather(moei_comm *c, const void *in, void *out, size_t bytes)
{
    if (c->size == 1) {
        if (bytes) memmove(out, in, bytes);
        return MOE_OK;
    }
#ifdef MOE_HAVE_MPI
    if (c->ops == &mpi_ops) {
        if (bytes > INT_MAX)
            return moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(mpi): host all_gather of %zu bytes is too large",
                             bytes);
        MPI_TRY(c, "host all_gather",
                MPI_Allgather(in, (int)bytes, MPI_BYTE, out, (int)bytes, MPI_BYTE, impl_of(c)->coll));
        return MOE_OK;
    }
#endif
    /* another backend: its byte-typed all_gather on host memory, left out of the volume count */
    uint64_t before = c->bytes_sent;
    moe_status st = c->ops->all_gather(c, in, out, (int64_t)bytes, MOE_DTYPE_U8);
    c->bytes_sent = before;
    return st;
}

/* What the lowest failing rank tells the others. */
typedef struct agree_packet {
    int32_t status;
    char message[508];
} agree_packet;

moe_status moei_comm_agree(moei_comm *c, moe_status local, moe_status *global)
{
    moe_status g = local;
    if (c->size > 1) {
#ifdef MOE_HAVE_MPI
        if (c->ops == &mpi_ops) {
            /* The lowest failing rank (MIN over the candidates), then its status and message from
             * it: two small collectives, no per-rank arrays, so agreement itself cannot run out of
             * memory on one rank. */
            MPI_Comm coll = impl_of(c)->coll;
            int32_t cand = local != MOE_OK ? c->rank : INT32_MAX, first = INT32_MAX;
            int rc = MPI_Allreduce(&cand, &first, 1, MPI_INT32_T, MPI_MIN, coll);
            agree_packet pkt;
            memset(&pkt, 0, sizeof pkt);
            if (rc == MPI_SUCCESS && first != INT32_MAX) {
                if (first == c->rank) {
                    pkt.status = local;
                    snprintf(pkt.message, sizeof pkt.message, "%s", moe_last_error());
                }
                rc = MPI_Bcast(&pkt, (int)sizeof pkt, MPI_BYTE, first, coll);
            }
            if (rc != MPI_SUCCESS) {
                g = mpi_fail(c, c->ctx, rc, "agreement", "MPI_Allreduce/MPI_Bcast");
            } else if (first == INT32_MAX) {
                g = MOE_OK;
            } else {
                g = pkt.status;
                pkt.message[sizeof pkt.message - 1] = '\0';
                if (local == MOE_OK) {
                    moei_fail(c->ctx, g, "rank %d failed: %s", (int)first, pkt.message);
                } else if (first != c->rank && strcmp(pkt.message, moe_last_error()) != 0) {
                    /* this rank failed too, differently: report the first failure like everyone
                     * else, and keep this rank's own reason beside it */
                    char own[256];
                    snprintf(own, sizeof own, "%s", moe_last_error());
                    moei_fail(c->ctx, g, "rank %d failed: %s (this rank failed too: %s)", (int)first, pkt.message,
                              own);
                } else if (g != local) {
                    moei_fail_msg(c->ctx, g, moe_last_error()); /* same reason; the status is the first's */
                }
            }
        } else
#endif
        {
            g = moei_fail(c->ctx, MOE_ERR_UNSUPPORTED, "comm(%s): failure agreement needs the MPI backend",
                          c->ops->name);
        }
    }
    if (global) *global = g;
    return g;
}
