// Exact log-density and score of a Gaussian mixture smoothed at noise level
// sigma (signal scale alpha), CPU:
//   x [B, d], means [K, d], log_weights [K], eigvals [K, d], eigvecs [K*d, d]?,
//   sigma [B], alpha [B] -> log_prob [B], score [B, d]
// Component k: N(alpha mu_k, U_k diag(alpha^2 lambda_k + sigma^2) U_k^T), U_k =
// rows [k d, (k+1) d) of eigvecs (its columns are the eigenvectors), or I when
// eigvecs is empty. See python/gencore/score/reference.py::gmm (the specification).
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::score {

// eigvecs.data == nullptr: axis-aligned (isotropic or diagonal) components.
// score is C-contiguous [B, d]. Throws std::invalid_argument naming "x" and
// the first row holding NaN or inf.
template <typename T>
void gmm_score(MatrixView<const T> x, MatrixView<const T> means, const T* log_weights, MatrixView<const T> eigvals,
               MatrixView<const T> eigvecs, const T* sigma, const T* alpha, T* log_prob, T* score, int num_threads);

}  // namespace gencore::score
