/* The MPI communicator against sequential references, under mpirun (2 and 4 ranks): every
 * collective with odd, zero and multi-segment sizes; fp32 sums bitwise equal to the rank-order sum
 * (so repeated runs and every rank agree); all-to-all-v with uneven and zero counts and gaps;
 * send/recv; split groups; the byte counters against the documented formulas; arguments rejected
 * on one rank fail every rank; failure agreement. This program initialises and finalises MPI
 * itself (the caller-owns-MPI case); test_mpi_mesh covers the library initialising it. */
#define _POSIX_C_SOURCE 200809L /* setenv, clock_gettime */

#include <limits.h>
#include <math.h>
#include <stdlib.h>

#include "comm/comm.h"
#include "core/error.h"
#include "mpi_harness.h"

static moe_ctx *g_ctx;
static moei_comm *g_world;
static int32_t P, R;

/* The documented segment length of the rank-ordered all-reduce: 4 MiB of scratch per call,
 * floor(4 MiB / esize / p) * p elements. */
static int64_t allreduce_segment(size_t esize) { return (int64_t)(((size_t)4 << 20) / esize / (size_t)P) * P; }

/* bytes_sent formula of all_reduce_sum: per segment of s elements split as c_j = s/p (+1 for
 * j < s%p): this rank sends s - c_r (reduce-scatter) and (p-1)*c_r (all-gather). */
static uint64_t allreduce_bytes(int64_t n, size_t esize)
{
    int64_t S = allreduce_segment(esize), total = 0;
    for (int64_t o = 0; o < n; o += S) {
        int64_t s = n - o < S ? n - o : S;
        int64_t c = s / P + (R < s % P ? 1 : 0);
        total += s - c + (int64_t)(P - 1) * c;
    }
    return (uint64_t)total * esize;
}

static void test_create(void)
{
    int wr = -1, ws = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &wr);
    MPI_Comm_size(MPI_COMM_WORLD, &ws);
    CHECK(g_world->rank == wr && g_world->size == ws, "comm rank %d/%d, MPI %d/%d", g_world->rank, g_world->size,
          wr, ws);
    CHECK(strcmp(g_world->ops->name, "mpi") == 0, "backend %s", g_world->ops->name);
    CHECK(g_world->bytes_sent == 0, "fresh counter %llu", (unsigned long long)g_world->bytes_sent);
    CHECK(moei_comm_mpi_built() == 1, "built");
}

static void test_all_reduce_f32(void)
{
    const int64_t sizes[] = {0, 1, 2, 3, P - 1, P, P + 1, 17, 1000, 65537, 1572864 /* 1.5 segments */};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        float *buf = malloc((size_t)(n + 1) * sizeof *buf);
        float *first = malloc((size_t)(n + 1) * sizeof *first);
        for (int rep = 0; rep < 2; rep++) {
            for (int64_t i = 0; i < n; i++) buf[i] = h_value(11 + k, R, i);
            uint64_t before = g_world->bytes_sent;
            CHECK_OK(g_world->ops->all_reduce_sum(g_world, buf, n, MOE_DTYPE_F32));
            uint64_t want_bytes = allreduce_bytes(n, 4);
            CHECK(g_world->bytes_sent - before == want_bytes, "n %lld: counted %llu bytes, formula %llu",
                  (long long)n, (unsigned long long)(g_world->bytes_sent - before), (unsigned long long)want_bytes);
            int64_t bad = 0;
            double worst = 0;
            for (int64_t i = 0; i < n; i++) {
                float s = h_value(11 + k, 0, i); /* the rank-order sum, in fp32 */
                double d = s, mag = fabs((double)s);
                for (int32_t q = 1; q < P; q++) {
                    float x = h_value(11 + k, q, i);
                    s += x;
                    d += x;
                    mag += fabs((double)x);
                }
                if (memcmp(&s, &buf[i], sizeof s) != 0) bad++;
                double e = fabs((double)buf[i] - d) / (mag + 1e-30);
                if (e > worst) worst = e;
            }
            CHECK(bad == 0, "n %lld: %lld elements differ from the rank-order sum", (long long)n, (long long)bad);
            CHECK(worst <= 4 * P * 6e-8, "n %lld: relative error %g against fp64", (long long)n, worst);
            if (rep == 0) memcpy(first, buf, (size_t)n * sizeof *buf);
            else CHECK(n == 0 || memcmp(first, buf, (size_t)n * sizeof *buf) == 0, "n %lld: repeat differs", (long long)n);
        }
        free(buf);
        free(first);
    }
}

