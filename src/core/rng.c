/* Philox4x32-10 and the (seed, stream, index) -> value mappings documented in core/rng.h.
 * Invariant: a value depends only on its coordinates, never on how a range is split into calls or
 * threads; the fills compute each element from its own block, whatever the range boundaries. */
#include "core/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Below this many elements a fill runs on the calling thread: a parallel region costs more. */
#define RNG_PARALLEL_MIN 32768

void moei_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void moei_rng_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t out[4])
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    moei_philox4x32_10(ctr, key, out);
}

uint64_t moei_name_hash(const char *name)
{
    uint64_t h = 0xCBF29CE484222325ull;
    if (!name) return h;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 0x100000001B3ull;
    }
    return h;
}

static inline float word_to_unit(uint32_t w) { return (float)(w >> 8) * 0x1p-24f; }

float moei_rng_uniform_at(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t w[4];
    moei_rng_block(seed, stream, index >> 2, w);
    return word_to_unit(w[index & 3]);
}

static inline double box_muller(uint32_t a, uint32_t b, int odd)
{
    const double two_pi = 6.283185307179586476925286766559;
    double u1 = ((double)a + 1.0) * 0x1p-32;
    double t = (double)b * 0x1p-32 * two_pi;
    double r = sqrt(-2.0 * log(u1));
    return odd ? r * sin(t) : r * cos(t);
}

void moei_rng_normal_fill(uint64_t seed, const char *tensor_name, int64_t first_index, int64_t count, float mean,
                          float std, float *out)
{
    if (count <= 0 || !out) return;
    const uint64_t stream = moei_name_hash(tensor_name);
    const uint64_t first = (uint64_t)first_index;
    const double m = mean, s = std;
    /* Work in whole blocks of 4 so each block is generated once, even when the range starts or ends
     * mid-block; `j` below is the output position of the block's lane 0 (may be negative). */
    const int64_t b0 = (int64_t)(first >> 2);
    const int64_t nblocks = (int64_t)(((first + (uint64_t)count - 1) >> 2) - (first >> 2)) + 1;
#pragma omp parallel for schedule(static) if (count >= RNG_PARALLEL_MIN)
    for (int64_t bi = 0; bi < nblocks; bi++) {
        uint32_t w[4];
        const uint64_t block = (uint64_t)(b0 + bi);
        moei_rng_block(seed, stream, block, w);
        const int64_t base = (int64_t)(block * 4 - first);
        for (int lane = 0; lane < 4; lane++) {
            const int64_t j = base + lane;
            if (j < 0 || j >= count) continue;
            const double z = lane < 2 ? box_muller(w[0], w[1], lane & 1) : box_muller(w[2], w[3], lane & 1);
            out[j] = (float)(m + s * z);
        }
    }
}

void moei_rng_uniform_fill(uint64_t seed, const char *tensor_name, int64_t first_index, int64_t count, float lo,
                           float hi, float *out)
{
    if (count <= 0 || !out) return;
    const uint64_t stream = moei_name_hash(tensor_name);
    const uint64_t first = (uint64_t)first_index;
    const double dlo = lo, span = (double)hi - (double)lo;
    const float below_hi = nextafterf(hi, -INFINITY);
    const int64_t b0 = (int64_t)(first >> 2);
    const int64_t nblocks = (int64_t)(((first + (uint64_t)count - 1) >> 2) - (first >> 2)) + 1;
#pragma omp parallel for schedule(static) if (count >= RNG_PARALLEL_MIN)
    for (int64_t bi = 0; bi < nblocks; bi++) {
        uint32_t w[4];
        const uint64_t block = (uint64_t)(b0 + bi);
        moei_rng_block(seed, stream, block, w);
        const int64_t base = (int64_t)(block * 4 - first);
        for (int lane = 0; lane < 4; lane++) {
            const int64_t j = base + lane;
            if (j < 0 || j >= count) continue;
            float v = (float)(dlo + span * (double)word_to_unit(w[lane]));
            if (v >= hi && lo < hi) v = below_hi;
            out[j] = v;
        }
    }
}
