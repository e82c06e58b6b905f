list(APPEND MOE_AREA_SOURCES
  optim/optimizer.c
  optim/train.c
  optim/zero.c
)