static void test_all_reduce_int(void)
{
    const int64_t n = 1001;
    int32_t *a = malloc((size_t)n * sizeof *a);
    int64_t *b = malloc((size_t)n * sizeof *b);
    for (int64_t i = 0; i < n; i++) {
        a[i] = (int32_t)((R + 1) * (i - 500));
        b[i] = ((int64_t)(R + 1) << 40) + i * (R - 1);
    }
    uint64_t before = g_world->bytes_sent;
    CHECK_OK(g_world->ops->all_reduce_sum(g_world, a, n, MOE_DTYPE_I32));
    CHECK(g_world->bytes_sent - before == allreduce_bytes(n, 4), "i32 bytes");
    before = g_world->bytes_sent;
    CHECK_OK(g_world->ops->all_reduce_sum(g_world, b, n, MOE_DTYPE_I64));
    CHECK(g_world->bytes_sent - before == allreduce_bytes(n, 8), "i64 bytes");
    int64_t tri = (int64_t)P * (P + 1) / 2, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t wa = tri * (i - 500), wb = (tri << 40);
        for (int32_t q = 0; q < P; q++) wb += i * (q - 1);
        if (a[i] != wa || b[i] != wb) bad++;
    }
    CHECK(bad == 0, "%lld integer sums wrong", (long long)bad);
    free(a);
    free(b);
}

static void test_bad_arguments(void)
{
    float x[4] = {0};
    uint16_t h[4] = {0};
    CHECK_FAILS(g_world->ops->all_reduce_sum(g_world, h, 4, MOE_DTYPE_BF16), MOE_ERR_UNSUPPORTED, "not supported");
    CHECK_FAILS(g_world->ops->all_reduce_sum(g_world, x, 4, 99), MOE_ERR_INVALID_ARG, "dtype 99");
    CHECK_FAILS(g_world->ops->all_reduce_sum(g_world, x, -1, MOE_DTYPE_F32), MOE_ERR_INVALID_ARG, "negative count");
    CHECK_FAILS(g_world->ops->reduce_scatter_sum(g_world, x, x, 1, MOE_DTYPE_U8), MOE_ERR_UNSUPPORTED, "not supported");
    CHECK_FAILS(g_world->ops->all_gather(g_world, x, x, (int64_t)INT_MAX + 1, MOE_DTYPE_F32), MOE_ERR_UNSUPPORTED,
                "int count limit");
    CHECK_FAILS(g_world->ops->broadcast(g_world, x, 4, MOE_DTYPE_F32, P), MOE_ERR_INVALID_ARG, "root");
    CHECK_FAILS(g_world->ops->broadcast(g_world, x, 4, MOE_DTYPE_F32, -1), MOE_ERR_INVALID_ARG, "root -1");
    CHECK_FAILS(g_world->ops->send(g_world, x, 4, MOE_DTYPE_F32, R, 0), MOE_ERR_INVALID_ARG, "peer");
    CHECK_FAILS(g_world->ops->recv(g_world, x, 4, MOE_DTYPE_F32, P, 0), MOE_ERR_INVALID_ARG, "peer");
    CHECK_FAILS(g_world->ops->send(g_world, x, 4, MOE_DTYPE_F32, (R + 1) % P, -3), MOE_ERR_INVALID_ARG, "tag -3");
    CHECK_FAILS(g_world->ops->recv(g_world, x, 4, MOE_DTYPE_F32, (R + 1) % P, 40000), MOE_ERR_INVALID_ARG, "tag");
    CHECK_OK(g_world->ops->barrier(g_world)); /* nothing was left in flight */
}

