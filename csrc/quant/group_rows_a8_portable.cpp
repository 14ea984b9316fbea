// Portable row kernel of the int8-activation path (group_matmul_a8.h): exact
// integer dot products per group, one float multiply-add per group.
#include "quant/group_matmul_a8.h"

namespace gencore::quant {

void group_rows_a8_portable(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                            const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group,
                            int64_t block, float* out, int64_t ldo) {
  const int64_t half = block / 2;
  for (int b = 0; b < nb; ++b) {
    const int8_t* c = xc + b * ldx;
    float total = 0.0f;
    for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
      const int64_t k1 = k0 + group < K ? k0 + group : K;
      const int64_t whole = k0 + (k1 - k0) / block * block;
      int32_t dot = 0;
      for (int64_t k = k0; k < whole; k += block) {
        const uint8_t* bytes = w + k / 2;
        for (int64_t j = 0; j < half; ++j)
          dot += int32_t(c[k + j]) * (bytes[j] & 0x0F) + int32_t(c[k + half + j]) * (bytes[j] >> 4);
      }
      dot += dot_natural_a8(c, w, whole, k1);
      total += s[g] * xs[b * ldg + g] * float(dot - z[g] * xsum[b * ldg + g]);
    }
    out[b * ldo] = total;
  }
}

}  // namespace gencore::quant
