// Gaussian-mixture score kernels. A group of G lanes owns one query (G =
// min(32, next_pow2(d)), so a warp holds 32 / G queries and small d wastes
// few lanes); components are visited in batches of kBatch, each in two
// sweeps over the query's columns:
//   1. z, c = alpha^2 lambda + sigma^2, w = z / c; per-lane sums of z w and
//      log c for every component of the batch, then one butterfly per sum;
//   2. with the batch's log N, the online log-sum-exp update: the
//      accumulator is rescaled and gets -p w (gmm_score), or -p w is written
//      in place for the caller's back-rotation GEMM (gmm_score_tile, after all
//      C components' log N, kept in the workspace).
// With d <= 32 (one column per lane) x, w and the accumulator live in
// registers; for d > 32 sweep 2 recomputes w and the accumulator is the
// score row itself, read and written once per batch.
#include "score/gmm.cuh"

#include <cmath>
#include <string>
#include <type_traits>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/warp.cuh"
#include "common/workspace.cuh"

namespace gencore::gpu {
namespace {

constexpr int kThreads = 256;
// 4 blocks an SM allow 64 registers; with the bare thread bound ptxas aims
// lower and spills around the IEEE division's slow-path call.
constexpr int kMinBlocks = 4;
constexpr int kBatch = 4;  // components per sweep: 2 kBatch butterflies in flight
constexpr double kLog2Pi = 1.8378770664093454835606594728112;

// Sum over the G lanes of the calling lane's group (groups are aligned runs
// of G lanes; every lane of the warp must call it).
template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// One query's smoothing: c_j = a2 lambda_j + s2, z_j = x_j - a mu_j.
struct Smoothing {
  float a, a2, s2;
};

__device__ __forceinline__ Smoothing smoothing(float sigma, float alpha) {
  return {alpha, float(double(alpha) * alpha), float(double(sigma) * sigma)};
}

// w = z / c of one element; adds z w and log c to the sums.
__device__ __forceinline__ float add_terms(float x, float mu, float lam, const Smoothing& sm, float& quad,
                                           float& logdet) {
  const float z = fmaf(-sm.a, mu, x);
  const float c = fmaf(sm.a2, lam, sm.s2);
  const float w = z / c;
  quad = fmaf(z, w, quad);
  logdet += logf(c);
  return w;
}

__device__ __forceinline__ float weight_of(float x, float mu, float lam, const Smoothing& sm) {
  return fmaf(-sm.a, mu, x) / fmaf(sm.a2, lam, sm.s2);
}

// The query of the calling lane's group; past B, groups of a partly filled
// warp work on the last query (their shuffles must run) and write nothing.
template <int G>
struct QueryLane {
  int64_t b;   // the query read
  bool valid;  // b is this group's own query: it writes
  int lg;      // lane within the group = its first column
};

template <int G>
__device__ __forceinline__ QueryLane<G> query_lane(int64_t B) {
  const int64_t q = int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G;
  return {q < B ? q : B - 1, q < B, int(threadIdx.x % G)};
}

// Sweep 1 for components k0 .. k0 + nb of a batch: per-lane sums, then log N
// of each (-inf past nb), every lane of the group. x_of(c) is the row of
// inputs for component c (the same row for every c without rotations);
// kOne: one column per lane, whose w are kept in w1.
template <int G, bool kOne, typename XOf>
__device__ __forceinline__ void batch_log_normal(XOf x_of, const float* __restrict__ mu, const float* __restrict__ lam,
                                                 const float* __restrict__ log_w, int k0, int nb, int64_t d,
                                                 const Smoothing& sm, int lg, float log_norm, float (&ln)[kBatch],
                                                 float (&w1)[kBatch]) {
  float quad[kBatch], logdet[kBatch];
#pragma unroll
  for (int c = 0; c < kBatch; ++c) quad[c] = logdet[c] = w1[c] = 0.0f;
  if constexpr (kOne) {
    if (lg < d) {
#pragma unroll
      for (int c = 0; c < kBatch; ++c)
        if (c < nb) {
          const int64_t at = int64_t(k0 + c) * d + lg;
          w1[c] = add_terms(x_of(c)[lg], mu[at], lam[at], sm, quad[c], logdet[c]);
        }
    }
  } else {
    for (int64_t j = lg; j < d; j += G) {
#pragma unroll
      for (int c = 0; c < kBatch; ++c)
        if (c < nb) {
          const int64_t at = int64_t(k0 + c) * d + j;
          add_terms(x_of(c)[j], mu[at], lam[at], sm, quad[c], logdet[c]);
        }
    }
  }
#pragma unroll
  for (int c = 0; c < kBatch; ++c) {
    const float q = group_sum<G>(quad[c]), l = group_sum<G>(logdet[c]);
    ln[c] = c < nb ? log_w[k0 + c] - 0.5f * (q + l + log_norm) : -INFINITY;
  }
}

// The finite shift of a running max (0 while it is -inf, or not finite).
__device__ __forceinline__ float shift_of(float m) { return isfinite(m) ? m : 0.0f; }

// Iso / diagonal: log_prob [B], score [B, d] of x [B, d] over all K components.
template <int G, bool kOne>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gmm_diag_kernel(const float* __restrict__ x, int64_t B, int64_t d, const float* __restrict__ means, int K,
                    const float* __restrict__ log_w, const float* __restrict__ eigvals,
                    const float* __restrict__ sigma, const float* __restrict__ alpha, float* __restrict__ log_prob,
                    float* __restrict__ score) {
  const QueryLane<G> ql = query_lane<G>(B);
  if (G == 32 && !ql.valid) return;  // whole warps
  const Smoothing sm = smoothing(sigma[ql.b], alpha[ql.b]);
  const float* xb = x + ql.b * d;
  float* acc_row = score + ql.b * d;  // the accumulator for d > 32 (valid groups only: G == 32)
  const float log_norm = float(double(d) * kLog2Pi);
  float m = -INFINITY, total = 0.0f, acc = 0.0f;  // acc: the lane's column (kOne)
  for (int k0 = 0; k0 < K; k0 += kBatch) {
    const int nb = min(kBatch, K - k0);
    float ln[kBatch], w1[kBatch];
    batch_log_normal<G, kOne>([&](int) { return xb; }, means, eigvals, log_w, k0, nb, d, sm, ql.lg, log_norm, ln,
                              w1);
    float new_max = m;
#pragma unroll
    for (int c = 0; c < kBatch; ++c) new_max = fmaxf(new_max, ln[c]);
    const float shift = shift_of(new_max);
    const float r = expf(m - shift);
    float p[kBatch], psum = 0.0f;
#pragma unroll
    for (int c = 0; c < kBatch; ++c) psum += (p[c] = expf(ln[c] - shift));
    total = fmaf(total, r, psum);
    m = new_max;
    if constexpr (kOne) {
      acc *= r;
#pragma unroll
      for (int c = 0; c < kBatch; ++c) acc = fmaf(-p[c], w1[c], acc);  // w1 = 0 past nb and d
    } else {
      for (int64_t j = ql.lg; j < d; j += G) {
        float v = k0 == 0 ? 0.0f : acc_row[j] * r;
#pragma unroll
        for (int c = 0; c < kBatch; ++c)
          if (c < nb) {
            const int64_t at = int64_t(k0 + c) * d + j;
            v = fmaf(-p[c], weight_of(xb[j], means[at], eigvals[at], sm), v);
          }
        acc_row[j] = v;
      }
    }
  }
  if (!ql.valid) return;
  if (ql.lg == 0) log_prob[ql.b] = m + logf(total);
  if constexpr (kOne) {
    if (ql.lg < d) score[ql.b * d + ql.lg] = acc / total;
  } else {
    for (int64_t j = ql.lg; j < d; j += G) acc_row[j] /= total;
  }
}

// Full covariances, one tile of C components (see gmm.cuh): zx [B, C, d] in
// place, log N [B, C] through `ln_ws`.
template <int G, bool kOne>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    gmm_tile_kernel(float* __restrict__ zx, int64_t B, int C, int64_t d, const float* __restrict__ means,
                    const float* __restrict__ log_w, const float* __restrict__ eigvals,
                    const float* __restrict__ sigma, const float* __restrict__ alpha, float* __restrict__ running_max,
                    float* __restrict__ total, float* __restrict__ rescale, float* __restrict__ ln_ws) {
  const QueryLane<G> ql = query_lane<G>(B);
  if (G == 32 && !ql.valid) return;  // whole warps
  const Smoothing sm = smoothing(sigma[ql.b], alpha[ql.b]);
  float* zb = zx + ql.b * C * d;
  float* ln_b = ln_ws + ql.b * C;
  const float log_norm = float(double(d) * kLog2Pi);
  float tile_max = -INFINITY;
  for (int k0 = 0; k0 < C; k0 += kBatch) {
    const int nb = min(kBatch, C - k0);
    float ln[kBatch], w1[kBatch];
    batch_log_normal<G, kOne>([&](int c) { return zb + int64_t(k0 + c) * d; }, means, eigvals, log_w, k0, nb, d,
                              sm, ql.lg, log_norm, ln, w1);
#pragma unroll
    for (int c = 0; c < kBatch; ++c) {
      tile_max = fmaxf(tile_max, ln[c]);
      if (ql.valid && ql.lg == 0 && c < nb) ln_b[k0 + c] = ln[c];
    }
  }
  __syncwarp();  // lane 0 of each group wrote its log N; the group reads them below
  if (!ql.valid) return;  // no collectives follow

  const float old_max = running_max[ql.b];
  const float new_max = fmaxf(old_max, tile_max);
  const float shift = shift_of(new_max);
  float psum = 0.0f;
  for (int k = 0; k < C; ++k) {
    const float p = expf(ln_b[k] - shift);
    psum += p;
    float* row = zb + int64_t(k) * d;
    for (int64_t j = ql.lg; j < d; j += G) {
      const int64_t at = int64_t(k) * d + j;
      row[j] = -p * weight_of(row[j], means[at], eigvals[at], sm);
    }
  }
  if (ql.lg == 0) {
    const float r = expf(old_max - shift);
    rescale[ql.b] = r;
    total[ql.b] = fmaf(total[ql.b], r, psum);
    running_max[ql.b] = new_max;
  }
}

// f(Width<G>, kOne) for the group size of d: next_pow2(d) lanes with one
// column each up to d = 32, whole warps striding over the columns beyond.
template <int G>
using Group = std::integral_constant<int, G>;

template <typename F>
void with_group(int64_t d, F&& f) {
  if (d > 32) return f(Group<32>{}, std::false_type{});
  if (d > 16) return f(Group<32>{}, std::true_type{});
  if (d > 8) return f(Group<16>{}, std::true_type{});
  if (d > 4) return f(Group<8>{}, std::true_type{});
  if (d > 2) return f(Group<4>{}, std::true_type{});
  if (d > 1) return f(Group<2>{}, std::true_type{});
  return f(Group<1>{}, std::true_type{});
}

void check_sizes(const char* op, int64_t B, int64_t d, int64_t K, const char* k_name) {
  if (B < 0) fail_argument(op, "B must be >= 0, got " + std::to_string(B));
  if (d < 1 || d > INT32_MAX) fail_argument(op, "d must be in [1, 2^31 - 1], got " + std::to_string(d));
  if (K < 1 || K > INT32_MAX)
    fail_argument(op, std::string(k_name) + " must be in [1, 2^31 - 1], got " + std::to_string(K));
}

WorkspaceLayout tile_layout(int64_t B, int64_t C, int64_t& offset) {
  WorkspaceLayout layout;
  offset = layout.reserve<float>(B * C);
  return layout;
}

}  // namespace

void gmm_score(const float* x, int64_t B, int64_t d, const float* means, int64_t K, const float* log_weights,
               const float* eigvals, const float* sigma, const float* alpha, float* log_prob, float* score,
               cudaStream_t stream, int device) {
  const char* op = "gmm_score";
  check_sizes(op, B, d, K, "K");
  if (B == 0) return;
  if (!x || !means || !log_weights || !eigvals || !sigma || !alpha || !log_prob || !score)
    fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  with_group(d, [&](auto group, auto one) {
    constexpr int G = decltype(group)::value;
    gmm_diag_kernel<G, decltype(one)::value><<<blocks_for(B, kThreads / G, op), kThreads, 0, stream>>>(
        x, B, d, means, int(K), log_weights, eigvals, sigma, alpha, log_prob, score);
  });
  GENCORE_CUDA_CHECK_LAUNCH("gmm_diag_kernel");
}

int64_t gmm_score_tile_workspace_bytes(int64_t B, int64_t C) {
  if (B < 0 || C < 0)
    fail_argument("gmm_score_tile_workspace_bytes",
                  "need B >= 0 and C >= 0, got B=" + std::to_string(B) + ", C=" + std::to_string(C));
  int64_t offset;
  return tile_layout(B, C, offset).bytes();
}

void gmm_score_tile(float* zx, int64_t B, int64_t C, int64_t d, const float* rotated_means, const float* log_weights,
                    const float* eigvals, const float* sigma, const float* alpha, float* running_max, float* total,
                    float* rescale, void* workspace, int64_t workspace_bytes, cudaStream_t stream, int device) {
  const char* op = "gmm_score_tile";
  check_sizes(op, B, d, C, "C");
  int64_t offset;
  const WorkspaceLayout layout = tile_layout(B, C, offset);
  const Workspace ws(op, workspace, workspace_bytes, layout);
  if (B == 0) return;
  if (!zx || !rotated_means || !log_weights || !eigvals || !sigma || !alpha || !running_max || !total || !rescale)
    fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  float* ln_ws = ws.at<float>(offset);  // [B, C]
  with_group(d, [&](auto group, auto one) {
    constexpr int G = decltype(group)::value;
    gmm_tile_kernel<G, decltype(one)::value><<<blocks_for(B, kThreads / G, op), kThreads, 0, stream>>>(
        zx, B, int(C), d, rotated_means, log_weights, eigvals, sigma, alpha, running_max, total, rescale, ln_ws);
  });
  GENCORE_CUDA_CHECK_LAUNCH("gmm_tile_kernel");
}

}  // namespace gencore::gpu
