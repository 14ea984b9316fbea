// Sliced Wasserstein's 1-D integral, one block per projection. Thread i of the
// x side owns the quantile interval [cx_i-1, cx_i) and walks the y intervals
// it overlaps (found by one binary search, then consecutive): it adds their
// part of W_p^p and writes d/dxs_i. The y side does the same for d/dys_j with
// the same overlap expression, so no atomics are needed and every run gives
// the same bits. The walk is O(n + m) per row in total (each overlapping pair
// is visited once from each side), O(log) to start.
#include "ot/sliced.cuh"

#include <cmath>
#include <string>

#include "common/block.cuh"
#include "common/check.cuh"
#include "common/launch.cuh"

namespace gencore::gpu {
namespace {

constexpr int kThreads = 256;

// One side's quantile intervals: [lower(i), upper(i)), the last reaching `top`.
struct Intervals {
  const double* cum;
  int64_t count;
  double top;
  __device__ __forceinline__ double lower(int64_t i) const { return i == 0 ? 0.0 : cum[i - 1]; }
  __device__ __forceinline__ double upper(int64_t i) const { return i == count - 1 ? top : cum[i]; }
  // The first interval whose upper end is above v (the last when none is).
  __device__ __forceinline__ int64_t first_above(double v) const {
    int64_t lo = 0, hi = count - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (upper(mid) > v) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
};

__device__ __forceinline__ double overlap(const Intervals& a, int64_t i, const Intervals& b, int64_t j) {
  return fmax(fmin(a.upper(i), b.upper(j)) - fmax(a.lower(i), b.lower(j)), 0.0);
}

__device__ __forceinline__ double cost(double d, double p) {
  const double a = fabs(d);
  return p == 2.0 ? a * a : (p == 1.0 ? a : pow(a, p));
}

// d |d|^p / d d = p |d|^(p-1) sign(d), 0 at d = 0.
__device__ __forceinline__ double cost_slope(double d, double p) {
  if (d == 0.0) return 0.0;
  const double s = d > 0.0 ? 1.0 : -1.0;
  return p == 2.0 ? 2.0 * d : (p == 1.0 ? s : p * pow(fabs(d), p - 1.0) * s);
}

// Over own's intervals (this thread's share): with kValue the sum of overlap *
// cost against other's; with grad != nullptr, d/d own_i = sum overlap * slope(own_i
// - other_j) (for y that is d/dy of |x - y|^p: the slope of y - x).
template <bool kValue>
__device__ double walk(const float* own_points, const Intervals& own, const float* other_points,
                       const Intervals& other, double p, float* grad) {
  double total = 0.0;
  for (int64_t i = threadIdx.x; i < own.count; i += blockDim.x) {
    const double lo = own.lower(i), hi = own.upper(i), own_i = own_points[i];
    double value = 0.0, slope = 0.0;
    for (int64_t j = other.first_above(lo); j < other.count && other.lower(j) < hi; ++j) {
      const double w = overlap(own, i, other, j);
      const double d = own_i - double(other_points[j]);
      if constexpr (kValue) value += w * cost(d, p);
      if (grad != nullptr) slope += w * cost_slope(d, p);
    }
    total += value;
    if (grad != nullptr) grad[i] = float(slope);
  }
  return total;
}

__global__ void __launch_bounds__(kThreads)
    sliced_1d_kernel(const float* __restrict__ xs, const float* __restrict__ ys, const double* __restrict__ cx,
                     const double* __restrict__ cy, int64_t n, int64_t m, double p, float* __restrict__ out,
                     float* __restrict__ grad_xs, float* __restrict__ grad_ys) {
  __shared__ double scratch[32];
  const int64_t row = blockIdx.x;
  const double* rcx = cx + row * n;
  const double* rcy = cy + row * m;
  const double top = fmax(rcx[n - 1], rcy[m - 1]);
  const Intervals ix{rcx, n, top}, iy{rcy, m, top};
  const float* rx = xs + row * n;
  const float* ry = ys + row * m;
  const double total = walk<true>(rx, ix, ry, iy, p, grad_xs == nullptr ? nullptr : grad_xs + row * n);
  if (grad_ys != nullptr) walk<false>(ry, iy, rx, ix, p, grad_ys + row * m);
  const double sum = block_reduce(total, SumOp{}, scratch);
  if (threadIdx.x == 0) out[row] = float(sum);
}

}  // namespace

void sliced_1d(const float* xs, const float* ys, const double* cx, const double* cy, int64_t P, int64_t n,
               int64_t m, double p, float* out, float* grad_xs, float* grad_ys, cudaStream_t stream, int device) {
  const char* op = "sliced_1d";
  if (P < 0 || n < 0 || m < 0)
    fail_argument(op, "need P, n, m >= 0, got P=" + std::to_string(P) + ", n=" + std::to_string(n) +
                          ", m=" + std::to_string(m));
  if (!(p > 0.0) || !std::isfinite(p)) fail_argument(op, "p must be finite and > 0, got " + std::to_string(p));
  if ((grad_xs == nullptr) != (grad_ys == nullptr)) fail_argument(op, "grad_xs and grad_ys: both or neither");
  if (P == 0) return;
  if (n == 0 || m == 0) fail_argument(op, "x and y need at least one point each");
  for (const void* ptr : {static_cast<const void*>(xs), static_cast<const void*>(ys), static_cast<const void*>(cx),
                          static_cast<const void*>(cy), static_cast<const void*>(out)})
    if (ptr == nullptr) fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  sliced_1d_kernel<<<blocks_for(P, 1, op), kThreads, 0, stream>>>(xs, ys, cx, cy, n, m, p, out, grad_xs, grad_ys);
  GENCORE_CUDA_CHECK_LAUNCH("sliced_1d_kernel");
}

}  // namespace gencore::gpu
