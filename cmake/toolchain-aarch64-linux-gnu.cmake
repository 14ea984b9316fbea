# Cross-compiling for aarch64 Linux with Debian's g++-aarch64-linux-gnu, as
# tools/cross_check_aarch64.sh does: the build an ARM machine makes (no x86
# ISA units, since CMAKE_SYSTEM_PROCESSOR is not x86), linked against the
# aarch64 libstdc++/libgomp, so the undefined-symbol check can prove the
# module would load there. The Python headers and pybind11 come from the host:
# the module is compiled and inspected, never run.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(GENCORE_CROSS_PREFIX aarch64-linux-gnu-)
set(CMAKE_C_COMPILER ${GENCORE_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${GENCORE_CROSS_PREFIX}g++)
# The target's binutils: the post-link checks read aarch64 objects.
set(CMAKE_NM ${GENCORE_CROSS_PREFIX}nm CACHE FILEPATH "nm of the aarch64 toolchain")
set(CMAKE_STRIP ${GENCORE_CROSS_PREFIX}strip CACHE FILEPATH "strip of the aarch64 toolchain")
set(CMAKE_OBJDUMP ${GENCORE_CROSS_PREFIX}objdump CACHE FILEPATH "objdump of the aarch64 toolchain")

set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
# Tools run on the host; libraries only from the target's root; headers and
# CMake packages (Python.h, pybind11) from the host as well.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
