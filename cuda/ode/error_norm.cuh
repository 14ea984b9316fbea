// The per-sample error norm of an adaptive step on the GPU, float32: the
// contract of csrc/ode/error_norm.h (python/gencore/ode/ops/_error_norm.py).
//
//   err, y, y_new [B, M] float32 (contiguous) -> out [B] float32,
//   out_b = sqrt(mean_j (err_bj / s_bj)^2),  s_bj = fma(rtol, max(|y_bj|, |y_new_bj|), atol) in float,
//
// the quotients, squares and sums in double; a row of M = 0 elements gets 0
// (its inputs are not read). One block per row (32 to 256 threads by M).
// NaN/inf are not checked (a host sync): they propagate. No workspace; queued
// on `stream` on `device`; never synchronises. std::invalid_argument for bad
// sizes, tolerances or null pointers; B = 0 does nothing.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

void ode_error_norm(const float* err, const float* y, const float* y_new, int64_t B, int64_t M, double atol,
                    double rtol, float* out, cudaStream_t stream, int device);

}  // namespace gencore::gpu
