# Post-link checks of the built modules: a build that would produce a module
# which cannot be imported, or which holds ISA code a baseline caller can
# reach, fails here at build time instead of degrading silently at import
# (to the torch reference) or at run time (SIGILL on an older CPU).

set(GENCORE_ISA_TARGETS_HEADER ${CMAKE_CURRENT_LIST_DIR}/../csrc/include/gencore/isa_targets.h)

# The ISA names of gencore/isa_targets.h (`#define GENCORE_TARGET_<isa> "..."`),
# the one list of x86 ISAs; reconfigures when it changes.
function(gencore_isa_names out)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${GENCORE_ISA_TARGETS_HEADER})
  file(STRINGS ${GENCORE_ISA_TARGETS_HEADER} lines REGEX "^#define GENCORE_TARGET_[a-z0-9_]+ ")
  set(names "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^#define GENCORE_TARGET_([a-z0-9_]+) .*$" "\\1" name "${line}")
    list(APPEND names ${name})
  endforeach()
  if(NOT names)
    message(FATAL_ERROR "gencore: no GENCORE_TARGET_<isa> definitions in ${GENCORE_ISA_TARGETS_HEADER}")
  endif()
  set(${out} ${names} PARENT_SCOPE)
endfunction()

# Fails the build of `target` when the linked module has undefined dynamic
# symbols that neither the interpreter nor a system library provides (see
# check_undefined_symbols.cmake). Uses the toolchain's nm, so cross builds
# check with the target's binutils.
function(gencore_check_undefined_symbols target)
  if(NOT CMAKE_NM)
    message(FATAL_ERROR "gencore: no nm found (CMAKE_NM); the undefined-symbol check needs one")
  endif()
  add_custom_command(TARGET ${target} POST_BUILD
    COMMAND ${CMAKE_COMMAND} -DNM=${CMAKE_NM} -DMODULE=$<TARGET_FILE:${target}>
            -P ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/check_undefined_symbols.cmake
    COMMENT "gencore: checking ${target} for undefined symbols"
    VERBATIM)
endfunction()

# What pybind11_add_module's extras do (LTO; strip outside Debug/RelWithDebInfo),
# with the checks in between, on the unstripped module:
#   1. undefined dynamic symbols (always);
#   2. CHECK_ISA: tools/check_isa_symbols.py, no VEX/EVEX code outside the
#      declared ISA entry points and their internal helpers (x86 builds);
#      EXPECT_ISA_CODE: the module has ISA units, so finding none is an error.
# The target must come from pybind11_add_module(... NO_EXTRAS ...).
function(gencore_finish_module target)
  cmake_parse_arguments(ARG "CHECK_ISA;EXPECT_ISA_CODE" "" "" ${ARGN})
  if(NOT DEFINED CMAKE_INTERPROCEDURAL_OPTIMIZATION)
    target_link_libraries(${target} PRIVATE pybind11::lto)
  endif()
  gencore_check_undefined_symbols(${target})
  if(ARG_CHECK_ISA)
    set(expect "")
    if(ARG_EXPECT_ISA_CODE)
      set(expect --expect-isa-code)
    endif()
    find_program(GENCORE_CXXFILT NAMES c++filt llvm-cxxfilt REQUIRED)
    if(NOT CMAKE_OBJDUMP)
      message(FATAL_ERROR "gencore: no objdump found (CMAKE_OBJDUMP); the ISA check needs one")
    endif()
    add_custom_command(TARGET ${target} POST_BUILD
      COMMAND ${Python_EXECUTABLE} ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../tools/check_isa_symbols.py
              --objdump ${CMAKE_OBJDUMP} --nm ${CMAKE_NM} --cxxfilt ${GENCORE_CXXFILT}
              --targets-header ${GENCORE_ISA_TARGETS_HEADER} ${expect} $<TARGET_FILE:${target}>
      COMMENT "gencore: checking ${target} for ISA code outside the ISA entry points"
      VERBATIM)
  endif()
  string(TOUPPER "${CMAKE_BUILD_TYPE}" build_type)
  if(CMAKE_STRIP AND NOT build_type MATCHES "^(DEBUG|RELWITHDEBINFO|NONE)$")
    add_custom_command(TARGET ${target} POST_BUILD COMMAND ${CMAKE_STRIP} $<TARGET_FILE:${target}> VERBATIM)
  endif()
endfunction()
