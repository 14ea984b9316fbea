// Logit scores and the residual / ViM epilogue: one warp per row, 8 rows per
// block, everything on the caller's stream with no workspace.
//
// Per row (see csrc/ood/logit_math.h): the warp finds the max m and its first
// index k (lanes stride over the row, then a shuffle reduction that keeps the
// lower index on ties), then rest = sum_{j != k} exp((l_j - m) / T) with expf
// and per-lane double accumulation, then the score:
//   MSP / energy   from (m, rest) directly,
//   GEN            top-M by an exact radix select of the M-th largest logit
//                  (4 passes of 8-bit histograms in shared memory per warp), then
//                  the terms of the values above it plus the right number of copies
//                  of it, in double,
//   KL matching    a third pass sum_j e_j (z_j - log d_kj) against row k of the
//                  log-templates.
// Rows are read 2-4 times (6 for GEN's select), from L1/L2 after the first.
// The warp reductions and the radix digit search are common/warp.cuh's and
// common/select.cuh's.
#include "ood/logits.cuh"

#include <cfloat>
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/select.cuh"
#include "common/warp.cuh"
#include "csrc/ood/logit_math.h"

namespace gencore::gpu {
namespace {

namespace lm = gencore::logit_math;
using lm::LogitScore;

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = kWarpsPerBlock * 32;

struct RowSummary {
  float m;      // max
  int64_t k;    // first argmax
  double rest;  // sum_{j != k} exp((l_j - m) * inv_t)
  bool finite;
};

// Warp-cooperative; every lane returns the same summary.
__device__ RowSummary summarise(const float* row, int64_t C, float inv_t, bool need_rest, int lane) {
  float m = -INFINITY;
  int64_t k = LLONG_MAX;
  bool bad = false;
  for (int64_t j = lane; j < C; j += 32) {
    const float v = row[j];
    bad |= !isfinite(v);
    if (v > m) {  // increasing j: a lane keeps its first maximal index
      m = v;
      k = j;
    }
  }
  // Larger first, the lower index on equal values (NaN rows are not finite and
  // return before m or k is used).
  warp_arg_best(m, k, [](float a, int64_t ia, float b, int64_t ib) { return a > b || (a == b && ia < ib); });
  RowSummary s{m, k, 0.0, !__any_sync(kFullMask, bad)};
  if (!s.finite || !need_rest) return s;
  double rest = 0.0;
  for (int64_t j = lane; j < C; j += 32)
    if (j != k) rest += double(expf((row[j] - m) * inv_t));
  s.rest = warp_sum(rest);
  return s;
}

// log(rest) of a unique max; tiny rests are redone around the second-largest logit.
__device__ double log_rest(const float* row, int64_t C, const RowSummary& s, int lane) {
  if (s.rest >= lm::kTinyRest) return log(s.rest);
  if (C == 1) return -INFINITY;
  double m2 = -INFINITY;
  for (int64_t j = lane; j < C; j += 32)
    if (j != s.k) m2 = fmax(m2, double(row[j]));
  m2 = warp_max(m2);
  double rest2 = 0.0;
  for (int64_t j = lane; j < C; j += 32)
    if (j != s.k) rest2 += exp(double(row[j]) - m2);
  return lm::log_rest_from_second(double(s.m), m2, warp_sum(rest2));
}

// Descending order as ascending keys: the M-th largest value of a row is the
// M-th smallest desc_key, so GEN's top-M is select.cuh's smallest-first select.
__device__ __forceinline__ unsigned desc_key(float v) { return ~ordered_bits(v); }
__device__ __forceinline__ float desc_key_value(unsigned key) { return from_ordered_bits(~key); }

// desc_key t of the M-th largest value of row (1 <= M < C), and how many of the
// top M equal it (the rest of the top M are the values with desc_key < t).
// hist: kRadixBins counters owned by this warp. Exact: 4 passes of 8 bits.
__device__ void select_mth_largest(const float* row, int64_t C, int64_t M, unsigned* hist, int lane,
                                   unsigned& t, int64_t& copies) {
  unsigned prefix = 0, mask = 0;
  unsigned rank = unsigned(M);  // rank of the target among the keys that match prefix
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int b = lane; b < kRadixBins; b += 32) hist[b] = 0;
    __syncwarp();
    for (int64_t j = lane; j < C; j += 32) {
      const unsigned key = desc_key(row[j]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & (kRadixBins - 1)], 1u);
    }
    __syncwarp();
    const DigitPick pick = find_digit(hist, rank);
    prefix |= pick.bin << shift;
    mask |= unsigned(kRadixBins - 1) << shift;
    rank -= pick.before;
    __syncwarp();  // every lane has read hist before the next pass clears it
  }
  t = prefix;
  copies = rank;
}