static void test_reduce_scatter(void)
{
    const int64_t sizes[] = {0, 1, 5, 1000, 300001 /* more than one segment on 4 ranks */};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        float *in = malloc((size_t)(n * P + 1) * sizeof *in);
        float *out = malloc((size_t)(n + 1) * sizeof *out);
        for (int in_place = 0; in_place < 2; in_place++) {
            for (int64_t i = 0; i < n * P; i++) in[i] = h_value(30 + k, R, i);
            float *dst = in_place ? in + (size_t)R * (size_t)n : out;
            uint64_t before = g_world->bytes_sent;
            CHECK_OK(g_world->ops->reduce_scatter_sum(g_world, in, dst, n, MOE_DTYPE_F32));
            CHECK(g_world->bytes_sent - before == (uint64_t)(P - 1) * (uint64_t)n * 4, "n %lld bytes", (long long)n);
            int64_t bad = 0;
            for (int64_t i = 0; i < n; i++) {
                float s = h_value(30 + k, 0, (int64_t)R * n + i);
                for (int32_t q = 1; q < P; q++) s += h_value(30 + k, q, (int64_t)R * n + i);
                if (memcmp(&s, &dst[i], sizeof s) != 0) bad++;
            }
            CHECK(bad == 0, "n %lld in_place %d: %lld elements differ from the rank-order sum", (long long)n, in_place,
                  (long long)bad);
        }
        free(in);
        free(out);
    }
    /* i64 */
    int64_t in[64], out[8];
    for (int i = 0; i < 8 * P; i++) in[i] = (int64_t)(R + 1) * 1000 + i;
    CHECK_OK(g_world->ops->reduce_scatter_sum(g_world, in, out, 8, MOE_DTYPE_I64));
    for (int i = 0; i < 8; i++)
        CHECK(out[i] == (int64_t)P * (P + 1) / 2 * 1000 + (int64_t)P * (R * 8 + i), "i64 element %d = %lld", i,
              (long long)out[i]);
}

static void test_all_gather(void)
{
    const int64_t sizes[] = {0, 1, 7, 1000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        float *in = malloc((size_t)(n + 1) * sizeof *in);
        float *out = malloc((size_t)(n * P + 1) * sizeof *out);
        for (int in_place = 0; in_place < 2; in_place++) {
            for (int64_t i = 0; i < n * P; i++) out[i] = -99.0f;
            float *src = in_place ? out + (size_t)R * (size_t)n : in;
            for (int64_t i = 0; i < n; i++) src[i] = h_value(50 + k, R, i);
            uint64_t before = g_world->bytes_sent;
            CHECK_OK(g_world->ops->all_gather(g_world, src, out, n, MOE_DTYPE_F32));
            CHECK(g_world->bytes_sent - before == (uint64_t)(P - 1) * (uint64_t)n * 4, "bytes");
            int64_t bad = 0;
            for (int32_t q = 0; q < P; q++)
                for (int64_t i = 0; i < n; i++) {
                    float w = h_value(50 + k, q, i);
                    if (memcmp(&w, &out[(size_t)q * (size_t)n + (size_t)i], sizeof w) != 0) bad++;
                }
            CHECK(bad == 0, "n %lld in_place %d: %lld wrong", (long long)n, in_place, (long long)bad);
        }
        free(in);
        free(out);
    }
    uint16_t b16[2] = {(uint16_t)(R * 3), (uint16_t)(R * 3 + 1)}, all16[8];
    CHECK_OK(g_world->ops->all_gather(g_world, b16, all16, 2, MOE_DTYPE_BF16));
    for (int32_t q = 0; q < P; q++) CHECK(all16[2 * q] == q * 3 && all16[2 * q + 1] == q * 3 + 1, "bf16 bits");
}

