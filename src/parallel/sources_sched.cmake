# Pipeline-parallel schedules (pure functions) and their validator.
list(APPEND MOE_AREA_SOURCES parallel/schedule.c)
