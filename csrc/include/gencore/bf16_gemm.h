// bf16 screening GEMM: a [m, depth] · b [n, depth]^T -> c [m, n] in fp32, from
// operands rounded to bf16 (vdpbf16ps does twice the multiply-adds of an fp32 FMA
// per instruction). Generic: a caller bounds the error of each entry (the model
// below) and recomputes in fp32 whatever the bound cannot decide; exact kNN
// (csrc/ood/knn_screened.cpp) keeps the candidates that might be in its top-k.
//
// Only plain C++ types here: this header is included by baseline translation units;
// the *_avx512bf16 functions are defined in csrc/common/bf16_gemm_avx512bf16.cpp and
// may only be entered after cpu_has_avx512_bf16() said yes.
//
// Packed layouts (uint16_t bf16 elements; one "pair" = depth elements 2q and 2q+1 of
// one row, low half first, i.e. one 32-bit word; kp = ceil(depth / 2), and for odd
// depth the last pair's high half is zero):
//   A (rows of a, e.g. queries): panels of kBf16PanelA = 8 rows. Panel p holds rows 8p..8p+7; word
//     (p * kp + q) * 8 + r is pair q of row 8p + r. Rows >= m are zero.
//   B (rows of b, e.g. a bank):  panels of kBf16PanelB = 48 rows, same scheme:
//     word (p * kp + q) * 48 + j is pair q of row 48p + j. Rows >= n are zero.
// So one kernel step reads 8 consecutive A words (broadcast one at a time) and 48
// consecutive B words (three 16-lane vectors), both sequentially along depth.
// Panels are independent: rows [r0, r1) with r0 a multiple of the panel height pack
// to exactly the slice at offset bf16_packed_elems_a/b(r0, depth) of the whole pack,
// so tiles may be packed (and multiplied) separately, by different threads.
//
// Numerics (checked on this Zen 5 and matching Intel's definition of vdpbf16ps):
// products of two bf16 are exact in fp32; each pair adds its two products to the fp32
// accumulator one at a time, each addition rounded to nearest even, pairs in depth
// order, so an entry obeys the recursive-summation bound
// |c - sum_d a_d b_d| <= gamma_depth * sum_d |a_d b_d| for the bf16-rounded inputs,
// gamma_k = k u / (1 - k u), u = 2^-24.
// The instruction also reads bf16 subnormals (|x| < 2^-126) as zero and flushes
// subnormal products and sums to zero: a rigorous bound adds an absolute
// depth * 2^-126 * (2 + max(|a|, |b|)), which only matters near the bottom of the
// fp32 range. The pack itself is exact round-to-nearest-even of each fp32 value
// (subnormals kept, NaN stays NaN, overflow rounds to inf).
//
// Buffers need no particular alignment (64-byte alignment measured no faster).
#pragma once
#include <cstdint>

#include "gencore/config.h"

namespace gencore {

inline constexpr int64_t kBf16PanelA = 8;   // rows per A panel (micro-tile height)
inline constexpr int64_t kBf16PanelB = 48;  // rows per B panel (micro-tile width: 3 x 16 lanes)

// Inline here, outside the AVX-512 unit's target region: baseline code, whichever
// unit's copy the linker keeps.
inline int64_t bf16_packed_elems_a(int64_t rows, int64_t depth) {
  const int64_t panels = (rows + kBf16PanelA - 1) / kBf16PanelA;
  return panels * kBf16PanelA * ((depth + 1) / 2) * 2;
}
inline int64_t bf16_packed_elems_b(int64_t rows, int64_t depth) {
  const int64_t panels = (rows + kBf16PanelB - 1) / kBf16PanelB;
  return panels * kBf16PanelB * ((depth + 1) / 2) * 2;
}

// The kernels of one ISA. All single-threaded and allocation-free; callers
// parallelise over tiles of a and b.
struct Bf16GemmKernels {
  // src [rows, depth] fp32 with row stride ld (elements) -> dst, bf16_packed_elems_a/b
  // elements in the layout above (every element written, padding included).
  void (*pack_a)(const float* src, int64_t rows, int64_t ld, int64_t depth, uint16_t* dst) = nullptr;
  void (*pack_b)(const float* src, int64_t rows, int64_t ld, int64_t depth, uint16_t* dst) = nullptr;
  // a_packed from pack_a (m rows), b_packed from pack_b (n rows), same depth.
  // c [m, n] with row stride ldc: c[i * ldc + j] = sum_d A[i, d] * B[j, d] (overwritten;
  // nothing outside i < m, j < n is touched).
  void (*gemm_abt)(const uint16_t* a_packed, int64_t m, const uint16_t* b_packed, int64_t n,
                   int64_t depth, float* c, int64_t ldc) = nullptr;

  explicit operator bool() const { return gemm_abt != nullptr; }
};

// The kernels for the SIMD level in use, or an empty (false) table where this CPU
// or this build has no bf16 dot product: callers keep an fp32 path. Pick once per call.
Bf16GemmKernels bf16_gemm_kernels();

// Per ISA (internal; bf16_gemm_kernels() picks among them).
Bf16GemmKernels bf16_gemm_kernels_avx512bf16();

}  // namespace gencore
