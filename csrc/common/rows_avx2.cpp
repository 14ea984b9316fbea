#include <immintrin.h>

#include "gencore/rows.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

namespace gencore {

// Two independent double accumulators hide the FMA latency.
double squared_norm_avx2(const float* row, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(row + i);
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
    __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    a0 = _mm256_fmadd_pd(lo, lo, a0);
    a1 = _mm256_fmadd_pd(hi, hi, a1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
  double acc = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  for (; i < n; ++i) acc += double(row[i]) * double(row[i]);
  return acc;
}

}  // namespace gencore

#include "gencore/isa_end.h"
