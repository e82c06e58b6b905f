# Router and dispatch ops (token-choice / expert-choice routing, dispatch plan, permute/combine).
list(APPEND MOE_AREA_SOURCES cpu/router.c cpu/dispatch.c)
