// Dense Sinkhorn, one block per problem (see sinkhorn_dense.cuh). An iteration:
// the shifted potentials log b + g / reg; a warp per row of C for f (an online
// log-sum-exp along the row, lanes on consecutive columns: coalesced) and the
// row's error term; a block sum of the error; then a thread per column of C for
// g (an online log-sum-exp down the column, threads on consecutive columns:
// coalesced again). Every thread gets the same error bits from the block sum,
// so all of them take the same stopping decision without a flag.
#include "ot/sinkhorn_dense.cuh"

#include <cmath>
#include <string>

#include "common/block.cuh"
#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/warp.cuh"
#include "common/workspace.cuh"

namespace gencore::gpu {
namespace {

constexpr int kThreads = 256;
constexpr double kMaxErrorExponent = 60.0;   // as the CPU kernel: exp((f - f~) / reg) clamped in the error
constexpr int64_t kConverged = 0, kMaxIter = 1, kPlateau = 2;

// A running log-sum-exp: max and the sum of exp(v - max). -inf terms (no mass) are skipped.
struct OnlineLse {
  float max = -INFINITY, sum = 0.0f;

  __device__ __forceinline__ void add(float v) {
    if (v == -INFINITY) return;
    if (v > max) {
      sum = sum * expf(max - v) + 1.0f;
      max = v;
    } else {
      sum += expf(v - max);
    }
  }
  __device__ __forceinline__ void merge(float other_max, float other_sum) {
    const float top = fmaxf(max, other_max);
    if (top == -INFINITY) return;
    sum = (max == -INFINITY ? 0.0f : sum * expf(max - top)) +
          (other_max == -INFINITY ? 0.0f : other_sum * expf(other_max - top));
    max = top;
  }
  __device__ __forceinline__ void warp_merge() {
    for (int off = 16; off > 0; off >>= 1) {
      const float om = __shfl_xor_sync(kFullMask, max, off), os = __shfl_xor_sync(kFullMask, sum, off);
      merge(om, os);
    }
  }
  __device__ __forceinline__ float log() const { return max + logf(sum); }
};

__global__ void __launch_bounds__(kThreads)
    sinkhorn_dense_kernel(const float* __restrict__ cost, const float* __restrict__ a, const float* __restrict__ b,
                          int64_t n, int64_t m, float reg, float damping, double tol, int64_t max_iter,
                          int64_t plateau, float* __restrict__ f, float* __restrict__ g, int64_t* __restrict__ n_iter,
                          double* __restrict__ error, int64_t* __restrict__ status, float* __restrict__ shifted) {
  __shared__ double scratch[32];
  const int64_t problem = blockIdx.x;
  const float* C = cost + problem * n * m;
  a += problem * n, b += problem * m, f += problem * n, g += problem * m;
  float* ha = shifted + problem * (n + m);   // log a_i + f_i / reg
  float* hb = ha + n;                        // log b_j + g_j / reg
  const float inv_reg = 1.0f / reg, scale = -reg * damping;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

  double mass = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mass += double(a[i]), f[i] = 0.0f;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) g[j] = 0.0f;
  mass = block_reduce(mass, SumOp{}, scratch);

  double best = INFINITY, err = INFINITY;
  int64_t since_best = 0, it = 0, state = kMaxIter;
  while (it < max_iter) {
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) hb[j] = logf(b[j]) + g[j] * inv_reg;
    __syncthreads();
    double part = 0.0;
    for (int64_t i = warp; i < n; i += warps) {
      const float* row = C + i * m;
      OnlineLse lse;
      for (int64_t j = lane; j < m; j += 32) lse.add(fmaf(-row[j], inv_reg, hb[j]));
      lse.warp_merge();
      if (lane == 0) {
        const float f_new = scale * lse.log();
        if (a[i] > 0.0f)
          part += double(a[i]) * fabs(1.0 - exp(fmin(double(f[i] - f_new) / double(reg), kMaxErrorExponent)));
        f[i] = f_new;
        ha[i] = logf(a[i]) + f_new * inv_reg;
      }
    }
    err = block_reduce(part, SumOp{}, scratch) / mass;   // its barriers publish f and ha
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      OnlineLse lse;
      for (int64_t i = 0; i < n; ++i) lse.add(fmaf(-C[i * m + j], inv_reg, ha[i]));
      g[j] = scale * lse.log();
    }
    ++it;
    if (err <= tol) {
      state = kConverged;
      break;
    }
    if (err < best) {
      best = err, since_best = 0;
    } else if (++since_best >= plateau) {
      state = kPlateau;
      break;
    }
    __syncthreads();   // g is complete before the next hb
  }
  if (threadIdx.x == 0) n_iter[problem] = it, error[problem] = err, status[problem] = state;
}

WorkspaceLayout layout_of(int64_t B, int64_t n, int64_t m) {
  WorkspaceLayout layout;
  layout.reserve<float>(B * (n + m));
  return layout;
}

}  // namespace

int64_t sinkhorn_dense_workspace_bytes(int64_t B, int64_t n, int64_t m) {
  if (B < 0 || n < 0 || m < 0) fail_argument("sinkhorn_dense_workspace_bytes", "sizes must be >= 0");
  return layout_of(B, n, m).bytes();
}

void sinkhorn_dense(const float* cost, const float* a, const float* b, int64_t B, int64_t n, int64_t m, double reg,
                    double damping, double tol, int64_t max_iter, int64_t plateau, float* f, float* g,
                    int64_t* n_iter, double* error, int64_t* status, void* workspace, int64_t workspace_bytes,
                    cudaStream_t stream, int device) {
  const char* op = "sinkhorn_dense";
  if (B < 0) fail_argument(op, "B must be >= 0, got " + std::to_string(B));
  if (!(reg > 0.0) || !std::isfinite(reg)) fail_argument(op, "reg must be finite and > 0, got " + std::to_string(reg));
  if (!(damping > 0.0 && damping <= 1.0)) fail_argument(op, "damping must be in (0, 1], got " + std::to_string(damping));
  if (!(tol >= 0.0)) fail_argument(op, "tol must be >= 0, got " + std::to_string(tol));
  if (max_iter < 1 || plateau < 1) fail_argument(op, "max_iter and plateau must be >= 1");
  const Workspace ws(op, workspace, workspace_bytes, layout_of(B, n, m));
  if (B == 0) return;
  if (n < 1 || m < 1) fail_argument(op, "both measures need at least one point, got n=" + std::to_string(n) +
                                            ", m=" + std::to_string(m));
  for (const void* ptr : {static_cast<const void*>(cost), static_cast<const void*>(a), static_cast<const void*>(b),
                          static_cast<const void*>(f), static_cast<const void*>(g), static_cast<const void*>(n_iter),
                          static_cast<const void*>(error), static_cast<const void*>(status)})
    if (ptr == nullptr) fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  sinkhorn_dense_kernel<<<blocks_for(B, 1, op), kThreads, 0, stream>>>(
      cost, a, b, n, m, float(reg), float(damping), tol, max_iter, plateau, f, g, n_iter, error, status,
      ws.at<float>(0));
  GENCORE_CUDA_CHECK_LAUNCH("sinkhorn_dense_kernel");
}

}  // namespace gencore::gpu
