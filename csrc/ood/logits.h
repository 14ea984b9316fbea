// Logit-based OOD scores on the CPU, one fused pass per row (see
// ood/logit_math.h for the per-row math shared with the CUDA kernels).
//   logits [N, C] -> scores [N]   (higher = more in-distribution)
#pragma once
#include <cstdint>

#include "ood/logit_math.h"
#include "gencore/view.h"

namespace gencore::ood {

using logit_math::LogitScore;

struct LogitParams {
  double temperature = 1.0;  // msp, energy
  double gamma = 0.1;        // gen
  int64_t top_m = 100;       // gen
};

// scores [N] for `score`. log_templates [C, C] (row c = log of class c's
// template) is read by LogitScore::kl only. Throws std::invalid_argument naming
// the first row with NaN/inf. Extra memory per thread: one row buffer [C] (gen with
// top_m < C, kl) plus 128 samples and 4 heap ids (gen).
template <typename T>
void logit_scores(MatrixView<const T> logits, LogitScore score, const LogitParams& params,
                  MatrixView<const T> log_templates, T* out, int num_threads);

// Row primitives of one SIMD level. float32 has one table per level, each in
// its own translation unit; the portable table (logits.cpp) serves float64 and
// the scalar level.
template <typename T>
struct LogitRowOps {
  // max of row[0, n), n >= 1; *finite = false when the row holds NaN or inf.
  T (*max)(const T* row, int64_t n, bool* finite);
  // first j with row[j] == value (value is in the row).
  int64_t (*find)(const T* row, int64_t n, T value);
  // sum_j exp((row[j] - m) * inv_t) in double for row[j] <= m; stores each
  // exp(...) into store[j] when store is not null.
  double (*exp_sum)(const T* row, int64_t n, T m, T inv_t, T* store);
  // sum over j with e[j] > 0 of e[j] * ((row[j] - m) - log_d[j]), in double.
  double (*kl_dot)(const T* row, const T* e, const T* log_d, int64_t n, T m);
  // GEN terms: sum_j exp(gamma * (log p_j + log(1 - p_j))), log p_j = v[j] - m - log_s,
  // over the v[j] > floor of v[0, n) (values <= m, each with p_j <= 1/2), in double;
  // entries equal to m are left out when skip_max (the caller adds the unique max's term).
  double (*gen_sum)(const T* v, int64_t n, T m, double log_s, double gamma, bool skip_max, T floor);
};

LogitRowOps<float> logit_row_ops_avx2();
LogitRowOps<float> logit_row_ops_avx512();

}  // namespace gencore::ood
