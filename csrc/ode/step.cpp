// The fused solver step, CPU driver (contract in ode/step.h; row kernels in
// ode/step_rows.h, one fused pass each).
//
//  * Plain steps (no rescale, no thresholding) are one pass over each row:
//    every input read once, d and x_next written once. Rows are cut into
//    chunks when there are fewer rows than threads.
//  * Rescale and thresholding need statistics of the whole row first, so such
//    rows take two passes, the second over d while it is still in cache:
//    pass A forms d (with, for rescale, shifted sums of d_cond and d in
//    double, so a large mean does not cancel the std), the quantile of |d|
//    comes from a selection on a per-thread buffer (ode/quantile.h), pass B
//    scales and clamps d and forms x_next.
//
// Finiteness costs one poison (ode/step_rows.h) of one output of each pass
// that every input reaches: NaN or inf in any input makes x_next (or, before
// thresholding, d) non-finite, as 0 * inf is NaN. Only a range that fails is searched for the
// input to blame; a range whose inputs are all finite (an overflow) is no
// error, as in the reference. d_uncond without guidance feeds nothing and is
// checked on its own.
//
// Rows are dealt to threads in contiguous ranges (small rows grouped; the
// team shrinks until each thread has kElementsPerThread elements).
#include "ode/step.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"
#include "ode/quantile.h"
#include "ode/step_rows.h"

namespace gencore::ode {

namespace {
#include "ode/lanes_scalar.inc"
#include "ode/step_kernels.inc"
}  // namespace

template <typename T>
StepRowOps<T> step_row_ops_portable() {
  return make_step_row_ops<ScalarLanes<T>>();
}

template StepRowOps<float> step_row_ops_portable<float>();
template StepRowOps<double> step_row_ops_portable<double>();

namespace {

// Below this many elements per thread a thread is not worth starting.
constexpr int64_t kElementsPerThread = int64_t(1) << 15;
// A plain step cuts rows into chunks of at least this many elements.
constexpr int64_t kMinChunk = int64_t(1) << 14;

// Inputs in argument order: the order in which a row's bad inputs are named.
enum Input : int { kX, kCond, kUncond, kH1, kH2, kH3, kNoise, kCoeffs, kGuidance, kInputs };
constexpr const char* kInputNames[kInputs] = {"x",  "d_cond", "d_uncond", "h1",      "h2",
                                              "h3", "noise",  "coeffs",   "guidance"};

// The first (row, input) found non-finite, whatever the threads' schedule.
class FirstBad {
 public:
  void offer(int64_t row, int input) { least_.offer(row * kInputs + input); }
  void raise_if_any() const {
    if (least_.any()) fail_non_finite_row(kInputNames[least_.get() % kInputs], least_.get() / kInputs);
  }

 private:
  MinIndex least_;
};

template <typename T>
StepRowOps<T> pick_row_ops() {
  if constexpr (std::is_same_v<T, float>)
    return pick_isa(step_row_ops_portable<float>, GENCORE_ISA_FN(step_row_ops_f32_avx2),
                    GENCORE_ISA_FN(step_row_ops_f32_avx512))();
  else
    return pick_isa(step_row_ops_portable<double>, GENCORE_ISA_FN(step_row_ops_f64_avx2),
                    GENCORE_ISA_FN(step_row_ops_f64_avx512))();
}

template <typename T>
class Stepper {
 public:
  Stepper(const StepInputs<T>& in, const StepParams& params, T* x_next, T* d)
      : in_(in), params_(params), x_next_(x_next), d_(d), M_(in.x.cols), ops_(pick_row_ops<T>()) {
    guided_ = in.guidance != nullptr;
    // Without guidance d is d_cond itself: std(d_cond) / std(d) is 1 and rescale changes nothing.
    rescale_ = params.rescale > 0 && M_ > 1 && guided_;
    threshold_ = params.threshold > 0 && M_ > 0;
  }

  bool plain() const { return !rescale_ && !threshold_; }
  bool thresholds() const { return threshold_; }
  FirstBad& bad() { return bad_; }

  // Elements [j0, j1) of sample b in one pass.
  void plain_range(int64_t b, int64_t j0, int64_t j1) {
    const RowTerms<T> r = terms(b);
    if (!ops_.plain(r, j0, j1)) blame(b, j0, j1, {kX, kCond, kUncond, kH1, kH2, kH3, kNoise});
    check_unused_uncond(b, j0, j1);
  }

