/* Counter-based RNG: Philox4x32-10 against the Random123 known-answer vectors and an independent
 * implementation, FNV-1a against its published values, the documented (seed, stream, index) mapping
 * recomputed here from the spec, distribution moments, and independence from how a range is split. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/rng.h"

/* ---- an independent Philox4x32-10, written from the paper's description ---------------------- */

static void ref_mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    /* Schoolbook 16-bit limbs, so it shares nothing with the library's 64-bit product. */
    uint32_t a0 = a & 0xffff, a1 = a >> 16, b0 = b & 0xffff, b1 = b >> 16;
    uint32_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint32_t mid = (p00 >> 16) + (p01 & 0xffff) + (p10 & 0xffff);
    *lo = (p00 & 0xffff) | (mid << 16);
    *hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16);
}

static void ref_philox(const uint32_t in[4], const uint32_t key_in[2], uint32_t out[4])
{
    uint32_t x[4] = {in[0], in[1], in[2], in[3]};
    uint32_t k[2] = {key_in[0], key_in[1]};
    for (int r = 0; r < 10; r++) {
        uint32_t hi0, lo0, hi1, lo1;
        ref_mulhilo(0xD2511F53u, x[0], &hi0, &lo0);
        ref_mulhilo(0xCD9E8D57u, x[2], &hi1, &lo1);
        uint32_t y[4] = {hi1 ^ x[1] ^ k[0], lo1, hi0 ^ x[3] ^ k[1], lo0};
        memcpy(x, y, sizeof x);
        k[0] += 0x9E3779B9u;
        k[1] += 0xBB67AE85u;
    }
    memcpy(out, x, sizeof x);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void test_philox_known_answers(void **state)
{
    (void)state;
    /* Random123 kat_vectors, philox4x32 10 rounds: counter (4 words), key (2 words), expected. */
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e,
         0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb,
         0x5001e420, 0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4], ref[4];
        moei_philox4x32_10(&kat[i][0], &kat[i][4], out);
        ref_philox(&kat[i][0], &kat[i][4], ref);
        for (int j = 0; j < 4; j++) {
            assert_int_equal(out[j], kat[i][6 + j]);
            assert_int_equal(ref[j], kat[i][6 + j]); /* the oracle itself is right */
        }
    }
    /* out may alias the counter. */
    uint32_t c[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
    const uint32_t k[2] = {0xa4093822, 0x299f31d0};
    moei_philox4x32_10(c, k, c);
    assert_int_equal(c[0], 0xd16cfe09);
    assert_int_equal(c[3], 0x24126ea1);
}

static void test_philox_matches_reference(void **state)
{
    (void)state;
    uint64_t s = 42;
    for (int i = 0; i < 20000; i++) {
        uint64_t a = splitmix(&s), b = splitmix(&s), c = splitmix(&s);
        uint32_t ctr[4] = {(uint32_t)a, (uint32_t)(a >> 32), (uint32_t)b, (uint32_t)(b >> 32)};
        uint32_t key[2] = {(uint32_t)c, (uint32_t)(c >> 32)};
        uint32_t out[4], ref[4];
        moei_philox4x32_10(ctr, key, out);
        ref_philox(ctr, key, ref);
        assert_memory_equal(out, ref, sizeof out);
    }
}

static void test_name_hash(void **state)
{
    (void)state;
    /* Published FNV-1a 64 test values. */
    assert_true(moei_name_hash("") == 0xcbf29ce484222325ull);
    assert_true(moei_name_hash(NULL) == 0xcbf29ce484222325ull);
    assert_true(moei_name_hash("a") == 0xaf63dc4c8601ec8cull);
    assert_true(moei_name_hash("foobar") == 0x85944171f73967e8ull);
    assert_true(moei_name_hash("layers.0.w1") != moei_name_hash("layers.0.w2"));
}

