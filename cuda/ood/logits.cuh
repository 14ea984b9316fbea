// Logit-based OOD scores and the residual / ViM epilogue on the GPU, float32.
// Same contract and math as csrc/ood/logits.h and csrc/ood/vim.h (both use
// csrc/ood/logit_math.h); every score: higher = more in-distribution.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// logits [N, C] (row-major, contiguous) -> out [N]. `score` is a
// gencore::logit_math::LogitScore code (0 max logit, 1 MSP, 2 energy, 3 GEN,
// 4 KL matching); temperature is read by MSP / energy, gamma and top_m by GEN,
// log_templates [C, C] (contiguous) by KL matching only. One warp per row; a
// row holding NaN/inf gives NaN (the Python layer refuses such input first).
// Queued on `stream` on `device`; never synchronises, allocates nothing.
void logit_scores(const float* logits, int64_t N, int64_t C, int score, double temperature, double gamma,
                  int64_t top_m, const float* log_templates, float* out, cudaStream_t stream, int device);

// residual [N, D] = (I - P P^T)(x - u) (contiguous) -> out [N] = -||residual_i||, or with
// logits [N, C] (not null) the ViM score logsumexp(logits_i) - alpha ||residual_i||.
void residual_scores(const float* residual, int64_t N, int64_t D, const float* logits, int64_t C, double alpha,
                     float* out, cudaStream_t stream, int device);

}  // namespace gencore::gpu
