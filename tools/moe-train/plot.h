/* Loss curves as a self-contained SVG file (no plotting library needed). */
#ifndef MOE_TRAIN_PLOT_H
#define MOE_TRAIN_PLOT_H

#include <stdint.h>

typedef struct plot_series {
    const char *label;
    const char *color;    /* CSS colour, e.g. "#1f77b4" */
    const double *x, *y;  /* n points; non-finite y values are skipped */
    int64_t n;
} plot_series;

/* Write an SVG line chart to `path` (atomically: temp file + rename). Returns 0 or -1 (errno set). */
int plot_write_svg(const char *path, const char *title, const char *xlabel, const char *ylabel,
                   const plot_series *series, int nseries);

#endif
