// DSM loss, its backward and the DMD gradient: one warp per segment of 4096
// elements of a row (score/rows.cuh), float4 loads where every row is
// 16-byte aligned, double accumulation.
//
//   dsm_loss        (with grad_raw: also writes the gradient of grad_scale *
//                   sum_b loss_b in the same pass, dsm_loss_and_grad)
//                   rows of one segment: dsm_loss_kernel writes loss directly;
//                   longer rows: dsm_loss_kernel writes per-segment partials
//                   [B, S] into the workspace, dsm_loss_finish_kernel sums
//                   each row's partials (one warp per row) into loss.
//   dsm_backward    one pass, elementwise with the per-row scale.
//   dmd_gradient    rows of one segment: dmd_kernel<fused> sums |x0 - real|
//                   and writes the row (its second read of real hits cache);
//                   longer rows: dmd_kernel writes the partials, then
//                   dmd_apply_kernel has every warp sum its row's partials (the
//                   same fixed order for every warp of the row) and write its
//                   segment.
// Kernels of one call follow each other on the caller's stream, which orders
// the partials' writes before their reads.
#include "score/losses.cuh"

#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/warp.cuh"
#include "common/workspace.cuh"
#include "score/rows.cuh"

namespace gencore::gpu {
namespace {

using namespace score_rows;

constexpr int kFinishWarps = 8;  // rows per block of the finishing kernels

// loss_b from the row's sum of squared errors (M == 0: weight * 0, as the reference).
__device__ __forceinline__ float dsm_finish(double sum, float weight, int64_t M) {
  return float(double(weight) * (M > 0 ? sum / double(M) : 0.0));
}

// d loss_b / d raw_bj = factor * (pred_bj - target_bj) for grad_loss_b = g: one
// expression for the fused forward and the backward, so both write the same bits.
__device__ __forceinline__ float gradient_factor(float g, float weight, float c_out, int64_t M) {
  return float(2.0 * double(g) * double(weight) * double(c_out) / double(M));
}

template <bool kVec4>
__global__ void __launch_bounds__(kSegmentThreads)
    dsm_loss_kernel(const float* __restrict__ raw, const float* __restrict__ x, const float* __restrict__ target,
                    int64_t B, int64_t M, int64_t S, const float* __restrict__ c_skip,
                    const float* __restrict__ c_out, const float* __restrict__ weight, float* __restrict__ loss,
                    double* __restrict__ partials, float grad_scale, float* __restrict__ grad_raw) {
  Segment s;
  if (!warp_segment(B, M, S, s)) return;
  const int lane = threadIdx.x % 32;
  const float cs = c_skip[s.row], co = c_out[s.row];
  const float factor = gradient_factor(grad_scale, weight[s.row], co, M);
  const int64_t base = s.row * M;
  double acc = 0.0;
  for_each<kVec4>(s.begin, s.end, lane, 32, [&](int64_t j, auto width) {
    constexpr int W = decltype(width)::value;
    const Floats<W> r = load<W>(raw + base + j), xv = load<W>(x + base + j), t = load<W>(target + base + j);
    Floats<W> g;
#pragma unroll
    for (int i = 0; i < W; ++i) {
      const float e = fmaf(cs, xv.v[i], co * r.v[i]) - t.v[i];
      acc = fma(double(e), double(e), acc);
      g.v[i] = factor * e;
    }
    if (grad_raw != nullptr) store<W>(grad_raw + base + j, g);
  });
  acc = warp_sum(acc);
  if (lane != 0) return;
  if (S == 1) loss[s.row] = dsm_finish(acc, weight[s.row], M);
  else partials[s.row * S + s.index] = acc;
}

// partials [B, S] -> loss [B], one warp per row.
__global__ void __launch_bounds__(kFinishWarps * 32)
    dsm_loss_finish_kernel(const double* __restrict__ partials, int64_t B, int64_t M, int64_t S,
                           const float* __restrict__ weight, float* __restrict__ loss) {
  const int64_t row = int64_t(blockIdx.x) * kFinishWarps + threadIdx.x / 32;
  if (row >= B) return;  // whole warps
  const double sum = sum_partials(partials + row * S, S, threadIdx.x % 32);
  if (threadIdx.x % 32 == 0) loss[row] = dsm_finish(sum, weight[row], M);
}

template <bool kVec4>
__global__ void __launch_bounds__(kSegmentThreads)
    dsm_backward_kernel(const float* __restrict__ raw, const float* __restrict__ x,
                        const float* __restrict__ target, int64_t B, int64_t M, int64_t S,
                        const float* __restrict__ c_skip, const float* __restrict__ c_out,
                        const float* __restrict__ weight, const float* __restrict__ grad_loss,
                        float* __restrict__ grad_raw) {
  Segment s;
  if (!warp_segment(B, M, S, s)) return;
  const int lane = threadIdx.x % 32;
  const float cs = c_skip[s.row], co = c_out[s.row];
  const float scale = gradient_factor(grad_loss[s.row], weight[s.row], co, M);
  const int64_t base = s.row * M;
  for_each<kVec4>(s.begin, s.end, lane, 32, [&](int64_t j, auto width) {
    constexpr int W = decltype(width)::value;
    const Floats<W> r = load<W>(raw + base + j), xv = load<W>(x + base + j), t = load<W>(target + base + j);
    Floats<W> g;
#pragma unroll
    for (int i = 0; i < W; ++i) g.v[i] = scale * (fmaf(cs, xv.v[i], co * r.v[i]) - t.v[i]);
    store<W>(grad_raw + base + j, g);
  });
}

// Sum of |x0 - real| over the warp's segment, every lane.
template <bool kVec4>
__device__ __forceinline__ double abs_error_sum(const float* __restrict__ x0, const float* __restrict__ real,
                                                int64_t base, const Segment& s, int lane) {
  double acc = 0.0;
  for_each<kVec4>(s.begin, s.end, lane, 32, [&](int64_t j, auto width) {
    constexpr int W = decltype(width)::value;
    const Floats<W> a = load<W>(x0 + base + j), r = load<W>(real + base + j);
#pragma unroll
    for (int i = 0; i < W; ++i) acc += double(fabsf(a.v[i] - r.v[i]));
  });
  return warp_sum(acc);
}

// out = (fake - real) / norm over the warp's segment; 0 unless norm > 0.
template <bool kVec4>
__device__ __forceinline__ void write_dmd(const float* __restrict__ real, const float* __restrict__ fake,
                                          float norm, int64_t base, const Segment& s, int lane,
                                          float* __restrict__ out) {
  const bool positive = norm > 0.0f;
  for_each<kVec4>(s.begin, s.end, lane, 32, [&](int64_t j, auto width) {
    constexpr int W = decltype(width)::value;
    const Floats<W> r = load<W>(real + base + j), f = load<W>(fake + base + j);
    Floats<W> g;
#pragma unroll
    for (int i = 0; i < W; ++i) g.v[i] = positive ? (f.v[i] - r.v[i]) / norm : 0.0f;
    store<W>(out + base + j, g);
  });
}

// kFused (S == 1): the row's norm, then the row. Otherwise the segment's partial.
template <bool kVec4, bool kFused>
__global__ void __launch_bounds__(kSegmentThreads)
    dmd_kernel(const float* __restrict__ x0, const float* __restrict__ real, const float* __restrict__ fake,
               int64_t B, int64_t M, int64_t S, float* __restrict__ out, double* __restrict__ partials) {
  Segment s;
  if (!warp_segment(B, M, S, s)) return;
  const int lane = threadIdx.x % 32;
  const int64_t base = s.row * M;
  const double sum = abs_error_sum<kVec4>(x0, real, base, s, lane);
  if constexpr (kFused) {
    write_dmd<kVec4>(real, fake, float(sum / double(M)), base, s, lane, out);
  } else {
    if (lane == 0) partials[s.row * S + s.index] = sum;
  }
}

template <bool kVec4>
__global__ void __launch_bounds__(kSegmentThreads)
    dmd_apply_kernel(const float* __restrict__ real, const float* __restrict__ fake, int64_t B, int64_t M,
                     int64_t S, const double* __restrict__ partials, float* __restrict__ out) {
  Segment s;
  if (!warp_segment(B, M, S, s)) return;
  const int lane = threadIdx.x % 32;
  const float norm = float(sum_partials(partials + s.row * S, S, lane) / double(M));
  write_dmd<kVec4>(real, fake, norm, s.row * M, s, lane, out);
}

void check_sizes(const char* op, int64_t B, int64_t M) {
  if (B < 0 || M < 0)
    fail_argument(op, "need B >= 0 and M >= 0, got B=" + std::to_string(B) + ", M=" + std::to_string(M));
}

void check_pointers(const char* op, std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p == nullptr) fail_argument(op, "a data pointer is null");
}

}  // namespace

