// Portable quantization of one activation row into planes (activation_planes.h).
#include "quant/activation_planes.h"

#include <algorithm>
#include <cmath>

#include "gencore/isa.h"

namespace gencore::quant {
namespace {

struct PortableRowOps {
  static float group_amax(const float* src, int64_t k0, int64_t k1) {
    float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // independent maxima: the loop vectorises
    for (int64_t k = k0; k < k1; ++k) part[(k - k0) & 7] = std::max(part[(k - k0) & 7], std::fabs(src[k]));
    return *std::max_element(part, part + 8);
  }

  static int64_t group_codes(const float* src, int64_t k0, int64_t k1, float scale, float limit, int32_t* code) {
    int64_t sum = 0;
    for (int64_t k = k0; k < k1; ++k) {
      code[k] = activation_code(src[k], scale, limit);
      sum += code[k];
    }
    return sum;
  }

  // Restrict pointers: the int8 stores may otherwise alias the codes, and the loop would not vectorise.
  static void next_digit(int32_t* __restrict code, int64_t K, int digit, bool top, int8_t* __restrict dst) {
    if (top) {
      for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<int8_t>(code[k]);
      return;
    }
    for (int64_t k = 0; k < K; ++k) {
      const int32_t low = low_digit(code[k], digit);
      dst[k] = static_cast<int8_t>(low);
      code[k] = (code[k] - low) >> digit;
    }
  }

  static void lay_out_int4(int8_t* plane, int64_t K, int64_t group) {
    for_each_int4_block(K, group, [&](int64_t k) {
      int8_t block[64];
      for (int64_t j = 0; j < 32; ++j) {
        block[j] = plane[k + 2 * j];
        block[32 + j] = plane[k + 2 * j + 1];
      }
      std::copy(block, block + 64, plane + k);
    });
  }
};

}  // namespace

void quantize_activation_row_portable(const float* src, const ActivationRowShape& shape, int32_t* code, int8_t* dst,
                                      float* sx, float* xz) {
  quantize_activation_row_with<PortableRowOps>(src, shape, code, dst, sx, xz);
}

ActivationRowQuantizer activation_row_quantizer() {
  return pick_isa<ActivationRowQuantizer>(quantize_activation_row_portable, GENCORE_ISA_FN(quantize_activation_row_avx2),
                                          nullptr);
}

}  // namespace gencore::quant
