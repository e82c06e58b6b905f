list(APPEND MOE_AREA_SOURCES core/rng.c)
