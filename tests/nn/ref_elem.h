/* Naive fp64 references for the elementwise CPU ops (embedding, cross-entropy, SwiGLU, GELU, AdamW,
 * SGD), plus the test plumbing they share: a seeded generator, central finite differences and
 * relative errors. Written from the textbook / torch-documented formulas, independently of src/. */
#ifndef MOE_TESTS_REF_ELEM_H
#define MOE_TESTS_REF_ELEM_H

#include <stdint.h>

/* ---- plumbing ---- */
typedef struct ref_rng {
    uint64_t s;
} ref_rng;

double ref_uniform(ref_rng *r, double lo, double hi);
int32_t ref_randint(ref_rng *r, int32_t lo, int32_t hi_exclusive);
void ref_fill(ref_rng *r, float *x, int64_t n, double lo, double hi);
void ref_to_f64(const float *x, double *y, int64_t n);

/* ||a - b|| / ||b|| (||a - b|| when b is all zero). */
double ref_rel_err(const float *a, const double *b, int64_t n);

/* grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps); x is restored. */
typedef double (*ref_scalar_fn)(const double *x, void *user);
void ref_fd_grad(ref_scalar_fn f, double *x, int64_t n, void *user, double eps, double *grad);

/* ---- references ---- */
void ref_embedding(int64_t n, int64_t dim, const double *table, const int32_t *ids, double *out);
/* out[i, :] += table[pos[i], :] */
void ref_pos_add(int64_t n, int64_t dim, const double *table, const int32_t *pos, double *out);

/* Sum of -log softmax(logits[i])[t_i] over rows with t_i != -100; row_loss (may be NULL) gets each
 * row's loss (0 when ignored), *count the counted rows (may be NULL). */
double ref_cross_entropy(int64_t n, int64_t vocab, const double *logits, const int32_t *targets, double *row_loss,
                         int64_t *count);

double ref_silu(double x);
/* out[r, j] = silu(h[r, j]) * h[r, f + j] */
void ref_swiglu_packed(int64_t rows, int64_t f, const double *h, double *out);
/* approx 0 = erf form, 1 = tanh form */
double ref_gelu(double x, int approx);

/* torch.optim.AdamW documented algorithm, in double; mask NULL = decay all. */
void ref_adamw_step(int64_t n, double *p, const double *g, double *m, double *v, const uint8_t *mask, double lr,
                    double beta1, double beta2, double eps, double wd, int64_t step);
/* torch.optim.SGD documented algorithm, in double; buf may be NULL when momentum == 0. */
void ref_sgd_step(int64_t n, double *p, const double *g, double *buf, const uint8_t *mask, double lr,
                  double momentum, double dampening, double wd, int nesterov, int64_t step);

#endif