/* Elements rank r sends to rank j: uneven, with zeros (rank 1 sends nothing at all). */
static int64_t a2a_count(int32_t r, int32_t j) { return r == 1 ? 0 : (int64_t)((r * 7 + j * 3) % 5) * 3; }
static int64_t a2a_value(int32_t src, int32_t dst, int64_t i) { return (int64_t)src * 1000000 + dst * 1000 + i; }

static void test_all_to_all_v(void)
{
    int64_t sc[4], so[4], rc[4], ro[4], stot = 0, rtot = 0;
    /* send blocks packed in reverse rank order with gaps of 2, receive blocks in order with gaps of 1 */
    for (int32_t j = P - 1; j >= 0; j--) {
        sc[j] = a2a_count(R, j);
        so[j] = stot;
        stot += sc[j] + 2;
    }
    for (int32_t j = 0; j < P; j++) {
        rc[j] = a2a_count(j, R);
        ro[j] = rtot;
        rtot += rc[j] + 1;
    }
    int64_t *in = malloc((size_t)(stot + 1) * sizeof *in), *out = malloc((size_t)(rtot + 1) * sizeof *out);
    for (int64_t i = 0; i < stot; i++) in[i] = -5;
    for (int32_t j = 0; j < P; j++)
        for (int64_t i = 0; i < sc[j]; i++) in[so[j] + i] = a2a_value(R, j, i);
    for (int rep = 0; rep < 2; rep++) {
        for (int64_t i = 0; i < rtot; i++) out[i] = -7;
        uint64_t before = g_world->bytes_sent, want = 0;
        for (int32_t j = 0; j < P; j++)
            if (j != R) want += (uint64_t)sc[j] * 8;
        CHECK_OK(g_world->ops->all_to_all_v(g_world, in, sc, so, out, rc, ro, MOE_DTYPE_I64));
        CHECK(g_world->bytes_sent - before == want, "counted %llu, formula %llu",
              (unsigned long long)(g_world->bytes_sent - before), (unsigned long long)want);
        int64_t bad = 0, pos = 0;
        for (int32_t j = 0; j < P; j++) {
            for (int64_t i = 0; i < rc[j]; i++)
                if (out[ro[j] + i] != a2a_value(j, R, i)) bad++;
            pos = ro[j] + rc[j];
            if (out[pos] != -7) bad++; /* the gap is untouched */
        }
        CHECK(bad == 0, "%lld elements wrong", (long long)bad);
    }
    /* f32, everything to everyone, equal counts */
    float fin[8], fout[8];
    int64_t ec[4], eo[4];
    for (int32_t j = 0; j < P; j++) {
        ec[j] = 2;
        eo[j] = 2 * j;
        fin[2 * j] = (float)(R * 10 + j);
        fin[2 * j + 1] = 0.5f + (float)R;
    }
    CHECK_OK(g_world->ops->all_to_all_v(g_world, fin, ec, eo, fout, ec, eo, MOE_DTYPE_F32));
    for (int32_t j = 0; j < P; j++)
        CHECK(fout[2 * j] == (float)(j * 10 + R) && fout[2 * j + 1] == 0.5f + (float)j, "f32 from %d", j);
    /* all zero */
    CHECK_OK(g_world->ops->all_to_all_v(g_world, NULL, (int64_t[4]){0, 0, 0, 0}, (int64_t[4]){0, 0, 0, 0}, NULL,
                                        (int64_t[4]){0, 0, 0, 0}, (int64_t[4]){0, 0, 0, 0}, MOE_DTYPE_F32));
    free(in);
    free(out);
}

/* A count that only one rank gets wrong fails every rank, quickly, and leaves the communicator
 * usable. */
