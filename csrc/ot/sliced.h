// The 1-D step of sliced Wasserstein: for every projection, sort both
// projected point sets and integrate the distance between their quantile
// functions, one projection per work item.
//
// Row k: W_p^p = int_0^1 |F^-1(t) - G^-1(t)|^p dt for sum_i wx_i delta(x_ki)
// and sum_j wy_j delta(y_kj), computed by merging the two cumulative weight
// sequences after a radix sort of each row (O(n + m) per row, the sort
// included). Both weight vectors sum to 1 (the caller normalises them).
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::ot {

template <typename T>
struct Sliced1dInputs {
  MatrixView<const T> x;  // [P, n] projected points, any order
  MatrixView<const T> y;  // [P, m]
  const double* wx = nullptr;  // [n]
  const double* wy = nullptr;  // [m]
  double p = 2.0;              // > 0
};

// out [P] = W_p^p per row. grad_x [P, n] / grad_y [P, m] (contiguous; either may be
// null) = d W_p^p / d x, d y in the rows' own (unsorted) order: the sorted matching
// is piecewise constant, so this is the gradient almost everywhere (0 for a
// matched pair that coincides when p <= 1). Ties sort stably (lower index first).
// Throws std::invalid_argument naming x or y (and the row) for NaN/inf points.
template <typename T>
void sliced_1d(const Sliced1dInputs<T>& in, T* out, T* grad_x, T* grad_y, int threads);

}  // namespace gencore::ot
