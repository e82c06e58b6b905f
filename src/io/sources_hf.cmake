list(APPEND MOE_AREA_SOURCES io/hf_import.c)
