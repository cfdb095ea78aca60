# What `cmake --install` installs and what `cpack` packs (included by the
# top-level CMakeLists.txt after its subfolders). Three components, one
# Debian package each:
#
#   runtime -> gradacc         bin/gradacc-server, bin/gradacc, bin/gradacc-worker
#   dev     -> gradacc-dev     the client library gradacc::client with the
#                              static libraries it needs (gradacc::common,
#                              ::proto, ::grpc_status, ::auth), their headers
#                              under include/gradacc/ (the repository's paths:
#                              "worker/client/client.h", "common/...",
#                              "gradacc/v1/*.pb.h", "google/rpc/*.pb.h") and
#                              the CMake package lib/cmake/gradacc
#   python  -> python3-gradacc the Python package gradacc (only when the
#                              target gradacc_python exists)
#
# The Debian dependencies of the binaries are computed by dpkg-shlibdeps
# (dpkg-dev, with file; deploy/install-deps.sh) from the libraries they load,
# exact package names with versions; on Debian 12: libabsl20220623,
# libc6, libcivetweb1, libgcc-s1, libgrpc++1.51, libgrpc29, libopenblas0,
# libopenmpi3, libprotobuf32, libssl3, libstdc++6, zlib1g. What no binary
# links is named here (openmpi-bin, for mpirun). The container tier
# (deploy/container-test.sh) installs the packages on a clean Debian 12 and
# checks that every binary finds its libraries and that a project builds
# against gradacc-dev with find_package(gradacc).
include(CMakePackageConfigHelpers)

set(GRADACC_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/gradacc)
set(GRADACC_INSTALL_PYTHONDIR lib/python3/dist-packages CACHE STRING
    "Where the Python package gradacc goes, relative to the prefix (Debian's: lib/python3/dist-packages)")

install(TARGETS gradacc-server gradacc gradacc-worker RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)
# HTTPS for /metrics and the dashboard: the objects civetweb loads as
# libcrypto.so / libssl.so (common/civetweb_tls.h), where the binaries look.
install(TARGETS gradacc_tls_ssl gradacc_tls_crypto LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/gradacc
    COMPONENT runtime)

# The client library and the static libraries it links, as one export set.
set(gradacc_exported gradacc_client gradacc_common gradacc_net gradacc_proto gradacc_grpc_status gradacc_auth)
foreach(target IN LISTS gradacc_exported)
  string(REGEX REPLACE "^gradacc_" "" export_name ${target})
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${export_name})
endforeach()
install(TARGETS ${gradacc_exported} EXPORT gradaccTargets
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/gradacc)
install(EXPORT gradaccTargets NAMESPACE gradacc:: DESTINATION ${GRADACC_INSTALL_CMAKEDIR} COMPONENT dev)
set(gradacc_config_dir ${PROJECT_BINARY_DIR}/cmake-package)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/gradaccConfig.cmake.in ${gradacc_config_dir}/gradaccConfig.cmake
    INSTALL_DESTINATION ${GRADACC_INSTALL_CMAKEDIR})
write_basic_package_version_file(${gradacc_config_dir}/gradaccConfigVersion.cmake
    COMPATIBILITY SameMinorVersion)
install(FILES ${gradacc_config_dir}/gradaccConfig.cmake ${gradacc_config_dir}/gradaccConfigVersion.cmake
    DESTINATION ${GRADACC_INSTALL_CMAKEDIR} COMPONENT dev)

# Headers: the client's public ones and exactly the headers of ours they
# include, followed to the end at configure time (so the set cannot go
# stale), each under include/gradacc/ at its source path; then the
# generated messages and stubs. Nothing else of common/ or worker/ is
# installed (tests/install/install_test.sh checks the set).
set(gradacc_include_dir ${CMAKE_INSTALL_INCLUDEDIR}/gradacc)
set(gradacc_public_headers worker/client/client.h worker/client/training_client.h)
set(gradacc_header_queue ${gradacc_public_headers})
set(gradacc_installed_headers "")
while(gradacc_header_queue)
  list(POP_FRONT gradacc_header_queue header)
  if(header IN_LIST gradacc_installed_headers OR NOT EXISTS ${PROJECT_SOURCE_DIR}/${header})
    continue()
  endif()
  list(APPEND gradacc_installed_headers ${header})
  file(STRINGS ${PROJECT_SOURCE_DIR}/${header} includes REGEX "^#include \"[^\"]+\"")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^#include \"([^\"]+)\".*" "\\1" included "${line}")
    list(APPEND gradacc_header_queue ${included})
  endforeach()
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/${header})
endwhile()
foreach(header IN LISTS gradacc_installed_headers)
  get_filename_component(dir ${header} DIRECTORY)
  install(FILES ${PROJECT_SOURCE_DIR}/${header} DESTINATION ${gradacc_include_dir}/${dir} COMPONENT dev)
