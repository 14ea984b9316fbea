// Logit-based OOD scores, CPU driver: rows are split across OpenMP threads and
// each row is handled start to finish while it sits in L1/L2:
//   1. max (with a fused finiteness check) and the first argmax k,
//   2. rest = sum_{j != k} exp((l_j - m) / T), accumulated in double
//      (float32 rows: exp in float32 SIMD, see logits_avx2.cpp / logits_avx512.cpp),
//   3. the score from (m, k, rest): msp and energy directly; GEN selects the
//      top-M logits (a heap, or a sampled threshold and a quickselect on the few
//      values above it) and sums its terms (float32 SIMD exp/log, double sums);
//      KL matching reuses the exps stored in step 2 against the log-template of k.
// float64 rows run the portable loops below in double throughout.
#include "ood/logits.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"
#include "gencore/topk_heap.h"

namespace gencore::ood {
namespace {

namespace lm = logit_math;

// Rows smaller than this many elements per thread are not worth a thread.
constexpr int64_t kElementsPerThread = int64_t(1) << 15;

// ---------------------------------------------------------------- portable row primitives

template <typename T>
T max_portable(const T* row, int64_t n, bool* finite) {
  T m = row[0];
  T poison = 0;  // x * 0 is NaN exactly when x is NaN or inf
  for (int64_t j = 0; j < n; ++j) {
    m = row[j] > m ? row[j] : m;
    poison += row[j] * T(0);
  }
  *finite = poison == T(0);
  return m;
}

template <typename T>
int64_t find_portable(const T* row, int64_t n, T value) {
  int64_t j = 0;
  while (j < n && row[j] != value) ++j;
  return j;
}

template <typename T>
double exp_sum_portable(const T* row, int64_t n, T m, T inv_t, T* store) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const T e = std::exp((row[j] - m) * inv_t);
    if (store) store[j] = e;
    acc += double(e);
  }
  return acc;
}

template <typename T>
double kl_dot_portable(const T* row, const T* e, const T* log_d, int64_t n, T m) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j)
    if (e[j] > T(0)) acc += double(e[j]) * (double(row[j] - m) - double(log_d[j]));
  return acc;
}

// GEN terms of values <= m with p <= 1/2 (see LogitRowOps::gen_sum), in double.
template <typename T>
double gen_sum_portable(const T* v, int64_t n, T m, double log_s, double gamma, bool skip_max, T floor) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j)
    if (v[j] > floor && !(skip_max && v[j] == m))
      acc += lm::gen_term(double(v[j]) - double(m), log_s, 0.0, false, gamma);
  return acc;
}

template <typename T>
LogitRowOps<T> logit_row_ops_portable() {
  return {max_portable<T>, find_portable<T>, exp_sum_portable<T>, kl_dot_portable<T>, gen_sum_portable<T>};
}

template <typename T>
LogitRowOps<T> pick_row_ops() {
  return pick_row_table<T, LogitRowOps>(logit_row_ops_portable<T>, GENCORE_ISA_FN(logit_row_ops_avx2),
                                            GENCORE_ISA_FN(logit_row_ops_avx512));
}

// ---------------------------------------------------------------- per-row pieces

template <typename T>
struct RowSummary {
  T m;          // max
  int64_t k;    // first argmax
  double rest;  // sum_{j != k} exp((l_j - m) / T)
};

// Steps 1 and 2. Returns false for a row with NaN/inf. `store` (may be null)
// receives exp((l_j - m) / T) for every j, 1 at k.
template <typename T>
bool summarise(const T* row, int64_t C, T inv_t, bool need_rest, const LogitRowOps<T>& ops, T* store,
               RowSummary<T>& s) {
  bool finite = true;
  s.m = ops.max(row, C, &finite);
  if (!finite) return false;
  if (!need_rest) return true;
  s.k = ops.find(row, C, s.m);
  // Two segments around k: p_k's own term (exactly 1) stays out of `rest`.
  s.rest = ops.exp_sum(row, s.k, s.m, inv_t, store) +
           ops.exp_sum(row + s.k + 1, C - s.k - 1, s.m, inv_t, store ? store + s.k + 1 : nullptr);
  if (store) store[s.k] = T(1);
  return true;
}

// log(rest) of a unique max; rows whose rest is tiny are redone in log space
// around the second-largest logit, where no term can underflow.
template <typename T>
double log_rest(const T* row, int64_t C, const RowSummary<T>& s) {
  if (s.rest >= lm::kTinyRest) return std::log(s.rest);
  if (C == 1) return -std::numeric_limits<double>::infinity();
  double m2 = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < C; ++j)
    if (j != s.k) m2 = std::max(m2, double(row[j]));
  double rest2 = 0.0;
  for (int64_t j = 0; j < C; ++j)
    if (j != s.k) rest2 += std::exp(double(row[j]) - m2);
  return lm::log_rest_from_second(double(s.m), m2, rest2);
}