static void test_all_to_all_v_one_bad_rank(void)
{
    float fin[8] = {0}, fout[8] = {0};
    int64_t c[4], o[4];
    for (int32_t j = 0; j < P; j++) {
        c[j] = 1;
        o[j] = j;
    }
    double t0 = h_now();
    int64_t saved = c[0];
    if (R == P - 1) c[0] = -1;
    moe_status st = g_world->ops->all_to_all_v(g_world, fin, c, o, fout, c, o, MOE_DTYPE_F32);
    CHECK(st == MOE_ERR_INVALID_ARG, "status %s", moe_status_string(st));
    CHECK(strstr(moe_last_error(), R == P - 1 ? "send_counts[0] = -1" : "another rank") != NULL, "message '%s'",
          moe_last_error());
    c[0] = saved;
    int64_t big[4];
    memcpy(big, c, sizeof big);
    if (R == 0) big[1] = (int64_t)INT_MAX + 1;
    st = g_world->ops->all_to_all_v(g_world, fin, c, o, fout, big, o, MOE_DTYPE_F32);
    CHECK(st == MOE_ERR_UNSUPPORTED, "status %s", moe_status_string(st));
    CHECK(strstr(moe_last_error(), R == 0 ? "recv_counts[1] = 2147483648 exceeds" : "another rank") != NULL,
          "message '%s'", moe_last_error());
    CHECK(h_now() - t0 < 10.0, "took %.1f s", h_now() - t0);
    for (int32_t j = 0; j < P; j++) fin[j] = (float)(R * P + j);
    CHECK_OK(g_world->ops->all_to_all_v(g_world, fin, c, o, fout, c, o, MOE_DTYPE_F32));
    for (int32_t j = 0; j < P; j++) CHECK(fout[j] == (float)(j * P + R), "after the failures: from %d", j);
}

static void test_broadcast(void)
{
    const int64_t sizes[] = {0, 1, 1000};
    for (int32_t root = 0; root < P; root++)
        for (size_t k = 0; k < 3; k++) {
            int64_t n = sizes[k];
            float *buf = malloc((size_t)(n + 1) * sizeof *buf);
            for (int64_t i = 0; i < n; i++) buf[i] = R == root ? h_value(70 + k, root, i) : 1e30f;
            uint64_t before = g_world->bytes_sent;
            CHECK_OK(g_world->ops->broadcast(g_world, buf, n, MOE_DTYPE_F32, root));
            uint64_t want = R == root ? (uint64_t)(P - 1) * (uint64_t)n * 4 : 0;
            CHECK(g_world->bytes_sent - before == want, "root %d n %lld bytes", root, (long long)n);
            int64_t bad = 0;
            for (int64_t i = 0; i < n; i++) {
                float w = h_value(70 + k, root, i);
                if (memcmp(&w, &buf[i], sizeof w) != 0) bad++;
            }
            CHECK(bad == 0, "root %d n %lld: %lld wrong", root, (long long)n, (long long)bad);
            free(buf);
        }
}

static void test_send_recv(void)
{
    /* pairs (0,1), (2,3): the even rank sends first, the odd one receives first */
    int32_t peer = R ^ 1;
    if (peer >= P) return;
    const int64_t sizes[] = {0, 1, 100000};
    for (size_t k = 0; k < 3; k++) {
        int64_t n = sizes[k];
        float *out = malloc((size_t)(n + 1) * sizeof *out), *in = malloc((size_t)(n + 1) * sizeof *in);
        for (int64_t i = 0; i < n; i++) out[i] = h_value(90 + k, R, i);
        uint64_t before = g_world->bytes_sent;
        if (R % 2 == 0) {
            CHECK_OK(g_world->ops->send(g_world, out, n, MOE_DTYPE_F32, peer, 5));
            CHECK(g_world->bytes_sent - before == (uint64_t)n * 4, "send bytes");
            CHECK_OK(g_world->ops->recv(g_world, in, n, MOE_DTYPE_F32, peer, 6));
            CHECK(g_world->bytes_sent - before == (uint64_t)n * 4, "recv counts nothing");
        } else {
            CHECK_OK(g_world->ops->recv(g_world, in, n, MOE_DTYPE_F32, peer, 5));
            CHECK(g_world->bytes_sent == before, "recv counts nothing");
            CHECK_OK(g_world->ops->send(g_world, out, n, MOE_DTYPE_F32, peer, 6));
        }
        int64_t bad = 0;
        for (int64_t i = 0; i < n; i++) {
            float w = h_value(90 + k, peer, i);
            if (memcmp(&w, &in[i], sizeof w) != 0) bad++;
        }
        CHECK(bad == 0, "n %lld: %lld wrong", (long long)n, (long long)bad);
        free(out);
        free(in);
    }
    /* a message shorter than the receive is an error on the receiver, not silent garbage */
    float x[5] = {1, 2, 3, 4, 5};
    if (R % 2 == 0) CHECK_OK(g_world->ops->send(g_world, x, 3, MOE_DTYPE_F32, peer, 7));
    else CHECK_FAILS(g_world->ops->recv(g_world, x, 5, MOE_DTYPE_F32, peer, 7), MOE_ERR_COMM, "expected 5");
}

