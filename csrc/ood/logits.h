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

// Row primitives of one SIMD level (float32; float64 rows use the portable ones
// in logits.cpp). Each lives in its own translation unit with its own ISA flags.
struct LogitRowOpsF32 {
  // max of row[0, n), n >= 1; *finite = false when the row holds NaN or inf.
  float (*max)(const float* row, int64_t n, bool* finite);
  // first j with row[j] == value (value is in the row).
  int64_t (*find)(const float* row, int64_t n, float value);
  // sum_j exp((row[j] - m) * inv_t) in double for row[j] <= m; stores each
  // exp(...) into store[j] when store is not null.
  double (*exp_sum)(const float* row, int64_t n, float m, float inv_t, float* store);
  // sum over j with e[j] > 0 of e[j] * ((row[j] - m) - log_d[j]), in double.
  double (*kl_dot)(const float* row, const float* e, const float* log_d, int64_t n, float m);
  // GEN terms: sum_j exp(gamma * (log p_j + log(1 - p_j))), log p_j = v[j] - m - log_s,
  // over the v[j] > floor of v[0, n) (values <= m, each with p_j <= 1/2), in double;
  // entries equal to m are left out when skip_max (the caller adds the unique max's term).
  double (*gen_sum)(const float* v, int64_t n, float m, double log_s, double gamma, bool skip_max, float floor);
};

LogitRowOpsF32 logit_row_ops_avx2();
LogitRowOpsF32 logit_row_ops_avx512();

}  // namespace gencore::ood
