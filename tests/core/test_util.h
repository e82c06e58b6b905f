/* Shared by the core and ops unit tests: CMocka includes, failure-path assertions that
 * check the status and the message, a small deterministic PRNG, and independent rounding
 * references for bf16/f16 (double arithmetic only, no library code). */
#ifndef MOE_TEST_UTIL_H
#define MOE_TEST_UTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "moe/moe.h"

/* `expr` must return `code`, and moe_last_error() must contain every string given after it. */
#define ASSERT_FAILS(expr, code, ...)                                                                 \
    do {                                                                                              \
        moe_status st_ = (expr);                                                                      \
        const char *msg_ = moe_last_error();                                                          \
        if (st_ != (code))                                                                            \
            fail_msg("%s returned %s (%d), expected %s; message '%s'", #expr, moe_status_string(st_), \
                     (int)st_, moe_status_string(code), msg_ ? msg_ : "(null)");                      \
        if (!msg_) fail_msg("%s: moe_last_error() is NULL", #expr);                                   \
        const char *subs_[] = {__VA_ARGS__, NULL};                                                    \
        for (size_t i_ = 0; subs_[i_]; i_++)                                                          \
            if (!strstr(msg_, subs_[i_])) fail_msg("%s: message '%s' lacks '%s'", #expr, msg_, subs_[i_]); \
    } while (0)

/* As ASSERT_FAILS, and the ctx's own last error must carry the same text. */
#define ASSERT_FAILS_CTX(ctx, expr, code, ...)                                                        \
    do {                                                                                              \
        ASSERT_FAILS(expr, code, __VA_ARGS__);                                                        \
        const char *cm_ = moe_ctx_last_error(ctx);                                                    \
        if (!cm_) fail_msg("%s: moe_ctx_last_error() is NULL", #expr);                                \
        const char *csubs_[] = {__VA_ARGS__, NULL};                                                   \
        for (size_t j_ = 0; csubs_[j_]; j_++)                                                         \
            if (!strstr(cm_, csubs_[j_]))                                                             \
                fail_msg("%s: ctx message '%s' lacks '%s'", #expr, cm_, csubs_[j_]);                  \
    } while (0)

#define ASSERT_OK(expr)                                                                               \
    do {                                                                                              \
        moe_status st_ = (expr);                                                                      \
        if (st_ != MOE_OK)                                                                            \
            fail_msg("%s returned %s (%d): %s", #expr, moe_status_string(st_), (int)st_, moe_last_error()); \
    } while (0)

/* xorshift64*: deterministic, so a failure reproduces. */
typedef struct test_rng {
    uint64_t s;
} test_rng;

static inline uint64_t test_rng_u64(test_rng *r)
{
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}

static inline uint32_t test_rng_u32(test_rng *r) { return (uint32_t)(test_rng_u64(r) >> 32); }

/* Uniform integer in [lo, hi]. */
static inline int64_t test_rng_range(test_rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(test_rng_u64(r) % (uint64_t)(hi - lo + 1));
}

/* Uniform float in [-1, 1). */
static inline float test_rng_sym(test_rng *r) { return (float)((double)(test_rng_u32(r) >> 8) / 8388608.0 - 1.0); }

static inline void test_rng_bytes(test_rng *r, void *dst, size_t n)
{
    uint8_t *p = dst;
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(test_rng_u64(r) >> 56);
}

static inline uint32_t test_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float test_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round a double to the nearest value of a binary format with `sig_bits` significand bits (implicit
 * bit included), smallest normal exponent `emin` and largest exponent `emax`, ties to even,
 * gradual underflow, overflow to infinity. Exact in double for the formats used here (bf16, f16),
 * because every scaling is by a power of two and rint() rounds once. NaN and infinities pass. */
static inline double test_round_to_format(double x, int sig_bits, int emin, int emax)
{
    if (isnan(x) || isinf(x) || x == 0.0) return x;
    double a = fabs(x);
    int e;
    (void)frexp(a, &e); /* a = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1) */
    int lead = e - 1 < emin ? emin : e - 1;
    int qe = lead - (sig_bits - 1); /* exponent of one unit in the last place */
    double y = ldexp(rint(ldexp(a, -qe)), qe);
    if (y >= ldexp(1.0, emax + 1)) y = INFINITY;
    return copysign(y, x);
}

/* bf16 bits of the correctly rounded `x`, derived from the double reference; NaN -> 0x7fc0 | sign. */
static inline uint16_t test_ref_bf16(double x)
{
    if (isnan(x)) return (uint16_t)(signbit(x) ? 0xffc0u : 0x7fc0u);
    double y = test_round_to_format(x, 8, -126, 127);
    uint32_t u = test_f32_bits((float)y); /* exact: every bf16 value is a float */
    return (uint16_t)(u >> 16);
}

/* Decode bf16 bits with ldexp (independent of bit tricks on float). */
static inline double test_bf16_value(uint16_t h)
{
    int sign = h >> 15, e = (h >> 7) & 0xff, m = h & 0x7f;
    double v;
    if (e == 0xff) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -133);
    else v = ldexp((double)(m | 0x80), e - 127 - 7);
    return sign ? -v : v;
}

/* Decode f16 bits with ldexp. */
static inline double test_f16_value(uint16_t h)
{
    int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0x1f) v = m ? NAN : INFINITY;
    else if (e == 0) v = ldexp((double)m, -24);
    else v = ldexp((double)(m | 0x400), e - 15 - 10);
    return sign ? -v : v;
}

/* f16 bits of `x` rounded by the compiler's _Float16 conversion (a single correct rounding). */
static inline uint16_t test_f16_bits_of(double x)
{
    volatile double vx = x; /* keep the conversion at run time */
    _Float16 h = (_Float16)vx;
    uint16_t b;
    memcpy(&b, &h, sizeof b);
    return b;
}

#endif