static void test_split(void)
{
    moei_comm *sub = NULL;
    CHECK_OK(g_world->ops->split(g_world, R % 2, -R, &sub));
    if (!sub) return;
    /* members: same parity, ordered by key = -rank, i.e. descending world rank */
    int32_t members[4], nm = 0;
    for (int32_t q = P - 1; q >= 0; q--)
        if (q % 2 == R % 2) members[nm++] = q;
    int32_t want_rank = -1;
    for (int32_t i = 0; i < nm; i++)
        if (members[i] == R) want_rank = i;
    CHECK(sub->size == nm && sub->rank == want_rank, "group %d/%d, want %d/%d", sub->rank, sub->size, want_rank, nm);
    int32_t id = R, ids[4] = {-1, -1, -1, -1};
    CHECK_OK(sub->ops->all_gather(sub, &id, ids, 1, MOE_DTYPE_I32));
    for (int32_t i = 0; i < nm; i++) CHECK(ids[i] == members[i], "member %d is %d, want %d", i, ids[i], members[i]);
    float v = (float)(R + 1);
    CHECK_OK(sub->ops->all_reduce_sum(sub, &v, 1, MOE_DTYPE_F32));
    float want = 0;
    for (int32_t i = 0; i < nm; i++) want += (float)(members[i] + 1);
    CHECK(v == want, "sum %g want %g", (double)v, (double)want);
    /* the group's counter: all_gather (nm-1)*4, then an all-reduce of one element, whose only chunk
     * is group rank 0's: it sends 1 - c + (nm-1)*c elements */
    int64_t c0 = sub->rank == 0 ? 1 : 0;
    CHECK(sub->bytes_sent == (uint64_t)((nm - 1) + (1 - c0 + (nm - 1) * c0)) * 4, "group counter %llu",
          (unsigned long long)sub->bytes_sent);
    /* a split of the split */
    moei_comm *again = NULL;
    CHECK_OK(sub->ops->split(sub, 0, sub->rank, &again));
    if (again) {
        CHECK(again->size == sub->size && again->rank == sub->rank, "re-split");
        moei_comm_destroy(again);
    }
    moei_comm_destroy(sub);
    /* a negative color is this rank's error; the others still get their group */
    sub = NULL;
    moe_status st = g_world->ops->split(g_world, R == 0 ? -1 : 3, R, &sub);
    if (R == 0) {
        CHECK(st == MOE_ERR_INVALID_ARG && strstr(moe_last_error(), "color -1"), "negative color: %s",
              moe_last_error());
        CHECK(sub == NULL, "no comm");
    } else {
        CHECK(st == MOE_OK && sub && sub->size == P - 1 && sub->rank == R - 1, "others' group");
        moei_comm_destroy(sub);
    }
}