int64_t dsm_loss_workspace_bytes(int64_t B, int64_t M) {
  check_sizes("dsm_loss_workspace_bytes", B, M);
  int64_t offset;
  return partials_layout(B, M, offset).bytes();
}

int64_t dmd_gradient_workspace_bytes(int64_t B, int64_t M) {
  check_sizes("dmd_gradient_workspace_bytes", B, M);
  int64_t offset;
  return partials_layout(B, M, offset).bytes();
}

namespace {

void dsm_loss_pass(const char* op, const float* raw, const float* x, const float* target, int64_t B, int64_t M,
                   const float* c_skip, const float* c_out, const float* weight, float* loss, void* workspace,
                   int64_t workspace_bytes, float grad_scale, float* grad_raw, cudaStream_t stream, int device) {
  check_sizes(op, B, M);
  int64_t offset;
  const WorkspaceLayout layout = partials_layout(B, M, offset);
  const Workspace ws(op, workspace, workspace_bytes, layout);
  if (B == 0) return;
  check_pointers(op, {c_skip, c_out, weight, loss});
  if (M > 0) check_pointers(op, {raw, x, target});
  DeviceGuard guard(device);
  const int64_t S = segments_per_row(M);
  double* partials = S > 1 ? ws.at<double>(offset) : nullptr;  // [B, S]
  const unsigned blocks = segment_blocks(B, S, op);
  if (vec4_rows(M, {raw, x, target, grad_raw}))
    dsm_loss_kernel<true><<<blocks, kSegmentThreads, 0, stream>>>(raw, x, target, B, M, S, c_skip, c_out, weight,
                                                                  loss, partials, grad_scale, grad_raw);
  else
    dsm_loss_kernel<false><<<blocks, kSegmentThreads, 0, stream>>>(raw, x, target, B, M, S, c_skip, c_out, weight,
                                                                   loss, partials, grad_scale, grad_raw);
  GENCORE_CUDA_CHECK_LAUNCH("dsm_loss_kernel");
  if (S > 1) {
    dsm_loss_finish_kernel<<<blocks_for(B, kFinishWarps, op), kFinishWarps * 32, 0, stream>>>(partials, B, M, S,
                                                                                             weight, loss);
    GENCORE_CUDA_CHECK_LAUNCH("dsm_loss_finish_kernel");
  }
}

}  // namespace

