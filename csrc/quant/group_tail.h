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

// Refuses a bias [N] holding NaN or inf among elements [n0, n1) (nullptr: no bias), naming the element.
inline void require_finite_bias(const float* bias, int64_t n0, int64_t n1) {
  if (!bias || all_finite(bias + n0, n1 - n0)) return;
  for (int64_t n = n0; n < n1; ++n)
    if (!((bias[n] - bias[n]) == 0.0f)) fail("bias contains NaN or inf (element ", n, "); inputs must be finite");
}

constexpr int64_t kBlock = 32;  // elements per block of the dequantization kernels

inline int quantized_at(const uint8_t* w, int64_t k, int bits) {
  return bits == 4 ? (w[k >> 1] >> ((k & 1) * 4)) & 0x0F : w[k];
}

// End of the whole blocks of the group [k0, k1).
inline int64_t blocks_end(int64_t k0, int64_t k1) { return k0 + (k1 - k0) / kBlock * kBlock; }

}  // namespace gencore::quant
