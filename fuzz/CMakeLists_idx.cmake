# libFuzzer target for the Megatron .idx parser and the dataset sampler; included by
# fuzz/CMakeLists.txt after its MOE_FUZZ / clang checks (MOE_FUZZ_FLAGS comes from there):
#   build-fuzz/fuzz/fuzz_idx -dict=fuzz/idx.dict NEW_DIR fuzz/corpus/idx
# Input layout is described at the top of fuzz_idx.c; the seed corpus holds valid datasets of every
# integer dtype, a multimodal index, a text input and malformed indexes.
add_executable(fuzz_idx fuzz_idx.c ${moe_SOURCE_DIR}/src/io/dataset.c)
target_compile_options(fuzz_idx PRIVATE ${MOE_FUZZ_FLAGS} ${MOE_WARNINGS})
target_compile_definitions(fuzz_idx PRIVATE _POSIX_C_SOURCE=200809L)
target_link_options(fuzz_idx PRIVATE -fsanitize=fuzzer,address,undefined)
target_link_libraries(fuzz_idx PRIVATE moe_internal)

if(MOE_BUILD_TESTS)
  # 20 seconds from the seed corpus; new inputs go to a scratch folder, never into the source tree.
  set(_work_idx ${CMAKE_CURRENT_BINARY_DIR}/corpus-idx)
  file(MAKE_DIRECTORY ${_work_idx})
  add_test(NAME fuzz_idx_smoke
           COMMAND fuzz_idx -max_total_time=20 -rss_limit_mb=2048 -timeout=10
                   -dict=${CMAKE_CURRENT_SOURCE_DIR}/idx.dict
                   ${_work_idx} ${CMAKE_CURRENT_SOURCE_DIR}/corpus/idx)
  set_tests_properties(fuzz_idx_smoke PROPERTIES TIMEOUT 120 ENVIRONMENT "OMP_NUM_THREADS=1")
endif()
