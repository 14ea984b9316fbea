// Per-sample score-matching losses, CPU: memory-bound passes over [B, M] rows
// (one pass each, SIMD, rows dealt to threads in groups of whole rows, or in
// segments when there are fewer rows than threads).
//   dsm_loss:          raw, x, target [B, M], c_skip, c_out, weight [B] -> loss [B]
//                      loss_b = weight_b mean_j (c_skip_b x_bj + c_out_b raw_bj - target_bj)^2
//   dsm_loss_and_grad: ... grad_scale -> loss [B] and, in the same pass,
//                      grad_raw [B, M], the gradient of grad_scale * sum_b loss_b
//                      (what dsm_loss_backward gives for grad_loss_b = grad_scale)
//   dsm_loss_backward: ... grad_loss [B] -> grad_raw [B, M]
//                      grad_raw_bj = 2 grad_loss_b weight_b c_out_b (pred_bj - target_bj) / M
//   dmd_gradient:      x0, real, fake [B, M] -> out [B, M]
//                      out_b = (fake_b - real_b) / mean_j |x0_bj - real_bj|, 0 where that is 0
// Outputs are C-contiguous. NaN/inf in an input raise std::invalid_argument
// naming the argument ("raw", "x", "target", "c_skip", "c_out", "weight";
// "x0", "denoised_real", "denoised_fake") and the first row holding one.
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::score {

template <typename T>
void dsm_loss(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
              const T* c_out, const T* weight, T* loss, int num_threads);

template <typename T>
void dsm_loss_and_grad(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
                       const T* c_out, const T* weight, T grad_scale, T* loss, T* grad_raw, int num_threads);

template <typename T>
void dsm_loss_backward(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
                       const T* c_out, const T* weight, const T* grad_loss, T* grad_raw, int num_threads);

template <typename T>
void dmd_gradient(MatrixView<const T> x0, MatrixView<const T> real, MatrixView<const T> fake, T* out,
                  int num_threads);

// Row primitives of one SIMD level (float32 has one table per level, each in
// its own translation unit; the portable table in losses.cpp serves float64
// and the scalar level). Sums are accumulated in double; a NaN or inf in an
// input makes the sum (or the poison flag) non-finite.
template <typename T>
struct LossRowOps {
  // sum_j (cs x_j + co raw_j - t_j)^2
  double (*dsm_sq_sum)(const T* raw, const T* x, const T* t, int64_t n, T cs, T co);
  // the same sum, writing out_j = k (cs x_j + co raw_j - t_j) on the way
  double (*dsm_sq_sum_with_error)(const T* raw, const T* x, const T* t, int64_t n, T cs, T co, T k, T* out);
  // out_j = k (cs x_j + co raw_j - t_j); false when an error term is NaN or inf
  bool (*dsm_scaled_error)(const T* raw, const T* x, const T* t, int64_t n, T cs, T co, T k, T* out);
  // sum_j |a_j - b_j|
  double (*abs_diff_sum)(const T* a, const T* b, int64_t n);
  // out_j = (a_j - b_j) * scale; false when a difference is NaN or inf
  bool (*scaled_diff)(const T* a, const T* b, int64_t n, T scale, T* out);
};

LossRowOps<float> loss_row_ops_avx2();
LossRowOps<float> loss_row_ops_avx512();

}  // namespace gencore::score
