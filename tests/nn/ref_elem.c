/* fp64 references for the elementwise CPU op tests (see ref_elem.h). Deliberately naive: one loop
 * per formula as written in the papers / torch docs, so a mistake here and in src/ cannot coincide. */
#include "ref_elem.h"

#include <math.h>
#include <stddef.h>

static uint64_t next_u64(ref_rng *r)
{
    /* splitmix64 */
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double ref_uniform(ref_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(next_u64(r) >> 11) * (1.0 / 9007199254740992.0));
}

int32_t ref_randint(ref_rng *r, int32_t lo, int32_t hi_exclusive)
{
    return lo + (int32_t)(next_u64(r) % (uint64_t)(hi_exclusive - lo));
}

void ref_fill(ref_rng *r, float *x, int64_t n, double lo, double hi)
{
    for (int64_t i = 0; i < n; i++) x[i] = (float)ref_uniform(r, lo, hi);
}

void ref_to_f64(const float *x, double *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) y[i] = (double)x[i];
}

double ref_rel_err(const float *a, const double *b, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

void ref_fd_grad(ref_scalar_fn f, double *x, int64_t n, void *user, double eps, double *grad)
{
    for (int64_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + eps;
        double fp = f(x, user);
        x[i] = keep - eps;
        double fm = f(x, user);
        x[i] = keep;
        grad[i] = (fp - fm) / (2.0 * eps);
    }
}

void ref_embedding(int64_t n, int64_t dim, const double *table, const int32_t *ids, double *out)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < dim; c++) out[i * dim + c] = table[(int64_t)ids[i] * dim + c];
}

void ref_pos_add(int64_t n, int64_t dim, const double *table, const int32_t *pos, double *out)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < dim; c++) out[i * dim + c] += table[(int64_t)pos[i] * dim + c];
}

double ref_cross_entropy(int64_t n, int64_t vocab, const double *logits, const int32_t *targets, double *row_loss,
                         int64_t *count)
{
    double total = 0.0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < n; i++) {
        double l = 0.0;
        if (targets[i] != -100) {
            const double *x = logits + i * vocab;
            double mx = x[0];
            for (int64_t j = 1; j < vocab; j++) mx = x[j] > mx ? x[j] : mx;
            double s = 0.0;
            for (int64_t j = 0; j < vocab; j++) s += exp(x[j] - mx);
            l = -(x[targets[i]] - mx - log(s));
            total += l;
            cnt++;
        }
        if (row_loss) row_loss[i] = l;
    }
    if (count) *count = cnt;
    return total;
}

double ref_silu(double x) { return x / (1.0 + exp(-x)); }

void ref_swiglu_packed(int64_t rows, int64_t f, const double *h, double *out)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < f; j++) out[r * f + j] = ref_silu(h[r * 2 * f + j]) * h[r * 2 * f + f + j];
}

double ref_gelu(double x, int approx)
{
    if (approx) return 0.5 * x * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

void ref_adamw_step(int64_t n, double *p, const double *g, double *m, double *v, const uint8_t *mask, double lr,
                    double beta1, double beta2, double eps, double wd, int64_t step)
{
    for (int64_t i = 0; i < n; i++) {
        if (!mask || mask[i]) p[i] = p[i] - lr * wd * p[i];
        m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
        double mhat = m[i] / (1.0 - pow(beta1, (double)step));
        double vhat = v[i] / (1.0 - pow(beta2, (double)step));
        p[i] = p[i] - lr * mhat / (sqrt(vhat) + eps);
    }
}

void ref_sgd_step(int64_t n, double *p, const double *g, double *buf, const uint8_t *mask, double lr,
                  double momentum, double dampening, double wd, int nesterov, int64_t step)
{
    for (int64_t i = 0; i < n; i++) {
        double gi = g[i];
        if (wd != 0.0 && (!mask || mask[i])) gi += wd * p[i];
        if (momentum != 0.0) {
            buf[i] = step > 1 ? momentum * buf[i] + (1.0 - dampening) * gi : gi;
            gi = nesterov ? gi + momentum * buf[i] : buf[i];
        }
        p[i] -= lr * gi;
    }
}
