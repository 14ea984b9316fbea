// The iteration loop of log-domain Sinkhorn on dense cost matrices (see
// sinkhorn_dense.h) and its portable row primitives.
#include "ot/sinkhorn_dense.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"

namespace gencore::ot {
namespace {

constexpr double kMaxErrorExponent = 60.0;   // the error's exp((f - f~) / reg) is clamped here: huge, never inf
// A column's sum of exponentials below this (its log-sum-exp fell more than ~46
// below the previous iteration's, against which its terms were accumulated) may
// have lost terms to float32 underflow: that column is recomputed exactly.
constexpr double kUnderflowRisk = 1e-20;

template <typename T>
T shifted_max_portable(const T* c, const T* h, T inv_reg, int64_t n) {
  T mx = h[0] - c[0] * inv_reg;
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, h[j] - c[j] * inv_reg);
  return mx;
}

template <typename T>
double shifted_exp_sum_portable(const T* c, const T* h, T inv_reg, T shift, int64_t n) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) acc += double(std::exp((h[j] - c[j] * inv_reg) - shift));
  return acc;
}

template <typename T>
void column_accumulate_portable(const T* c, T h_i, T inv_reg, T* col_max, T* col_sum, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const T v = h_i - c[j] * inv_reg;
    if (v > col_max[j]) {   // a new running max: rescale what was summed against the old one
      col_sum[j] *= std::exp(col_max[j] - v);
      col_max[j] = v;
    }
    col_sum[j] += std::exp(v - col_max[j]);
  }
}

template <typename T>
SinkhornRowOps<T> sinkhorn_row_ops_portable() {
  return {shifted_max_portable<T>, shifted_exp_sum_portable<T>, column_accumulate_portable<T>};
}

// One problem's state and its iteration. An iteration reads M once: row i
// gives f~_i (its two passes hit L1 the second time), then, while the row is
// still in L1, its terms log a_i + f~_i / reg - C_ij / reg join every column's
// running log-sum-exp (max and sum, rescaled when the max grows). The running
// max starts at the column's previous log-sum-exp, so the rescaling is rare
// once the potentials settle. `threads` > 1 splits the rows into contiguous
// blocks, each with its own column accumulators, merged in block order.
template <typename T>
class DenseProblem {
 public:
  DenseProblem(const DenseSinkhornProblems<T>& p, int64_t index, const DenseSinkhornParams& params,
               const SinkhornRowOps<T>& ops, T* f, T* g, int threads)
      : n_(p.n), m_(p.m), cost_(p.cost + index * p.cost_batch_stride), row_stride_(p.cost_row_stride),
        a_(p.a + index * p.n), params_(params), ops_(ops), f_(f), g_(g),
        blocks_(clamp_threads(threads, std::min(p.n, p.n * p.m / (1 << 14) + 1))),
        inv_reg_(T(1.0 / params.reg)), scale_(T(-params.reg * params.damping)),
        log_a_(n_), log_b_(m_), hb_(m_), previous_lse_(m_, -std::numeric_limits<T>::infinity()),
        col_max_(size_t(blocks_) * m_), col_sum_(size_t(blocks_) * m_), errors_(size_t(blocks_)) {
    for (int64_t i = 0; i < n_; ++i) log_a_[i] = std::log(a_[i]);   // log 0 = -inf: no mass, no term
    const T* b = p.b + index * p.m;
    for (int64_t j = 0; j < m_; ++j) log_b_[j] = std::log(b[j]);
    for (int64_t i = 0; i < n_; ++i) mass_a_ += double(a_[i]);
    std::fill(f_, f_ + n_, T(0));
    std::fill(g_, g_ + m_, T(0));
  }

  // f <- f~(g), then g <- g~(f); returns the error of the f that was replaced.
  double iterate() {
    for (int64_t j = 0; j < m_; ++j) hb_[j] = log_b_[j] + g_[j] * inv_reg_;
    parallel_for(blocks_, blocks_, Schedule::fixed, [&](int64_t block) { sweep_rows(block); });
    double err = 0.0;
    for (double e : errors_) err += e;   // in block order
    finish_columns();
    return err / mass_a_;
  }

 private:
  void sweep_rows(int64_t block) {
    T* col_max = col_max_.data() + block * m_;
    T* col_sum = col_sum_.data() + block * m_;
    std::copy(previous_lse_.begin(), previous_lse_.end(), col_max);
    std::fill(col_sum, col_sum + m_, T(0));
    double err = 0.0;
    for (int64_t i = n_ * block / blocks_, end = n_ * (block + 1) / blocks_; i < end; ++i) {
      const T* row = cost_ + i * row_stride_;
      const T mx = ops_.shifted_max(row, hb_.data(), inv_reg_, m_);
      const T f_new = scale_ * (mx + T(std::log(ops_.shifted_exp_sum(row, hb_.data(), inv_reg_, mx, m_))));
      const double change = std::min(double(f_[i] - f_new) / params_.reg, kMaxErrorExponent);
      if (a_[i] > T(0)) err += double(a_[i]) * std::abs(1.0 - std::exp(change));
      f_[i] = f_new;
      const T h_i = log_a_[i] + f_new * inv_reg_;
      if (h_i > -std::numeric_limits<T>::infinity()) ops_.column_accumulate(row, h_i, inv_reg_, col_max, col_sum, m_);
    }
    errors_[size_t(block)] = err;
  }

