// One activation row quantized into the planes of the integer-activation paths
// (group_matmul_planes.h has the definition: per-group scale sx = max|x| / L_P,
// codes rounded ties to even, balanced base-2^D digits, the int4 block layout).
// The AVX2 unit computes the same bytes and floats as the portable one (division,
// rounding, maxima and the int64 code sums are exact in both); at batch 1 the
// scalar version cost as much as 3% of a 4096 x 4096 int4 product.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

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

// One element's code round(clamp(x / scale, -limit, limit)), rounded to nearest, ties to even, by
// adding and subtracting 1.5 * 2^23 (exact for |v| <= 2^22): branch-free, so loops of it vectorise
// (lrint / nearbyint do not).
inline int32_t activation_code(float x, float scale, float limit) {
  const float v = std::min(std::max(x / scale, -limit), limit);
  return static_cast<int32_t>((v + 12582912.0f) - 12582912.0f);
}

// The least significant balanced base-2^D digit of c: its low D bits, sign-extended
// (c - digit is then an exact multiple of 2^D).
inline int32_t low_digit(int32_t c, int digit) {
  const int32_t half = 1 << (digit - 1), mask = (1 << digit) - 1;
  return ((c & mask) ^ half) - half;
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

// The row quantizer over one unit's primitives (static members of Ops):
//   group_amax(src, k0, k1) -> max |src[k]|;
//   group_codes(src, k0, k1, scale, limit, code) -> sum of code[k] = round(clamp(src[k] / scale));
//   next_digit(code, K, digit, top, plane): the least significant digit out (the top plane: the rest);
//   lay_out_int4(plane, K, group): the int4 block order, in place.
template <class Ops>
void quantize_activation_row_with(const float* src, const ActivationRowShape& shape, int32_t* code, int8_t* dst,
                                  float* sx, float* xz) {
  const int64_t K = shape.K;
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += shape.group, ++g) {
    const int64_t k1 = k0 + shape.group < K ? k0 + shape.group : K;
    float scale = Ops::group_amax(src, k0, k1) / shape.limit;
    if (scale == 0.0f) scale = 1.0f;
    const int64_t sum = Ops::group_codes(src, k0, k1, scale, shape.limit, code);
    sx[g] = scale;
    xz[g] = static_cast<float>(double(scale) * double(sum));
  }
  // Balanced base-2^D digits, least significant plane last: c = (p0 * 2^D + p1) * 2^D + p2.
  // The top plane is what is left of c (within [-127, 127] or [-64, 64]).
  for (int p = shape.planes - 1; p >= 0; --p) {
    int8_t* const plane = dst + p * K;
    Ops::next_digit(code, K, shape.digit, p == 0, plane);
    if (shape.bits == 4) Ops::lay_out_int4(plane, K, shape.group);
  }
}

// fn(k) for the start k of every whole 64-element block that the int4 layout reorders (32 even
// elements, then 32 odd): all of the row's blocks for groups of 32 (pairs), else those inside
// each group.
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