/* The documented mapping, recomputed from the reference Philox. */
static void ref_block(uint64_t seed, uint64_t stream, uint64_t block, uint32_t w[4])
{
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    const uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)};
    ref_philox(ctr, key, w);
}

static float ref_normal(uint64_t seed, const char *name, uint64_t i, float mean, float std)
{
    uint32_t w[4];
    ref_block(seed, moei_name_hash(name), i >> 2, w);
    unsigned lane = (unsigned)(i & 3);
    uint32_t a = lane < 2 ? w[0] : w[2], b = lane < 2 ? w[1] : w[3];
    double u1 = ((double)a + 1.0) / 4294967296.0;
    double t = (double)b / 4294967296.0 * 2.0 * 3.14159265358979323846;
    double r = sqrt(-2.0 * log(u1));
    double z = (lane & 1) ? r * sin(t) : r * cos(t);
    return (float)((double)mean + (double)std * z);
}

static float ref_uniform01(uint64_t seed, uint64_t stream, uint64_t i)
{
    uint32_t w[4];
    ref_block(seed, stream, i >> 2, w);
    return (float)((double)(w[i & 3] >> 8) / 16777216.0);
}

static void test_mapping_matches_spec(void **state)
{
    (void)state;
    const uint64_t seeds[] = {0, 1234, 0xfedcba9876543210ull};
    const uint64_t starts[] = {0, 1, 3, 4, 1000001, (1ull << 36) + 2, (1ull << 62) - 7};
    for (size_t si = 0; si < 3; si++)
        for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
            uint32_t w[4], r[4];
            moei_rng_block(seeds[si], 0x0123456789abcdefull, starts[k], w);
            ref_block(seeds[si], 0x0123456789abcdefull, starts[k], r);
            assert_memory_equal(w, r, sizeof w);
            float out[9];
            moei_rng_normal_fill(seeds[si], "model.layers.3.mlp.experts.7.w1", (int64_t)starts[k], 9, 0.5f, 0.02f,
                                 out);
            for (int j = 0; j < 9; j++) {
                float e = ref_normal(seeds[si], "model.layers.3.mlp.experts.7.w1", starts[k] + (uint64_t)j, 0.5f, 0.02f);
                /* Same formula in double: equal up to libm differences, far below a float ulp. */
                assert_true(fabsf(out[j] - e) <= 2.0f * (nextafterf(fabsf(e), INFINITY) - fabsf(e)));
            }
            for (int j = 0; j < 9; j++) {
                uint64_t idx = starts[k] + (uint64_t)j;
                float u = moei_rng_uniform_at(seeds[si], 77, idx);
                assert_true(u == ref_uniform01(seeds[si], 77, idx));
            }
            moei_rng_uniform_fill(seeds[si], "x", (int64_t)starts[k], 9, 0.0f, 1.0f, out);
            for (int j = 0; j < 9; j++)
                assert_true(out[j] == moei_rng_uniform_at(seeds[si], moei_name_hash("x"), starts[k] + (uint64_t)j));
        }
}

#define NS 1000000

static void moments(const float *x, int64_t n, double *mean, double *sd, double *skew, double *kurt)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) m += x[i];
    m /= (double)n;
    double m2 = 0, m3 = 0, m4 = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = x[i] - m;
        m2 += d * d;
        m3 += d * d * d;
        m4 += d * d * d * d;
    }
    m2 /= (double)n;
    m3 /= (double)n;
    m4 /= (double)n;
    *mean = m;
    *sd = sqrt(m2);
    *skew = m3 / pow(m2, 1.5);
    *kurt = m4 / (m2 * m2);
}

