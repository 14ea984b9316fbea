// The 1-D step of sliced Wasserstein (see sliced.h).
#include "ot/sliced.h"

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "gencore/check.h"
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

// Unsigned keys that order like the floats (negative: all bits flipped; positive: sign set).
template <typename T>
using KeyOf = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

template <typename T>
KeyOf<T> order_key(T value) {
  using K = KeyOf<T>;
  K bits;
  std::memcpy(&bits, &value, sizeof bits);
  constexpr K sign = K(1) << (8 * sizeof(K) - 1);
  return (bits & sign) ? ~bits : (bits | sign);
}

// Per-thread buffers of the radix sort: keys and their indices, twice (ping-pong).
template <typename T>
struct SortBuffers {
  std::vector<KeyOf<T>> keys, keys_tmp;
  std::vector<int32_t> index, index_tmp;
  std::vector<T> sorted;
};

// Stable LSD radix sort of one row by 8-bit digits; skips digits all keys share.
// Leaves the sorted values in b.sorted and their original positions in b.index.
// Refuses NaN/inf (naming `what` and the row) in the same pass that builds the keys.
template <typename T>
void radix_sort(const T* row, int64_t count, SortBuffers<T>& b, const char* what, int64_t row_index) {
  using K = KeyOf<T>;
  b.keys.resize(count), b.keys_tmp.resize(count), b.index.resize(count), b.index_tmp.resize(count);
  b.sorted.resize(count);
  bool finite = true;
  for (int64_t t = 0; t < count; ++t) {
    finite = finite && std::isfinite(row[t]);
    b.keys[t] = order_key(row[t]), b.index[t] = static_cast<int32_t>(t);
  }
  if (!finite) fail_non_finite_row(what, row_index);
  for (unsigned shift = 0; shift < 8 * sizeof(K); shift += 8) {
    int64_t histogram[256] = {0};
    for (int64_t t = 0; t < count; ++t) ++histogram[(b.keys[t] >> shift) & 0xff];
    if (histogram[(b.keys[0] >> shift) & 0xff] == count) continue;  // one digit value: nothing moves
    int64_t start = 0;
    for (int d = 0; d < 256; ++d) {
      const int64_t c = histogram[d];
      histogram[d] = start;
      start += c;
    }
    for (int64_t t = 0; t < count; ++t) {
      const int64_t to = histogram[(b.keys[t] >> shift) & 0xff]++;
      b.keys_tmp[to] = b.keys[t];
      b.index_tmp[to] = b.index[t];
    }
    b.keys.swap(b.keys_tmp);
    b.index.swap(b.index_tmp);
  }
  for (int64_t t = 0; t < count; ++t) b.sorted[t] = row[b.index[t]];
}

template <typename T>
struct RowState {
  SortBuffers<T> xs, ys;
};

template <typename T>
void one_row(const Sliced1dInputs<T>& in, int64_t k, RowState<T>& s, T* out, T* grad_x, T* grad_y) {
  const int64_t n = in.x.cols, m = in.y.cols;
  radix_sort(in.x.row(k), n, s.xs, "x", k);
  radix_sort(in.y.row(k), m, s.ys, "y", k);
  const T* x = s.xs.sorted.data();
  const T* y = s.ys.sorted.data();
  const int32_t* ix = s.xs.index.data();
  const int32_t* iy = s.ys.index.data();
  T* gx = grad_x ? grad_x + k * n : nullptr;
  T* gy = grad_y ? grad_y + k * m : nullptr;
  const bool grads = gx || gy;
  double gxi = 0.0, gyj = 0.0;  // the gradient of the current x_i / y_j, written when it is left
  double total = 0.0;
  int64_t i = 0, j = 0;
  double left_x = in.wx[ix[0]], left_y = in.wy[iy[0]];  // mass of x_i / y_j not yet matched
  while (i < n && j < m) {
    const bool x_ends = left_x <= left_y;
    const double step = x_ends ? left_x : left_y;
    const double d = static_cast<double>(x[i]) - static_cast<double>(y[j]);
    total += step * power(d, in.p);
    if (grads) {
      const double g = step * power_slope(d, in.p);
      gxi += g;
      gyj -= g;
    }
    if (x_ends) {
      left_y -= step;
      if (gx) gx[ix[i]] = static_cast<T>(gxi);
      gxi = 0.0;
      if (++i < n) left_x = in.wx[ix[i]];
    } else {
      left_x -= step;
      if (gy) gy[iy[j]] = static_cast<T>(gyj);
      gyj = 0.0;
      if (++j < m) left_y = in.wy[iy[j]];
    }
  }
  // Rounding can leave one side with points unvisited (their remaining mass ~1e-16).
  for (; i < n; ++i) {
    if (gx) gx[ix[i]] = static_cast<T>(gxi);
    gxi = 0.0;
  }
  for (; j < m; ++j) {
    if (gy) gy[iy[j]] = static_cast<T>(gyj);
    gyj = 0.0;
  }
  out[k] = static_cast<T>(total);
}

}  // namespace

template <typename T>
void sliced_1d(const Sliced1dInputs<T>& in, T* out, T* grad_x, T* grad_y, int threads) {
  if (in.x.cols == 0 || in.y.cols == 0) return;
  parallel_for(in.x.rows, threads, Schedule::fixed, [] { return RowState<T>{}; },
               [&](RowState<T>& state, int64_t k) { one_row(in, k, state, out, grad_x, grad_y); });
}

template void sliced_1d<float>(const Sliced1dInputs<float>&, float*, float*, float*, int);
template void sliced_1d<double>(const Sliced1dInputs<double>&, double*, double*, double*, int);

}  // namespace gencore::ot
