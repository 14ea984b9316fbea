// Score-matching losses, CPU driver. Each op is one pass over its rows (the DMD
// gradient two: the normaliser, then the scaled difference) with the row
// primitives of the SIMD level in use (float32; float64 runs the portable
// loops). Rows are cut into units of whole rows (or, when there are fewer rows
// than threads, row segments); consecutive units are grouped into items of at
// least kGrain elements, so small rows do not pay a thread each.
//
// Finiteness costs nothing on the hot path: a NaN or inf in any input makes
// the unit's sum (or its poison flag) non-finite; only such a unit is scanned
// again, input by input, to name the argument (finite inputs that overflow
// float32 are not refused, their result is just inf).
#include "score/losses.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"

namespace gencore::score {
namespace {

constexpr int64_t kGrain = int64_t(1) << 14;  // elements per work item at least
// Elements per thread at least (512 KiB of each float32 input). These passes
// are bandwidth-bound, and a second core adds bandwidth: 256 x 3072 x 3
// float32 inputs on a quiet 2-core Zen 4, forward 107 -> 58 us and backward
// 174 -> 78 us from 1 to 2 threads; 64 x 3072: 26 -> 17 us; below ~128k
// elements (16 x 3072: 6 us) the wake-up is not worth it. (An earlier
// threshold of 1M elements came from a VM where one core saturated L3.)
constexpr int64_t kElementsPerThread = int64_t(1) << 17;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- portable row primitives

template <typename T>
double dsm_sq_sum_portable(const T* raw, const T* x, const T* t, int64_t n, T cs, T co) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double e = double(cs * x[j] + co * raw[j] - t[j]);
    acc += e * e;
  }
  return acc;
}

template <typename T>
double dsm_sq_sum_with_error_portable(const T* raw, const T* x, const T* t, int64_t n, T cs, T co, T k, T* out) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const T e = cs * x[j] + co * raw[j] - t[j];
    out[j] = k * e;
    acc += double(e) * double(e);
  }
  return acc;
}

template <typename T>
bool dsm_scaled_error_portable(const T* raw, const T* x, const T* t, int64_t n, T cs, T co, T k, T* out) {
  T poison = 0;  // e * 0 is NaN exactly when e is NaN or inf
  for (int64_t j = 0; j < n; ++j) {
    const T e = cs * x[j] + co * raw[j] - t[j];
    poison += e * T(0);
    out[j] = k * e;
  }
  return poison == T(0);
}

template <typename T>
double abs_diff_sum_portable(const T* a, const T* b, int64_t n) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) acc += double(std::abs(a[j] - b[j]));
  return acc;
}

template <typename T>
bool scaled_diff_portable(const T* a, const T* b, int64_t n, T scale, T* out) {
  T poison = 0;
  for (int64_t j = 0; j < n; ++j) {
    const T e = a[j] - b[j];
    poison += e * T(0);
    out[j] = e * scale;
  }
  return poison == T(0);
}

template <typename T>
LossRowOps<T> loss_row_ops_portable() {
  return {dsm_sq_sum_portable<T>, dsm_sq_sum_with_error_portable<T>, dsm_scaled_error_portable<T>, abs_diff_sum_portable<T>, scaled_diff_portable<T>};
}

template <typename T>
LossRowOps<T> pick_row_ops() {
  return pick_row_table<T, LossRowOps>(loss_row_ops_portable<T>, GENCORE_ISA_FN(loss_row_ops_avx2),
                                           GENCORE_ISA_FN(loss_row_ops_avx512));
}

// ---------------------------------------------------------------- rows over threads

// Units are (row, segment) pairs, unit u = row * segments + segment, covering
// columns [segment * seg_len, min(M, (segment + 1) * seg_len)); an item is
// units_per_item consecutive units.
struct RowPlan {
  int64_t M = 0, segments = 1, seg_len = 0, units = 0, units_per_item = 1, items = 0;
  int threads = 1;
};

RowPlan row_plan(int64_t B, int64_t M, int num_threads) {
  RowPlan p;
  p.M = M;
  const int threads = clamp_threads(num_threads, B * M / kElementsPerThread + 1);
  if (B > 0 && B < threads) p.segments = std::clamp<int64_t>(ceil_div(threads, B), 1, std::max<int64_t>(1, M / kGrain));
  p.seg_len = ceil_div(M, p.segments);
  p.units = B * p.segments;
  // Small units grouped into items of about kGrain elements, but never fewer items than threads.
  const int64_t grouped = kGrain / std::max<int64_t>(p.seg_len, 1);
  p.units_per_item = std::max<int64_t>(1, std::min(grouped, ceil_div(p.units, threads)));
  p.items = ceil_div(p.units, p.units_per_item);
  p.threads = clamp_threads(threads, p.items);
  return p;
}

// body(row, j0, j1, unit) for every unit, in parallel.
template <typename Body>
void for_each_unit(const RowPlan& p, Body&& body) {
  parallel_for(p.items, p.threads, Schedule::fixed, [&](int64_t item) {
    const int64_t end = std::min(p.units, (item + 1) * p.units_per_item);
    for (int64_t u = item * p.units_per_item; u < end; ++u) {
      const int64_t row = u / p.segments, j0 = (u % p.segments) * p.seg_len;
      body(row, j0, std::min(p.M, j0 + p.seg_len), u);
    }
  });
}