static void test_normal_moments(void **state)
{
    (void)state;
    float *x = malloc(NS * sizeof *x);
    assert_non_null(x);
    moei_rng_normal_fill(1234, "w", 0, NS, 0.0f, 1.0f, x);
    double m, sd, sk, ku;
    moments(x, NS, &m, &sd, &sk, &ku);
    /* Standard errors for n = 1e6: mean 1e-3, sd 7e-4, skew 2.4e-3, kurtosis 4.9e-3; allow ~5 sigma. */
    assert_true(fabs(m) < 5e-3);
    assert_true(fabs(sd - 1.0) < 4e-3);
    assert_true(fabs(sk) < 1.2e-2);
    assert_true(fabs(ku - 3.0) < 2.5e-2);
    int64_t in1 = 0, in2 = 0;
    double maxabs = 0;
    for (int64_t i = 0; i < NS; i++) {
        double a = fabs(x[i]);
        in1 += a < 1.0;
        in2 += a < 2.0;
        if (a > maxabs) maxabs = a;
    }
    assert_true(fabs((double)in1 / NS - 0.682689) < 3e-3);
    assert_true(fabs((double)in2 / NS - 0.954500) < 2e-3);
    assert_true(maxabs < 6.67); /* the documented tail cut */
    /* Neighbours (same pair, next pair, next block) are uncorrelated. */
    for (int lag = 1; lag <= 4; lag++) {
        double c = 0;
        for (int64_t i = 0; i + lag < NS; i++) c += (double)x[i] * x[i + lag];
        assert_true(fabs(c / (NS - lag)) < 5e-3);
    }
    /* mean/std are applied as mean + std * z. */
    float *y = malloc(NS * sizeof *y);
    assert_non_null(y);
    moei_rng_normal_fill(1234, "w", 0, NS, 2.0f, 3.0f, y);
    for (int64_t i = 0; i < NS; i += 997) assert_true(fabsf(y[i] - (2.0f + 3.0f * x[i])) < 1e-5f * (1 + fabsf(y[i])));
    free(x);
    free(y);
}

static void test_uniform_moments(void **state)
{
    (void)state;
    float *x = malloc(NS * sizeof *x);
    assert_non_null(x);
    moei_rng_uniform_fill(99, "u", 0, NS, -2.0f, 3.0f, x);
    double m, sd, sk, ku;
    moments(x, NS, &m, &sd, &sk, &ku);
    const double sd_ref = 5.0 / sqrt(12.0);
    assert_true(fabs(m - 0.5) < 5 * sd_ref / 1000.0);
    assert_true(fabs(sd - sd_ref) < 4e-3 * sd_ref);
    assert_true(fabs(sk) < 1e-2);
    assert_true(fabs(ku - 1.8) < 1e-2);
    /* Range and a 10-bin histogram (chi-square, 9 dof: 99.9% point ~ 27.9). */
    int64_t bins[10] = {0};
    for (int64_t i = 0; i < NS; i++) {
        assert_true(x[i] >= -2.0f && x[i] < 3.0f);
        int b = (int)((x[i] + 2.0f) / 0.5f);
        if (b > 9) b = 9;
        bins[b]++;
    }
    double chi = 0;
    for (int b = 0; b < 10; b++) chi += (bins[b] - NS / 10.0) * (bins[b] - NS / 10.0) / (NS / 10.0);
    assert_true(chi < 27.9);
    /* uniform_at over a plain stream: same checks, lighter. */
    double s = 0;
    for (int64_t i = 0; i < NS; i++) {
        float u = moei_rng_uniform_at(7, 12345, (uint64_t)i);
        assert_true(u >= 0.0f && u < 1.0f);
        s += u;
    }
    assert_true(fabs(s / NS - 0.5) < 1.5e-3);
    free(x);
}

static void test_uniform_never_reaches_hi(void **state)
{
    (void)state;
    /* A span of one ulp: every value must round down to lo, never up to hi. */
    float lo = 1.0f, hi = nextafterf(1.0f, 2.0f);
    float x[4096];
    moei_rng_uniform_fill(5, "tiny", 0, 4096, lo, hi, x);
    for (int i = 0; i < 4096; i++) assert_true(x[i] == lo);
    moei_rng_uniform_fill(5, "same", 0, 16, 2.5f, 2.5f, x);
    for (int i = 0; i < 16; i++) assert_true(x[i] == 2.5f);
}

