// Portable row kernel of the integer-activation paths (group_matmul_planes.h):
// exact integer dot products per plane and group, combined in int64, one float
// multiply-add per group.
#include "quant/group_matmul_planes.h"

#include <algorithm>
#include <vector>

namespace gencore::quant {

namespace {

// One 64-element block laid out (group_matmul_planes.h): the dot products of its first and second 32 elements.
void block_dots(const int8_t* c, const uint8_t* bytes, int64_t& first, int64_t& second) {
  int32_t a = 0, b = 0;
  for (int64_t j = 0; j < 32; ++j) {
    const int32_t d = int32_t(c[j]) * (bytes[j] & 0x0F) + int32_t(c[32 + j]) * (bytes[j] >> 4);
    (j < 16 ? a : b) += d;
  }
  first += a;
  second += b;
}

// Activation rows b < nb against one weight row; dots: G x P scratch.
void one_weight_row(const ActivationPlanes& x, int nb, const uint8_t* w, const float* s, const float* z, int64_t K,
                    int64_t group, std::vector<int64_t>& dots, float* out, int64_t ldo) {
  const int64_t G = (K + group - 1) / group;
  const int P = x.planes;
  for (int b = 0; b < nb; ++b) {
    const int8_t* row = x.codes + b * x.ld;
    std::fill(dots.begin(), dots.end(), 0);
    for (int p = 0; p < P; ++p) {
      const int8_t* c = row + p * K;
      if (group == kPairGroup) {
        int64_t k = 0;
        for (; k + 64 <= K; k += 64) block_dots(c + k, w + k / 2, dots[k / 32 * P + p], dots[(k / 32 + 1) * P + p]);
        for (int64_t g = k / 32; g < G; ++g) dots[g * P + p] = dot_natural_planes(c, w, g * 32, std::min(K, g * 32 + 32));
      } else {
        for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
          const int64_t k1 = std::min(K, k0 + group);
          int64_t k = k0;
          for (; k + 64 <= k1; k += 64) block_dots(c + k, w + k / 2, dots[g * P + p], dots[g * P + p]);
          dots[g * P + p] += dot_natural_planes(c, w, k, k1);
        }
      }
    }
    const float* sx = x.scales + b * x.ldg;
    const float* xz = x.sums + b * x.ldg;
    float total = 0.0f;
    for (int64_t g = 0; g < G; ++g)
      total += s[g] * (sx[g] * float(combine_planes(&dots[g * P], P)) - z[g] * xz[g]);
    out[b * ldo] = total;
  }
}

}  // namespace

void group_rows_planes_portable(const ActivationPlanes& x, int nb, const WeightRows& rows, int64_t K, int64_t group,
                                float* out, int64_t ldo) {
  std::vector<int64_t> dots(static_cast<size_t>((K + group - 1) / group * x.planes));  // [G, P]
  for (int r = 0; r < rows.rows; ++r)
    one_weight_row(x, nb, rows.data + r * rows.data_stride, rows.scales + r * rows.scale_stride,
                   rows.zeros + r * rows.scale_stride, K, group, dots, out + r, ldo);
}

}  // namespace gencore::quant
