// The exact score of a Gaussian mixture smoothed at (sigma, alpha), on the
// GPU, float32; same math as gencore.score.reference.gmm. Per query b and
// component k, with Sigma_k = U_k diag(lambda_k) U_k^T:
//   z   = U_k^T (x_b - alpha_b mu_k)            [d]
//   c   = alpha_b^2 lambda_k + sigma_b^2        [d]
//   log N_bk = log w_k - (sum_j z_j^2 / c_j + sum_j log c_j + d log 2 pi) / 2
//   score_b  = -sum_k r_bk U_k (z / c),  r = softmax_k(log N_b.)
//   log p_b  = logsumexp_k log N_bk
// by an online log-sum-exp over components, so memory is O(B d) whatever K.
//
// Two entry points: gmm_score does iso/diagonal covariances (U = I) in one
// kernel; full covariances go through gmm_score_tile, one step of the online
// log-sum-exp over a tile of C components whose rotations the caller does
// with GEMMs (cuBLAS on the same stream), as the data-set denoiser does:
//   zx  = x U_tile                    [B, C d]  before: x_b U_k for each k of the tile
//   acc = acc * rescale + zx U_tile^T [B, d]    after: zx then holds -p_bk (z / c)_bk
// with U_tile = [U_k0 | U_k0+1 | ...] [d, C d].
// Queries are handled by groups of G = min(32, next_pow2(d)) lanes (several
// queries per warp for small d). Sums over d in float32 per lane, then a
// butterfly; log and division are the accurate logf and IEEE '/'.
// Everything is queued on `stream` on `device`; the host is never
// synchronised and nothing is allocated. Non-finite inputs propagate. Throws
// std::invalid_argument on bad sizes, null pointers or a too small workspace,
// std::runtime_error on CUDA errors.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// Iso / diagonal covariances (no rotation):
//   x [B, d], means [K, d], log_weights [K] (normalised; -inf allowed),
//   eigvals [K, d] >= 0, sigma [B] > 0, alpha [B]
//   -> log_prob [B], score [B, d]        (all contiguous float32)
// K >= 1, 1 <= d < 2^31. score doubles as the accumulator for d > 32.
void gmm_score(const float* x, int64_t B, int64_t d, const float* means, int64_t K, const float* log_weights,
               const float* eigvals, const float* sigma, const float* alpha, float* log_prob, float* score,
               cudaStream_t stream, int device);

// Bytes of the workspace gmm_score_tile() needs: log N of the tile,
//   bytes = 4 * B * C
// Throws std::invalid_argument for B < 0 or C < 0.
int64_t gmm_score_tile_workspace_bytes(int64_t B, int64_t C);

// One tile of C components of a full-covariance mixture, rotations done by
// the caller:
//   zx [B, C, d]      in: x_b U_k (row vector) for the tile's components k;
//                     out: -p_bk (z / c)_bk, ready for the back-rotation GEMM
//   rotated_means [C, d] = U_k^T mu_k, log_weights [C], eigvals [C, d],
//   (the caller may centre x and every mu on one point m first: z is unchanged)
//   sigma [B], alpha [B]
//   running_max, total [B] in place, rescale [B] out,
// with z = zx - alpha U^T mu, p_bk = exp(log N_bk - m'), m = max(running_max,
// max_k log N_bk), m' = m if finite else 0, rescale = exp(running_max - m'),
// total := total rescale + sum_k p_bk, running_max := m (as
// dataset_denoise_tile: a tile of zero-weight components changes nothing and
// gives no NaN). Finally log p = running_max + log total and score =
// acc / total. workspace: >= gmm_score_tile_workspace_bytes(B, C) bytes,
// 16-byte aligned, ordered with `stream`.
void gmm_score_tile(float* zx, int64_t B, int64_t C, int64_t d, const float* rotated_means, const float* log_weights,
                    const float* eigvals, const float* sigma, const float* alpha, float* running_max, float* total,
                    float* rescale, void* workspace, int64_t workspace_bytes, cudaStream_t stream, int device);

}  // namespace gencore::gpu
