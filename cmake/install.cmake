# Install rules: `cmake --install <build> --prefix <dir>` puts the public headers, libtpcomm, tpcomm-launch and a CMake
# package (exported target tpcomm::tpcomm) under <dir>, so another project builds against it with
#   find_package(tpcomm REQUIRED)   # CMAKE_PREFIX_PATH=<dir>
#   target_link_libraries(app PRIVATE tpcomm::tpcomm)
# (tests/install/consumer is such a project; CI builds it against a fresh install.) The Python wheel runs the same rules
# with the prefix inside the package (site-packages/tpcomm), so a pip install is a C++ install too.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TPCOMM_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/tpcomm)
target_include_directories(tpcomm PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)

if(TPCOMM_BUILD_PYTHON)
  # Inside the wheel libtpcomm sits in site-packages/tpcomm/lib; the CUDA 13 runtime, cuBLASLt and NCCL that PyTorch's
  # wheel depends on are in site-packages/nvidia/{cu13,nccl}/lib (importing torch first loads them anyway).
  set_target_properties(tpcomm PROPERTIES INSTALL_RPATH "$ORIGIN/../../nvidia/cu13/lib;$ORIGIN/../../nvidia/nccl/lib")
else()
  # A plain install keeps finding the CUDA toolkit and NCCL it was linked against.
  set_target_properties(tpcomm PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
endif()
set_target_properties(tpcomm-launch PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}" INSTALL_RPATH_USE_LINK_PATH ON)

install(TARGETS tpcomm EXPORT tpcommTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS tpcomm-launch RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# Public headers only (include/tpcomm/**: host API and the device primitives of tpcomm/device/).
install(DIRECTORY include/tpcomm DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT tpcommTargets NAMESPACE tpcomm:: DESTINATION ${TPCOMM_INSTALL_CMAKEDIR})

# The consumer finds NCCL again (FindNCCL.cmake is installed next to the config); the NCCL this build used is a hint.
get_filename_component(TPCOMM_BUILT_NCCL_ROOT "${NCCL_INCLUDE_DIR}" DIRECTORY)
configure_package_config_file(cmake/tpcommConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/tpcommConfig.cmake
                              INSTALL_DESTINATION ${TPCOMM_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/tpcommConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/tpcommConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/tpcommConfigVersion.cmake
              cmake/FindNCCL.cmake
        DESTINATION ${TPCOMM_INSTALL_CMAKEDIR})
