// The fused solver step on the CPU: the contract of gencore::ode_step
// (python/gencore/ode/ops/_step.py; its _reference is the specification).
//
//   x, d_cond, d_uncond?, h1?, h2?, h3?, noise? [B, M], coeffs [B, 6], guidance [B]?
//     -> x_next [B, M], d [B, M]
//
// Per sample b, over its M elements:
//   d      = d_cond, or d_uncond + w_b (d_cond - d_uncond) with guidance
//   d     *= phi std(d_cond) / std(d) + (1 - phi)            rescale phi > 0, with guidance, M > 1
//   d      = clamp(d, -t, t) / t,  t = min(max(1, quantile_q |d|), threshold_max)   q > 0
//   x_next = c_x x + c_d d + c_1 h1 + c_2 h2 + c_3 h3 + c_z noise
// with coeffs[b] = (c_x, c_d, c_1, c_2, c_3, c_z) and w_b rounded to T as the
// reference rounds them; absent inputs contribute nothing (their coefficient
// is not read).
#pragma once
#include <cstdint>
#include <limits>

#include "gencore/view.h"

namespace gencore::ode {

constexpr int kStepCoeffs = 6;  // (c_x, c_d, c_1, c_2, c_3, c_z)

// The tensor inputs of one step; a view whose data is null is absent (every
// present view is [B, M] with unit column stride).
template <typename T>
struct StepInputs {
  MatrixView<const T> x, d_cond, d_uncond, h1, h2, h3, noise;
  MatrixView<const double> coeffs;   // [B, 6]
  const double* guidance = nullptr;  // [B]; null: no guidance
};

struct StepParams {
  double rescale = 0.0;        // phi in [0, 1]; 0: off
  double threshold = 0.0;      // quantile q in [0, 1); 0: off
  double threshold_max = std::numeric_limits<double>::infinity();  // > 0
};

// Writes x_next [B, M] and d [B, M] (C-contiguous, caller-owned). Throws
// std::invalid_argument "<name> contains NaN or inf (row r); ..." for the
// first row (then the first input in argument order: x, d_cond, d_uncond, h1,
// h2, h3, noise, coeffs, guidance) that holds NaN or inf; the check is folded
// into the passes the step makes anyway (see step.cpp). Peak extra memory per
// thread with thresholding: M + 1024 elements of T (the selection's buffers).
template <typename T>
void step(const StepInputs<T>& in, const StepParams& params, T* x_next, T* d, int num_threads);

}  // namespace gencore::ode
