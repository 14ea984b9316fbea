// The int8-activation path of group_matmul (W4A8, DGQ-style): activations are
// quantized per row and per weight group, symmetrically, to int8,
//   sx[m, g] = max_{k in g} |x[m, k]| / 127 (1 for an all-zero group),
//   c[m, k] = clamp(round(x[m, k] / sx[m, g]), -127, 127)   (float32 division, ties to even),
// and each group's dot product is an exact integer:
//   y[m, n] = sum_g s[n, g] * sx[m, g] * (sum_{k in g} c[m, k] q[n, k] - z[n, g] * sum_{k in g} c[m, k]) + bias[n].
// int4 weights only; zeros must hold integers. About 4x fewer instructions per
// weight than the float path, at the price of the activation rounding (~1e-3
// relative output error against the float product; python/gencore/quant/reference.py
// group_matmul_int8 is the exact specification).
#pragma once
#include <cstdint>

#include "gencore/view.h"
#include "quant/group_matmul.h"

namespace gencore::quant {

void group_matmul_int8_activations(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y,
                                   int threads);

// Layout of the activation codes the row kernels read (one row of K codes):
// 64-element blocks hold their 32 even elements, then their 32 odd ones (the
// order of the low, then high nibbles of 32 weight bytes). Groups of 32 are
// taken in pairs: every whole 64-element block of the row is laid out so (its
// first half of 32 weight bytes belongs to group 2i, its second to group 2i + 1:
// one 128-bit lane each); larger groups lay out the whole 64-element blocks
// inside each group. Everything else stays in natural order.
constexpr int64_t kPairGroup = 32;

// Row kernel: codes xc [nb, K] (row stride ldx) in that layout, scales xs and
// code sums xsum [nb, G] (row stride ldg) ->
//   out[b * ldo] = sum_g s[g] * xs[b, g] * (dot_g - z[g] * xsum[b, g])
// (the SIMD kernel scales each group's int32 partial sums in float and
// subtracts the zero points' share once per row; both agree to float32 rounding).
using IntRowKernel = void (*)(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                              const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group, float* out,
                              int64_t ldo);
void group_rows_a8_portable(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                            const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group, float* out,
                            int64_t ldo);
void group_rows_a8_avx2(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                        const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group, float* out,
                        int64_t ldo);

// sum over [k0, k1) (natural order) of c[k] * q[k]
inline int32_t dot_natural_a8(const int8_t* c, const uint8_t* w, int64_t k0, int64_t k1) {
  int32_t acc = 0;
  for (int64_t k = k0; k < k1; ++k) acc += int32_t(c[k]) * ((w[k >> 1] >> ((k & 1) * 4)) & 0x0F);
  return acc;
}

}  // namespace gencore::quant
