// Portable row kernel of the integer-activation paths (group_matmul_planes.h):
// exact integer dot products per plane and group, combined in int64, one float
// multiply-add per group. int4 codes meet the laid-out activation blocks, int8
// codes the natural order.
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

// One plane c of one activation row against int4 codes w: dots[g * P] += the group dot products.
void int4_group_dots(const int8_t* c, const uint8_t* w, int64_t K, int64_t group, int P, int64_t* dots) {
  const int64_t G = (K + group - 1) / group;
  if (group == kPairGroup) {
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) block_dots(c + k, w + k / 2, dots[k / 32 * P], dots[(k / 32 + 1) * P]);
    for (int64_t g = k / 32; g < G; ++g) dots[g * P] += dot_natural_planes<4>(c, w, g * 32, std::min(K, g * 32 + 32));
    return;
  }
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = std::min(K, k0 + group);
    int64_t k = k0;
    for (; k + 64 <= k1; k += 64) block_dots(c + k, w + k / 2, dots[g * P], dots[g * P]);
    dots[g * P] += dot_natural_planes<4>(c, w, k, k1);
  }
}

// sum over [k0, k1) of c[k] * q[k] for int8 codes: int32 within 32-element blocks (at most
// 32 x 128 x 255 < 2^21), a loop the compiler vectorises, summed in int64.
int64_t dot_bytes(const int8_t* c, const uint8_t* w, int64_t k0, int64_t k1) {
  int64_t total = 0;
  int64_t k = k0;
  for (; k + 32 <= k1; k += 32) {
    int32_t block = 0;
    for (int j = 0; j < 32; ++j) block += int32_t(c[k + j]) * int32_t(w[k + j]);
    total += block;
  }
  return total + dot_natural_planes<8>(c, w, k, k1);
}

// The same as int4_group_dots against int8 codes (natural order).
void int8_group_dots(const int8_t* c, const uint8_t* w, int64_t K, int64_t group, int P, int64_t* dots) {
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) dots[g * P] += dot_bytes(c, w, k0, std::min(K, k0 + group));
}

// Activation rows b < nb against one weight row of `bits`-bit codes; dots: G x P scratch.
void one_weight_row(const ActivationPlanes& x, int nb, const uint8_t* w, int bits, const float* s, const float* z,
                    int64_t K, int64_t group, std::vector<int64_t>& dots, float* out, int64_t ldo) {
  const int64_t G = (K + group - 1) / group;
  const int P = x.planes;
  for (int b = 0; b < nb; ++b) {
    const int8_t* row = x.codes + b * x.ld;
    std::fill(dots.begin(), dots.end(), 0);
    for (int p = 0; p < P; ++p)
      (bits == 4 ? int4_group_dots : int8_group_dots)(row + p * K, w, K, group, P, dots.data() + p);
    const float* sx = x.scales + b * x.ldg;
    const float* xz = x.sums + b * x.ldg;
    float total = 0.0f;
    for (int64_t g = 0; g < G; ++g)
      total += s[g] * (sx[g] * float(combine_planes(&dots[g * P], P, digit_bits(bits))) - z[g] * xz[g]);
    out[b * ldo] = total;
  }
}

}  // namespace

void group_rows_planes_portable(const ActivationPlanes& x, int nb, const WeightRows& rows, int64_t K, int64_t group,
                                float* out, int64_t ldo) {
  std::vector<int64_t> dots(static_cast<size_t>((K + group - 1) / group * x.planes));  // [G, P]
  for (int r = 0; r < rows.rows; ++r)
    one_weight_row(x, nb, rows.data + r * rows.data_stride, rows.bits, rows.scales + r * rows.scale_stride,
                   rows.zeros + r * rows.scale_stride, K, group, dots, out + r, ldo);
}

}  // namespace gencore::quant
