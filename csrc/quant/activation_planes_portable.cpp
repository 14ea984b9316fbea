// Portable quantization of one activation row into planes (activation_planes.h).
#include "quant/activation_planes.h"

#include <algorithm>
#include <cmath>

#include "gencore/isa.h"

namespace gencore::quant {
namespace {

// code [K] -> its least significant balanced base-2^D digit at digit [K] (the top plane: what is left
// of the code), the rest of the code kept in `code`. Restrict pointers: the int8 stores may
// otherwise alias the codes, and the loop would not vectorise.
void next_digit(int32_t* __restrict code, int64_t K, int digit, bool top, int8_t* __restrict dst) {
  const int32_t half = 1 << (digit - 1), mask = (1 << digit) - 1;
  if (top) {
    for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<int8_t>(code[k]);
    return;
  }
  for (int64_t k = 0; k < K; ++k) {
    const int32_t low = ((code[k] & mask) ^ half) - half;  // the low D bits, sign-extended
    dst[k] = static_cast<int8_t>(low);
    code[k] = (code[k] - low) >> digit;  // exact: c - low is a multiple of 2^D
  }
}

// One plane of natural order in place -> the int4 layout (each whole block: 32 even, then 32 odd).
void lay_out_int4(int8_t* plane, int64_t K, int64_t group) {
  for_each_int4_block(K, group, [&](int64_t k) {
    int8_t block[64];
    for (int64_t j = 0; j < 32; ++j) {
      block[j] = plane[k + 2 * j];
      block[32 + j] = plane[k + 2 * j + 1];
    }
    std::copy(block, block + 64, plane + k);
  });
}

}  // namespace

void quantize_activation_row_portable(const float* src, const ActivationRowShape& shape, int32_t* code, int8_t* dst,
                                      float* sx, float* xz) {
  const int64_t K = shape.K;
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += shape.group, ++g) {
    const int64_t k1 = std::min(K, k0 + shape.group);
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent maxima: the loop vectorises
    for (int64_t k = k0; k < k1; ++k) part[(k - k0) & 7] = std::max(part[(k - k0) & 7], std::fabs(src[k]));
    const float amax = *std::max_element(part, part + 8);
    float scale = amax / shape.limit;
    if (scale == 0.0f) scale = 1.0f;
    int64_t sum = 0;
    for (int64_t k = k0; k < k1; ++k) {
      // Rounded to nearest, ties to even, by adding and subtracting 1.5 * 2^23 (exact for
      // |v| <= 2^22): branch-free, so the loop vectorises (lrint / nearbyint do not).
      const float v = std::clamp(src[k] / scale, -shape.limit, shape.limit);
      code[k] = static_cast<int32_t>((v + 12582912.0f) - 12582912.0f);
      sum += code[k];
    }
    sx[g] = scale;
    xz[g] = static_cast<float>(double(scale) * double(sum));
  }
  // Balanced base-2^D digits, least significant plane last: c = (p0 * 2^D + p1) * 2^D + p2.
  // The top plane is what is left of c (within [-127, 127] or [-64, 64]).
  for (int p = shape.planes - 1; p >= 0; --p) {
    int8_t* const plane = dst + p * K;
    next_digit(code, K, shape.digit, p == 0, plane);
    if (shape.bits == 4) lay_out_int4(plane, K, shape.group);
  }
}

ActivationRowQuantizer activation_row_quantizer() {
  return pick_isa<ActivationRowQuantizer>(quantize_activation_row_portable, GENCORE_ISA_FN(quantize_activation_row_avx2),
                                          nullptr);
}

}  // namespace gencore::quant
