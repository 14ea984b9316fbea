// Gaussian mixture, CPU driver: queries in blocks, one thread per block; the
// block visits the K components one at a time with an online log-sum-exp, so
// memory is O(block d) whatever K.
//
// Per component k and query b (c = alpha^2 lambda_k + sigma^2, elementwise [d]):
//   z      = U_k^T (x - alpha mu_k)
//   log N  = log w_k - (sum z^2 / c + sum log c + d log 2 pi) / 2
//   grad_k = -U_k (z / c)
// and the score is sum_k r_k grad_k with r = softmax_k(log N).
//   axis-aligned (U = I): one fused loop per (b, k) over the d coordinates;
//   full: for the whole block, z = (X - alpha mu_k) U_k and the back-rotation
//         A -= (p z / c) U_k^T are two BLAS GEMMs [qb, d] x [d, d].
// The running state of a query is (max, sum) of the numerators in double and
// its accumulator, which is the query's row of the score output itself.
// sum log c does not depend on b when sigma and alpha do not: consecutive
// queries with the same (sigma, alpha) reuse it; otherwise it costs d / 256
// logs per (b, k) (sum_log_variances).
//
// Peak extra memory (elements), per thread: 2 qb d (full) or d (axis-aligned),
// plus 3 qb.
#include "score/gmm.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/parallel.h"

namespace gencore::score {
namespace {

constexpr int64_t kMaxQueryBlock = 64;               // queries per block (the M of the full path's GEMMs)
constexpr int64_t kWorkPerThread = int64_t(1) << 18;  // multiply-adds that pay for a thread
constexpr double kLog2Pi = 1.8378770664093454836;
constexpr double kLn2 = 0.69314718055994530942;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// sum_j log(a2 lambda_j + s2) with one log per 256 terms: each term splits
// into its binary exponent (summed exactly) and its mantissa in [1, 2)
// (multiplied, < 2^256 per group, so the product's rounding costs ~256 ulp of
// a log of order 1); terms outside the normal range take a log of their own.
template <typename T>
double sum_log_variances(const T* lam, int64_t d, double a2, double s2) {
  constexpr uint64_t kMantissa = (uint64_t(1) << 52) - 1, kExponentOfOne = uint64_t(1023) << 52;
  constexpr int64_t kGroup = 256;
  int64_t exponents = 0;
  double logs = 0.0, product = 1.0;
  for (int64_t j = 0; j < d; ++j) {
    const double c = a2 * double(lam[j]) + s2;
    if (!(c >= std::numeric_limits<double>::min() && c <= std::numeric_limits<double>::max())) {
      logs += std::log(c);
      continue;
    }
    uint64_t bits;
    std::memcpy(&bits, &c, sizeof bits);
    exponents += int64_t(bits >> 52) - 1023;
    bits = (bits & kMantissa) | kExponentOfOne;
    double mantissa;
    std::memcpy(&mantissa, &bits, sizeof mantissa);
    product *= mantissa;
    if (j % kGroup == kGroup - 1) {
      logs += std::log(product);
      product = 1.0;
    }
  }
  return logs + std::log(product) + double(exponents) * kLn2;
}

// One component's log-determinant term sum_j log(a^2 lambda_j + s^2), cached
// for the last (sigma, alpha) seen.
template <typename T>
struct LogDetCache {
  T sigma = T(-1), alpha = T(-1);
  double value = 0.0;

  double get(const T* lam, int64_t d, T s, T a) {
    if (s == sigma && a == alpha) return value;
    value = sum_log_variances(lam, d, double(a) * double(a), double(s) * double(s));
    sigma = s;
    alpha = a;
    return value;
  }
};

// Running log-sum-exp of one query over the components seen so far.
struct Running {
  double max = -std::numeric_limits<double>::infinity();
  double sum = 0.0;

