// Portable dequantization of one weight row (group_matmul.h): (q - z) * s in float32,
// bit-exact with the reference.
#include "quant/group_matmul.h"
#include "quant/group_tail.h"

namespace gencore::quant {

void dequantize_row_portable(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                             float* out) {
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    for (int64_t k = k0; k < k1; ++k) out[k] = (float(quantized_at(q, k, bits)) - z[g]) * s[g];
  }
}

}  // namespace gencore::quant