  // Sample b with rescale and / or thresholding: passes A and B.
  void stats_row(int64_t b, QuantileScratch<T>& scratch) {
    const RowTerms<T> r = terms(b);
    double sums[4] = {0, 0, 0, 0};
    double shifts[2] = {0, 0};
    if (rescale_) {  // the first element of d_cond and of d, as pass A forms d
      shifts[0] = double(r.c[0]);
      shifts[1] = double(r.u[0] + r.w * (r.c[0] - r.u[0]));
    }
    bool d_finite = ops_.guide(r, 0, M_, shifts, rescale_ ? sums : nullptr);
    check_unused_uncond(b, 0, M_);
    if (!d_finite && blame(b, 0, M_, {kCond, kUncond})) return;  // refused: nothing more to learn
    // (else finite inputs whose guided combination overflowed)
    const T scale = rescale_ ? rescale_factor(sums) : T(1);
    const T t = threshold_ ? threshold_of(r.d, scale, d_finite, scratch) : T(0);
    if (!ops_.finish(r, 0, M_, scale, t)) blame(b, 0, M_, {kX, kH1, kH2, kH3, kNoise});
  }

 private:
  const T* row_of(int k, int64_t b) const {
    const MatrixView<const T>* views[] = {&in_.x, &in_.d_cond, &in_.d_uncond, &in_.h1, &in_.h2, &in_.h3, &in_.noise};
    return views[k]->data ? views[k]->row(b) : nullptr;
  }

  RowTerms<T> terms(int64_t b) const {
    RowTerms<T> r{};
    const double* c = in_.coeffs.row(b);
    r.x = row_of(kX, b);
    r.c = row_of(kCond, b);
    r.u = guided_ ? row_of(kUncond, b) : nullptr;
    r.w = guided_ ? T(in_.guidance[b]) : T(1);
    r.cx = T(c[0]);
    r.cd = T(c[1]);
    for (int k = kH1; k <= kNoise; ++k)
      if (const T* h = row_of(k, b)) {
        r.h[r.k] = h;
        r.hc[r.k] = T(c[2 + k - kH1]);
        ++r.k;
      }
    r.d = d_ + b * M_;
    r.x_next = x_next_ + b * M_;
    return r;
  }

  // Offers every listed input whose range [j0, j1) of row b is not finite; true if one was.
  bool blame(int64_t b, int64_t j0, int64_t j1, std::initializer_list<int> inputs) {
    bool found = false;
    for (int k : inputs) {
      const T* p = row_of(k, b);
      if (p && !ops_.finite(p + j0, j1 - j0)) {
        bad_.offer(b, k);
        found = true;
      }
    }
    return found;
  }

  void check_unused_uncond(int64_t b, int64_t j0, int64_t j1) {
    if (!guided_) blame(b, j0, j1, {kUncond});
  }

  // phi std(d_cond) / std(d) + (1 - phi); the stds are rounded to T and divided in T,
  // as the reference divides its stds (a zero std(d) gives a ratio of 1).
  T rescale_factor(const double* sums) const {
    auto std_of = [m = double(M_)](const double* s) {
      const double mean = s[0] / m;
      return T(std::sqrt(std::max(s[1] / m - mean * mean, 0.0)));
    };
    const T std_cond = std_of(sums), std_d = std_of(sums + 2);
    const T ratio = std_d > T(0) ? std_cond / std_d : T(1);
    return T(params_.rescale * double(ratio) + (1.0 - params_.rescale));
  }

  // t = min(max(1, quantile_q |scale d|), threshold_max). The selection runs on |d|:
  // scale >= 0 and rounding are monotone, so the order statistics of |scale d| are
  // those of |d| times scale, rounded as pass B rounds them.
  T threshold_of(const T* d, T scale, bool d_finite, QuantileScratch<T>& scratch) const {
    if (!d_finite)
      for (int64_t j = 0; j < M_; ++j)
        if (std::isnan(d[j])) return std::numeric_limits<T>::quiet_NaN();  // torch.quantile of a NaN row
    const QuantilePosition<T> at = quantile_position<T>(params_.threshold, M_);
    T lo, hi;
    abs_order_pair(d, M_, at.lo, at.hi, ops_.bracket, scratch, &lo, &hi);
    const T q = quantile_lerp(T(lo * scale), T(hi * scale), at.weight);
    return std::min(std::max(q, T(1)), T(params_.threshold_max));
  }

