// Group-quantized matmul on CUDA, the contract of csrc/quant/group_matmul.h:
//   x [M, K] float32, data [N, ceil(K/2) | K] uint8 (int4 low nibble first | int8),
//   scales / zeros [N, G] float32, bias [N] float32 or null -> y [M, N] float32
//   y = x . dequant(W)^T + bias, dequant(W)[n, k] = (q[n, k] - zeros[n, k / group]) * scales[n, k / group].
// All tensors contiguous on `device`; queued on `stream`; no workspace, no host sync.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// The fewest activation rows that run on tensor cores (group_matmul_tiles.cuh: 64 x 64
// tiles, 3xTF32, float32 accuracy); fewer rows take one warp per output row. Any M.
constexpr int64_t kGroupMatmulTileRows = 16;

void group_matmul(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, const float* scales,
                  const float* zeros, int64_t group, int bits, const float* bias, float* y, cudaStream_t stream,
                  int device);

}  // namespace gencore::gpu