  // Adds a component of log-density log_n; returns its numerator p relative to
  // the (new) max and sets *rescale to the factor the accumulator needs first
  // (1 when the max stays).
  double add(double log_n, double* rescale) {
    *rescale = 1.0;
    if (log_n == -std::numeric_limits<double>::infinity()) return 0.0;  // weight 0
    if (log_n > max) {
      *rescale = max == -std::numeric_limits<double>::infinity() ? 0.0 : std::exp(max - log_n);
      sum = sum * *rescale + 1.0;
      max = log_n;
      return 1.0;
    }
    const double p = std::exp(log_n - max);
    sum += p;
    return p;
  }
};

// w = z / c in place (c = a2 lambda + s2) and returns sum z^2 / c.
template <typename T>
double whiten(T* z, const T* lam, int64_t d, double a2, double s2) {
  double quad = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double zj = double(z[j]);
    const double w = zj / (a2 * double(lam[j]) + s2);
    quad += zj * w;
    z[j] = T(w);
  }
  return quad;
}

template <typename T>
bool row_finite(const T* row, int64_t d) {
  T poison = 0;  // x * 0 is NaN exactly when x is NaN or inf
  for (int64_t j = 0; j < d; ++j) poison += row[j] * T(0);
  return poison == T(0);
}

struct Problem {
  int64_t B, K, d;
};

// Per-thread state.
template <typename T>
struct GmmScratch {
  blas::SingleThreadedScope one_blas_thread;
  std::vector<T> diff;  // [qb, d] x - alpha mu_k (full) or [d] z / c (axis-aligned)
  std::vector<T> z;     // [qb, d] rotated difference, then -p z / c (full)
  std::vector<Running> run;  // [qb]
  std::vector<LogDetCache<T>> log_det;  // [K]
};

// Axis-aligned components: per query, per component, one fused loop.
template <typename T>
void block_axis_aligned(const Problem& P, MatrixView<const T> x, MatrixView<const T> means, const T* log_weights,
                        MatrixView<const T> eigvals, const T* sigma, const T* alpha, int64_t q0, int64_t rows,
                        GmmScratch<T>& s, T* score) {
  const int64_t d = P.d;
  T* w = s.diff.data();
  for (int64_t i = 0; i < rows; ++i) {
    const int64_t b = q0 + i;
    const T* xb = x.row(b);
    T* acc = score + b * d;
    std::fill(acc, acc + d, T(0));
    Running& run = s.run[i];
    run = Running{};
    const T a = alpha[b];
    const double a2 = double(a) * double(a), s2 = double(sigma[b]) * double(sigma[b]);
    for (int64_t k = 0; k < P.K; ++k) {
      const T* mu = means.row(k);
      for (int64_t j = 0; j < d; ++j) w[j] = xb[j] - a * mu[j];
      const double quad = whiten(w, eigvals.row(k), d, a2, s2);
      const double log_det = s.log_det[k].get(eigvals.row(k), d, sigma[b], a);
      double rescale;
      const double p = run.add(double(log_weights[k]) - 0.5 * (quad + log_det + double(d) * kLog2Pi), &rescale);
      const T r = T(rescale), tp = T(p);
      if (rescale != 1.0) {
        for (int64_t j = 0; j < d; ++j) acc[j] = acc[j] * r - tp * w[j];
      } else if (p != 0.0) {
        for (int64_t j = 0; j < d; ++j) acc[j] -= tp * w[j];
      }
    }
  }
}

// Full covariances: two GEMMs per component for the whole block.
template <typename T>
void block_full(const Problem& P, MatrixView<const T> x, MatrixView<const T> means, const T* log_weights,
                MatrixView<const T> eigvals, MatrixView<const T> eigvecs, const T* sigma, const T* alpha, int64_t q0,
                int64_t rows, GmmScratch<T>& s, T* score) {
  const int64_t d = P.d;
  T* acc = score + q0 * d;
  std::fill(acc, acc + rows * d, T(0));
  for (int64_t i = 0; i < rows; ++i) s.run[i] = Running{};
  for (int64_t k = 0; k < P.K; ++k) {
    const T* mu = means.row(k);
    const T* u = eigvecs.row(k * d);
    for (int64_t i = 0; i < rows; ++i) {
      const T* xb = x.row(q0 + i);
      const T a = alpha[q0 + i];
      T* out = s.diff.data() + i * d;
      for (int64_t j = 0; j < d; ++j) out[j] = xb[j] - a * mu[j];
    }
    // z [rows, d] = diff [rows, d] . U_k [d, d]
    blas::gemm_ab(rows, d, d, T(1), s.diff.data(), d, u, eigvecs.row_stride, T(0), s.z.data(), d);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t b = q0 + i;
      T* z = s.z.data() + i * d;
      const double a2 = double(alpha[b]) * double(alpha[b]), s2 = double(sigma[b]) * double(sigma[b]);
      const double quad = whiten(z, eigvals.row(k), d, a2, s2);
      const double log_det = s.log_det[k].get(eigvals.row(k), d, sigma[b], alpha[b]);
      double rescale;
      const double p =
          s.run[i].add(double(log_weights[k]) - 0.5 * (quad + log_det + double(d) * kLog2Pi), &rescale);
      if (rescale != 1.0) {
        T* a = acc + i * d;
        for (int64_t j = 0; j < d; ++j) a[j] *= T(rescale);
      }
      const T scale = T(-p);
      for (int64_t j = 0; j < d; ++j) z[j] *= scale;
    }
    // A [rows, d] += (-p z / c) [rows, d] . U_k^T
    blas::gemm_abt(rows, d, d, T(1), s.z.data(), d, u, eigvecs.row_stride, T(1), acc, d);
  }
}

}  // namespace

