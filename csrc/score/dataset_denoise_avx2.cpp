// AVX2 + FMA epilogue of the data-set denoiser's tiles (float32), the twin of
// dataset_denoise_avx512.cpp; exp is gencore/vec_avx2.h's (Cephes expf, ~2 ulp).
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "score/dataset_denoise.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"
#include "gencore/vec_avx2.h"

namespace gencore::score {
namespace {

template <bool kWeighted>
float logits_rows(float* row, int64_t n, float scale, float shift, const float* sq_norms, const float* log_w) {
  const __m256 vs = _mm256_set1_ps(scale), vh = _mm256_set1_ps(shift);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m = neg_inf;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = _mm256_fnmadd_ps(vh, _mm256_loadu_ps(sq_norms + j), _mm256_mul_ps(_mm256_loadu_ps(row + j), vs));
    if (kWeighted) v = _mm256_add_ps(v, _mm256_loadu_ps(log_w + j));
    _mm256_storeu_ps(row + j, v);
    m = _mm256_max_ps(m, v);
  }
  if (j < n) {
    const __m256i k = tail_lanes(n - j);
    __m256 v = _mm256_fnmadd_ps(vh, _mm256_maskload_ps(sq_norms + j, k),
                                _mm256_mul_ps(_mm256_maskload_ps(row + j, k), vs));
    if (kWeighted) v = _mm256_add_ps(v, _mm256_maskload_ps(log_w + j, k));
    _mm256_maskstore_ps(row + j, k, v);
    m = _mm256_max_ps(m, _mm256_blendv_ps(neg_inf, v, _mm256_castsi256_ps(k)));
  }
  return hmax(m);
}

float logits(float* row, int64_t n, float scale, float shift, const float* sq_norms, const float* log_w) {
  return log_w ? logits_rows<true>(row, n, scale, shift, sq_norms, log_w)
               : logits_rows<false>(row, n, scale, shift, sq_norms, log_w);
}

double exp_sum(float* row, int64_t n, float max) {
  const __m256 vm = _mm256_set1_ps(max);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm));
    _mm256_storeu_ps(row + j, e);
    a0 = _mm256_add_pd(a0, widen_lo(e));
    a1 = _mm256_add_pd(a1, widen_hi(e));
  }
  if (j < n) {
    const __m256i k = tail_lanes(n - j);
    const __m256 lanes = _mm256_castsi256_ps(k);
    const __m256 v = _mm256_blendv_ps(vm, _mm256_maskload_ps(row + j, k), lanes);  // unused lanes: exp(0)
    const __m256 e = _mm256_and_ps(lanes, exp_nonpositive(_mm256_sub_ps(v, vm)));
    _mm256_maskstore_ps(row + j, k, e);
    a0 = _mm256_add_pd(a0, widen_lo(e));
    a1 = _mm256_add_pd(a1, widen_hi(e));
  }
  return hsum(_mm256_add_pd(a0, a1));
}

}  // namespace

DenoiseRowOps<float> denoise_row_ops_avx2() { return {logits, exp_sum}; }

}  // namespace gencore::score

#include "gencore/isa_end.h"