static void test_agree(void)
{
    for (int32_t bad = 0; bad < P; bad++) {
        double t0 = h_now();
        moe_status local = MOE_OK;
        if (R == bad) /* record the failure the way library code does */
            local = moei_fail(g_ctx, MOE_ERR_IO, "cannot open 'shard-%d.bin'", (int)R);
    uint64_t before = g_world->bytes_sent;
        moe_status g = 12345;
        moe_status ret = moei_comm_agree(g_world, local, &g);
        CHECK(ret == MOE_ERR_IO && g == MOE_ERR_IO, "bad rank %d: got %s / %s", bad, moe_status_string(ret),
              moe_status_string(g));
        char want[64];
        snprintf(want, sizeof want, "shard-%d.bin", (int)bad);
        CHECK(strstr(moe_ctx_last_error(g_ctx), want) != NULL, "message '%s'", moe_ctx_last_error(g_ctx));
        if (R != bad) {
            char who[32];
            snprintf(who, sizeof who, "rank %d failed", (int)bad);
            CHECK(strstr(moe_ctx_last_error(g_ctx), who) != NULL, "message '%s'", moe_ctx_last_error(g_ctx));
        }
        CHECK(g_world->bytes_sent == before, "agreement is not counted");
        CHECK(h_now() - t0 < 5.0, "agreement took %.1f s", h_now() - t0);
    }
    /* two failing ranks: the lowest one's status wins everywhere */
    moe_status local = MOE_OK;
    if (R == 0) local = moei_fail(g_ctx, MOE_ERR_FORMAT, "bad header");
    if (R == P - 1) local = moei_fail(g_ctx, MOE_ERR_IO, "bad disk");
    CHECK(moei_comm_agree(g_world, local, NULL) == MOE_ERR_FORMAT, "lowest failing rank wins");
    if (R != 0) CHECK(strstr(moe_last_error(), "rank 0 failed: bad header") != NULL, "'%s'", moe_last_error());
    if (R == P - 1) CHECK(strstr(moe_last_error(), "this rank failed too: bad disk") != NULL, "'%s'", moe_last_error());
    if (R == 0) CHECK(strcmp(moe_last_error(), "bad header") == 0, "'%s'", moe_last_error());
    /* everyone fine */
    moe_status g = -77;
    CHECK(moei_comm_agree(g_world, MOE_OK, &g) == MOE_OK && g == MOE_OK, "all OK");
    /* host gather of control data, not counted */
    int32_t mine[3] = {R, R * 2, 7}, all[12];
    uint64_t before = g_world->bytes_sent;
    CHECK_OK(moei_comm_host_all_gather(g_world, mine, all, sizeof mine));
    for (int32_t q = 0; q < P; q++) CHECK(all[3 * q] == q && all[3 * q + 1] == 2 * q && all[3 * q + 2] == 7, "row %d", q);
    CHECK(g_world->bytes_sent == before, "host gather is not counted");
}

int main(int argc, char **argv)
{
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &h_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &h_size);
    R = h_rank;
    P = h_size;
    if (P > 4) {
        if (R == 0) fprintf(stderr, "this test runs on 2 to 4 ranks\n");
        MPI_Finalize();
        return 1;
    }
    if (moe_ctx_create(NULL, &g_ctx) != MOE_OK || moei_comm_mpi_create(g_ctx, &g_world) != MOE_OK) {
        fprintf(stderr, "[rank %d] setup failed: %s\n", R, moe_last_error());
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    H_RUN(test_create);
    H_RUN(test_all_reduce_f32);
    H_RUN(test_all_reduce_int);
    H_RUN(test_bad_arguments);
    H_RUN(test_reduce_scatter);
    H_RUN(test_all_gather);
    H_RUN(test_all_to_all_v);
    H_RUN(test_all_to_all_v_one_bad_rank);
    H_RUN(test_broadcast);
    H_RUN(test_send_recv);
    H_RUN(test_split);
    H_RUN(test_agree);
    moei_comm_destroy(g_world);
    moe_ctx_destroy(g_ctx);
    MPI_Finalize(); /* this program initialised MPI, so it ends it; the library must not have */
    return h_total_fail ? 1 : 0;
}
