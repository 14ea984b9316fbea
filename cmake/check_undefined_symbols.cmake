# Fails when a built module needs a dynamic symbol that nothing will provide.
#
#   cmake -DNM=<nm of the target toolchain> -DMODULE=<module.so> -P check_undefined_symbols.cmake
#
# A Python extension is linked without --no-undefined (the Py* symbols come from
# the interpreter that loads it), so a call to a function that was never
# compiled (an ISA kernel dropped from a portable build, say) links fine and
# only fails at import, where gencore then silently runs the torch reference.
# Allowed undefined symbols:
#   * the interpreter's own: Py*, _Py*;
#   * versioned symbols of the system libraries (glibc, libstdc++, libgcc,
#     libgomp, LLVM's libomp): their version tag proves they come from one;
#   * weak ones (nm types w/v: __gmon_start__, _ITM_*), which may stay unresolved.
# Everything else is listed, demangled, and the script exits non-zero.
if(NOT NM OR NOT MODULE)
  message(FATAL_ERROR "usage: cmake -DNM=<nm> -DMODULE=<file> -P check_undefined_symbols.cmake")
endif()
execute_process(COMMAND "${NM}" -D --undefined-only "${MODULE}"
                OUTPUT_VARIABLE listing ERROR_VARIABLE nm_error RESULT_VARIABLE nm_rc)
if(NOT nm_rc EQUAL 0)
  message(FATAL_ERROR "undefined-symbol check: '${NM} -D --undefined-only ${MODULE}' failed: ${nm_error}")
endif()

# Version nodes of the libraries a module may rely on being present.
set(system_versions "^(GLIBC|GLIBCXX|CXXABI|GCC|GOMP|OMP|VERSION|LIBOMP)(_|$)")
string(REPLACE "\n" ";" lines "${listing}")
set(bad "")
set(versioned 0)
foreach(line IN LISTS lines)
  string(STRIP "${line}" line)
  if(line STREQUAL "")
    continue()
  endif()
  if(NOT line MATCHES "^([A-Za-z]) +([^ ]+)$")
    message(FATAL_ERROR "undefined-symbol check: cannot parse nm line '${line}'")
  endif()
  set(type "${CMAKE_MATCH_1}")
  set(symbol "${CMAKE_MATCH_2}")
  if(type STREQUAL "w" OR type STREQUAL "v")
    continue()
  endif()
  if(symbol MATCHES "^([^@]+)@+(.+)$")
    set(name "${CMAKE_MATCH_1}")
    set(version "${CMAKE_MATCH_2}")
    math(EXPR versioned "${versioned} + 1")
    if(version MATCHES "${system_versions}")
      continue()
    endif()
  else()
    set(name "${symbol}")
  endif()
  if(name MATCHES "^_?Py")
    continue()
  endif()
  list(APPEND bad "${symbol}")
endforeach()

# An nm that does not print versions would make every libc symbol look missing.
if(versioned EQUAL 0 AND bad)
  message(FATAL_ERROR "undefined-symbol check: ${NM} printed no symbol versions; "
                      "use GNU nm (binutils >= 2.35) or llvm-nm >= 13")
endif()
if(bad)
  find_program(CXXFILT NAMES c++filt llvm-cxxfilt)
  set(report "")
  foreach(symbol IN LISTS bad)
    set(pretty "${symbol}")
    if(CXXFILT)
      execute_process(COMMAND "${CXXFILT}" "${symbol}" OUTPUT_VARIABLE pretty OUTPUT_STRIP_TRAILING_WHITESPACE)
    endif()
    string(APPEND report "\n    ${pretty}   [${symbol}]")
  endforeach()
  list(LENGTH bad count)
  get_filename_component(module_name "${MODULE}" NAME)
  message(FATAL_ERROR "undefined-symbol check: ${module_name} needs ${count} symbol(s) that no "
                      "library provides; importing it would fail:${report}")
endif()
message(STATUS "undefined-symbol check: ${MODULE}: ok")
