// Group quantization (quantize.h). One pass per row: the group's range, its
// scale and zero point, then the codes, packed low nibble first for int4.
// Rows are independent; threads take contiguous row ranges.
#include "quant/quantize.h"
#include "quant/group_matmul.h"

#include "quant/group_tail.h"

#include <algorithm>
#include <cmath>

#include "gencore/check.h"
#include "gencore/parallel.h"

namespace gencore::quant {

void quantize(MatrixView<const float> weight, int bits, int64_t group, bool symmetric, uint8_t* data,
              int64_t data_stride, float* scales, float* zeros, int threads) {
  GENCORE_CHECK(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  GENCORE_CHECK(group >= 1, "group_size must be >= 1, got ", group);
  const int64_t K = weight.cols;
  const int64_t G = K == 0 ? 0 : (K + group - 1) / group;
  const float top = float((1 << bits) - 1);
  const float half = float(1 << (bits - 1));
  threads = useful_threads(threads, weight.rows * K);
  parallel_for(weight.rows, threads, Schedule::fixed, [&](int64_t n) {
    const float* w = weight.row(n);
    require_finite_row(w, K, "weight", n);
    uint8_t* out = data + n * data_stride;
    if (bits == 4) std::fill(out, out + (K + 1) / 2, uint8_t(0));
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * group, k1 = std::min(K, k0 + group);
      float scale, zero;
      if (symmetric) {
        float amax = 0.0f;
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(w[k]));
        scale = amax / (half - 1.0f);
        if (scale == 0.0f) scale = 1.0f;
        zero = half;
      } else {
        float lo = 0.0f, hi = 0.0f;  // the range always holds 0, so 0 has an exact code
        for (int64_t k = k0; k < k1; ++k) {
          lo = std::min(lo, w[k]);
          hi = std::max(hi, w[k]);
        }
        scale = (hi - lo) / top;
        if (scale == 0.0f) scale = 1.0f;
        zero = std::clamp(std::nearbyint(-lo / scale), 0.0f, top);
      }
      scales[n * G + g] = scale;
      zeros[n * G + g] = zero;
      for (int64_t k = k0; k < k1; ++k) {
        const auto code = static_cast<uint8_t>(std::clamp(std::nearbyint(w[k] / scale) + zero, 0.0f, top));
        if (bits == 4)
          out[k >> 1] |= static_cast<uint8_t>(code << ((k & 1) * 4));
        else
          out[k] = code;
      }
    }
  });
}

}  // namespace gencore::quant
