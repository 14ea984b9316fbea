#include <immintrin.h>

#include "gencore/rows.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"

namespace gencore {

// Two independent double accumulators hide the FMA latency.
double squared_norm_avx512(const float* row, int64_t n) {
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(row + i);
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    a0 = _mm512_fmadd_pd(lo, lo, a0);
    a1 = _mm512_fmadd_pd(hi, hi, a1);
  }
  double acc = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
  for (; i < n; ++i) acc += double(row[i]) * double(row[i]);
  return acc;
}

}  // namespace gencore

#include "gencore/isa_end.h"