// Per-thread buffers of GEN's top-M selection.
template <typename T>
struct GenScratch {
  std::vector<T> values;      // [C]: candidates, or the heap's keys
  std::vector<int64_t> ids;   // [kHeapMaxK]: the heap's ids (TopKHeap wants them)
  std::vector<T> sample;      // [kSample]
};

// Per-thread state of the row loop.
template <typename T>
struct RowScratch {
  std::vector<T> exps;  // [C] exp(l_j - m) of the row, for KL
  GenScratch<T> gen;
};

constexpr int64_t kHeapMaxK = 4;  // up to this K, a heap beats sampling + selection
constexpr int64_t kSample = 128;   // strided sample that places the selection threshold

// Rearranges a[0, n) so that a[0, k) hold the k largest values (1 <= k <= n) and
// returns the k-th largest. Quickselect with median-of-three pivots and branch-free
// Lomuto partitions: std::nth_element's data-dependent branch per element
// mispredicts on random rows (~7 ns per value here); this runs at ~2-3.
template <typename T>
T select_largest(T* a, int64_t n, int64_t k) {
  const int64_t target = k - 1;  // its index once a[0, n) were sorted descending
  int64_t lo = 0, hi = n;        // a[0, lo) >= a[lo, hi) >= a[hi, n); lo <= target < hi
  while (hi - lo > 16) {
    const T x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
    const T pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));
    int64_t i = lo;  // [lo, i) > pivot, [i, j) <= pivot
    for (int64_t j = lo; j < hi; ++j) {
      const T v = a[j];
      a[j] = a[i];
      a[i] = v;
      i += v > pivot;
    }
    if (target < i) {
      hi = i;
    } else if (i > lo) {
      lo = i;
    } else {  // the pivot is the range's max: split off its copies so the range shrinks
      int64_t e = lo;
      for (int64_t j = lo; j < hi; ++j) {
        const T v = a[j];
        a[j] = a[e];
        a[e] = v;
        e += v == pivot;
      }
      if (target < e) return pivot;
      lo = e;
    }
  }
  std::sort(a + lo, a + hi, std::greater<T>());
  return a[target];
}

// The K largest of sign * row (1 <= K <= C, sign = +-1) into scratch.values[0, K);
// returns the K-th largest.
//  * K <= 4: one scan with a size-K heap of -sign * value behind a threshold test
//    (~C compares, ~K log(C/K) heap updates for rows in random order).
//  * otherwise: a strided sample of 128 values gives a threshold a little below
//    the expected K-th largest (two standard deviations of the sample rank); one
//    branch-free pass keeps the values above it (~1.3 K of them) and
//    select_largest runs on those only; if fewer than K pass (an unlucky sample),
//    on the whole row.
template <typename T>
T largest_of(const T* row, int64_t C, int64_t K, T sign, GenScratch<T>& scratch) {
  T* out = scratch.values.data();
  if (K <= kHeapMaxK) {
    TopKHeap<T> heap{out, scratch.ids.data(), K, 0};
    for (int64_t j = 0; j < C; ++j) {
      const T key = -sign * row[j];
      if (key < heap_threshold(heap)) heap_offer(heap, key, j);
    }
    const T kth = -out[0];  // the heap's top: the largest kept key is minus the K-th largest value
    for (int64_t i = 0; i < K; ++i) out[i] = -out[i];
    return kth;
  }
  int64_t kept = 0;
  const int64_t stride = C / kSample;
  if (stride >= 2) {
    T* sample = scratch.sample.data();
    for (int64_t i = 0; i < kSample; ++i) sample[i] = sign * row[i * stride];
    const double expected = double(K) / double(stride);  // sample rank of the K-th largest
    const int64_t rank = std::clamp<int64_t>(int64_t(expected + 2.0 * std::sqrt(expected)) + 1, 0, kSample - 1);
    const T threshold = select_largest(sample, kSample, rank + 1);
    for (int64_t j = 0; j < C; ++j) {  // branch-free compaction of the values >= threshold
      out[kept] = sign * row[j];
      kept += out[kept] >= threshold;
    }
  }
  if (kept < K) {
    for (int64_t j = 0; j < C; ++j) out[j] = sign * row[j];
    kept = C;
  }
  return select_largest(out, kept, K);
}

