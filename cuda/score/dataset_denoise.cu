// Data-set denoiser tile epilogue: one block per query row of the scores tile.
// Pass 1 forms the logits and their block maximum; pass 2 forms them again
// (the same expression, so the same bits), writes exp(l - m') in place and
// sums it in double; thread 0 advances the row's running (max, total). The
// row of 4 T bytes is read twice, the second time from L1/L2. The cost of the
// logits (squared, euclidean, euclidean_inverse: see dataset_denoise.cuh) is a
// template parameter: one instantiation each, chosen at launch.
#include "score/dataset_denoise.cuh"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "score/rows.cuh"

namespace gencore::gpu {
namespace {

using namespace score_rows;

constexpr int kTileThreads = 256;
constexpr int kTileWarps = kTileThreads / 32;
// 4 blocks an SM allow 64 registers; with the bare thread bound ptxas aims at
// 32 and spills the row's running max through pass 2.
constexpr int kMinBlocks = 4;

// op(v, every other thread's v) for the whole block (blockDim.x a multiple of
// 32, at most kTileThreads), in a fixed order: every thread gets the same bits.
template <typename T, typename Op>
__device__ __forceinline__ T block_all_reduce(T v, T* smem, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, off));
  if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
  __syncthreads();
  T r = smem[0];
  for (int w = 1; w < int(blockDim.x / 32); ++w) r = op(r, smem[w]);
  return r;
}

template <bool kVec4, int kCost>
__global__ void __launch_bounds__(kTileThreads, kMinBlocks)
    dataset_tile_kernel(float* __restrict__ scores, int64_t T, const float* __restrict__ tile_sq,
                        const float* __restrict__ log_w, const float* __restrict__ sigma,
                        const float* __restrict__ alpha, const float* __restrict__ x_sq,
                        float* __restrict__ running_max, float* __restrict__ total, float* __restrict__ rescale) {
  __shared__ float max_s[kTileWarps];
  __shared__ double sum_s[kTileWarps];
  const int64_t b = blockIdx.x;
  const double s = sigma[b], a = alpha[b];
  constexpr bool kSquared = kCost == kCostSquared;
  // In double: no early overflow. Squared: l = ca s - cq q; euclidean: u^2 = co + cq q - ca s.
  const float ca = float((kSquared ? 1.0 : 2.0) * a / (s * s)), cq = float((kSquared ? 0.5 : 1.0) * a * a / (s * s));
  const float co = kSquared ? 0.0f : float(double(x_sq[b]) / (s * s));
  constexpr float kNear = float(kCoincidentUlps) * FLT_EPSILON;
  const float near_q = kNear * cq, near_o = kNear * co;
  float* row = scores + b * T;

  // The W logits at j, the same expression in both passes.
  auto logits = [&](int64_t j, auto width) {
    constexpr int W = decltype(width)::value;
    Floats<W> l = load<W>(row + j);
    const Floats<W> sq = load<W>(tile_sq + j);
    Floats<W> lw{};
    if (log_w != nullptr) lw = load<W>(log_w + j);
#pragma unroll
    for (int i = 0; i < W; ++i) {
      if constexpr (kSquared) {
        l.v[i] = fmaf(ca, l.v[i], -(cq * sq.v[i])) + lw.v[i];
      } else {
        const float u2 = fmaf(-ca, l.v[i], fmaf(cq, sq.v[i], co));  // r^2 / sigma^2
        const bool apart = u2 > fmaf(near_q, sq.v[i], near_o);
        if constexpr (kCost == kCostEuclidean)
          l.v[i] = lw.v[i] - (apart ? sqrtf(u2) : 0.0f);
        else
          l.v[i] = apart ? lw.v[i] - (sqrtf(u2) + 0.5f * logf(fmaxf(u2, FLT_MIN))) : -INFINITY;
      }
    }
    return l;
  };

  float m = -INFINITY;
  for_each<kVec4>(0, T, threadIdx.x, blockDim.x, [&](int64_t j, auto width) {
    const auto l = logits(j, width);
#pragma unroll
    for (int i = 0; i < decltype(width)::value; ++i) m = fmaxf(m, l.v[i]);
  });
  m = block_all_reduce(m, max_s, [](float u, float v) { return fmaxf(u, v); });

  const float shift = [&] {
    const float new_max = fmaxf(running_max[b], m);
    return isfinite(new_max) ? new_max : 0.0f;
  }();
  double sum = 0.0;
  for_each<kVec4>(0, T, threadIdx.x, blockDim.x, [&](int64_t j, auto width) {
    auto l = logits(j, width);
#pragma unroll
    for (int i = 0; i < decltype(width)::value; ++i) {
      l.v[i] = expf(l.v[i] - shift);
      sum += double(l.v[i]);
    }
    store(row + j, l);
  });
  sum = block_all_reduce(sum, sum_s, [](double u, double v) { return u + v; });

  if (threadIdx.x == 0) {
    const float old_max = running_max[b];
    const float r = expf(old_max - shift);
    rescale[b] = r;
    total[b] = float(double(total[b]) * double(r) + sum);
    running_max[b] = fmaxf(old_max, m);
  }
}

