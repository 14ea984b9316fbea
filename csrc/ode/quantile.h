// The quantile of dynamic thresholding, torch.quantile(|v|, q) with linear
// interpolation, for one row of the step (csrc/ode/step.cpp): the two order
// statistics it interpolates come from an expected-O(n) selection on a
// per-thread buffer, and the positions, weight and interpolation are computed
// in T exactly as torch computes them (q is rounded to T, the rank q (n - 1)
// is formed in T, and torch's lerp).
#pragma once
#include <cstdint>
#include <vector>

#include "gencore/config.h"
#include "ode/step_rows.h"

namespace gencore::ode {

// Per-thread buffers of the selection.
template <typename T>
struct QuantileScratch {
  std::vector<T> kept;    // [n + kBracketSlack]: the values that may hold the order statistics
  std::vector<T> sample;  // [kQuantileSample]
};

constexpr int64_t kQuantileSample = 4096;  // largest sample that places the selection's bracket

// The bracket pass of one SIMD level (StepRowOps::bracket): counts |v[j]| < a into
// *below, stores the |v[j]| in [a, b] to kept; returns how many it stored.
template <typename T>
using BracketFn = int64_t (*)(const T* v, int64_t n, T a, T b, T* kept, int64_t* below);

// torch.quantile's view of quantile q of n >= 1 sorted values: interpolate
// between positions lo <= hi <= lo + 1 with weight in [0, 1).
template <typename T>
struct QuantilePosition {
  int64_t lo, hi;
  T weight;
};

template <typename T>
QuantilePosition<T> quantile_position(double q, int64_t n);

// torch's lerp(a, b, w) in T: a + w (b - a) for |w| < 1/2, else b - (b - a) (1 - w).
template <typename T>
T quantile_lerp(T a, T b, T weight);

// The values at sorted positions lo <= hi <= lo + 1 < n + 1 of |v[0, n)| (v holds
// no NaN; infinities are ordinary values). Expected O(n): a strided sample of
// about n^(2/3) values brackets the positions, one vectorised pass (`bracket`)
// keeps the values inside the bracket (a few percent of the row), and
// nth_element runs on those; an unlucky sample falls back to nth_element on
// the whole row, and so do rows of up to 1024 values.
template <typename T>
void abs_order_pair(const T* v, int64_t n, int64_t lo, int64_t hi, BracketFn<T> bracket, QuantileScratch<T>& scratch,
                    T* at_lo, T* at_hi);

}  // namespace gencore::ode
