#include "ode/quantile.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace gencore::ode {
namespace {

// Rows up to this size select on a copy of the whole row: a sample would not
// save enough to pay for itself.
constexpr int64_t kDirectMax = 1024;

// The order statistics at lo and hi of a[0, n), which selection may rearrange.
template <typename T>
void select_pair(T* a, int64_t n, int64_t lo, int64_t hi, T* at_lo, T* at_hi) {
  std::nth_element(a, a + lo, a + n);
  *at_lo = a[lo];
  // After nth_element, a[lo + 1, n) holds the values at positions above lo.
  *at_hi = hi > lo ? *std::min_element(a + lo + 1, a + n) : *at_lo;
}

template <typename T>
void select_whole_row(const T* v, int64_t n, int64_t lo, int64_t hi, T* buffer, T* at_lo, T* at_hi) {
  for (int64_t j = 0; j < n; ++j) buffer[j] = std::abs(v[j]);
  select_pair(buffer, n, lo, hi, at_lo, at_hi);
}

}  // namespace

template <typename T>
QuantilePosition<T> quantile_position(double q, int64_t n) {
  // torch: ranks = q * last_index (q a tensor of the input's dtype), below = long(ranks),
  // weights = ranks - below, above = long(ceil(ranks)). The clamp only guards rows of
  // more than 2^24 float32 values, where T(n - 1) itself may round up.
  const T rank = T(q) * T(n - 1);
  const int64_t lo = std::min<int64_t>(int64_t(rank), n - 1);
  const int64_t hi = std::min<int64_t>(int64_t(std::ceil(rank)), n - 1);
  return {lo, hi, rank - T(int64_t(rank))};
}

template <typename T>
T quantile_lerp(T a, T b, T weight) {
  return std::abs(weight) < T(0.5) ? a + weight * (b - a) : b - (b - a) * (T(1) - weight);
}

template <typename T>
void abs_order_pair(const T* v, int64_t n, int64_t lo, int64_t hi, BracketFn<T> bracket, QuantileScratch<T>& scratch,
                    T* at_lo, T* at_hi) {
  T* kept = scratch.kept.data();
  if (n <= kDirectMax) return select_whole_row(v, n, lo, hi, kept, at_lo, at_hi);

  // A strided sample of S values; position lo of the row sits near position
  // f S of the sorted sample, f = (lo + 1/2) / n, with a standard deviation of
  // sqrt(S f (1 - f)) positions. The bracket [a, b] spans 3.5 of them (and 2
  // positions) either side. S ~ n^(2/3) balances the selections on the sample
  // (~S) and on the kept values (~n / sqrt(S)).
  const int64_t S = std::min<int64_t>({kQuantileSample, n / 8, int64_t(std::cbrt(double(n)) * std::cbrt(double(n)))});
  const int64_t stride = n / S;
  T* sample = scratch.sample.data();
  for (int64_t i = 0; i < S; ++i) sample[i] = std::abs(v[i * stride + stride / 2]);
  const double f = (double(lo) + 0.5) / double(n);
  const double center = f * double(S), spread = 3.5 * std::sqrt(double(S) * f * (1.0 - f)) + 2.0;
  const int64_t ra = int64_t(std::floor(center - spread));
  const int64_t rb = int64_t(std::ceil(center + spread)) + 1;
  T a = -std::numeric_limits<T>::infinity(), b = std::numeric_limits<T>::infinity();
  int64_t first = 0;
  if (ra >= 0) {
    std::nth_element(sample, sample + ra, sample + S);
    a = sample[ra];
    first = ra + 1;
  }
  if (rb < S) {
    std::nth_element(sample + first, sample + rb, sample + S);
    b = sample[rb];
  }

  int64_t below = 0;
  const int64_t count = bracket(v, n, a, b, kept, &below);
  if (below <= lo && hi < below + count) return select_pair(kept, count, lo - below, hi - below, at_lo, at_hi);
  select_whole_row(v, n, lo, hi, kept, at_lo, at_hi);  // the sample missed: rare
}

template QuantilePosition<float> quantile_position<float>(double, int64_t);
template QuantilePosition<double> quantile_position<double>(double, int64_t);
template float quantile_lerp<float>(float, float, float);
template double quantile_lerp<double>(double, double, double);
template void abs_order_pair<float>(const float*, int64_t, int64_t, int64_t, BracketFn<float>,
                                    QuantileScratch<float>&, float*, float*);
template void abs_order_pair<double>(const double*, int64_t, int64_t, int64_t, BracketFn<double>,
                                     QuantileScratch<double>&, double*, double*);

}  // namespace gencore::ode
