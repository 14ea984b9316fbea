// Opens the target region of an ISA translation unit (*_<isa>.cpp):
//
//   #include <immintrin.h>           // 1. every header first
//   #include "ood/knn.h"
//
//   #define GENCORE_ISA avx2         // 2. the ISA, as named in gencore/isa_targets.h
//   #include "gencore/isa_begin.h"
//   namespace gencore::ood {
//   namespace { ...helpers... }      // 3. helpers with internal linkage
//   void offer_tile_avx2(...) {...}  //    entry points named *_<isa>
//   }
//   #include "gencore/isa_end.h"
//
// Why a region and not per-file -m flags: with -mavx2 on the command line,
// every inline function and template instantiation the unit emits (std::, the
// project's headers, pybind11's) is compiled with AVX2 as well, as a weak
// symbol; the linker keeps one copy of each, possibly that one, for every
// caller, and baseline code on an older CPU then dies with SIGILL (LTO makes
// it likelier). Inside a region only the functions defined there get the ISA;
// everything declared by the headers above stays baseline, and baseline
// functions may still be inlined into ISA ones. tools/check_isa_symbols.py
// verifies the result on the linked module.
#if !defined(GENCORE_ISA)
#error "define GENCORE_ISA (an ISA of gencore/isa_targets.h) before including gencore/isa_begin.h"
#endif
#if !defined(GENCORE_X86) || !(defined(__x86_64__) || defined(__i386__))
#error "an x86 ISA translation unit is compiled in a build without x86 ISA kernels (see CMakeLists.txt)"
#endif
#if defined(GENCORE_ISA_REGION_OPEN)
#error "gencore/isa_begin.h included twice without gencore/isa_end.h"
#endif
#define GENCORE_ISA_REGION_OPEN 1

#include "gencore/isa_targets.h"

#define GENCORE_ISA_PRAGMA_(text) _Pragma(#text)
#define GENCORE_ISA_TARGET_OF_(isa) GENCORE_TARGET_##isa
#define GENCORE_ISA_TARGET_OF(isa) GENCORE_ISA_TARGET_OF_(isa)

#if defined(__clang__)
// Every function declared in the region (lambdas and templates included) gets
// the target attribute.
#define GENCORE_ISA_PUSH_(features) \
  GENCORE_ISA_PRAGMA_(clang attribute push(__attribute__((target(features))), apply_to = function))
GENCORE_ISA_PUSH_(GENCORE_ISA_TARGET_OF(GENCORE_ISA))
#elif defined(__GNUC__)
#define GENCORE_ISA_PUSH_(features) GENCORE_ISA_PRAGMA_(GCC target(features))
#pragma GCC push_options
GENCORE_ISA_PUSH_(GENCORE_ISA_TARGET_OF(GENCORE_ISA))
#else
#error "gencore's ISA translation units need GCC or Clang"
#endif
