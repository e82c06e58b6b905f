# Install rules: headers, library, pkg-config file, CMake package moe::moe (SameMajorVersion).
include(CMakePackageConfigHelpers)

install(TARGETS moe EXPORT moeTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/moe DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")

set(MOE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/moe)
install(EXPORT moeTargets NAMESPACE moe:: DESTINATION ${MOE_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/moeConfig.cmake.in
  ${PROJECT_BINARY_DIR}/moeConfig.cmake INSTALL_DESTINATION ${MOE_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/moeConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/moeConfig.cmake ${PROJECT_BINARY_DIR}/moeConfigVersion.cmake
  DESTINATION ${MOE_CMAKE_DIR})

# pkg-config: the shared library needs nothing from its users' link line; private deps are listed
# for static linking only.
set(MOE_PC_REQUIRES_PRIVATE "openblas libcjson libxxhash")
set(MOE_PC_LIBS_PRIVATE "-fopenmp -lpthread -lm")
if(MOE_CUDA)
  string(APPEND MOE_PC_LIBS_PRIVATE " -L${CUDAToolkit_LIBRARY_DIR} -lcublas -lcudart")
endif()
if(MOE_NCCL)
  get_filename_component(_moe_nccl_dir ${MOE_NCCL_LIBRARY} DIRECTORY)
  string(APPEND MOE_PC_LIBS_PRIVATE " -L${_moe_nccl_dir} -lnccl")
endif()
if(MOE_MPI)
  string(APPEND MOE_PC_REQUIRES_PRIVATE " ompi-c")
endif()
configure_file(${PROJECT_SOURCE_DIR}/pkgconfig/moe.pc.in ${PROJECT_BINARY_DIR}/moe.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/moe.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