__device__ double gen_row(const float* row, int64_t C, const RowSummary& s, double gamma, int64_t top_m,
                          unsigned* hist, int lane) {
  const bool unique = s.rest < 1.0;  // p_k > 1/2: no other class ties with k
  const double log_s = log1p(s.rest);
  const double lr = unique ? log_rest(row, C, s, lane) : 0.0;
  const double m = double(s.m);
  auto term = [&](float v) {
    const double z = double(v) - m;
    return lm::gen_term(z, log_s, lr, unique && z == 0.0, gamma);
  };
  double sum = 0.0;
  if (top_m >= C) {
    for (int64_t j = lane; j < C; j += 32) sum += term(row[j]);
  } else {
    unsigned t;
    int64_t copies;
    select_mth_largest(row, C, top_m, hist, lane, t, copies);
    for (int64_t j = lane; j < C; j += 32)
      if (desc_key(row[j]) < t) sum += term(row[j]);
    if (lane == 0) sum += double(copies) * term(desc_key_value(t));
  }
  return -warp_sum(sum);
}

__device__ double kl_row(const float* row, int64_t C, const RowSummary& s, const float* log_templates, int lane) {
  const float* log_d = log_templates + s.k * C;
  double dot = 0.0;
  for (int64_t j = lane; j < C; j += 32) {
    const float z = row[j] - s.m;
    const float e = j == s.k ? 1.0f : expf(z);
    if (e > 0.0f) dot += double(e) * (double(z) - double(log_d[j]));  // 0 * -inf stays out
  }
  return -lm::kl_from_dot(warp_sum(dot), s.rest);
}

template <LogitScore kScore>
__global__ void __launch_bounds__(kThreads) logit_scores_kernel(const float* logits, int64_t N, int64_t C,
                                                                float inv_t, double temperature, double gamma,
                                                                int64_t top_m, const float* log_templates,
                                                                float* out) {
  __shared__ unsigned hist[kScore == LogitScore::gen ? kWarpsPerBlock : 1][kRadixBins];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (i >= N) return;  // warp-uniform: no block-level barrier follows
  const float* row = logits + i * C;
  const RowSummary s = summarise(row, C, inv_t, kScore != LogitScore::max_logit, lane);
  double v = NAN;
  if (s.finite) {
    if constexpr (kScore == LogitScore::max_logit) v = s.m;
    if constexpr (kScore == LogitScore::msp) v = lm::msp(s.rest);
    if constexpr (kScore == LogitScore::energy) v = lm::energy(double(s.m), s.rest, temperature);
    if constexpr (kScore == LogitScore::gen) v = gen_row(row, C, s, gamma, top_m, hist[warp], lane);
    if constexpr (kScore == LogitScore::kl) v = kl_row(row, C, s, log_templates, lane);
  }
  if (lane == 0) out[i] = float(v);
}

