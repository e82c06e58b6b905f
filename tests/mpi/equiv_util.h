/* Shared by the multi-rank equivalence tests: how far this rank's slice of a parameter is from the
 * same slice of the single-rank model's whole tensor. */
#ifndef MOE_TESTS_MPI_EQUIV_UTIL_H
#define MOE_TESTS_MPI_EQUIV_UTIL_H

#include <math.h>

#include "nn/params.h"

/* ||a - b[slice]|| / ||b[slice]|| for this rank's slice `a` of entry e and the whole tensor `whole`. */
static inline double eq_slice_rel(const moei_param *e, const float *a, const float *whole)
{
    double d2 = 0.0, r2 = 0.0;
    for (int64_t j = 0; j < e->numel; j++) {
        double y = whole[moei_param_full_index(e, j)];
        d2 += ((double)a[j] - y) * ((double)a[j] - y);
        r2 += y * y;
    }
    return sqrt(d2 / (r2 > 0 ? r2 : 1));
}

#endif