static void test_shard_independence(void **state)
{
    (void)state;
    /* Larger than the parallel threshold, so threaded and serial calls are compared too. */
    enum { N = 100003 };
    float *whole = malloc(N * sizeof *whole), *part = malloc(N * sizeof *part);
    float *uwhole = malloc(N * sizeof *uwhole), *upart = malloc(N * sizeof *upart);
    assert_non_null(whole);
    assert_non_null(part);
    assert_non_null(uwhole);
    assert_non_null(upart);
    moei_rng_normal_fill(31337, "embed.weight", 0, N, 0.0f, 0.02f, whole);
    moei_rng_uniform_fill(31337, "embed.weight", 0, N, -1.0f, 1.0f, uwhole);
    /* Pieces of every alignment, including empty and single-element pieces. */
    uint64_t s = 9;
    int64_t at = 0;
    while (at < N) {
        int64_t len = (int64_t)(splitmix(&s) % 13);
        if (splitmix(&s) % 50 == 0) len = 40000; /* a few pieces above the threshold */
        if (at + len > N) len = N - at;
        memset(part + at, 0xff, (size_t)len * sizeof *part);
        moei_rng_normal_fill(31337, "embed.weight", at, len, 0.0f, 0.02f, part + at);
        moei_rng_uniform_fill(31337, "embed.weight", at, len, -1.0f, 1.0f, upart + at);
        at += len;
    }
    assert_memory_equal(whole, part, N * sizeof *whole);
    assert_memory_equal(uwhole, upart, N * sizeof *uwhole);
    /* count <= 0 writes nothing. */
    float guard = 123.0f;
    moei_rng_normal_fill(1, "x", 5, 0, 0.0f, 1.0f, &guard);
    moei_rng_normal_fill(1, "x", 5, -3, 0.0f, 1.0f, &guard);
    moei_rng_uniform_fill(1, "x", 5, 0, 0.0f, 1.0f, &guard);
    assert_true(guard == 123.0f);
    free(whole);
    free(part);
    free(uwhole);
    free(upart);
}

static void test_streams_differ(void **state)
{
    (void)state;
    enum { N = 64 };
    float a[N], b[N], c[N], d[N];
    moei_rng_normal_fill(1, "layers.0.attn.wq", 0, N, 0.0f, 1.0f, a);
    moei_rng_normal_fill(1, "layers.0.attn.wk", 0, N, 0.0f, 1.0f, b);
    moei_rng_normal_fill(2, "layers.0.attn.wq", 0, N, 0.0f, 1.0f, c);
    moei_rng_normal_fill(1, "layers.0.attn.wq", 0, N, 0.0f, 1.0f, d);
    int same_ab = 0, same_ac = 0;
    for (int i = 0; i < N; i++) {
        same_ab += a[i] == b[i];
        same_ac += a[i] == c[i];
    }
    assert_int_equal(same_ab, 0);
    assert_int_equal(same_ac, 0);
    assert_memory_equal(a, d, sizeof a); /* and it is deterministic */
    int same_at = 0;
    for (uint64_t i = 0; i < 256; i++) same_at += moei_rng_uniform_at(1, 10, i) == moei_rng_uniform_at(1, 11, i);
    assert_true(same_at < 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_philox_known_answers),
        cmocka_unit_test(test_philox_matches_reference),
        cmocka_unit_test(test_name_hash),
        cmocka_unit_test(test_mapping_matches_spec),
        cmocka_unit_test(test_normal_moments),
        cmocka_unit_test(test_uniform_moments),
        cmocka_unit_test(test_uniform_never_reaches_hi),
        cmocka_unit_test(test_shard_independence),
        cmocka_unit_test(test_streams_differ),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
