// Denoising-score-matching loss, its backward, and the DMD gradient on the
// GPU, float32. Same math as gencore.score.reference (dsm_loss,
// dmd_gradient) and the CPU kernels.
//   raw, x, target / x0, real, fake: [B, M] (row-major, contiguous; a sample
//   [B, ...] flattened), per-sample coefficients [B].
// Rows are cut into segments of 4096 elements, one warp each (score/rows.cuh),
// so a few huge rows fill the GPU as well as many small ones; row sums over
// several segments meet in caller workspace and are summed in a fixed order
// (deterministic). Sums are accumulated in double. Non-finite values
// propagate; nothing is checked for finiteness (the Python layer does that
// when asked). Everything is queued on `stream` on `device`; the host is never
// synchronised and nothing is allocated. Throws std::invalid_argument on bad
// sizes, null pointers or a too small workspace, std::runtime_error on CUDA
// errors.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// Bytes of the workspace dsm_loss() and dmd_gradient() need: the per-segment
// partial sums of rows longer than one segment,
//   S     = max(1, ceil(M / 4096))
//   bytes = 8 * B * S if S > 1, else 0
// Throws std::invalid_argument for B < 0 or M < 0.
int64_t dsm_loss_workspace_bytes(int64_t B, int64_t M);
int64_t dmd_gradient_workspace_bytes(int64_t B, int64_t M);

// loss [B]: loss_b = weight_b * mean_j (c_skip_b x_bj + c_out_b raw_bj - target_bj)^2,
// and weight_b * 0 for M == 0. workspace: >= dsm_loss_workspace_bytes(B, M)
// bytes, 16-byte aligned.
void dsm_loss(const float* raw, const float* x, const float* target, int64_t B, int64_t M, const float* c_skip,
              const float* c_out, const float* weight, float* loss, void* workspace, int64_t workspace_bytes,
              cudaStream_t stream, int device);

// dsm_loss and, in the same pass, grad_raw [B, M], the gradient of
// grad_scale * sum_b loss_b (dsm_loss_backward's answer for grad_loss = grad_scale).
void dsm_loss_and_grad(const float* raw, const float* x, const float* target, int64_t B, int64_t M,
                       const float* c_skip, const float* c_out, const float* weight, float grad_scale, float* loss,
                       float* grad_raw, void* workspace, int64_t workspace_bytes, cudaStream_t stream, int device);

// grad_raw [B, M] = 2 grad_loss_b weight_b c_out_b (pred_bj - target_bj) / M,
// pred = c_skip_b x_bj + c_out_b raw_bj. No workspace.
void dsm_loss_backward(const float* raw, const float* x, const float* target, int64_t B, int64_t M,
                       const float* c_skip, const float* c_out, const float* weight, const float* grad_loss,
                       float* grad_raw, cudaStream_t stream, int device);

// out [B, M] = (fake_b - real_b) / n_b, n_b = mean_j |x0_bj - real_bj| (float32),
// and 0 where n_b > 0 fails (n_b = 0 or NaN, as DMD's nan_to_num).
// workspace: >= dmd_gradient_workspace_bytes(B, M) bytes, 16-byte aligned.
void dmd_gradient(const float* x0, const float* real, const float* fake, int64_t B, int64_t M, float* out,
                  void* workspace, int64_t workspace_bytes, cudaStream_t stream, int device);

}  // namespace gencore::gpu
