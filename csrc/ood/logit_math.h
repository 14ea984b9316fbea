// Per-row formulas of the logit-based OOD scores, shared by the CPU kernels
// (csrc/ood/logits.cpp) and the CUDA kernels (cuda/ood/logits.cu) so that both
// compute the same math in the same way. CUDA sources include it as
// "csrc/ood/logit_math.h" (the repository root is on their include path).
//
// A row l [C] is summarised once by
//   m    = max_j l_j,   k = the first j with l_j == m,
//   rest = sum_{j != k} exp((l_j - m) / T)
// so the softmax denominator (relative to the max) is 1 + rest, p_k = 1 / (1 + rest)
// exactly, and 1 - p_k = rest / (1 + rest) never suffers the cancellation of
// "1 - p_k" when the row is confident. Everything derived here is exact in
// the input precision plus a few roundings; the callers accumulate `rest` in
// double for float32 rows.
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define GENCORE_HD __host__ __device__ __forceinline__
#else
#define GENCORE_HD inline
#endif

namespace gencore::logit_math {

// Score codes shared by the bindings, the CPU and the CUDA kernels.
enum class LogitScore : int { max_logit = 0, msp = 1, energy = 2, gen = 3, kl = 4 };

// When rest falls below this, terms of `rest` may have underflowed to zero in
// the exp of the input precision (float32 flushes below exp(-87)); GEN's top
// term depends on log(rest) itself, so such rows recompute it in log space
// around the second-largest logit (see log_rest_from_second).
constexpr double kTinyRest = 1e-20;

// Hendrycks & Gimpel 2017: max_j softmax(l / T)_j = p_k.
template <typename R>
GENCORE_HD R msp(R rest) { return R(1) / (R(1) + rest); }

// Liu et al. 2020: T * logsumexp(l / T) = m + T * log(1 + rest).
template <typename R>
GENCORE_HD R energy(R m, R rest, R temperature) { return m + temperature * std::log1p(rest); }

// log(rest) from the second-largest logit m2 (any j != k) and
// rest2 = sum_{j != k} exp(l_j - m2) >= 1, which cannot underflow (T = 1).
template <typename R>
GENCORE_HD R log_rest_from_second(R m, R m2, R rest2) { return (m2 - m) + std::log(rest2); }

// GEN (Liu et al. 2023) term of one class: p^gamma (1 - p)^gamma, computed as
// exp(gamma * (log p + log(1 - p))) from z = l - m <= 0 and log_s = log(1 + rest):
//   log p     = z - log_s                      (exact, no underflow of p first)
//   log(1-p)  = log_rest - log_s               for the unique max (p > 1/2 only there)
//             = log1p(-p)                      otherwise (p <= 1/2: no cancellation)
// `unique_max` marks the k of a row with rest < 1 (no tie at the max).
template <typename R>
GENCORE_HD R gen_term(R z, R log_s, R log_rest, bool unique_max, R gamma) {
  const R log_p = z - log_s;
  const R log_1mp = unique_max ? log_rest - log_s : std::log1p(-std::exp(log_p));
  return std::exp(gamma * (log_p + log_1mp));
}

// KL(p || d) for p = softmax(l) (T = 1), given dot = sum_j e_j (z_j - log d_j)
// over the classes with e_j = exp(z_j) > 0 (including k, where e_k = 1, z_k = 0):
//   sum_j p_j (log p_j - log d_j) = dot / (1 + rest) - log(1 + rest).
template <typename R>
GENCORE_HD R kl_from_dot(R dot, R rest) { return dot / (R(1) + rest) - std::log1p(rest); }

}  // namespace gencore::logit_math