__global__ void __launch_bounds__(kThreads) residual_kernel(const float* residual, int64_t N, int64_t D,
                                                            const float* logits, int64_t C, double alpha,
                                                            float* out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + warp;
  if (i >= N) return;
  const float* e = residual + i * D;
  double sq = 0.0;
  for (int64_t j = lane; j < D; j += 32) sq += double(e[j]) * double(e[j]);
  const double r = sqrt(warp_sum(sq));
  double v = -r;
  if (logits != nullptr) {
    const RowSummary s = summarise(logits + i * C, C, 1.0f, true, lane);
    v = s.finite ? lm::energy(double(s.m), s.rest, 1.0) - alpha * r : NAN;
  }
  if (lane == 0) out[i] = float(v);
}

// The kernel of each score code, indexed by the code.
using LogitKernel = void (*)(const float*, int64_t, int64_t, float, double, double, int64_t, const float*, float*);
constexpr LogitKernel kLogitKernels[] = {
    logit_scores_kernel<LogitScore::max_logit>, logit_scores_kernel<LogitScore::msp>,
    logit_scores_kernel<LogitScore::energy>, logit_scores_kernel<LogitScore::gen>,
    logit_scores_kernel<LogitScore::kl>};
static_assert(int(LogitScore::max_logit) == 0 && int(LogitScore::msp) == 1 && int(LogitScore::energy) == 2 &&
                  int(LogitScore::gen) == 3 && int(LogitScore::kl) == 4,
              "kLogitKernels is indexed by the score code");

}  // namespace

void logit_scores(const float* logits, int64_t N, int64_t C, int score, double temperature, double gamma,
                  int64_t top_m, const float* log_templates, float* out, cudaStream_t stream, int device) {
  if (score < 0 || score > 4) fail_argument("logit_scores", "unknown score code " + std::to_string(score));
  const auto kind = static_cast<LogitScore>(score);
  if (N < 0 || C < 1) fail_argument("logit_scores", "need N >= 0 and C >= 1, got N=" + std::to_string(N) + ", C=" + std::to_string(C));
  if (!(temperature > 0) || !std::isfinite(temperature)) fail_argument("logit_scores", "temperature must be finite and > 0");
  if (kind == LogitScore::gen && top_m < 1) fail_argument("logit_scores", "top_m must be >= 1");
  if (kind == LogitScore::kl && log_templates == nullptr) fail_argument("logit_scores", "KL matching needs log_templates");
  if (N == 0) return;
  if (logits == nullptr || out == nullptr) fail_argument("logit_scores", "a data pointer is null");
  DeviceGuard guard(device);
  const bool tempered = kind == LogitScore::msp || kind == LogitScore::energy;
  const double t = tempered ? temperature : 1.0;
  const float inv_t = float(std::fmin(1.0 / t, double(FLT_MAX)));  // tiny T: no 0 * inf = NaN
  const unsigned blocks = blocks_for(N, kWarpsPerBlock, "logit_scores");
  kLogitKernels[score]<<<blocks, kThreads, 0, stream>>>(logits, N, C, inv_t, t, gamma, top_m, log_templates, out);
  GENCORE_CUDA_CHECK_LAUNCH("logit_scores_kernel");
}

void residual_scores(const float* residual, int64_t N, int64_t D, const float* logits, int64_t C, double alpha,
                     float* out, cudaStream_t stream, int device) {
  if (N < 0 || D < 1) fail_argument("residual_scores", "need N >= 0 and D >= 1");
  if (logits != nullptr && C < 1) fail_argument("residual_scores", "logits need C >= 1");
  if (!std::isfinite(alpha)) fail_argument("residual_scores", "alpha must be finite");
  if (N == 0) return;
  if (residual == nullptr || out == nullptr) fail_argument("residual_scores", "a data pointer is null");
  DeviceGuard guard(device);
  residual_kernel<<<blocks_for(N, kWarpsPerBlock, "residual_scores"), kThreads, 0, stream>>>(residual, N, D, logits, C, alpha, out);
  GENCORE_CUDA_CHECK_LAUNCH("residual_kernel");
}

}  // namespace gencore::gpu
