// The integer-activation paths of group_matmul (int4 and int8 weights). Each
// activation row is quantized per row and weight group, symmetrically, to a
// fixed-point code of P int8 "planes", digits of D bits (D by the weight width, below):
//   L_1 = 127, L_3 = 2^(3D - 2) (a top plane within [-64, 64]),
//   sx[m, g] = max_{k in g} |x[m, k]| / L_P (1 for an all-zero group),
//   c[m, k] = clamp(round(x[m, k] / sx[m, g]), -L_P, L_P)   (float32 division, ties to even)
//           = sum_{p < P} 2^(D (P-1-p)) plane_p[m, k]   (balanced base-2^D digits: the first plane
//             within [-127, 127] (P = 1) or [-64, 64], the others in [-2^(D-1), 2^(D-1) - 1]),
// so that every plane's dot product with the weight codes is an exact integer
// (vpmaddubsw / vpdpbusd: u8 weight codes times s8 planes), and
//   y[m, n] = sum_g s[n, g] * (sx[m, g] * sum_{k in g} c[m, k] q[n, k] - z[n, g] * xz[m, g]) + bias[n],
//   xz[m, g] = sx[m, g] * sum_{k in g} c[m, k]   (the rounded activations' group sum).
// D keeps vpmaddubsw exact (it sums two u8 x s8 products in saturating int16):
//   int4 weights: D = 8, pairs <= 2 * 15 * 128 = 3840; L_3 = 2^22 (23-bit activations);
//   int8 weights: D = 7, pairs <= 2 * 255 * 64 = 32640 <= 32767; L_3 = 2^20 (21 bits). At P = 1 the
//   codes reach +-127 and the AVX2 kernel moves the weight's sign onto them instead
//   (group_rows_planes_avx2.cpp).
// P = 1 is activations="int8" (W4A8 / W8A8, DGQ-style): ~1e-3 relative output error
// against the float product, python/gencore/quant/reference.py group_matmul_int8 is
// its exact specification; zeros must hold integers there.
// P = 3 is the default path of few activation rows: 21-23-bit activations, an error
// of ~1e-7 of the output's scale (float32 level), at fewer instructions per
// weight than dequantizing to float (three int8 dot products per 64 int4 or 32
// int8 weights; one instruction each with VNNI).
#pragma once
#include <cstdint>

#include "gencore/view.h"
#include "quant/group_matmul.h"

namespace gencore::quant {

// y [M, N] = x . W^T + bias through int8 activations (P = 1; refuses non-integer zeros).
void group_matmul_int8_activations(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y,
                                   int threads);

// The same through 21-23-bit activations (P = 3): group_matmul's path for few rows.
void group_matmul_split_activations(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y,
                                    int threads);

// Bits of one activation digit for weights of `weight_bits` bits (D above).
constexpr int digit_bits(int weight_bits) { return weight_bits == 4 ? 8 : 7; }

// Layout of one plane of one activation row (K codes), the order the kernels
// read. int8 weights: natural order. int4 weights: 64-element blocks hold
// their 32 even elements, then their 32 odd ones
// (the order of the low, then high nibbles of 32 weight bytes). Groups of 32
// are taken in pairs: every whole 64-element block of the row is laid out (its
// first half of 32 weight bytes belongs to group 2i, its second to group 2i + 1:
// one 128-bit lane each); larger groups lay out the whole 64-element blocks
// inside each group. Everything else stays in natural order.
constexpr int64_t kPairGroup = 32;
constexpr int kMaxPlanes = 3;
constexpr int kMaxKernelRows = 8;  // activation rows per kernel call

// Activation rows as the row kernels read them: row b's plane p is the K codes
// at codes + b * ld + p * K; scales sx and group sums xz [nb, G] at row stride ldg.
struct ActivationPlanes {
  const int8_t* codes = nullptr;
  int64_t ld = 0;
  int planes = 1;
  const float* scales = nullptr;
  const float* sums = nullptr;
  int64_t ldg = 0;
};

// Consecutive weight rows of `bits`-bit codes: row r's codes at data + r * data_stride, its
// scales and zeros at scales / zeros + r * scale_stride.
struct WeightRows {
  const uint8_t* data = nullptr;
  int64_t data_stride = 0;
  const float* scales = nullptr;
  const float* zeros = nullptr;
  int64_t scale_stride = 0;
  int rows = 0;
  int bits = 4;

  WeightRows from(int r, int count) const {
    return {data + r * data_stride, data_stride, scales + r * scale_stride, zeros + r * scale_stride, scale_stride,
            count, bits};
  }
};

// Row kernel, for activation rows b < nb (nb <= kMaxKernelRows) and weight rows r < w.rows:
//   out[b * ldo + r] = sum_g s[r, g] * (sx[b, g] * dot_g - z[r, g] * xz[b, g])
// (the SIMD kernels scale each group's partial sums in float and subtract the
// zero points' share once per row; every level agrees to float32 rounding).
using PlaneRowKernel = void (*)(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                float* out, int64_t ldo);
void group_rows_planes_portable(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                float* out, int64_t ldo);
void group_rows_planes_avx2(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                            float* out, int64_t ldo);
// The row kernel the SIMD level in use picks, and its name: "portable", "avx2", "avxvnni" or
// "avx512vnni" (a plain AVX-512 CPU takes the AVX2 kernel: 512-bit integer ops gain little there).
PlaneRowKernel plane_row_kernel();
const char* plane_row_kernel_name();
void group_rows_planes_avxvnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                               float* out, int64_t ldo);
void group_rows_planes_avx512vnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                  float* out, int64_t ldo);

// Weight code k of a row of `Bits`-bit codes (the packed layout of group_matmul.h).
template <int Bits>
inline int code_at(const uint8_t* w, int64_t k) {
  if constexpr (Bits == 4)
    return (w[k >> 1] >> ((k & 1) * 4)) & 0x0F;
  else
    return w[k];
}

// sum over [k0, k1) (natural order) of c[k] * (q[k] - offset), in int64: exact for any range
// (offset: the code offset of a SIMD kernel's dot products, group_rows_planes_simd.h).
template <int Bits>
inline int64_t dot_natural_planes(const int8_t* c, const uint8_t* w, int64_t k0, int64_t k1, int offset = 0) {
  int64_t acc = 0;
  for (int64_t k = k0; k < k1; ++k) acc += int32_t(c[k]) * (code_at<Bits>(w, k) - offset);
  return acc;
}

// The code sum_p 2^(D (P-1-p)) d[p] from per-plane integer dot products d (exact in int64).
inline int64_t combine_planes(const int64_t* d, int planes, int digit) {
  int64_t c = 0;
  for (int p = 0; p < planes; ++p) c = c * (int64_t(1) << digit) + d[p];
  return c;
}

// sum_{k in [k0, k1)} c[k] (q[k] - offset) over all planes of one row (natural order, the tails of the kernels)
template <int Bits>
inline int64_t dot_natural_all_planes(const int8_t* codes, int64_t K, int planes, const uint8_t* w, int64_t k0,
                                      int64_t k1, int offset = 0) {
  int64_t d[kMaxPlanes];
  for (int p = 0; p < planes; ++p) d[p] = dot_natural_planes<Bits>(codes + p * K, w, k0, k1, offset);
  return combine_planes(d, planes, digit_bits(Bits));
}

}  // namespace gencore::quant