template <typename T>
void gmm_score(MatrixView<const T> x, MatrixView<const T> means, const T* log_weights, MatrixView<const T> eigvals,
               MatrixView<const T> eigvecs, const T* sigma, const T* alpha, T* log_prob, T* score, int num_threads) {
  const Problem P{x.rows, means.rows, means.cols};
  const int64_t d = P.d;
  const bool full = eigvecs.data != nullptr;
  GENCORE_CHECK(x.cols == d, "gmm_score: x has ", x.cols, " columns but means have ", d);
  GENCORE_CHECK(P.K >= 1 && d >= 1, "gmm_score: the mixture needs K >= 1 components of dimension d >= 1");
  GENCORE_CHECK(eigvals.rows == P.K && eigvals.cols == d, "gmm_score: eigvals must be [", P.K, ", ", d, "]");
  GENCORE_CHECK(!full || (eigvecs.rows == P.K * d && eigvecs.cols == d), "gmm_score: eigvecs must be [", P.K * d,
                ", ", d, "]");
  GENCORE_CHECK(!full || blas::available(), "gmm_score: BLAS is not initialised (gencore._native sets it at import)");
  GENCORE_CHECK(!full || (d <= INT_MAX && eigvecs.row_stride <= INT_MAX),
                "gmm_score: sizes exceed the 32-bit BLAS interface");
  if (P.B == 0) return;

  // The finiteness check of x comes first: one cheap pass, before any component.
  MinIndex bad;
  parallel_for(P.B, clamp_threads(num_threads, P.B * d / kWorkPerThread + 1), Schedule::fixed, [&](int64_t b) {
    if (!row_finite(x.row(b), d)) bad.offer(b);
  });
  GENCORE_CHECK(!bad.any(), "x contains NaN or inf (row ", bad.get(), "); inputs must be finite");

  const int64_t work = P.B * P.K * d * (full ? 2 * d : 4);
  const int threads = clamp_threads(num_threads, work / kWorkPerThread + 1);
  const int64_t qb = std::max<int64_t>(1, std::min(kMaxQueryBlock, ceil_div(P.B, threads)));
  const int64_t blocks = ceil_div(P.B, qb);
  auto make_scratch = [&] {
    return GmmScratch<T>{blas::SingleThreadedScope{}, std::vector<T>(full ? qb * d : d),
                         std::vector<T>(full ? qb * d : 0), std::vector<Running>(qb),
                         std::vector<LogDetCache<T>>(P.K)};
  };
  parallel_for(blocks, threads, Schedule::dynamic, make_scratch, [&](GmmScratch<T>& s, int64_t block) {
    const int64_t q0 = block * qb, rows = std::min(P.B, q0 + qb) - q0;
    if (full)
      block_full(P, x, means, log_weights, eigvals, eigvecs, sigma, alpha, q0, rows, s, score);
    else
      block_axis_aligned(P, x, means, log_weights, eigvals, sigma, alpha, q0, rows, s, score);
    for (int64_t i = 0; i < rows; ++i) {
      const Running& run = s.run[i];
      log_prob[q0 + i] = T(run.max + std::log(run.sum));
      const T inv = T(1.0 / run.sum);
      T* out = score + (q0 + i) * d;
      for (int64_t j = 0; j < d; ++j) out[j] *= inv;
    }
  });
}

template void gmm_score<float>(MatrixView<const float>, MatrixView<const float>, const float*,
                               MatrixView<const float>, MatrixView<const float>, const float*, const float*, float*,
                               float*, int);
template void gmm_score<double>(MatrixView<const double>, MatrixView<const double>, const double*,
                                MatrixView<const double>, MatrixView<const double>, const double*, const double*,
                                double*, double*, int);

}  // namespace gencore::score
