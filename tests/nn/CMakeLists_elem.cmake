# Tests of the elementwise CPU ops (embedding, cross-entropy, activations, optimizer kernels), each
# against the fp64 references in ref_elem.c.
foreach(t test_embed test_loss test_activation test_optim_kernels)
  moe_unit_test(NAME ${t} SOURCES ${CMAKE_CURRENT_LIST_DIR}/${t}.c ${CMAKE_CURRENT_LIST_DIR}/ref_elem.c
                INTERNAL TIMEOUT 60)
endforeach()
