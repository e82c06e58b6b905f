/* fp64 reference implementations for the router and dispatch tests: plain loops straight from the
 * definitions, deliberately using different algorithms from the library (repeated argmax instead of
 * insertion / quickselect, dense gates instead of a permutation). */
#include "nn/ref_moe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint64_t refmoe_rng_next(refmoe_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double refmoe_rng_uniform(refmoe_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * (double)(refmoe_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

void refmoe_fill_uniform(refmoe_rng *r, double *a, int64_t count, double lo, double hi)
{
    for (int64_t i = 0; i < count; i++) a[i] = refmoe_rng_uniform(r, lo, hi);
}

void refmoe_to_float(const double *a, float *f, int64_t count)
{
    for (int64_t i = 0; i < count; i++) f[i] = (float)a[i];
}

void refmoe_to_double(const float *f, double *a, int64_t count)
{
    for (int64_t i = 0; i < count; i++) a[i] = f[i];
}

double refmoe_rel_err_fd(const float *a, const double *b, int64_t count)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < count; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += b[i] * b[i];
    }
    if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}

void refmoe_scores(int64_t n, int e, int score_fn, const double *logits, double *probs)
{
    for (int64_t t = 0; t < n; t++) {
        const double *l = logits + t * e;
        double *p = probs + t * e;
        if (score_fn == 0) {
            double m = -INFINITY, s = 0.0;
            for (int i = 0; i < e; i++)
                if (l[i] > m) m = l[i];
            for (int i = 0; i < e; i++) s += exp(l[i] - m);
            for (int i = 0; i < e; i++) p[i] = exp(l[i] - m) / s;
        } else {
            for (int i = 0; i < e; i++) p[i] = 1.0 / (1.0 + exp(-l[i]));
        }
    }
}

void refmoe_topk_select(int64_t n, int e, int k, const double *keys, int *idx)
{
    char *taken = calloc((size_t)e, 1);
    for (int64_t t = 0; t < n; t++) {
        memset(taken, 0, (size_t)e);
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int i = 0; i < e; i++)
                if (!taken[i] && (best < 0 || keys[t * e + i] > keys[t * e + best])) best = i;
            if (best < 0) break; /* k > e: cannot happen for valid inputs */
            taken[best] = 1;
            idx[t * k + j] = best;
        }
    }
    free(taken);
}

double refmoe_topk_margin(int64_t n, int e, int k, const double *keys)
{
    int kk = k + 1 < e ? k + 1 : e;
    int *idx = malloc(sizeof(int) * (size_t)kk);
    double margin = INFINITY;
    for (int64_t t = 0; t < n; t++) {
        refmoe_topk_select(1, e, kk, keys + t * e, idx);
        for (int j = 0; j + 1 < kk; j++) {
            double g = keys[t * e + idx[j]] - keys[t * e + idx[j + 1]];
            if (g < margin) margin = g;
        }
    }
    free(idx);
    return margin;
}

void refmoe_router_topk(int64_t n, int e, int k, int score_fn, int renorm, double scale, const double *logits,
                     const double *bias, double *probs, int *idx, double *w)
{
    double *keys = malloc(sizeof(double) * (size_t)(n * e));
    refmoe_scores(n, e, score_fn, logits, probs);
    for (int64_t i = 0; i < n * e; i++) keys[i] = probs[i] + (bias ? bias[i % e] : 0.0);
    refmoe_topk_select(n, e, k, keys, idx);
    for (int64_t t = 0; t < n; t++) {
        double s = 0.0;
        for (int j = 0; j < k; j++) s += probs[t * e + idx[t * k + j]];
        for (int j = 0; j < k; j++) {
            double p = probs[t * e + idx[t * k + j]];
            w[t * k + j] = renorm ? scale * p / (s + 1e-20) : scale * p;
        }
    }
    free(keys);
}

double refmoe_aux_loss(int64_t n, int e, int k, int score_fn, double coef, const double *logits, const int *counts)
{
    if (n == 0) return 0.0;
    double *p = malloc(sizeof(double) * (size_t)(n * e));
    refmoe_scores(n, e, score_fn, logits, p);
    if (score_fn == 1 && k > 1)
        for (int64_t t = 0; t < n; t++) {
            double s = 0.0;
            for (int i = 0; i < e; i++) s += p[t * e + i];
            for (int i = 0; i < e; i++) p[t * e + i] /= s + 1e-20;
        }
    double total = 0.0;
    for (int i = 0; i < e; i++) {
        double col = 0.0;
        for (int64_t t = 0; t < n; t++) col += p[t * e + i];
        total += col * counts[i];
    }
    free(p);
    return coef * e / ((double)n * (double)n * k) * total;
}

