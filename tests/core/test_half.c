/* The internal bf16/f16 conversions against independent oracles: the compiler's _Float16 (a correct
 * IEEE conversion) and a double-arithmetic rounding reference. f16 -> f32 is checked for all 65536
 * inputs; f32 -> f16/bf16 at every tie and its neighbours, at the range edges, and on random inputs. */
#include <stdio.h>

#include "core/half.h"
#include "core/test_util.h"

static uint16_t f16_bits(_Float16 h)
{
    uint16_t b;
    memcpy(&b, &h, sizeof b);
    return b;
}

static _Float16 f16_from_bits(uint16_t b)
{
    _Float16 h;
    memcpy(&h, &b, sizeof h);
    return h;
}

/* Reference f32 -> f16 bits: the compiler's conversion, cross-checked with the double reference. */
static uint16_t ref_f16(float x)
{
    volatile float vx = x;
    uint16_t b = f16_bits((_Float16)vx);
    if (!isnan(x)) {
        double r = test_round_to_format((double)x, 11, -14, 15);
        double bv = test_f16_value(b);
        if (!(bv == r && !signbit(bv) == !signbit(r)))
            fail_msg("oracles disagree on f16(%a): _Float16 gives 0x%04x, double reference %a", (double)x, b, r);
    }
    return b;
}

static void check_f32_to_f16(float x)
{
    uint16_t got = moei_f32_to_f16(x);
    if (isnan(x)) {
        /* NaN stays NaN (quiet) and keeps its sign */
        if ((got & 0x7c00u) != 0x7c00u || (got & 0x03ffu) == 0 || !(got & 0x0200u))
            fail_msg("moei_f32_to_f16(NaN 0x%08x) = 0x%04x is not a quiet NaN", test_f32_bits(x), got);
        if ((got >> 15) != (test_f32_bits(x) >> 31)) fail_msg("NaN sign lost: 0x%08x -> 0x%04x", test_f32_bits(x), got);
        return;
    }
    uint16_t want = ref_f16(x);
    if (got != want)
        fail_msg("moei_f32_to_f16(%a) [bits 0x%08x] = 0x%04x, want 0x%04x", (double)x, test_f32_bits(x), got, want);
}

static void check_f32_to_bf16(float x)
{
    uint16_t got = moei_f32_to_bf16(x);
    if (isnan(x)) {
        if ((got & 0x7f80u) != 0x7f80u || (got & 0x007fu) == 0 || !(got & 0x0040u))
            fail_msg("moei_f32_to_bf16(NaN 0x%08x) = 0x%04x is not a quiet NaN", test_f32_bits(x), got);
        if ((got >> 15) != (test_f32_bits(x) >> 31)) fail_msg("NaN sign lost: 0x%08x -> 0x%04x", test_f32_bits(x), got);
        return;
    }
    uint16_t want = test_ref_bf16((double)x);
    if (got != want)
        fail_msg("moei_f32_to_bf16(%a) [bits 0x%08x] = 0x%04x, want 0x%04x", (double)x, test_f32_bits(x), got, want);
}

/* ---- f16 -> f32: exhaustive ------------------------------------------------------------------- */

static void test_f16_to_f32_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = moei_f16_to_f32((uint16_t)h);
        volatile _Float16 hv = f16_from_bits((uint16_t)h);
        float want = (float)hv;
        double dv = test_f16_value((uint16_t)h);
        if (isnan(want)) {
            if (!isnan(got)) fail_msg("moei_f16_to_f32(0x%04x) = %a, want NaN", h, (double)got);
            if (!signbit(got) != !signbit(want)) fail_msg("moei_f16_to_f32(0x%04x): NaN sign lost", h);
            assert_true(isnan(dv));
            continue;
        }
        if (test_f32_bits(got) != test_f32_bits(want))
            fail_msg("moei_f16_to_f32(0x%04x) = %a [0x%08x], want %a [0x%08x]", h, (double)got, test_f32_bits(got),
                     (double)want, test_f32_bits(want));
        if (!((double)got == dv && !signbit(got) == !signbit(dv)))
            fail_msg("moei_f16_to_f32(0x%04x) = %a, ldexp decoding gives %a", h, (double)got, dv);
    }
}

