# io: checkpoints (save/load with an xxHash64 per tensor) and the Hugging Face Mixtral export.
# libxxhash comes from pkg-config; the imported target is GLOBAL so that the fuzz targets and tests
# in other directories can link it too. src/CMakeLists.txt links MOE_AREA_LIBS into the library.
list(APPEND MOE_AREA_SOURCES io/checkpoint.c io/checkpoint_fs.c io/checkpoint_index.c io/hf_export.c)
if(NOT TARGET PkgConfig::XXHASH)
  pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET GLOBAL libxxhash)
endif()
list(APPEND MOE_AREA_LIBS PkgConfig::XXHASH)
