// Group-quantized weight matmul, CPU.
//   x [M, K] float32, packed weight W [N, K] (int4 or int8, groups of `group`
//   along K, scale and zero point per [row, group]) -> y [M, N] = x . dequant(W)^T (+ bias)
//
// Layout (the canonical one of gencore.quant, see python/gencore/quant/reference.py):
//   int4: data [N, ceil(K / 2)] uint8, element k in byte k / 2, low nibble for even k;
//   int8: data [N, K] uint8;
//   scales, zeros [N, G] float32, G = ceil(K / group); zeros hold integers;
//   dequant(W)[n, k] = (q[n, k] - zeros[n, k / group]) * scales[n, k / group]   (float32).
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::quant {

struct PackedWeight {
  const uint8_t* data = nullptr;
  int64_t data_stride = 0;   // bytes between rows
  const float* scales = nullptr;
  const float* zeros = nullptr;
  int64_t scale_stride = 0;  // elements between rows of scales and of zeros
  int64_t rows = 0;          // N
  int64_t cols = 0;          // K
  int bits = 4;
  int64_t group = 128;
};

// y [M, N] (C-contiguous) = x . dequant(W)^T + bias (bias may be null).
// Refuses (std::invalid_argument) NaN/inf in x, scales or zeros.
void group_matmul(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y, int threads);

// out [N, K] (row stride ld) = dequant(W). Refuses NaN/inf in scales or zeros.
void dequantize(const PackedWeight& w, float* out, int64_t ld, int threads);

// Refuses (std::invalid_argument naming the input and row n) NaN/inf among row n's `groups` scales or zeros.
void check_row_params(const PackedWeight& w, int64_t n, int64_t groups);

// Threads worth waking for `work` weight-element products (M x N x K): at
// least ~2^18 per thread (tens of microseconds), so small layers stay on the calling thread.
int useful_threads(int threads, int64_t work);

// Which path the calling thread's last group_matmul took: "rows" (the fused
// integer-activation kernels, weights streamed once, group_matmul_planes.h)
// or "blas" (dequantized tiles and sgemm).
const char* last_group_matmul_path();

// The fewest activation rows for which group_matmul takes the BLAS path, for `bits`-bit
// weights at the SIMD level in use.
int64_t group_matmul_blas_min_rows(int bits);

// One weight row in natural order: out[k] = (q[k] - z[g]) * s[g] for k < K, in
// float32 (exact subtraction, one rounding: bit-exact with the reference).
using DequantRowFn = void (*)(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                              float* out);
void dequantize_row_portable(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                             float* out);
void dequantize_row_avx2(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                         float* out);
void dequantize_row_avx512(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                           float* out);

}  // namespace gencore::quant