template <typename T>
bool all_finite(const T* v, int64_t n) {
  T poison = 0;
  for (int64_t j = 0; j < n; ++j) poison += v[j] * T(0);
  return poison == T(0);
}

template <typename T>
using Named = std::pair<const char*, MatrixView<const T>>;

// Whether columns [j0, j1) of `row` hold a NaN or inf in any of the inputs.
template <typename T>
bool any_non_finite(std::initializer_list<Named<T>> inputs, int64_t row, int64_t j0, int64_t j1) {
  for (const auto& [name, m] : inputs)
    if (!all_finite(m.row(row) + j0, j1 - j0)) return true;
  return false;
}

// Throws naming the first input with a NaN or inf in `row` (a row that holds one).
template <typename T>
void refuse(std::initializer_list<Named<T>> inputs, const MinIndex& bad) {
  if (!bad.any()) return;
  const int64_t row = bad.get();
  for (const auto& [name, m] : inputs)
    GENCORE_CHECK(all_finite(m.row(row), m.cols), name, " contains NaN or inf (row ", row,
                  "); inputs must be finite");
}

// The per-sample coefficients must be finite (checked here, so the Python
// layer need not: they are declared in the ops' cpu_kernel_checks).
template <typename T>
void check_coefficients(std::initializer_list<std::pair<const char*, const T*>> coefficients, int64_t B) {
  for (const auto& [name, c] : coefficients)
    for (int64_t b = 0; b < B; ++b)
      GENCORE_CHECK(std::isfinite(c[b]), name, " contains NaN or inf (sample ", b, "); inputs must be finite");
}

template <typename T>
void check_rows(std::initializer_list<Named<T>> inputs, int64_t B, int64_t M, const char* op) {
  for (const auto& [name, m] : inputs)
    GENCORE_CHECK(m.rows == B && m.cols == M, op, ": ", name, " must be [", B, ", ", M, "], got [", m.rows, ", ",
                  m.cols, "]");
}

// The gradient's per-row factor: d loss_b / d raw_bj = factor * (pred_bj - target_bj)
// for grad_loss_b = g. One expression for the fused forward and the backward, so
// both write the same bits.
template <typename T>
T gradient_factor(double g, T weight, T c_out, int64_t M) {
  return T(2.0 * g * double(weight) * double(c_out) / double(M));
}

// dsm_loss, and with grad_raw != nullptr dsm_loss_and_grad: the loss pass writes
// the gradient too (one pass over the inputs instead of two in training).
template <typename T>
void dsm_loss_pass(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
                   const T* c_out, const T* weight, T grad_scale, T* loss, T* grad_raw, int num_threads,
                   const char* op) {
  const int64_t B = raw.rows, M = raw.cols;
  const auto inputs = {Named<T>{"raw", raw}, Named<T>{"x", x}, Named<T>{"target", target}};
  check_rows<T>(inputs, B, M, op);
  check_coefficients<T>({{"c_skip", c_skip}, {"c_out", c_out}, {"weight", weight}}, B);
  if (M == 0) {
    std::fill(loss, loss + B, T(0));
    return;
  }
  const LossRowOps<T> ops = pick_row_ops<T>();
  const RowPlan plan = row_plan(B, M, num_threads);
  std::vector<double> partial(plan.segments > 1 ? plan.units : 0);
  MinIndex bad;
  for_each_unit(plan, [&](int64_t b, int64_t j0, int64_t j1, int64_t u) {
    const T* r = raw.row(b) + j0;
    const T* xs = x.row(b) + j0;
    const T* t = target.row(b) + j0;
    const double sq = grad_raw == nullptr
                          ? ops.dsm_sq_sum(r, xs, t, j1 - j0, c_skip[b], c_out[b])
                          : ops.dsm_sq_sum_with_error(r, xs, t, j1 - j0, c_skip[b], c_out[b],
                                                      gradient_factor<T>(grad_scale, weight[b], c_out[b], M),
                                                      grad_raw + b * M + j0);
    if (!std::isfinite(sq) && any_non_finite<T>(inputs, b, j0, j1)) bad.offer(b);
    if (plan.segments > 1)
      partial[u] = sq;
    else
      loss[b] = T(double(weight[b]) * sq / double(M));
  });
  refuse<T>(inputs, bad);
  if (plan.segments == 1) return;
  for (int64_t b = 0; b < B; ++b) {
    double sq = 0.0;
    for (int64_t s = 0; s < plan.segments; ++s) sq += partial[b * plan.segments + s];
    loss[b] = T(double(weight[b]) * sq / double(M));
  }
}

}  // namespace

template <typename T>
void dsm_loss(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
              const T* c_out, const T* weight, T* loss, int num_threads) {
  dsm_loss_pass<T>(raw, x, target, c_skip, c_out, weight, T(0), loss, nullptr, num_threads, "dsm_loss");
}

