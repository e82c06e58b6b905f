/* fp64 references for tests/nn: straightforward loops that follow the formulas as written in the
 * papers and in HF's modules, so that a test compares the library against something independent. */
#include "nn/ref_attn.h"

#include <math.h>
#include <stdlib.h>

void ref_rng_seed(ref_rng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull; }

double ref_uniform(ref_rng *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

void ref_fill(ref_rng *r, float *x, size_t n, float amplitude)
{
    for (size_t i = 0; i < n; i++) x[i] = amplitude * (float)ref_uniform(r);
}

double *ref_to_double(const float *x, size_t n)
{
    double *y = malloc((n ? n : 1) * sizeof *y);
    for (size_t i = 0; i < n; i++) y[i] = x[i];
    return y;
}

double ref_rel_err(const float *a, const double *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - b[i];
        num += e * e;
        den += b[i] * b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

void ref_fd_grad(ref_loss_fn loss, void *user, double *param, size_t n, double eps, double *grad)
{
    for (size_t i = 0; i < n; i++) {
        double keep = param[i];
        param[i] = keep + eps;
        double lp = loss(user);
        param[i] = keep - eps;
        double lm = loss(user);
        param[i] = keep;
        grad[i] = (lp - lm) / (2.0 * eps);
    }
}

double ref_fd_dir(ref_loss_fn loss, void *user, double *param, const double *dir, size_t n, double eps)
{
    double *keep = malloc(n * sizeof *keep);
    for (size_t i = 0; i < n; i++) keep[i] = param[i];
    for (size_t i = 0; i < n; i++) param[i] = keep[i] + eps * dir[i];
    double lp = loss(user);
    for (size_t i = 0; i < n; i++) param[i] = keep[i] - eps * dir[i];
    double lm = loss(user);
    for (size_t i = 0; i < n; i++) param[i] = keep[i];
    free(keep);
    return (lp - lm) / (2.0 * eps);
}

void ref_rmsnorm(int64_t n, int64_t d, double eps, const double *x, const double *w, double *y)
{
    for (int64_t i = 0; i < n; i++) {
        double ms = 0.0;
        for (int64_t j = 0; j < d; j++) ms += x[i * d + j] * x[i * d + j];
        ms /= (double)d;
        for (int64_t j = 0; j < d; j++) y[i * d + j] = w[j] * x[i * d + j] / sqrt(ms + eps);
    }
}

void ref_layernorm(int64_t n, int64_t d, double eps, const double *x, const double *w, const double *b, double *y)
{
    for (int64_t i = 0; i < n; i++) {
        double mu = 0.0, var = 0.0;
        for (int64_t j = 0; j < d; j++) mu += x[i * d + j];
        mu /= (double)d;
        for (int64_t j = 0; j < d; j++) var += (x[i * d + j] - mu) * (x[i * d + j] - mu);
        var /= (double)d;
        for (int64_t j = 0; j < d; j++) y[i * d + j] = (x[i * d + j] - mu) / sqrt(var + eps) * w[j] + b[j];
    }
}

void ref_rope(int64_t tokens, int64_t heads, int64_t D, const int32_t *pos, double theta, const double *x, double *y)
{
    int64_t half = D / 2;
    for (int64_t t = 0; t < tokens; t++)
        for (int64_t h = 0; h < heads; h++) {
            const double *xr = x + (t * heads + h) * D;
            double *yr = y + (t * heads + h) * D;
            /* HF: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2]) */
            for (int64_t j = 0; j < D; j++) {
                int64_t i = j % half;
                double ang = (double)pos[t] * pow(theta, -2.0 * (double)i / (double)D);
                double rot = j < half ? -xr[j + half] : xr[j - half];
                yr[j] = xr[j] * cos(ang) + rot * sin(ang);
            }
        }
}

/* The paper's get_slopes(n), transcribed. */
static void slopes_pow2(int64_t n, double *s)
{
    double start = pow(2.0, -pow(2.0, -(log2((double)n) - 3.0)));
    for (int64_t i = 0; i < n; i++) s[i] = start * pow(start, (double)i);
}

void ref_alibi_slopes(int64_t heads, double *slopes)
{
    double l = log2((double)heads);
    if (l == floor(l)) {
        slopes_pow2(heads, slopes);
        return;
    }
    int64_t c = (int64_t)pow(2.0, floor(l));
    slopes_pow2(c, slopes);
    double *twice = malloc((size_t)(2 * c) * sizeof *twice);
    ref_alibi_slopes(2 * c, twice);
    for (int64_t j = 0; j < heads - c; j++) slopes[c + j] = twice[2 * j];
    free(twice);
}

void ref_attention(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, double scale, const double *slopes,
                   const double *q, const double *k, const double *v, double *out, double *lse)
{
    double *s = malloc((size_t)(T > 0 ? T : 1) * sizeof *s);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / Hkv);
            for (int64_t i = 0; i < T; i++) {
                const double *qi = q + ((b * T + i) * H + h) * D;
                double mx = -INFINITY;
                for (int64_t j = 0; j <= i; j++) {
                    const double *kj = k + ((b * T + j) * Hkv + g) * D;
                    double dot = 0.0;
                    for (int64_t d = 0; d < D; d++) dot += qi[d] * kj[d];
                    s[j] = scale * dot - (slopes ? slopes[h] * (double)(i - j) : 0.0);
                    if (s[j] > mx) mx = s[j];
                }
                double z = 0.0;
                for (int64_t j = 0; j <= i; j++) z += exp(s[j] - mx);
                double *oi = out + ((b * T + i) * H + h) * D;
                for (int64_t d = 0; d < D; d++) oi[d] = 0.0;
                for (int64_t j = 0; j <= i; j++) {
                    double p = exp(s[j] - mx) / z;
                    const double *vj = v + ((b * T + j) * Hkv + g) * D;
                    for (int64_t d = 0; d < D; d++) oi[d] += p * vj[d];
                }
                if (lse) lse[(b * H + h) * T + i] = mx + log(z);
            }
        }
    free(s);
}
