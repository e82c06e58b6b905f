# CPU backend sources (paths relative to src/). gemm.c is listed in src/CMakeLists.txt itself.

# norms, positions, attention
list(APPEND MOE_AREA_SOURCES
  cpu/norm.c
  cpu/rope.c
  cpu/attention.c
)
