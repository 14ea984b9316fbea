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

// The logits of RowTerms for 8 lanes of s (the GEMM's x'.y') and q (||y'||^2).
// near_*: kCoincidentUlps ulp of shift and offset (the coincidence threshold).
template <CostMode kCost>
__m256 cost_logits(__m256 s, __m256 q, __m256 scale, __m256 shift, __m256 offset, __m256 near_shift,
                   __m256 near_offset) {
  if constexpr (kCost == CostMode::squared) {
    return _mm256_fnmadd_ps(shift, q, _mm256_mul_ps(s, scale));
  } else {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 u2 = _mm256_fnmadd_ps(scale, s, _mm256_fmadd_ps(shift, q, offset));  // r^2 / sigma^2
    const __m256 apart = _mm256_cmp_ps(u2, _mm256_fmadd_ps(near_shift, q, near_offset), _CMP_GT_OQ);
    if constexpr (kCost == CostMode::euclidean) {
      return _mm256_sub_ps(zero, _mm256_and_ps(apart, _mm256_sqrt_ps(_mm256_max_ps(u2, zero))));
    } else {
      const __m256 c = _mm256_max_ps(u2, _mm256_set1_ps(std::numeric_limits<float>::min()));
      const __m256 v = _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), log_positive(c), _mm256_sub_ps(zero, _mm256_sqrt_ps(c)));
      return _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()), v, apart);
    }
  }
}

template <bool kWeighted, CostMode kCost>
float logits_rows(float* row, int64_t n, RowTerms<float> terms, const float* sq_norms, const float* log_w) {
  const __m256 vs = _mm256_set1_ps(terms.scale), vh = _mm256_set1_ps(terms.shift);
  const __m256 vo = _mm256_set1_ps(terms.offset);
  constexpr float kNear = float(kCoincidentUlps) * std::numeric_limits<float>::epsilon();
  const __m256 nh = _mm256_set1_ps(kNear * terms.shift), no = _mm256_set1_ps(kNear * terms.offset);
  const __m256 neg_inf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 m = neg_inf;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    __m256 v = cost_logits<kCost>(_mm256_loadu_ps(row + j), _mm256_loadu_ps(sq_norms + j), vs, vh, vo, nh, no);
    if (kWeighted) v = _mm256_add_ps(v, _mm256_loadu_ps(log_w + j));
    _mm256_storeu_ps(row + j, v);
    m = _mm256_max_ps(m, v);
  }
  if (j < n) {
    const __m256i k = tail_lanes(n - j);
    __m256 v = cost_logits<kCost>(_mm256_maskload_ps(row + j, k), _mm256_maskload_ps(sq_norms + j, k), vs, vh, vo,
                                  nh, no);
    if (kWeighted) v = _mm256_add_ps(v, _mm256_maskload_ps(log_w + j, k));
    _mm256_maskstore_ps(row + j, k, v);
    m = _mm256_max_ps(m, _mm256_blendv_ps(neg_inf, v, _mm256_castsi256_ps(k)));
  }
  return hmax(m);
}

float logits(float* row, int64_t n, RowTerms<float> terms, const float* sq_norms, const float* log_w) {
  return with_logit_form(log_w != nullptr, terms.cost, [&](auto weighted, auto cost) {
    return logits_rows<decltype(weighted)::value, decltype(cost)::value>(row, n, terms, sq_norms, log_w);
  });
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


// Four independent vectors of outputs a step (the k loop is short: d <= kFusedDotsMaxDim).
void dot_row(const float* x, int64_t d, const float* tile_t, int64_t ld, int64_t n, float* row) {
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t k = 0; k < d; ++k) {
      const __m256 xk = _mm256_set1_ps(x[k]);
      const float* t = tile_t + k * ld + j;
      a0 = _mm256_fmadd_ps(xk, _mm256_loadu_ps(t), a0);
      a1 = _mm256_fmadd_ps(xk, _mm256_loadu_ps(t + 8), a1);
      a2 = _mm256_fmadd_ps(xk, _mm256_loadu_ps(t + 16), a2);
      a3 = _mm256_fmadd_ps(xk, _mm256_loadu_ps(t + 24), a3);
    }
    _mm256_storeu_ps(row + j, a0);
    _mm256_storeu_ps(row + j + 8, a1);
    _mm256_storeu_ps(row + j + 16, a2);
    _mm256_storeu_ps(row + j + 24, a3);
  }
  for (; j + 8 <= n; j += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t k = 0; k < d; ++k) acc = _mm256_fmadd_ps(_mm256_set1_ps(x[k]), _mm256_loadu_ps(tile_t + k * ld + j), acc);
    _mm256_storeu_ps(row + j, acc);
  }
  if (j < n) {  // masked lanes load 0 and are not stored
    const __m256i m = tail_lanes(n - j);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t k = 0; k < d; ++k)
      acc = _mm256_fmadd_ps(_mm256_set1_ps(x[k]), _mm256_maskload_ps(tile_t + k * ld + j, m), acc);
    _mm256_maskstore_ps(row + j, m, acc);
  }
}

}  // namespace

DenoiseRowOps<float> denoise_row_ops_avx2() { return {logits, exp_sum, dot_row}; }

}  // namespace gencore::score

#include "gencore/isa_end.h"
