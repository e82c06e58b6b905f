/* Naive fp64 references for the norm, RoPE, ALiBi and attention tests: the textbook formulas with
 * nothing shared with the library (explicit T x T scores, angles in double), plus a seeded RNG,
 * central finite differences and error measures. */
#ifndef MOE_TESTS_NN_REF_ATTN_H
#define MOE_TESTS_NN_REF_ATTN_H

#include <stddef.h>
#include <stdint.h>

typedef struct ref_rng {
    uint64_t s;
} ref_rng;

void ref_rng_seed(ref_rng *r, uint64_t seed);
double ref_uniform(ref_rng *r); /* in [-1, 1) */
void ref_fill(ref_rng *r, float *x, size_t n, float amplitude);

double *ref_to_double(const float *x, size_t n); /* malloc'd copy */
/* ||a - b|| / ||b||, or ||a - b|| when b is all zero. */
double ref_rel_err(const float *a, const double *b, size_t n);

/* Gradient of loss() with respect to param[0 .. n) by central differences; loss() reads param. */
typedef double (*ref_loss_fn)(void *user);
void ref_fd_grad(ref_loss_fn loss, void *user, double *param, size_t n, double eps, double *grad);
/* The derivative of loss() along direction dir (same length as param), by central differences. */
double ref_fd_dir(ref_loss_fn loss, void *user, double *param, const double *dir, size_t n, double eps);

void ref_rmsnorm(int64_t n, int64_t d, double eps, const double *x, const double *w, double *y);
void ref_layernorm(int64_t n, int64_t d, double eps, const double *x, const double *w, const double *b, double *y);

/* y [tokens, heads, D] = x rotated by pos[t] * theta^(-2i/D) on the pairs (i, i + D/2). */
void ref_rope(int64_t tokens, int64_t heads, int64_t D, const int32_t *pos, double theta, const double *x, double *y);

/* ALiBi slopes as the paper's reference code defines them (recursively for non powers of two). */
void ref_alibi_slopes(int64_t heads, double *slopes);

/* Causal attention with explicit scores; slopes may be NULL; lse [B, H, T] may be NULL. */
void ref_attention(int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t D, double scale, const double *slopes,
                   const double *q, const double *k, const double *v, double *out, double *lse);

#endif