endforeach()
install(DIRECTORY ${PROJECT_BINARY_DIR}/proto/gradacc ${PROJECT_BINARY_DIR}/proto/google
    DESTINATION ${gradacc_include_dir} COMPONENT dev FILES_MATCHING PATTERN "*.pb.h")

# The Python package (worker/python, another branch): the pure-Python files
# of worker/python/gradacc/ and the pybind11 extension target gradacc_python,
# into <prefix>/lib/python3/dist-packages/gradacc (Debian's python3 path
# with the prefix /usr). Deferred to the end of the top-level directory, with
# include(CPack) (which lists the install components when included), so that
# the target is seen wherever it is defined.
function(gradacc_finish_packaging)
  if(TARGET gradacc_python)
    set(dir ${GRADACC_INSTALL_PYTHONDIR}/gradacc)
    install(TARGETS gradacc_python LIBRARY DESTINATION ${dir} COMPONENT python)
    if(EXISTS ${PROJECT_SOURCE_DIR}/worker/python/gradacc)
      install(DIRECTORY ${PROJECT_SOURCE_DIR}/worker/python/gradacc/ DESTINATION ${dir} COMPONENT python
          FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)
    endif()
  endif()
  include(CPack)
endfunction()
cmake_language(DEFER CALL gradacc_finish_packaging)

if(TARGET gradacc_cuda)
  # CUDA's libraries come from no Debian package: dpkg-shlibdeps, and so
  # cpack, refuses such a gradacc-worker.
  message(STATUS "gradacc: cpack needs a build without the CUDA backend (-DGRADACC_CUDA=OFF)")
endif()

# --- cpack: one .deb per component -----------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME gradacc)
set(CPACK_PACKAGE_VENDOR gradacc)
set(CPACK_PACKAGE_CONTACT "gradacc maintainers <maintainers@gradacc.invalid>")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # NAME_VERSION_ARCH.deb
set(CPACK_DEBIAN_PACKAGE_SECTION science)

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME gradacc)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_DEPENDS openmpi-bin)
set(CPACK_DEBIAN_RUNTIME_PACKAGE_RECOMMENDS dataset-fashion-mnist)
# A description's first line is the package's synopsis.
set(CPACK_DEBIAN_RUNTIME_DESCRIPTION "distributed gradient accumulation: server, CLI and MPI worker
gradacc-server accumulates the gradients of workers over accumulation windows
and applies PyTorch's optimizers; gradacc-worker trains the built-in MLP
with mpirun; gradacc shows status, steps, health and a dashboard.")

set(CPACK_DEBIAN_DEV_PACKAGE_NAME gradacc-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libgrpc++-dev, libgrpc-dev, protobuf-compiler-grpc, libprotobuf-dev, libabsl-dev, libssl-dev")
set(CPACK_DEBIAN_DEV_DESCRIPTION "gradacc client library for C++ training workers (static)
The client library with its headers and CMake package: find_package(gradacc)
and link gradacc::client.")

set(CPACK_DEBIAN_PYTHON_PACKAGE_NAME python3-gradacc)
set(CPACK_DEBIAN_PYTHON_PACKAGE_SECTION python)
set(CPACK_DEBIAN_PYTHON_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PYTHON_PACKAGE_DEPENDS "python3 (>= 3.11), python3 (<< 3.12), python3-numpy, python3-torch")
set(CPACK_DEBIAN_PYTHON_DESCRIPTION "gradacc for PyTorch: train any nn.Module through a gradacc server
The Python package gradacc (pybind11 over gradacc's client library).")

