// Group-quantized matmul with int8 activations on CUDA (W4A8 / W8A8), the contract
// of csrc/quant/group_matmul_planes.h at one plane and of
// python/gencore/quant/reference.py group_matmul_int8:
//   x [M, K] float32 -> codes c [M, K] int8 and scales sx [M, G] float32, per row and
//   group symmetric: sx = max |x| / 127 (1 for an all-zero group), c = round(x / sx)
//   (float32 division, ties to even) within [-127, 127];
//   y[m, n] = sum_g s[n, g] * sx[m, g] * (sum_{k in g} c[m, k] q[n, k] - z[n, g] sum_{k in g} c[m, k]) + bias[n],
// data / scales / zeros as in group_matmul.cuh (zeros should hold integers: the
// Python layer refuses others). All tensors contiguous on `device`; queued on
// `stream`; no host sync; scratch for c and sx from the caller (workspace.cuh).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// Workspace bytes group_matmul_int8 needs for M rows of K elements in groups of `group`.
int64_t group_matmul_int8_workspace_bytes(int64_t M, int64_t K, int64_t group);

void group_matmul_int8(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, const float* scales,
                       const float* zeros, int64_t group, int bits, const float* bias, float* y, void* workspace,
                       int64_t workspace_bytes, cudaStream_t stream, int device);

}  // namespace gencore::gpu
