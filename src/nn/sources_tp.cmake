# Tensor and sequence parallelism (paths relative to src/).
list(APPEND MOE_AREA_SOURCES
  nn/tp.c
  nn/tp_moe.c
  nn/tp_model.c
  cpu/loss_parallel.c
)