void dsm_loss(const float* raw, const float* x, const float* target, int64_t B, int64_t M, const float* c_skip,
              const float* c_out, const float* weight, float* loss, void* workspace, int64_t workspace_bytes,
              cudaStream_t stream, int device) {
  dsm_loss_pass("dsm_loss", raw, x, target, B, M, c_skip, c_out, weight, loss, workspace, workspace_bytes, 0.0f,
                nullptr, stream, device);
}

void dsm_loss_and_grad(const float* raw, const float* x, const float* target, int64_t B, int64_t M,
                       const float* c_skip, const float* c_out, const float* weight, float grad_scale, float* loss,
                       float* grad_raw, void* workspace, int64_t workspace_bytes, cudaStream_t stream, int device) {
  if (B > 0 && M > 0 && grad_raw == nullptr) fail_argument("dsm_loss_and_grad", "a data pointer is null");
  dsm_loss_pass("dsm_loss_and_grad", raw, x, target, B, M, c_skip, c_out, weight, loss, workspace, workspace_bytes,
                grad_scale, grad_raw, stream, device);
}

void dsm_loss_backward(const float* raw, const float* x, const float* target, int64_t B, int64_t M,
                       const float* c_skip, const float* c_out, const float* weight, const float* grad_loss,
                       float* grad_raw, cudaStream_t stream, int device) {
  check_sizes("dsm_loss_backward", B, M);
  if (B == 0 || M == 0) return;
  check_pointers("dsm_loss_backward", {raw, x, target, c_skip, c_out, weight, grad_loss, grad_raw});
  DeviceGuard guard(device);
  const int64_t S = segments_per_row(M);
  const unsigned blocks = segment_blocks(B, S, "dsm_loss_backward");
  if (vec4_rows(M, {raw, x, target, grad_raw}))
    dsm_backward_kernel<true><<<blocks, kSegmentThreads, 0, stream>>>(raw, x, target, B, M, S, c_skip, c_out,
                                                                      weight, grad_loss, grad_raw);
  else
    dsm_backward_kernel<false><<<blocks, kSegmentThreads, 0, stream>>>(raw, x, target, B, M, S, c_skip, c_out,
                                                                       weight, grad_loss, grad_raw);
  GENCORE_CUDA_CHECK_LAUNCH("dsm_backward_kernel");
}

