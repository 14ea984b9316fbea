// The skeleton both group matmul kernels share (group_matmul.cu, group_matmul_int8.cu):
// one warp per output row n of y [M, N], activation rows in passes of kRowsPerPass
// (the weight row is re-read from L1/L2 once per pass), one warp reduction per output;
// and the weight codes and their dequantization, which the tensor-core tiles
// (group_matmul_tiles.cu) read the same way.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu::quant_rows {

constexpr int kWarpsPerBlock = 4;
constexpr int kRowsPerPass = 8;

// Code k of a weight row of BITS-bit codes (int4: low nibble first).
template <int BITS>
__device__ __forceinline__ int weight_code(const uint8_t* __restrict__ q, int k) {
  return BITS == 4 ? (q[k >> 1] >> ((k & 1) * 4)) & 0x0F : q[k];
}

// dequant(W)[n, k] = (q - z) * s of code k of the weight row q, rounded as the CPU kernel
// and quant_dequantize round it (two float32 operations, never contracted).
template <int BITS>
__device__ __forceinline__ float dequantized(const uint8_t* __restrict__ q, int k, float z, float s) {
  return __fmul_rn(__fsub_rn(float(weight_code<BITS>(q, k)), z), s);
}

// For the warp's output row n: pass(n, lane, m0, rows, acc) adds this lane's share of
// y[m0 + b, n] (b < rows) into acc[b]; the lanes' shares are summed, bias added, y written.
template <class Pass>
__device__ __forceinline__ void warp_per_output_row(int M, int N, const float* __restrict__ bias,
                                                    float* __restrict__ y, Pass pass) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  for (int m0 = 0; m0 < M; m0 += kRowsPerPass) {
    const int rows = min(kRowsPerPass, M - m0);
    float acc[kRowsPerPass];
#pragma unroll
    for (int b = 0; b < kRowsPerPass; ++b) acc[b] = 0.0f;
    pass(n, lane, m0, rows, acc);
#pragma unroll
    for (int b = 0; b < kRowsPerPass; ++b) {
      float v = acc[b];
      for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0 && b < rows) y[int64_t(m0 + b) * N + n] = v + (bias ? bias[n] : 0.0f);
    }
  }
}

}  // namespace gencore::gpu::quant_rows
