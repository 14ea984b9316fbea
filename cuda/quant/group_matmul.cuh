// Group-quantized matmul on CUDA, the contract of csrc/quant/group_matmul.h:
//   x [M, K] float32, data [N, ceil(K/2) | K] uint8 (int4 low nibble first | int8),
//   scales / zeros [N, G] float32, bias [N] float32 or null -> y [M, N] float32
//   y = x . dequant(W)^T + bias, dequant(W)[n, k] = (q[n, k] - zeros[n, k / group]) * scales[n, k / group].
// All tensors contiguous on `device`; queued on `stream`; no workspace, no host sync.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// The most activation rows one launch takes (the Python layer runs larger
// batches through the reference, dequantize + a cuBLAS matmul in torch).
constexpr int64_t kGroupMatmulMaxRows = 64;

void group_matmul(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, const float* scales,
                  const float* zeros, int64_t group, int bits, const float* bias, float* y, cudaStream_t stream,
                  int device);

}  // namespace gencore::gpu