void dmd_gradient(const float* x0, const float* real, const float* fake, int64_t B, int64_t M, float* out,
                  void* workspace, int64_t workspace_bytes, cudaStream_t stream, int device) {
  check_sizes("dmd_gradient", B, M);
  int64_t offset;
  const WorkspaceLayout layout = partials_layout(B, M, offset);
  const Workspace ws("dmd_gradient", workspace, workspace_bytes, layout);
  if (B == 0 || M == 0) return;
  check_pointers("dmd_gradient", {x0, real, fake, out});
  DeviceGuard guard(device);
  const int64_t S = segments_per_row(M);
  const unsigned blocks = segment_blocks(B, S, "dmd_gradient");
  const bool vec4 = vec4_rows(M, {x0, real, fake, out});
  if (S == 1) {
    if (vec4)
      dmd_kernel<true, true><<<blocks, kSegmentThreads, 0, stream>>>(x0, real, fake, B, M, S, out, nullptr);
    else
      dmd_kernel<false, true><<<blocks, kSegmentThreads, 0, stream>>>(x0, real, fake, B, M, S, out, nullptr);
    GENCORE_CUDA_CHECK_LAUNCH("dmd_kernel<fused>");
    return;
  }
  double* partials = ws.at<double>(offset);  // [B, S]
  if (vec4)
    dmd_kernel<true, false><<<blocks, kSegmentThreads, 0, stream>>>(x0, real, fake, B, M, S, out, partials);
  else
    dmd_kernel<false, false><<<blocks, kSegmentThreads, 0, stream>>>(x0, real, fake, B, M, S, out, partials);
  GENCORE_CUDA_CHECK_LAUNCH("dmd_kernel<partials>");
  if (vec4)
    dmd_apply_kernel<true><<<blocks, kSegmentThreads, 0, stream>>>(real, fake, B, M, S, partials, out);
  else
    dmd_apply_kernel<false><<<blocks, kSegmentThreads, 0, stream>>>(real, fake, B, M, S, partials, out);
  GENCORE_CUDA_CHECK_LAUNCH("dmd_apply_kernel");
}

}  // namespace gencore::gpu