// -sum over the top-M classes of p^gamma (1 - p)^gamma (the M largest logits are
// the M largest probabilities). Every term but the unique max's has p <= 1/2 and
// goes through ops.gen_sum; the unique max's term needs log(1 - p) = log(rest) - log_s.
//  * M >= C: every class.
//  * M <= C / 2: the M largest values themselves (largest_of).
//  * larger M: the M-th largest t as the (C - M + 1)-th smallest (largest_of on
//    -row, the smaller side), then one masked pass over the row: the values > t
//    plus as many copies of t as complete the top M (ties at t).
template <typename T>
double gen_score(const T* row, int64_t C, const RowSummary<T>& s, double gamma, int64_t top_m,
                 const LogitRowOps<T>& ops, GenScratch<T>& scratch) {
  constexpr T kAll = -std::numeric_limits<T>::infinity();
  const bool unique = s.rest < 1.0;  // p_k > 1/2: no other class ties with k
  const double log_s = std::log1p(s.rest);
  double sum = 0.0;
  if (top_m >= C) {
    sum = ops.gen_sum(row, C, s.m, log_s, gamma, unique, kAll);
  } else if (2 * top_m <= C) {
    largest_of(row, C, top_m, T(1), scratch);
    sum = ops.gen_sum(scratch.values.data(), top_m, s.m, log_s, gamma, unique, kAll);
  } else {
    const T t = -largest_of(row, C, C - top_m + 1, T(-1), scratch);
    int64_t above = 0;
    for (int64_t j = 0; j < C; ++j) above += row[j] > t;
    sum = ops.gen_sum(row, C, s.m, log_s, gamma, unique, t);
    // t < m here when the max is unique (M > C / 2 >= 1), so its term is a plain one.
    sum += double(top_m - above) * lm::gen_term(double(t) - double(s.m), log_s, 0.0, false, gamma);
  }
  if (unique) sum += lm::gen_term(0.0, log_s, log_rest(row, C, s), true, gamma);
  return -sum;
}

// -KL(softmax(l) || d_k), d_k the template of the predicted class k.
template <typename T>
double kl_score(const T* row, int64_t C, const RowSummary<T>& s, MatrixView<const T> log_templates,
                const LogitRowOps<T>& ops, const T* e) {
  const double dot = ops.kl_dot(row, e, log_templates.row(s.k), C, s.m);
  return -lm::kl_from_dot(dot, s.rest);
}

}  // namespace

template <typename T>
void logit_scores(MatrixView<const T> logits, LogitScore score, const LogitParams& params,
                  MatrixView<const T> log_templates, T* out, int num_threads) {
  const int64_t N = logits.rows, C = logits.cols;
  GENCORE_CHECK(C >= 1, "logit scores: logits need at least one class");
  GENCORE_CHECK(params.temperature > 0 && std::isfinite(params.temperature),
                "logit scores: temperature must be finite and > 0, got ", params.temperature);
  GENCORE_CHECK(score != LogitScore::gen || params.top_m >= 1, "gen: top_m must be >= 1, got ", params.top_m);
  GENCORE_CHECK(score != LogitScore::kl || (log_templates.rows == C && log_templates.cols == C),
                "kl_matching: templates must be [", C, ", ", C, "], got [", log_templates.rows, ", ",
                log_templates.cols, "]");
  if (N == 0) return;

  const LogitRowOps<T> ops = pick_row_ops<T>();
  // Only msp and energy have a temperature; GEN and KL read softmax(l) itself.
  const bool tempered = score == LogitScore::msp || score == LogitScore::energy;
  const double temperature = tempered ? params.temperature : 1.0;
  // 1/T is clamped to the largest finite T so a tiny T cannot turn 0 * (1/T) into NaN.
  const T inv_t = T(std::min(1.0 / temperature, double(std::numeric_limits<T>::max())));
  const bool need_rest = score != LogitScore::max_logit;
  const bool need_gen = score == LogitScore::gen && params.top_m < C;
  const bool need_exps = score == LogitScore::kl;
  MinIndex first_bad;
  const int threads = clamp_threads(num_threads, N * C / kElementsPerThread + 1);
  auto make_scratch = [=] {
    GenScratch<T> gen{std::vector<T>(need_gen ? C : 0), std::vector<int64_t>(need_gen ? kHeapMaxK : 0),
                      std::vector<T>(need_gen ? kSample : 0)};
    return RowScratch<T>{std::vector<T>(need_exps ? C : 0), std::move(gen)};
  };
  parallel_for(N, threads, Schedule::fixed, make_scratch, [&](RowScratch<T>& scratch, int64_t i) {
    const T* row = logits.row(i);
    T* store = need_exps ? scratch.exps.data() : nullptr;
    RowSummary<T> s{};
    if (!summarise(row, C, inv_t, need_rest, ops, store, s)) {
      first_bad.offer(i);
      out[i] = std::numeric_limits<T>::quiet_NaN();
      return;
    }
    double v = 0.0;
    switch (score) {
      case LogitScore::max_logit: v = double(s.m); break;
      case LogitScore::msp: v = lm::msp(s.rest); break;
      case LogitScore::energy: v = lm::energy(double(s.m), s.rest, temperature); break;
      case LogitScore::gen: v = gen_score(row, C, s, params.gamma, params.top_m, ops, scratch.gen); break;
      case LogitScore::kl: v = kl_score(row, C, s, log_templates, ops, store); break;
    }
    out[i] = T(v);
  });
  if (first_bad.any()) fail_non_finite_row("logits", first_bad.get());
}

template void logit_scores<float>(MatrixView<const float>, LogitScore, const LogitParams&,
                                  MatrixView<const float>, float*, int);
template void logit_scores<double>(MatrixView<const double>, LogitScore, const LogitParams&,
                                   MatrixView<const double>, double*, int);

}  // namespace gencore::ood