/* ---- bf16 -> f32: exhaustive ------------------------------------------------------------------ */

static void test_bf16_to_f32_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float got = moei_bf16_to_f32((uint16_t)h);
        double want = test_bf16_value((uint16_t)h);
        if (isnan(want)) {
            if (!isnan(got)) fail_msg("moei_bf16_to_f32(0x%04x) = %a, want NaN", h, (double)got);
            if (!signbit(got) != !(h >> 15)) fail_msg("moei_bf16_to_f32(0x%04x): NaN sign lost", h);
            continue;
        }
        if (!((double)got == want && !signbit(got) == !signbit(want)))
            fail_msg("moei_bf16_to_f32(0x%04x) = %a, want %a", h, (double)got, want);
    }
}

/* ---- f32 -> f16 ----------------------------------------------------------------------------------- */

static void test_f32_to_f16_edges(void **state)
{
    (void)state;
    const float fixed[] = {
        0.0f, -0.0f, 1.0f, -1.0f, 2.0f, 0.5f, 0.1f, 1.0f / 3.0f, 65504.0f, -65504.0f,
        65519.0f, 65519.996f, 65520.0f, -65520.0f, 65536.0f, 1e6f, 3.4028235e38f, -3.4028235e38f,
        INFINITY, -INFINITY,
        0x1p-14f,  /* smallest normal f16 */
        0x1p-24f,  /* smallest subnormal f16 */
        0x1p-25f,  /* tie between 0 and the smallest subnormal: to even = 0 */
        0x1.000002p-25f, 0x1.fffffep-26f, 0x1.8p-24f /* tie 1.5 ulp -> 2 */, 0x1.8p-23f, 0x1.ffcp-15f,
        0x1.ffep-15f /* tie at the subnormal/normal border -> 2^-14 */, 0x1.ffdp-15f, 0x1.fffp-15f,
        0x1p-126f, 0x1p-149f /* f32 subnormals */, -0x1p-149f, 0x1.fffffcp-127f,
        1.0f + 0x1p-11f /* tie -> 1 */, 1.0f + 0x1.8p-10f /* tie -> up */, 1.0f + 0x1p-11f + 0x1p-23f,
        2047.5f, 2048.5f, 4095.0f, 4097.0f,
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) check_f32_to_f16(fixed[i]);
    /* NaNs: quiet, signalling, with and without payload in the bits that f16 keeps */
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fbfffffu, 0x7fffffffu,
                             0x7f802000u, 0xffffe000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) check_f32_to_f16(test_bits_f32(nans[i]));
}

/* Every f16 value h, the midpoint between h and the next value up, and the float neighbours of the
 * midpoint: every tie and every near-tie the conversion can meet. */
static void test_f32_to_f16_all_ties(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x7c00u; h++) {
        double lo = test_f16_value((uint16_t)h);
        double hi = h + 1 < 0x7c00u ? test_f16_value((uint16_t)(h + 1)) : 65536.0; /* overflow edge */
        float mid = (float)((lo + hi) / 2.0); /* exact: 12 significant bits */
        assert_true((double)mid == (lo + hi) / 2.0);
        const float probes[] = {(float)lo, mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY),
                                nextafterf((float)lo, INFINITY), nextafterf((float)hi, 0.0f)};
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            check_f32_to_f16(probes[i]);
            check_f32_to_f16(-probes[i]);
        }
    }
}

