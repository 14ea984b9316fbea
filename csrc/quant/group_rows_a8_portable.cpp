// Portable row kernel of the int8-activation path (group_matmul_a8.h): exact
// integer dot products per group, one float multiply-add per group.
#include "quant/group_matmul_a8.h"

#include <algorithm>
#include <vector>

namespace gencore::quant {

namespace {

// One 64-element block laid out (group_matmul_a8.h): the dot products of its first and second 32 elements.
void block_dots(const int8_t* c, const uint8_t* bytes, int32_t& first, int32_t& second) {
  for (int64_t j = 0; j < 32; ++j) {
    const int32_t d = int32_t(c[j]) * (bytes[j] & 0x0F) + int32_t(c[32 + j]) * (bytes[j] >> 4);
    (j < 16 ? first : second) += d;
  }
}

}  // namespace

void group_rows_a8_portable(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                            const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group, float* out,
                            int64_t ldo) {
  const int64_t G = (K + group - 1) / group;
  std::vector<int32_t> dots(static_cast<size_t>(G));
  for (int b = 0; b < nb; ++b) {
    const int8_t* c = xc + b * ldx;
    std::fill(dots.begin(), dots.end(), 0);
    if (group == kPairGroup) {
      int64_t k = 0;
      for (; k + 64 <= K; k += 64) block_dots(c + k, w + k / 2, dots[k / 32], dots[k / 32 + 1]);
      for (int64_t g = k / 32; g < G; ++g) dots[g] = dot_natural_a8(c, w, g * 32, std::min(K, g * 32 + 32));
    } else {
      for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
        const int64_t k1 = std::min(K, k0 + group);
        int64_t k = k0;
        for (; k + 64 <= k1; k += 64) block_dots(c + k, w + k / 2, dots[g], dots[g]);
        dots[g] += dot_natural_a8(c, w, k, k1);
      }
    }
    float total = 0.0f;
    for (int64_t g = 0; g < G; ++g) total += s[g] * xs[b * ldg + g] * float(dots[g] - z[g] * xsum[b * ldg + g]);
    out[b * ldo] = total;
  }
}

}  // namespace gencore::quant