double refmoe_z_loss(int64_t n, int e, double coef, const double *logits)
{
    if (n == 0) return 0.0;
    double total = 0.0;
    for (int64_t t = 0; t < n; t++) {
        double s = 0.0;
        for (int i = 0; i < e; i++) s += exp(logits[t * e + i]);
        double lse = log(s);
        total += lse * lse;
    }
    return coef * total / (double)n;
}

void refmoe_balance_stats(int64_t n, int e, int k, const double *probs, const int *idx, double *tokens_fraction,
                       double *prob_mean)
{
    for (int i = 0; i < e; i++) {
        double c = 0.0, s = 0.0;
        for (int64_t t = 0; t < n; t++) {
            s += probs[t * e + i];
            for (int j = 0; j < k; j++) c += idx[t * k + j] == i;
        }
        tokens_fraction[i] = n ? c / (double)n : 0.0;
        prob_mean[i] = n ? s / (double)n : 0.0;
    }
}

void refmoe_expert_choice(int64_t n, int e, int64_t c, const double *logits, double *probs, int *idx, double *w)
{
    refmoe_scores(n, e, 0, logits, probs);
    char *taken = malloc((size_t)n);
    for (int i = 0; i < e; i++) {
        memset(taken, 0, (size_t)n);
        for (int64_t j = 0; j < c; j++) {
            int64_t best = -1;
            for (int64_t t = 0; t < n; t++)
                if (!taken[t] && (best < 0 || probs[t * e + i] > probs[best * e + i])) best = t;
            if (best < 0) break; /* c > n: cannot happen for valid inputs */
            taken[best] = 1;
        }
        int64_t j = 0;
        for (int64_t t = 0; t < n; t++)
            if (taken[t]) {
                idx[i * c + j] = (int)t;
                w[i * c + j] = probs[t * e + i];
                j++;
            }
    }
    free(taken);
}

double refmoe_expert_choice_margin(int64_t n, int e, int64_t c, const double *probs)
{
    if (c >= n) return INFINITY;
    double margin = INFINITY;
    double *col = malloc(sizeof(double) * (size_t)n);
    int *order = malloc(sizeof(int) * (size_t)(c + 1));
    for (int i = 0; i < e; i++) {
        for (int64_t t = 0; t < n; t++) col[t] = probs[t * e + i];
        refmoe_topk_select(1, (int)n, (int)(c + 1), col, order);
        double g = col[order[c - 1]] - col[order[c]];
        if (g < margin) margin = g;
    }
    free(col);
    free(order);
    return margin;
}

void refmoe_gates_token_choice(int64_t n, int e, int k, const int *idx, const double *w, int64_t capacity,
                            double *gates, int *dropped)
{
    memset(gates, 0, sizeof(double) * (size_t)(n * e));
    if (dropped) memset(dropped, 0, sizeof(int) * (size_t)(n * k));
    for (int i = 0; i < e; i++) {
        int64_t kept = 0;
        for (int64_t t = 0; t < n; t++)
            for (int j = 0; j < k; j++) {
                if (idx[t * k + j] != i) continue;
                if (capacity == 0 || kept < capacity) {
                    gates[t * e + i] += w[t * k + j];
                    kept++;
                } else if (dropped) {
                    dropped[t * k + j] = 1;
                }
            }
    }
}

void refmoe_gates_expert_choice(int64_t n, int e, int64_t c, const int *idx, const double *w, double *gates)
{
    memset(gates, 0, sizeof(double) * (size_t)(n * e));
    for (int i = 0; i < e; i++)
        for (int64_t j = 0; j < c; j++) gates[(int64_t)idx[i * c + j] * e + i] += w[i * c + j];
}

void refmoe_dense_moe(int64_t n, int e, int64_t din, int64_t dout, const double *x, const double *gates,
                   const double *W, const double *b, double *y)
{
    for (int64_t t = 0; t < n; t++)
        for (int64_t o = 0; o < dout; o++) {
            double acc = 0.0;
            for (int i = 0; i < e; i++) {
                double g = gates[t * e + i];
                double f = b[(int64_t)i * dout + o];
                for (int64_t q = 0; q < din; q++) f += W[((int64_t)i * dout + o) * din + q] * x[t * din + q];
                acc += g * f;
            }
            y[t * dout + o] = acc;
        }
}
