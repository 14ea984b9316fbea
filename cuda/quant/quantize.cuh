// Group quantization and dequantization on CUDA, the contracts of
// csrc/quant/quantize.h and the CPU dequantize (bit for bit: the same float32
// operations, round half to even, the clipping search's errors summed in
// double in k order without contraction):
//   quantize:   weight [N, K] float32 -> data [N, ceil(K/2) | K] uint8, scales / zeros [N, G] float32
//   dequantize: data, scales, zeros -> out [N, K] float32 = (q - zero) * scale
// group: 32, 64, 128 or >= K (one group per row), so no int4 byte straddles two
// groups. All tensors contiguous on `device`; queued on `stream`; no workspace,
// no host sync. Throws std::invalid_argument for bad sizes or a null pointer.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// clip_steps > 1: MSE-optimal clipping over clip_steps shrunken ranges (quantize.h).
void quant_quantize(const float* weight, int64_t N, int64_t K, int bits, int64_t group, bool symmetric,
                    int clip_steps, uint8_t* data, float* scales, float* zeros, cudaStream_t stream, int device);

void quant_dequantize(const uint8_t* data, const float* scales, const float* zeros, int64_t N, int64_t K, int bits,
                      int64_t group, float* out, cudaStream_t stream, int device);

}  // namespace gencore::gpu
