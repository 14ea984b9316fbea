// 1-D Wasserstein distances on sorted rows (see wasserstein_1d.h).
#include "ot/wasserstein_1d.h"

#include <cmath>

#include "gencore/parallel.h"

namespace gencore::ot {

namespace {

// |d|^p and its derivative in d, with the exact forms for p = 1 and p = 2.
inline double power(double d, double p) {
  if (p == 2.0) return d * d;
  if (p == 1.0) return std::fabs(d);
  return std::pow(std::fabs(d), p);
}

inline double power_slope(double d, double p) {
  if (p == 2.0) return 2.0 * d;
  if (d == 0.0) return 0.0;
  const double sign = d > 0 ? 1.0 : -1.0;
  if (p == 1.0) return sign;
  return p * std::pow(std::fabs(d), p - 1.0) * sign;
}

template <typename T>
void one_row(const Wasserstein1dInputs<T>& in, int64_t k, T* out, T* grad_x, T* grad_y) {
  const int64_t n = in.x.cols, m = in.y.cols;
  const T* x = in.x.row(k);
  const T* y = in.y.row(k);
  const double* wx = in.wx.row(in.shared_wx ? 0 : k);
  const double* wy = in.wy.row(in.shared_wy ? 0 : k);
  T* gx = grad_x ? grad_x + k * n : nullptr;
  T* gy = grad_y ? grad_y + k * m : nullptr;
  double gxi = 0.0, gyj = 0.0;  // the gradient of the current x_i / y_j, written when it is left
  double total = 0.0;
  int64_t i = 0, j = 0;
  double left_x = wx[0], left_y = wy[0];  // mass of x_i / y_j not yet matched
  while (i < n && j < m) {
    const bool x_ends = left_x <= left_y;
    const double step = x_ends ? left_x : left_y;
    const double d = static_cast<double>(x[i]) - static_cast<double>(y[j]);
    total += step * power(d, in.p);
    if (gx || gy) {
      const double g = step * power_slope(d, in.p);
      gxi += g;
      gyj -= g;
    }
    if (x_ends) {
      left_y -= step;
      if (gx) gx[i] = static_cast<T>(gxi);
      gxi = 0.0;
      if (++i < n) left_x = wx[i];
    } else {
      left_x -= step;
      if (gy) gy[j] = static_cast<T>(gyj);
      gyj = 0.0;
      if (++j < m) left_y = wy[j];
    }
  }
  // Rounding can leave one side with points unvisited (their remaining mass ~1e-16).
  for (; i < n; ++i) {
    if (gx) gx[i] = static_cast<T>(gxi);
    gxi = 0.0;
  }
  for (; j < m; ++j) {
    if (gy) gy[j] = static_cast<T>(gyj);
    gyj = 0.0;
  }
  out[k] = static_cast<T>(total);
}

}  // namespace

template <typename T>
void wasserstein_1d(const Wasserstein1dInputs<T>& in, T* out, T* grad_x, T* grad_y, int threads) {
  const int64_t rows = in.x.rows;
  if (in.x.cols == 0 || in.y.cols == 0) return;
  parallel_for(rows, threads, Schedule::fixed, [&](int64_t k) { one_row(in, k, out, grad_x, grad_y); });
}

template void wasserstein_1d<float>(const Wasserstein1dInputs<float>&, float*, float*, float*, int);
template void wasserstein_1d<double>(const Wasserstein1dInputs<double>&, double*, double*, double*, int);

}  // namespace gencore::ot
