// Scalar pieces shared by the quant kernels: finiteness checks of a row, the
// quantized value of element k, and the end of a group's whole 32-element blocks
// (the part the dequantization kernels vectorise).
#pragma once
#include <cmath>
#include <cstdint>

#include "gencore/check.h"

namespace gencore::quant {

// Whether v[0, n) holds only finite values: v - v is 0 for finite v, NaN otherwise, and an
// int |= is a loop the compiler vectorises (std::isfinite in a bool &= it does not).
inline bool all_finite(const float* v, int64_t n) {
  int bad = 0;
  for (int64_t k = 0; k < n; ++k) bad |= int(!((v[k] - v[k]) == 0.0f));
  return !bad;
}

// Refuses a row of n floats holding NaN or inf (one branch-free pass), naming `what` and the row.
inline void require_finite_row(const float* v, int64_t n, const char* what, int64_t row) {
  if (!all_finite(v, n)) fail_non_finite_row(what, row);
}

// y[m, n] += bias[n] over columns [n0, n1) of y [M, N] (nullptr: no bias), refusing a NaN or inf
// bias element first, named: the kernels check the bias, the op kit does not.
inline void add_bias(const float* bias, int64_t M, int64_t N, int64_t n0, int64_t n1, float* y) {
  if (!bias) return;
  if (!all_finite(bias + n0, n1 - n0))
    for (int64_t n = n0; n < n1; ++n)
      if (!((bias[n] - bias[n]) == 0.0f)) fail("bias contains NaN or inf (element ", n, "); inputs must be finite");
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = n0; n < n1; ++n) y[m * N + n] += bias[n];
}

constexpr int64_t kBlock = 32;  // elements per block of the dequantization kernels

inline int quantized_at(const uint8_t* w, int64_t k, int bits) {
  return bits == 4 ? (w[k >> 1] >> ((k & 1) * 4)) & 0x0F : w[k];
}

// End of the whole blocks of the group [k0, k1).
inline int64_t blocks_end(int64_t k0, int64_t k1) { return k0 + (k1 - k0) / kBlock * kBlock; }

}  // namespace gencore::quant