template <bool kVec4>
void launch_tile(unsigned blocks, int threads, cudaStream_t stream, int cost, float* scores, int64_t T,
                 const float* tile_sq, const float* log_w, const float* sigma, const float* alpha, const float* x_sq,
                 float* running_max, float* total, float* rescale) {
  if (cost == kCostEuclidean)
    dataset_tile_kernel<kVec4, kCostEuclidean><<<blocks, threads, 0, stream>>>(
        scores, T, tile_sq, log_w, sigma, alpha, x_sq, running_max, total, rescale);
  else if (cost == kCostEuclideanInverse)
    dataset_tile_kernel<kVec4, kCostEuclideanInverse><<<blocks, threads, 0, stream>>>(
        scores, T, tile_sq, log_w, sigma, alpha, x_sq, running_max, total, rescale);
  else
    dataset_tile_kernel<kVec4, kCostSquared><<<blocks, threads, 0, stream>>>(
        scores, T, tile_sq, log_w, sigma, alpha, x_sq, running_max, total, rescale);
}

}  // namespace

void dataset_denoise_tile(float* scores, int64_t B, int64_t T, const float* tile_sq, const float* log_w,
                          const float* sigma, const float* alpha, float* running_max, float* total, float* rescale,
                          cudaStream_t stream, int device, int cost, const float* x_sq) {
  const char* op = "dataset_denoise_tile";
  if (B < 0 || T < 1)
    fail_argument(op, "need B >= 0 and T >= 1, got B=" + std::to_string(B) + ", T=" + std::to_string(T));
  if (cost < kCostSquared || cost > kCostEuclideanInverse)
    fail_argument(op, "cost must be 0 (squared), 1 (euclidean) or 2 (euclidean_inverse), got " + std::to_string(cost));
  if (B == 0) return;
  if (!scores || !tile_sq || !sigma || !alpha || !running_max || !total || !rescale)
    fail_argument(op, "a data pointer is null");
  if (cost != kCostSquared && !x_sq) fail_argument(op, "the euclidean costs need x_sq");
  DeviceGuard guard(device);
  const bool vec4 = vec4_rows(T, {scores, tile_sq, log_w});
  const int64_t per_thread = vec4 ? 4 : 1;
  const int threads = int(std::clamp<int64_t>(round_up(ceil_div(T, per_thread), 32), 32, kTileThreads));
  const unsigned blocks = blocks_for(B, 1, op);
  if (vec4)
    launch_tile<true>(blocks, threads, stream, cost, scores, T, tile_sq, log_w, sigma, alpha, x_sq, running_max,
                      total, rescale);
  else
    launch_tile<false>(blocks, threads, stream, cost, scores, T, tile_sq, log_w, sigma, alpha, x_sq, running_max,
                       total, rescale);
  GENCORE_CUDA_CHECK_LAUNCH("dataset_tile_kernel");
}

}  // namespace gencore::gpu