  // Merges the blocks' accumulators into g (and the next seeds); a column at risk
  // of underflow is summed again exactly, in two passes down the column.
  void finish_columns() {
    for (int64_t j = 0; j < m_; ++j) {
      T top = col_max_[j];
      for (int b = 1; b < blocks_; ++b) top = std::max(top, col_max_[size_t(b) * m_ + j]);
      double sum = 0.0;
      for (int b = 0; b < blocks_; ++b) {
        const T s = col_sum_[size_t(b) * m_ + j];
        if (s > T(0)) sum += double(s) * std::exp(double(col_max_[size_t(b) * m_ + j] - top));
      }
      T lse = sum >= kUnderflowRisk ? T(double(top) + std::log(sum)) : exact_column_lse(j);
      previous_lse_[j] = lse;
      g_[j] = scale_ * lse;
    }
  }

  T exact_column_lse(int64_t j) const {
    const auto term = [&](int64_t i) { return T(log_a_[i] + f_[i] * inv_reg_) - cost_[i * row_stride_ + j] * inv_reg_; };
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n_; ++i) top = std::max(top, term(i));
    double sum = 0.0;
    for (int64_t i = 0; i < n_; ++i) sum += std::exp(double(term(i) - top));
    return T(double(top) + std::log(sum));
  }

  int64_t n_, m_;
  const T* cost_;
  int64_t row_stride_;
  const T* a_;
  const DenseSinkhornParams& params_;
  const SinkhornRowOps<T>& ops_;
  T* f_;
  T* g_;
  int blocks_;
  T inv_reg_, scale_;
  double mass_a_ = 0.0;
  std::vector<T> log_a_, log_b_, hb_, previous_lse_, col_max_, col_sum_;
  std::vector<double> errors_;
};

template <typename T>
void solve(const DenseSinkhornProblems<T>& p, int64_t index, const DenseSinkhornParams& params,
           const SinkhornRowOps<T>& ops, const DenseSinkhornOutputs<T>& out, int threads) {
  DenseProblem<T> problem(p, index, params, ops, out.f + index * p.n, out.g + index * p.m, threads);
  double best = std::numeric_limits<double>::infinity(), error = best;
  int64_t since_best = 0, it = 0;
  DenseSinkhornStatus status = DenseSinkhornStatus::max_iter;
  while (it < params.max_iter) {
    error = problem.iterate();
    ++it;
    if (error <= params.tol) {
      status = DenseSinkhornStatus::converged;
      break;
    }
    if (error < best) {
      best = error, since_best = 0;
    } else if (++since_best >= params.plateau) {
      status = DenseSinkhornStatus::plateau;
      break;
    }
  }
  out.n_iter[index] = it;
  out.error[index] = error;
  out.status[index] = int64_t(status);
}

}  // namespace

template <typename T>
void sinkhorn_dense(const DenseSinkhornProblems<T>& p, const DenseSinkhornParams& params,
                    const DenseSinkhornOutputs<T>& out, int threads) {
  GENCORE_CHECK(p.batch >= 0, "sinkhorn_dense: batch must be >= 0, got ", p.batch);
  if (p.batch == 0) return;
  GENCORE_CHECK(p.n >= 1 && p.m >= 1, "M: both measures need at least one point, got n=", p.n, ", m=", p.m);
  GENCORE_CHECK(p.cost && p.a && p.b && out.f && out.g && out.n_iter && out.error && out.status,
                "sinkhorn_dense: null pointer");
  GENCORE_CHECK(p.cost_row_stride >= p.m, "M: row stride ", p.cost_row_stride, " < m = ", p.m);
  GENCORE_CHECK(params.reg > 0 && std::isfinite(params.reg), "reg: must be finite and > 0, got ", params.reg);
  GENCORE_CHECK(params.damping > 0 && params.damping <= 1, "damping: must be in (0, 1], got ", params.damping);
  GENCORE_CHECK(params.tol >= 0, "tol: must be >= 0, got ", params.tol);
  GENCORE_CHECK(params.max_iter >= 1, "max_iter: must be >= 1, got ", params.max_iter);
  GENCORE_CHECK(params.plateau >= 1, "plateau: must be >= 1, got ", params.plateau);
  const SinkhornRowOps<T> ops = pick_row_table<T, SinkhornRowOps>(
      sinkhorn_row_ops_portable<T>, GENCORE_ISA_FN(sinkhorn_row_ops_avx2), GENCORE_ISA_FN(sinkhorn_row_ops_avx512));
  const int team = clamp_threads(threads, p.batch);
  if (team > 1) {   // whole problems per thread: no synchronisation inside an iteration
    parallel_for(p.batch, team, Schedule::dynamic, [&](int64_t b) { solve(p, b, params, ops, out, 1); });
  } else {
    for (int64_t b = 0; b < p.batch; ++b) solve(p, b, params, ops, out, threads);
  }
}

template void sinkhorn_dense<float>(const DenseSinkhornProblems<float>&, const DenseSinkhornParams&,
                                    const DenseSinkhornOutputs<float>&, int);
template void sinkhorn_dense<double>(const DenseSinkhornProblems<double>&, const DenseSinkhornParams&,
                                     const DenseSinkhornOutputs<double>&, int);

}  // namespace gencore::ot
