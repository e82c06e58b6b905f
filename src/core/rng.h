/* Counter-based random numbers: Philox4x32-10 and the fixed mappings from (seed, stream, index) to
 * values. Every value is a pure function of its coordinates, so any shard of a tensor, on any mesh,
 * in any thread order, regenerates exactly the values a single rank would. The mappings below are a
 * file-format-like contract (checkpoints and the CUDA kernels rely on them): never change them. */
#ifndef MOEI_CORE_RNG_H
#define MOEI_CORE_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), as in the
 * Random123 library: multipliers M0 = 0xD2511F53, M1 = 0xCD9E8D57, Weyl key increments
 * W0 = 0x9E3779B9, W1 = 0xBB67AE85, 10 rounds. One round on counter c[4] with key k[2]:
 *     (hi0, lo0) = M0 * c[0],  (hi1, lo1) = M1 * c[2]          (32x32 -> 64-bit products)
 *     c = { hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0 }
 * and between rounds k[0] += W0, k[1] += W1 (mod 2^32).
 *
 * moei_philox4x32_10(): ctr[0..3] is the counter (ctr[0] the least significant word when it is read
 * as a 128-bit number), key[0..1] the key; out[0..3] receives the block. out may alias ctr.
 */
void moei_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/*
 * The coordinate mapping used by every function below. For a 64-bit seed, a 64-bit stream and a
 * 64-bit element index i:
 *     key     = { lo32(seed), hi32(seed) }
 *     block b = i >> 2,  lane = i & 3
 *     counter = { lo32(b), hi32(b), lo32(stream), hi32(stream) }
 *     w[0..3] = Philox4x32-10(counter, key)
 * Element i uses word w[lane] (uniforms) or the Box-Muller pair (w[0], w[1]) for lanes 0-1 and
 * (w[2], w[3]) for lanes 2-3 (normals); see each function.
 */
void moei_rng_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t out[4]);

/*
 * Stream id of a named logical tensor: 64-bit FNV-1a over the bytes of `name` up to its NUL
 * (offset basis 0xCBF29CE484222325, prime 0x100000001B3; for each byte: h ^= byte, h *= prime).
 * name == NULL hashes like "".
 */
uint64_t moei_name_hash(const char *name);

/*
 * Uniform float in [0, 1) at (seed, stream, index): u = (w[lane] >> 8) * 2^-24 (exact in float).
 * For values keyed by a global index, e.g. router jitter keyed by the global token index.
 */
float moei_rng_uniform_at(uint64_t seed, uint64_t stream, uint64_t index);

/*
 * Fill out[j] (0 <= j < count) with the value of logical element first_index + j of the tensor named
 * `tensor_name` (stream = moei_name_hash(tensor_name)), drawn from N(mean, std^2):
 *     for the pair (a, b) = (w[0], w[1]) if lane < 2 else (w[2], w[3]), in double precision,
 *     u1 = (a + 1) * 2^-32            in (0, 1]
 *     t  = b * 2^-32 * 2*pi           in [0, 2*pi)
 *     r  = sqrt(-2 * log(u1))
 *     z  = r * cos(t) for even lanes, r * sin(t) for odd lanes
 *     out = (float)((double)mean + (double)std * z)
 * The tails are cut at |z| <= sqrt(64 ln 2) ~ 6.66. Another implementation (a CUDA kernel) that
 * follows these steps in double agrees to within rounding of log/sin/cos in double, i.e. almost
 * always bit for bit after the final rounding to float. count <= 0 writes nothing; first_index must
 * be >= 0. Runs in parallel over OpenMP threads for large counts; the result does not depend on it.
 */
void moei_rng_normal_fill(uint64_t seed, const char *tensor_name, int64_t first_index, int64_t count, float mean,
                          float std, float *out);

/*
 * Same, uniform in [lo, hi): u = (w[lane] >> 8) * 2^-24, out = (float)((double)lo + ((double)hi - lo) * u),
 * and a result that rounds up to hi (possible when hi - lo is a few ulps) is replaced by the float
 * just below hi. Requires lo < hi (lo == hi writes lo).
 */
void moei_rng_uniform_fill(uint64_t seed, const char *tensor_name, int64_t first_index, int64_t count, float lo,
                           float hi, float *out);

#ifdef __cplusplus
}
#endif

#endif
