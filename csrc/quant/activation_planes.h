// One activation row quantized into the planes of the integer-activation paths
// (group_matmul_planes.h has the definition: per-group scale sx = max|x| / L_P,
// codes rounded ties to even, balanced base-2^D digits, the int4 block layout).
// The AVX2 unit computes the same bytes and floats as the portable one (division,
// rounding, maxima and the int64 code sums are exact in both); at batch 1 the
// scalar version cost as much as 3% of a 4096 x 4096 int4 product.
#pragma once
#include <cstdint>

#include <cmath>

#include "quant/group_matmul_planes.h"

namespace gencore::quant {

struct ActivationRowShape {
  int64_t K = 0;      // elements of the row
  int64_t group = 0;  // the weight's group size
  int planes = 1;     // P
  int digit = 8;      // D, bits of one digit
  int bits = 4;       // weight width: 4 lays the planes out in 64-element blocks
  float limit = 127;  // L_P, the largest code
};

// The largest code L_P (group_matmul_planes.h): one plane within [-127, 127], or a top plane
// within [-64, 64] (L_3 = 64 * 2^(2D) <= 2^22 keeps the rounding below exact).
inline float activation_code_limit(int planes, int digit) {
  return planes == 1 ? 127.0f : std::ldexp(64.0f, 2 * digit);
}

inline ActivationRowShape activation_row_shape(int64_t K, int64_t group, int planes, int weight_bits) {
  const int digit = digit_bits(weight_bits);
  return {K, group, planes, digit, weight_bits, activation_code_limit(planes, digit)};
}

// src [K] (finite) -> dst [P, K] (planes, laid out for the weight width), sx and xz [G]
// (scales, and the rounded activations' group sums); `code` [K] int32 scratch.
using ActivationRowQuantizer = void (*)(const float* src, const ActivationRowShape& shape, int32_t* code,
                                        int8_t* dst, float* sx, float* xz);
void quantize_activation_row_portable(const float* src, const ActivationRowShape& shape, int32_t* code, int8_t* dst,
                                      float* sx, float* xz);
void quantize_activation_row_avx2(const float* src, const ActivationRowShape& shape, int32_t* code, int8_t* dst,
                                  float* sx, float* xz);
// The quantizer of the SIMD level in use.
ActivationRowQuantizer activation_row_quantizer();

// The whole 64-element blocks that the int4 layout reorders (32 even elements, then 32 odd),
// as [begin, end) of k: every such block of the row for groups of 32 (pairs), else those inside
// each group. Calls fn(k) for each block start.
template <class Fn>
void for_each_int4_block(int64_t K, int64_t group, Fn&& fn) {
  if (group == kPairGroup) {
    for (int64_t k = 0; k + 64 <= K; k += 64) fn(k);
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += group) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    for (int64_t k = k0; k + 64 <= k1; k += 64) fn(k);
  }
}

}  // namespace gencore::quant
