// The per-sample error norm of an adaptive step on the CPU: the contract of
// gencore::ode_error_norm (python/gencore/ode/ops/_error_norm.py).
//
//   err, y, y_new [B, M] -> out [B],
//   out_b = sqrt(mean_j (err_bj / (atol + rtol max(|y_bj|, |y_new_bj|)))^2)
//
// (Hairer, Norsett & Wanner II.4.11). The scale is formed in T, as the
// reference forms it; the quotient, its square and the mean in double. A row
// of M = 0 elements has norm 0.
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::ode {

// Throws std::invalid_argument naming the first row (then the first of err, y,
// y_new) that holds NaN or inf, and for atol < 0, rtol < 0 or atol = rtol = 0.
// No extra memory.
template <typename T>
void error_norm(MatrixView<const T> err, MatrixView<const T> y, MatrixView<const T> y_new, double atol,
                double rtol, T* out, int num_threads);

}  // namespace gencore::ode
