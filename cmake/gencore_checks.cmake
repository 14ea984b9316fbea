# Post-link checks of the built modules: a build that would produce a module
# which cannot be imported (or runs code the CPU may not have) fails here, at
# build time, instead of degrading silently to the torch reference at import.

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