static void test_f32_to_f16_random(void **state)
{
    (void)state;
    test_rng rng = {0xC0FFEEULL};
    for (int i = 0; i < 1 << 20; i++) check_f32_to_f16(test_bits_f32(test_rng_u32(&rng)));
    /* random bits with exponents where f16 is finite or just beyond */
    for (int i = 0; i < 1 << 20; i++) {
        uint32_t u = test_rng_u32(&rng);
        uint32_t e = 95u + (u % 50u); /* 2^-32 .. 2^17 */
        u = (u & 0x807fffffu) | (e << 23);
        check_f32_to_f16(test_bits_f32(u));
    }
}

/* ---- f32 -> bf16 ---------------------------------------------------------------------------------- */

static void test_f32_to_bf16_edges(void **state)
{
    (void)state;
    const float fixed[] = {
        0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 1.0f / 3.0f, 3.4028235e38f /* rounds to inf */, -3.4028235e38f,
        0x1.fep127f /* largest bf16 */, 0x1.fefffep127f, 0x1.ff0000p127f /* tie to even: inf */,
        INFINITY, -INFINITY, 0x1p-126f, 0x1p-133f, 0x1p-149f, 0x1.ffp-127f, 0x1.fe8p-127f,
        1.0f + 0x1p-8f /* tie -> 1 */, 1.0f + 0x1.8p-7f /* tie -> up */, 1.0f + 0x1p-8f + 0x1p-23f,
        1.0f + 0x1p-8f - 0x1p-24f, 255.5f, 257.0f, 65504.0f,
    };
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++) check_f32_to_bf16(fixed[i]);
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fbfffffu,
                             0x7fffffffu, 0x7f80ffffu, 0xff810000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) check_f32_to_bf16(test_bits_f32(nans[i]));
}

static void test_f32_to_bf16_all_ties(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x7f80u; h++) {
        uint32_t lo_bits = h << 16, hi_bits = (h + 1) << 16;
        float mid = test_bits_f32(lo_bits | 0x8000u); /* the midpoint of two bf16 neighbours */
        const float probes[] = {test_bits_f32(lo_bits), mid, test_bits_f32((lo_bits | 0x8000u) - 1u),
                                test_bits_f32((lo_bits | 0x8000u) + 1u), test_bits_f32(lo_bits + 1u),
                                test_bits_f32(hi_bits - 1u)};
        for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
            check_f32_to_bf16(probes[i]);
            check_f32_to_bf16(-probes[i]);
        }
    }
}

static void test_f32_to_bf16_random(void **state)
{
    (void)state;
    test_rng rng = {0xBADC0DEULL};
    for (int i = 0; i < 1 << 21; i++) check_f32_to_bf16(test_bits_f32(test_rng_u32(&rng)));
}

/* ---- round trips ------------------------------------------------------------------------------ */

static void test_round_trips(void **state)
{
    (void)state;
    /* every finite half value converts to float and back unchanged */
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00u) != 0x7c00u || (h & 0x3ffu) == 0) {
            uint16_t back = moei_f32_to_f16(moei_f16_to_f32((uint16_t)h));
            if (back != h) fail_msg("f16 round trip 0x%04x -> 0x%04x", h, back);
        }
        if ((h & 0x7f80u) != 0x7f80u || (h & 0x7fu) == 0) {
            uint16_t back = moei_f32_to_bf16(moei_bf16_to_f32((uint16_t)h));
            if (back != h) fail_msg("bf16 round trip 0x%04x -> 0x%04x", h, back);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_to_f32_exhaustive),
        cmocka_unit_test(test_bf16_to_f32_exhaustive),
        cmocka_unit_test(test_f32_to_f16_edges),
        cmocka_unit_test(test_f32_to_f16_all_ties),
        cmocka_unit_test(test_f32_to_f16_random),
        cmocka_unit_test(test_f32_to_bf16_edges),
        cmocka_unit_test(test_f32_to_bf16_all_ties),
        cmocka_unit_test(test_f32_to_bf16_random),
        cmocka_unit_test(test_round_trips),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
