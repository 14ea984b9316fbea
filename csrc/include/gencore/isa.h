// The one run-time choice of an ISA-specific kernel, made once per call and
// outside hot loops. Every dispatch site names its candidates through
// GENCORE_ISA_FN, so a build without the x86 ISA translation units (aarch64,
// GENCORE_PORTABLE_ONLY) never references their symbols: it links nothing
// that is missing and picks the portable candidate.
//
//   auto norm = pick_isa(squared_norm_scalar, GENCORE_ISA_FN(squared_norm_avx2),
//                        GENCORE_ISA_FN(squared_norm_avx512));
#pragma once
#include <type_traits>

#include "gencore/config.h"
#include "gencore/simd.h"

#if defined(GENCORE_X86)
#define GENCORE_ISA_FN(fn) (&(fn))
#else
#define GENCORE_ISA_FN(fn) nullptr
#endif

namespace gencore {

template <typename T>
struct same_type {
  using type = T;
};

// The candidate for the SIMD level in use (simd_level(), which honours
// GENCORE_SIMD / set_simd_level), falling back level by level past null
// candidates:
//   avx512bf16  when the level is avx512 and the CPU has AVX512-BF16,
//   avx512vnni  when the level is avx512 and the CPU has AVX512-VNNI,
//   avx512      at level avx512,
//   avxvnni     at level avxvnni or above when the CPU has AVX-VNNI,
//   avx2        at level avx2 or above,
//   scalar      otherwise.
// `scalar` may itself be null where the caller keeps a path of its own (the
// bf16 screen of kNN falls back to the BLAS path); callers then test the result.
template <typename Fn>
Fn pick_isa(Fn scalar, typename same_type<Fn>::type avx2, typename same_type<Fn>::type avx512,
            typename same_type<Fn>::type avx512bf16 = nullptr, typename same_type<Fn>::type avx512vnni = nullptr,
            typename same_type<Fn>::type avxvnni = nullptr) {
  const SimdLevel level = simd_level();
  if (level >= SimdLevel::avx512) {
    if (avx512bf16 && cpu_has_avx512_bf16()) return avx512bf16;
    if (avx512vnni && cpu_has_avx512_vnni()) return avx512vnni;
    if (avx512) return avx512;
  }
  if (level >= SimdLevel::avxvnni && avxvnni && cpu_has_avx_vnni()) return avxvnni;
  if (level >= SimdLevel::avx2 && avx2) return avx2;
  return scalar;
}

// For kernels whose float32 row primitives come in one table per SIMD level
// (Table<float> factories in the ISA units) beside a portable template for
// every element type: the table for T. float32 picks as pick_isa does; other
// types (float64) always get the portable table.
//
//   const auto ops = pick_row_table<T, LogitRowOps>(logit_row_ops_portable<T>,
//       GENCORE_ISA_FN(logit_row_ops_avx2), GENCORE_ISA_FN(logit_row_ops_avx512));
template <typename T, template <typename> class Table>
Table<T> pick_row_table(Table<T> (*portable)(), Table<float> (*avx2)(), Table<float> (*avx512)()) {
  if constexpr (std::is_same_v<T, float>)
    return pick_isa(portable, avx2, avx512)();
  else
    return portable();
}

}  // namespace gencore
