// 1-D Wasserstein distances between weighted empirical measures whose points
// come sorted, one problem per row: the inner step of sliced Wasserstein.
//
// Row k: W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt for the quantile functions
// of sum_i wx_i delta(x_i) and sum_j wy_j delta(y_j), computed by merging
// the two cumulative weight sequences (O(n + m) per row). Both weight rows
// sum to 1 (the caller normalises them).
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::ot {

template <typename T>
struct Wasserstein1dInputs {
  MatrixView<const T> x;        // [P, n], each row ascending
  MatrixView<const T> y;        // [P, m], each row ascending
  MatrixView<const double> wx;  // [P, n], or [1, n] shared by every row (shared_wx)
  MatrixView<const double> wy;  // [P, m], or [1, m] (shared_wy)
  bool shared_wx = false, shared_wy = false;
  double p = 2.0;               // > 0
};

// out [P] = W_p^p per row; grad_x [P, n] / grad_y [P, m] (contiguous; either may be
// null) = d W_p^p / d x, d y: the sorted matching is piecewise constant, so the
// gradient holds almost everywhere (0 where a matched pair coincides and p <= 1).
template <typename T>
void wasserstein_1d(const Wasserstein1dInputs<T>& in, T* out, T* grad_x, T* grad_y, int threads);

}  // namespace gencore::ot
