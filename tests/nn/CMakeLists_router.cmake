# Router, losses, expert choice, dispatch plan and permute/combine against the fp64 references.
moe_unit_test(NAME test_router SOURCES test_router.c ref_moe.c INTERNAL TIMEOUT 60)
moe_unit_test(NAME test_dispatch SOURCES test_dispatch.c ref_moe.c INTERNAL TIMEOUT 60)
