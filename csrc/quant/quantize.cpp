// Group quantization (quantize.h). One pass per row: the group's range, its
// scale and zero point (with clip_steps > 1, the best of clip_steps shrunken
// ranges by squared error), then the codes, packed low nibble first for int4.
// Rows are independent; threads take contiguous row ranges.
#include "quant/quantize.h"
#include "quant/group_matmul.h"

#include "quant/group_tail.h"

#include <algorithm>
#include <cmath>

#include "gencore/check.h"
#include "gencore/parallel.h"

namespace gencore::quant {
namespace {

struct GroupParams {
  float scale, zero;
};

// The group's range: [lo, hi] with lo <= 0 <= hi (asymmetric), or amax = hi (symmetric).
struct Range {
  float lo, hi;
};

Range range_of(const float* w, int64_t k0, int64_t k1, bool symmetric) {
  float lo = 0.0f, hi = 0.0f;  // the range always holds 0, so 0 has an exact code
  for (int64_t k = k0; k < k1; ++k) {
    if (symmetric) {
      hi = std::max(hi, std::fabs(w[k]));
    } else {
      lo = std::min(lo, w[k]);
      hi = std::max(hi, w[k]);
    }
  }
  return {lo, hi};
}

GroupParams params_of(Range r, bool symmetric, float top, float half) {
  if (symmetric) {
    float scale = r.hi / (half - 1.0f);
    if (scale == 0.0f) scale = 1.0f;
    return {scale, half};
  }
  float scale = (r.hi - r.lo) / top;
  if (scale == 0.0f) scale = 1.0f;
  return {scale, std::clamp(std::nearbyint(-r.lo / scale), 0.0f, top)};
}

inline float code_of(float w, GroupParams p, float top) {
  return std::clamp(std::nearbyint(w / p.scale) + p.zero, 0.0f, top);
}

// sum_k (w_k - dequant(code(w_k)))^2 over the group, in double, in k order.
double squared_error(const float* w, int64_t k0, int64_t k1, GroupParams p, float top) {
  double acc = 0.0;
  for (int64_t k = k0; k < k1; ++k) {
    const double e = double(w[k]) - double((code_of(w[k], p, top) - p.zero) * p.scale);
    acc += e * e;
  }
  return acc;
}

}  // namespace

float clip_ratio(int step, int steps) { return float(1.0 - 0.5 * double(step) / double(steps)); }

void quantize(MatrixView<const float> weight, int bits, int64_t group, bool symmetric, int clip_steps,
              uint8_t* data, int64_t data_stride, float* scales, float* zeros, int threads) {
  GENCORE_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  GENCORE_CHECK(group >= 1, "group_size must be >= 1, got ", group);
  GENCORE_CHECK(clip_steps >= 0, "clip_steps must be >= 0, got ", clip_steps);
  const int64_t K = weight.cols;
  const int64_t G = K == 0 ? 0 : (K + group - 1) / group;
  const float top = float((1 << bits) - 1);
  const float half = float(1 << (bits - 1));
  const int steps = std::max(clip_steps, 1);
  threads = useful_threads(threads, weight.rows * K * steps);
  parallel_for(weight.rows, threads, Schedule::fixed, [&](int64_t n) {
    const float* w = weight.row(n);
    require_finite_row(w, K, "weight", n);
    uint8_t* out = data + n * data_stride;
    if (bits == 4) std::fill(out, out + (K + 1) / 2, uint8_t(0));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = std::min(K, k0 + group);
      const Range full = range_of(w, k0, k1, symmetric);
      GroupParams best = params_of(full, symmetric, top, half);
      if (steps > 1) {
        double best_error = squared_error(w, k0, k1, best, top);
        for (int step = 1; step < steps; ++step) {  // ties keep the wider range
          const float ratio = clip_ratio(step, steps);
          const GroupParams p = params_of({ratio * full.lo, ratio * full.hi}, symmetric, top, half);
          const double error = squared_error(w, k0, k1, p, top);
          if (error < best_error) {
            best_error = error;
            best = p;
          }
        }
      }
      scales[n * G + g] = best.scale;
      zeros[n * G + g] = best.zero;
      for (int64_t k = k0; k < k1; ++k) {
        const auto code = static_cast<uint8_t>(code_of(w[k], best, top));
        if (bits == 4)
          out[k >> 1] |= static_cast<uint8_t>(code << ((k & 1) * 4));
        else
          out[k] = code;
      }
    }
  });
}

}  // namespace gencore::quant
