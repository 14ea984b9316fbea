// Scalar pieces shared by every ISA's row kernel: the quantized value of
// element k, and the dot product over the part of a group that is not a whole
// 32-element block (stored in natural order, see group_matmul.h).
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

constexpr int64_t kBlock = 32;  // elements per block of the float kernels (dequantize, int8 rows)

inline int quantized_at(const uint8_t* w, int64_t k, int bits) {
  return bits == 4 ? (w[k >> 1] >> ((k & 1) * 4)) & 0x0F : w[k];
}

// sum_{k in [k0, k1)} x[k] * (q[k] - z)
inline float dot_natural(const float* x, const uint8_t* w, int64_t k0, int64_t k1, float z, int bits) {
  float acc = 0.0f;
  for (int64_t k = k0; k < k1; ++k) acc += x[k] * (float(quantized_at(w, k, bits)) - z);
  return acc;
}

// sum_g s[g] * z[g] * xs[g]: the zero points' share of a row's result (see group_matmul.h)
inline float zero_share(const float* s, const float* z, const float* xs, int64_t groups) {
  float acc = 0.0f;
  for (int64_t g = 0; g < groups; ++g) acc += s[g] * z[g] * xs[g];
  return acc;
}

inline int64_t group_count(int64_t K, int64_t group) { return K == 0 ? 0 : (K + group - 1) / group; }

// End of the whole blocks of the group [k0, k1).
inline int64_t blocks_end(int64_t k0, int64_t k1) { return k0 + (k1 - k0) / kBlock * kBlock; }

}  // namespace gencore::quant
