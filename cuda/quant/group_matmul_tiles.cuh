// The tensor-core path of group_matmul (group_matmul.cuh's contract), for batches of
// kGroupMatmulTileRows activation rows and more: 64 x 64 output tiles, the weight tile
// dequantized into shared memory, 3xTF32 products with float32 accumulators.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// True when the image of the tile kernel that runs on the current device has tensor
// cores for TF32 (sm_80 and later); else group_matmul keeps one warp per output row.
bool group_matmul_tiles_usable(int device);

// x [M, K], data [N, stride] (stride = ceil(K / 2) | K bytes), scales / zeros [N, G],
// bias [N] or null -> y [M, N]; sizes already checked, M, N > 0, on the current device.
void group_matmul_tiles(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, int64_t stride,
                        const float* scales, const float* zeros, int64_t G, int64_t group, int bits,
                        const float* bias, float* y, cudaStream_t stream);

}  // namespace gencore::gpu
