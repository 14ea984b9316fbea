// Group quantization: one thread per (row, group), which finds the range,
// tries the clipping ratios, and writes the group's whole bytes (groups start
// at even k, so int4 bytes are never shared). Dequantization: one thread per
// element, grid-stride. Non-finite weights are not checked here: the Python
// layer checks them under the finiteness policy.
#include "quant/quantize.cuh"

#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"

namespace gencore::gpu {
namespace {

constexpr int kThreads = 256;

struct GroupParams {
  float scale, zero;
};

__device__ __forceinline__ GroupParams params_of(float lo, float hi, bool symmetric, float top, float half) {
  if (symmetric) {
    float scale = __fdiv_rn(hi, half - 1.0f);
    if (scale == 0.0f) scale = 1.0f;
    return {scale, half};
  }
  float scale = __fdiv_rn(hi - lo, top);
  if (scale == 0.0f) scale = 1.0f;
  return {scale, fminf(fmaxf(rintf(__fdiv_rn(-lo, scale)), 0.0f), top)};
}

__device__ __forceinline__ float code_of(float w, GroupParams p, float top) {
  return fminf(fmaxf(__fadd_rn(rintf(__fdiv_rn(w, p.scale)), p.zero), 0.0f), top);
}

// sum (w - dequant)^2 over [k0, k1), double, in k order, no fused multiply-add
// (the CPU kernel's exact operations).
__device__ double squared_error(const float* w, int64_t k0, int64_t k1, GroupParams p, float top) {
  double acc = 0.0;
  for (int64_t k = k0; k < k1; ++k) {
    const float dq = __fmul_rn(__fsub_rn(code_of(w[k], p, top), p.zero), p.scale);
    const double e = __dsub_rn(double(w[k]), double(dq));
    acc = __dadd_rn(acc, __dmul_rn(e, e));
  }
  return acc;
}

__global__ void __launch_bounds__(kThreads)
    quantize_kernel(const float* __restrict__ weight, int64_t N, int64_t K, int64_t G, int bits, int64_t group,
                    bool symmetric, int steps, uint8_t* __restrict__ data, int64_t bytes_per_row,
                    float* __restrict__ scales, float* __restrict__ zeros) {
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item >= N * G) return;
  const int64_t n = item / G, g = item % G;
  const float* w = weight + n * K;
  const int64_t k0 = g * group, k1 = k0 + group < K ? k0 + group : K;
  const float top = float((1 << bits) - 1), half = float(1 << (bits - 1));
  float lo = 0.0f, hi = 0.0f;
  for (int64_t k = k0; k < k1; ++k) {
    if (symmetric) {
      hi = fmaxf(hi, fabsf(w[k]));
    } else {
      lo = fminf(lo, w[k]);
      hi = fmaxf(hi, w[k]);
    }
  }
  GroupParams best = params_of(lo, hi, symmetric, top, half);
  if (steps > 1) {
    double best_error = squared_error(w, k0, k1, best, top);
    for (int step = 1; step < steps; ++step) {  // ties keep the wider range
      const float ratio = float(1.0 - 0.5 * double(step) / double(steps));
      const GroupParams p = params_of(__fmul_rn(ratio, lo), __fmul_rn(ratio, hi), symmetric, top, half);
      const double error = squared_error(w, k0, k1, p, top);
      if (error < best_error) {
        best_error = error;
        best = p;
      }
    }
  }
  scales[item] = best.scale;
  zeros[item] = best.zero;
  uint8_t* out = data + n * bytes_per_row;
  if (bits == 8) {
    for (int64_t k = k0; k < k1; ++k) out[k] = uint8_t(code_of(w[k], best, top));
    return;
  }
  for (int64_t k = k0; k < k1; k += 2) {  // the high nibble of an odd row's last byte stays 0
    const unsigned low = unsigned(code_of(w[k], best, top));
    const unsigned high = k + 1 < k1 ? unsigned(code_of(w[k + 1], best, top)) : 0u;
    out[k / 2] = uint8_t(low | (high << 4));
  }
}

__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const uint8_t* __restrict__ data, const float* __restrict__ scales,
                      const float* __restrict__ zeros, int64_t N, int64_t K, int64_t G, int bits, int64_t group,
                      int64_t bytes_per_row, float* __restrict__ out) {
  const int64_t total = N * K;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / K, k = i % K;
    const uint8_t byte = data[n * bytes_per_row + (bits == 4 ? k / 2 : k)];
    const unsigned code = bits == 4 ? (byte >> ((k & 1) * 4)) & 0xFu : byte;
    const int64_t p = n * G + k / group;
    out[i] = __fmul_rn(__fsub_rn(float(code), zeros[p]), scales[p]);
  }
}

void check_layout(const char* op, int64_t N, int64_t K, int bits, int64_t group) {
  if (N < 0 || K < 0) fail_argument(op, "need N >= 0 and K >= 0, got N=" + std::to_string(N) + ", K=" + std::to_string(K));
  if (bits != 4 && bits != 8) fail_argument(op, "bits must be 4 or 8, got " + std::to_string(bits));
  if (!(group == 32 || group == 64 || group == 128 || group >= K) || group < 1)
    fail_argument(op, "group_size must be 32, 64, 128 or >= K, got " + std::to_string(group));
}

}  // namespace

void quant_quantize(const float* weight, int64_t N, int64_t K, int bits, int64_t group, bool symmetric,
                    int clip_steps, uint8_t* data, float* scales, float* zeros, cudaStream_t stream, int device) {
  const char* op = "quant_quantize";
  check_layout(op, N, K, bits, group);
  if (clip_steps < 0) fail_argument(op, "clip_steps must be >= 0, got " + std::to_string(clip_steps));
  if (N == 0 || K == 0) return;
  if (weight == nullptr || data == nullptr || scales == nullptr || zeros == nullptr)
    fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  const int64_t G = ceil_div(K, group);
  const int64_t bytes = bits == 4 ? ceil_div(K, 2) : K;
  quantize_kernel<<<blocks_for(N * G, kThreads, op), kThreads, 0, stream>>>(
      weight, N, K, G, bits, group, symmetric, clip_steps > 1 ? clip_steps : 1, data, bytes, scales, zeros);
  GENCORE_CUDA_CHECK_LAUNCH("quantize_kernel");
}

void quant_dequantize(const uint8_t* data, const float* scales, const float* zeros, int64_t N, int64_t K, int bits,
                      int64_t group, float* out, cudaStream_t stream, int device) {
  const char* op = "quant_dequantize";
  check_layout(op, N, K, bits, group);
  if (N == 0 || K == 0) return;
  if (data == nullptr || scales == nullptr || zeros == nullptr || out == nullptr)
    fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  const int64_t G = ceil_div(K, group);
  const int64_t bytes = bits == 4 ? ceil_div(K, 2) : K;
  dequantize_kernel<<<grid_stride_blocks(N * K, kThreads), kThreads, 0, stream>>>(data, scales, zeros, N, K, G, bits,
                                                                                 group, bytes, out);
  GENCORE_CUDA_CHECK_LAUNCH("dequantize_kernel");
}

}  // namespace gencore::gpu
