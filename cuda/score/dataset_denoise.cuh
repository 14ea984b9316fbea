// The data-set denoiser's tile epilogue on the GPU, float32: one step of the
// online log-sum-exp of gencore.score.reference.dataset_denoise. The Python
// layer does the two GEMMs of a tile with torch (cuBLAS, caller's stream):
//   scores = x' y'^T                 before this kernel, [B, T]
//   acc = acc * rescale + scores y'  after it, [B, d]
// with x' = x - alpha m and y' the tile of the data minus the data mean m.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// The costs of the logits (score::CostMode of csrc/score/dataset_denoise.h).
constexpr int kCostSquared = 0, kCostEuclidean = 1, kCostEuclideanInverse = 2;
// u^2 <= kCoincidentUlps ulp of (x_sq + alpha^2 tile_sq) / sigma^2 is the expansion's rounding: u = 0
// (score::kCoincidentUlps, the CPU kernel's rule).
constexpr int kCoincidentUlps = 16;

// scores [B, T] (in place), tile_sq [T] = ||y'_t||^2, log_w [T] (null: all
// weights 1), sigma [B], alpha [B], running_max [B], total [B] (in place),
// rescale [B] (out); all contiguous float32. Per row b, by cost:
//   squared:   l_bt = log_w_t + (alpha_b scores_bt - alpha_b^2 tile_sq_t / 2) / sigma_b^2
//   euclidean: l_bt = log_w_t - u_bt, u_bt^2 = max(x_sq_b - 2 alpha_b scores_bt + alpha_b^2 tile_sq_t, 0)
//              / sigma_b^2 (x_sq [B] = ||x'_b||^2, which log_z then does not subtract)
//   euclidean_inverse: l_bt = log_w_t - u_bt - log u_bt, -inf where u_bt = 0
// with u = 0 where u^2 <= kCoincidentUlps FLT_EPSILON (x_sq_b + alpha_b^2 tile_sq_t) / sigma_b^2
// and then
//   m            = max(running_max_b, max_t l_bt)       (NaN logits are skipped)
//   m'           = m if finite, else 0
//   scores_bt   := exp(l_bt - m')                       (0 for l = -inf)
//   rescale_b   := exp(running_max_b - m')              (0 while the old max is -inf)
//   total_b     := total_b rescale_b + sum_t scores_bt  (summed in double)
//   running_max_b := m
// so a row whose logits are all -inf (weights 0 in this tile) keeps its
// running max and total and gets no NaN. One block per row, two passes over
// it (the second from cache); float4 where T % 4 == 0 and the arrays are
// 16-byte aligned. Queued on `stream` on `device`; never synchronises,
// allocates nothing. Throws std::invalid_argument for B < 0, T < 1, an unknown
// cost or a null pointer (log_w excepted; x_sq only for the euclidean costs),
// std::runtime_error on CUDA errors.
void dataset_denoise_tile(float* scores, int64_t B, int64_t T, const float* tile_sq, const float* log_w,
                          const float* sigma, const float* alpha, float* running_max, float* total, float* rescale,
                          cudaStream_t stream, int device, int cost = kCostSquared, const float* x_sq = nullptr);

}  // namespace gencore::gpu