  const StepInputs<T>& in_;
  const StepParams& params_;
  T* x_next_;
  T* d_;
  int64_t M_;
  StepRowOps<T> ops_;
  bool guided_ = false, rescale_ = false, threshold_ = false;
  FirstBad bad_;
};

template <typename T>
void check_arguments(const StepInputs<T>& in, const StepParams& p) {
  const int64_t B = in.x.rows, M = in.x.cols;
  const bool work = B * M > 0;
  GENCORE_CHECK(in.x.data || !work, "ode_step: x is required");
  GENCORE_CHECK(in.d_cond.data || !work, "ode_step: d_cond is required");
  GENCORE_CHECK(!in.guidance || in.d_uncond.data || !work, "ode_step: guidance needs d_uncond");
  const MatrixView<const T>* views[] = {&in.d_cond, &in.d_uncond, &in.h1, &in.h2, &in.h3, &in.noise};
  for (int k = 0; k < 6; ++k)
    GENCORE_CHECK(!views[k]->data || (views[k]->rows == B && views[k]->cols == M), "ode_step: ",
                  kInputNames[k + 1], " must be [", B, ", ", M, "], got [", views[k]->rows, ", ", views[k]->cols,
                  "]");
  GENCORE_CHECK(in.coeffs.rows == B && in.coeffs.cols == kStepCoeffs, "ode_step: coeffs must be [", B, ", ",
                kStepCoeffs, "], got [", in.coeffs.rows, ", ", in.coeffs.cols, "]");
  GENCORE_CHECK(p.rescale >= 0 && p.rescale <= 1, "ode_step: rescale must be in [0, 1], got ", p.rescale);
  GENCORE_CHECK(p.threshold >= 0 && p.threshold < 1, "ode_step: threshold must be in [0, 1), got ", p.threshold);
  GENCORE_CHECK(p.threshold_max > 0, "ode_step: threshold_max must be > 0, got ", p.threshold_max);
}

// coeffs [B, 6] and guidance [B]: a few values a row, checked before the rows run.
template <typename T>
void check_coefficients(const StepInputs<T>& in, FirstBad& bad) {
  for (int64_t b = 0; b < in.coeffs.rows; ++b) {
    const double* c = in.coeffs.row(b);
    for (int k = 0; k < kStepCoeffs; ++k)
      if (!std::isfinite(c[k])) bad.offer(b, kCoeffs);
    if (in.guidance && !std::isfinite(in.guidance[b])) bad.offer(b, kGuidance);
  }
}

}  // namespace

template <typename T>
void step(const StepInputs<T>& in, const StepParams& params, T* x_next, T* d, int num_threads) {
  check_arguments(in, params);
  const int64_t B = in.x.rows, M = in.x.cols;
  Stepper<T> stepper(in, params, x_next, d);
  check_coefficients(in, stepper.bad());
  if (B > 0 && M > 0) {
    const int team = clamp_threads(num_threads, B * M / kElementsPerThread + 1);
    if (stepper.plain()) {
      // Fewer rows than threads: each row in chunks of >= kMinChunk elements (whole cache lines).
      const int64_t chunks = B >= team ? 1 : std::clamp<int64_t>((team + B - 1) / B, 1, std::max<int64_t>(1, M / kMinChunk));
      const int64_t chunk = ((M + chunks - 1) / chunks + 15) / 16 * 16;
      const int64_t per_row = (M + chunk - 1) / chunk;
      parallel_for(B * per_row, team, Schedule::fixed, [&](int64_t item) {
        const int64_t b = item / per_row, j0 = item % per_row * chunk;
        stepper.plain_range(b, j0, std::min(M, j0 + chunk));
      });
    } else {
      const bool selects = stepper.thresholds();
      auto make_scratch = [&] {
        return QuantileScratch<T>{std::vector<T>(selects ? M + kBracketSlack : 0),
                                  std::vector<T>(selects ? kQuantileSample : 0)};
      };
      parallel_for(B, team, Schedule::fixed, make_scratch,
                   [&](QuantileScratch<T>& scratch, int64_t b) { stepper.stats_row(b, scratch); });
    }
  }
  stepper.bad().raise_if_any();
}

template void step<float>(const StepInputs<float>&, const StepParams&, float*, float*, int);
template void step<double>(const StepInputs<double>&, const StepParams&, double*, double*, int);

}  // namespace gencore::ode
