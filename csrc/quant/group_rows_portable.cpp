// Portable row kernel of group_matmul for int8 weights (group_matmul.h), in the first form
// (q - z per element: no per-group activation sums needed): plain C++ the compiler
// vectorises with the baseline ISA (SSE2 on x86-64, NEON on aarch64). Each
// activation row is a separate pass over the weight row, which is in L1 by then.
#include "quant/group_matmul.h"
#include "quant/group_tail.h"

namespace gencore::quant {

namespace {

// sum over the whole blocks [k0, k1) of x . (q - z), 8 partial sums so the loop vectorises.
float dot_blocks(const float* x, const uint8_t* w, int64_t k0, int64_t k1, float z) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t k = k0; k < k1; k += kBlock)
    for (int j = 0; j < kBlock; ++j) acc[j & 7] += x[k + j] * (float(w[k + j]) - z);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

}  // namespace

void group_rows_portable(const float* xn, int64_t ldx, const float* /*xs*/, int64_t /*ldxs*/, int nb, const uint8_t* w, const float* s, const float* z,
                         int64_t K, int64_t group, float* out, int64_t ldo) {
  for (int b = 0; b < nb; ++b) {
    const float* x = xn + b * ldx;
    float total = 0.0f;
    for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
      const int64_t k1 = k0 + group < K ? k0 + group : K;
      const int64_t whole = blocks_end(k0, k1);
      total += s[g] * (dot_blocks(x, w, k0, whole, z[g]) + dot_natural(x, w, whole, k1, z[g], 8));
    }
    out[b * ldo] = total;
  }
}

void dequantize_row_portable(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                             float* out) {
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    for (int64_t k = k0; k < k1; ++k) out[k] = (float(quantized_at(q, k, bits)) - z[g]) * s[g];
  }
}

}  // namespace gencore::quant
