/* A minimal harness for multi-rank tests. CMocka's failures jump out of a test, which would leave
 * the other ranks waiting in the next collective; here a failed check is counted and the test
 * goes on, every rank runs every collective, and the counts are summed over ranks after each test.
 * Exit status: 0 only if no check failed on any rank. */
#ifndef MOE_TEST_MPI_HARNESS_H
#define MOE_TEST_MPI_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "moe/moe.h"

static int h_rank, h_size, h_fail, h_total_fail;

#define CHECK(cond, ...)                                                                              \
    do {                                                                                              \
        if (!(cond)) {                                                                                \
            h_fail++;                                                                                 \
            fprintf(stderr, "[rank %d] %s:%d: CHECK(%s) failed: ", h_rank, __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                             \
            fputc('\n', stderr);                                                                      \
        }                                                                                             \
    } while (0)

#define CHECK_OK(expr)                                                                                \
    do {                                                                                              \
        moe_status st_ = (expr);                                                                      \
        CHECK(st_ == MOE_OK, "%s returned %s: %s", #expr, moe_status_string(st_), moe_last_error());  \
    } while (0)

/* `expr` returns `code` and the thread's message holds `sub`. */
#define CHECK_FAILS(expr, code, sub)                                                                  \
    do {                                                                                              \
        moe_status st_ = (expr);                                                                      \
        CHECK(st_ == (code), "%s returned %s, want %s: %s", #expr, moe_status_string(st_),            \
              moe_status_string(code), moe_last_error());                                             \
        CHECK(strstr(moe_last_error(), (sub)) != NULL, "%s: message '%s' lacks '%s'", #expr,          \
              moe_last_error(), (sub));                                                               \
    } while (0)

static double h_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void h_run(const char *name, void (*fn)(void))
{
    int before = h_fail;
    double t0 = h_now();
    fn();
    int mine = h_fail - before, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    h_total_fail += all;
    if (h_rank == 0)
        printf("[%s] %s (%d ranks, %.3f s)%s\n", all ? "FAIL" : " OK ", name, h_size, h_now() - t0,
               all ? " -- see the messages above" : "");
    fflush(stdout);
}

#define H_RUN(fn) h_run(#fn, fn)

/* xorshift64* keyed by (seed, rank, index), so every rank can rebuild every rank's data. */
static inline uint64_t h_mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* A float in [-1, 1) from (seed, rank, index). */
static inline float h_value(uint64_t seed, int32_t rank, int64_t i)
{
    uint64_t x = h_mix(seed * 0x9E3779B97F4A7C15ULL ^ h_mix((uint64_t)rank * 0x100000001B3ULL + (uint64_t)i));
    return (float)((double)(x >> 40) / 8388608.0 - 1.0);
}

#endif
