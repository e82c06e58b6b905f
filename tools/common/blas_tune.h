/* BLAS kernel choice for the command-line tools.
 *
 * OpenBLAS 0.3.21 (Debian 12) picks its Haswell (AVX2) kernels on AVX-512 CPUs it does not know,
 * such as AMD Zen 4; its SkylakeX (AVX-512) kernels run sgemm about 1.7x faster there (measured:
 * 410 vs 240 GFLOP/s on 2 cores) and a matmul-heavy training step 1.45x faster. OpenBLAS reads
 * OPENBLAS_CORETYPE only while it loads, so when a tool finds that case it sets the variable and
 * executes itself again, once, before doing anything else. Set OPENBLAS_CORETYPE yourself to
 * choose otherwise, or MOE_KEEP_BLAS_CORE=1 to keep OpenBLAS's own choice. */
#ifndef MOE_TOOLS_BLAS_TUNE_H
#define MOE_TOOLS_BLAS_TUNE_H

#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

char *openblas_get_corename(void);

static inline void tools_prefer_avx512_blas(char **argv)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (getenv("OPENBLAS_CORETYPE") || getenv("MOE_KEEP_BLAS_CORE")) return;
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "haswell") != 0) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512dq"))
        return;
    if (setenv("OPENBLAS_CORETYPE", "SKYLAKEX", 1) != 0) return;
    execv("/proc/self/exe", argv); /* returns only on failure: carry on with the Haswell kernels */
#else
    (void)argv;
#endif
}

#endif