template <typename T>
void dsm_loss_and_grad(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
                       const T* c_out, const T* weight, T grad_scale, T* loss, T* grad_raw, int num_threads) {
  GENCORE_CHECK(std::isfinite(grad_scale), "grad_scale must be finite, got ", grad_scale);
  dsm_loss_pass<T>(raw, x, target, c_skip, c_out, weight, grad_scale, loss, grad_raw, num_threads,
                   "dsm_loss_and_grad");
}

template <typename T>
void dsm_loss_backward(MatrixView<const T> raw, MatrixView<const T> x, MatrixView<const T> target, const T* c_skip,
                       const T* c_out, const T* weight, const T* grad_loss, T* grad_raw, int num_threads) {
  const int64_t B = raw.rows, M = raw.cols;
  const auto inputs = {Named<T>{"raw", raw}, Named<T>{"x", x}, Named<T>{"target", target}};
  check_rows<T>(inputs, B, M, "dsm_loss_backward");
  check_coefficients<T>({{"c_skip", c_skip}, {"c_out", c_out}, {"weight", weight}}, B);
  if (M == 0) return;
  const LossRowOps<T> ops = pick_row_ops<T>();
  MinIndex bad;
  for_each_unit(row_plan(B, M, num_threads), [&](int64_t b, int64_t j0, int64_t j1, int64_t) {
    const T k = gradient_factor<T>(double(grad_loss[b]), weight[b], c_out[b], M);
    const bool ok = ops.dsm_scaled_error(raw.row(b) + j0, x.row(b) + j0, target.row(b) + j0, j1 - j0, c_skip[b],
                                         c_out[b], k, grad_raw + b * M + j0);
    if (!ok && any_non_finite<T>(inputs, b, j0, j1)) bad.offer(b);
  });
  refuse<T>(inputs, bad);
}

template <typename T>
void dmd_gradient(MatrixView<const T> x0, MatrixView<const T> real, MatrixView<const T> fake, T* out,
                  int num_threads) {
  const int64_t B = x0.rows, M = x0.cols;
  const auto pass1 = {Named<T>{"x0", x0}, Named<T>{"denoised_real", real}};
  const auto pass2 = {Named<T>{"denoised_fake", fake}};
  check_rows<T>({Named<T>{"x0", x0}, Named<T>{"denoised_real", real}, Named<T>{"denoised_fake", fake}}, B, M,
                "dmd_gradient");
  if (M == 0) return;
  const LossRowOps<T> ops = pick_row_ops<T>();
  const RowPlan plan = row_plan(B, M, num_threads);
  std::vector<double> partial(plan.units);
  MinIndex bad;
  // Pass 1: sum_j |x0 - real| per unit.
  for_each_unit(plan, [&](int64_t b, int64_t j0, int64_t j1, int64_t u) {
    partial[u] = ops.abs_diff_sum(x0.row(b) + j0, real.row(b) + j0, j1 - j0);
    if (!std::isfinite(partial[u]) && any_non_finite<T>(pass1, b, j0, j1)) bad.offer(b);
  });
  refuse<T>(pass1, bad);
  // 1 / mean |x0 - real| per row, 0 where the mean is 0 (DMD's nan_to_num).
  std::vector<T> scale(B);
  for (int64_t b = 0; b < B; ++b) {
    double sum = 0.0;
    for (int64_t s = 0; s < plan.segments; ++s) sum += partial[b * plan.segments + s];
    scale[b] = sum > 0.0 ? T(double(M) / sum) : T(0);
  }
  // Pass 2: (fake - real) * scale.
  for_each_unit(plan, [&](int64_t b, int64_t j0, int64_t j1, int64_t) {
    T* o = out + b * M + j0;
    const bool ok = ops.scaled_diff(fake.row(b) + j0, real.row(b) + j0, j1 - j0, scale[b], o);
    if (!ok && any_non_finite<T>(pass2, b, j0, j1)) bad.offer(b);
    if (scale[b] == T(0)) std::fill(o, o + (j1 - j0), T(0));  // +0, not (fake - real) * 0
  });
  refuse<T>(pass2, bad);
}

#define GENCORE_SCORE_LOSSES(T)                                                                                   \
  template void dsm_loss<T>(MatrixView<const T>, MatrixView<const T>, MatrixView<const T>, const T*, const T*,    \
                            const T*, T*, int);                                                                   \
  template void dsm_loss_and_grad<T>(MatrixView<const T>, MatrixView<const T>, MatrixView<const T>, const T*,     \
                                     const T*, const T*, T, T*, T*, int);                                         \
  template void dsm_loss_backward<T>(MatrixView<const T>, MatrixView<const T>, MatrixView<const T>, const T*,     \
                                     const T*, const T*, const T*, T*, int);                                      \
  template void dmd_gradient<T>(MatrixView<const T>, MatrixView<const T>, MatrixView<const T>, T*, int);
GENCORE_SCORE_LOSSES(float)
GENCORE_SCORE_LOSSES(double)
#undef GENCORE_SCORE_LOSSES

}  // namespace gencore::score
