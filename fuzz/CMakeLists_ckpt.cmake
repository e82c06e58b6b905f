# libFuzzer target for the checkpoint index parser (index.json), from memory. Included by
# fuzz/CMakeLists.txt; built only with -DMOE_FUZZ=ON and clang, like fuzz_safetensors:
#   build-fuzz/fuzz/fuzz_ckpt_index -dict=fuzz/ckpt_index.dict NEW_DIR fuzz/corpus/ckpt_index
if(NOT MOE_FUZZ OR NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  return()
endif()
if(NOT DEFINED MOE_FUZZ_FLAGS)
  set(MOE_FUZZ_FLAGS -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
endif()

add_executable(fuzz_ckpt_index ${CMAKE_CURRENT_LIST_DIR}/fuzz_ckpt_index.c ${moe_SOURCE_DIR}/src/io/checkpoint_index.c)
target_compile_options(fuzz_ckpt_index PRIVATE ${MOE_FUZZ_FLAGS} ${MOE_WARNINGS})
target_compile_definitions(fuzz_ckpt_index PRIVATE _POSIX_C_SOURCE=200809L)
target_link_options(fuzz_ckpt_index PRIVATE -fsanitize=fuzzer,address,undefined)
target_link_libraries(fuzz_ckpt_index PRIVATE moe_internal PkgConfig::CJSON)

if(MOE_BUILD_TESTS)
  # 20 seconds from the seed corpus; new inputs go to a scratch folder, never into the source tree.
  set(_work ${CMAKE_CURRENT_BINARY_DIR}/corpus-ckpt-index)
  file(MAKE_DIRECTORY ${_work})
  add_test(NAME fuzz_ckpt_index_smoke
           COMMAND fuzz_ckpt_index -max_total_time=20 -rss_limit_mb=2048 -timeout=10
                   -dict=${CMAKE_CURRENT_LIST_DIR}/ckpt_index.dict
                   ${_work} ${CMAKE_CURRENT_LIST_DIR}/corpus/ckpt_index)
  set_tests_properties(fuzz_ckpt_index_smoke PROPERTIES TIMEOUT 120 ENVIRONMENT "OMP_NUM_THREADS=1")
endif()
