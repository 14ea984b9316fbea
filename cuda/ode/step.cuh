// The fused solver step on the GPU, float32: the contract of csrc/ode/step.h
// (python/gencore/ode/ops/_step.py, whose _reference is the specification).
//
//   x, d_cond, d_uncond?, h1?, h2?, h3?, noise? [B, M] float32, coeffs [B, 6] and
//   guidance [B]? float64 -> x_next [B, M], d [B, M] float32
//
// Per sample b (all pointers contiguous device memory; null: absent):
//   d      = d_cond, or fma(w, d_cond - d_uncond, d_uncond), w = float(guidance[b])
//   rescale phi > 0 (with guidance, M > 1): d *= s, s = float(phi r + 1 - phi),
//            r = std(d_cond) / std(d) in float (1 when std(d) = 0), the stds from
//            sums in double shifted by each row's first element
//   threshold q > 0: t = min(max(1, lerp(|d| at torch.quantile's positions) s), threshold_max),
//            the positions, weight and lerp in float as torch forms them; a row
//            holding NaN gets t = NaN; d = clamp(s d, -t, t) / t (NaN stays NaN)
//   x_next = c_x x + c_d d + c_1 h1 + c_2 h2 + c_3 h3 + c_z noise (fma chain, that order)
//
// Nothing is checked for NaN/inf (that would be a host sync): they propagate.
// Plain steps are one elementwise pass (rows cut into blocks of 2048 elements);
// rescale / thresholding run one block per row: pass A forms d and the sums,
// a radix select (common/select.cuh, 4 passes of 8 bits over |d|, plus one
// min pass when the two positions differ and are not tied) finds the order
// statistics, pass B finishes d and x_next. No workspace; queued on `stream`
// on `device`; never synchronises. std::invalid_argument for bad sizes,
// parameters or null pointers; B = 0 or M = 0 does nothing.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

void ode_step(const float* x, const float* d_cond, const float* d_uncond, const float* h1, const float* h2,
              const float* h3, const float* noise, int64_t B, int64_t M, const double* coeffs, const double* guidance,
              double rescale, double threshold, double threshold_max, float* x_next, float* d, cudaStream_t stream,
              int device);

}  // namespace gencore::gpu
