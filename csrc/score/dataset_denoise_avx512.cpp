// AVX-512 epilogue of the data-set denoiser's tiles (float32): the logits of a
// tile row and its softmax numerators, in place (see DenoiseRowOps). exp is
// gencore/vec_avx512.h's (Cephes expf, ~2 ulp); its arguments l - max are <= 0.
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "score/dataset_denoise.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"
#include "gencore/vec_avx512.h"

namespace gencore::score {
namespace {

// The logits of RowTerms for 16 lanes of s (the GEMM's x'.y') and q (||y'||^2).
// near_*: kCoincidentUlps ulp of shift and offset (the coincidence threshold).
template <CostMode kCost>
__m512 cost_logits(__m512 s, __m512 q, __m512 scale, __m512 shift, __m512 offset, __m512 near_shift,
                   __m512 near_offset) {
  if constexpr (kCost == CostMode::squared) {
    return _mm512_fnmadd_ps(shift, q, _mm512_mul_ps(s, scale));
  } else {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 u2 = _mm512_fnmadd_ps(scale, s, _mm512_fmadd_ps(shift, q, offset));  // r^2 / sigma^2
    const __mmask16 apart = _mm512_cmp_ps_mask(u2, _mm512_fmadd_ps(near_shift, q, near_offset), _CMP_GT_OQ);
    if constexpr (kCost == CostMode::euclidean) {
      return _mm512_sub_ps(zero, _mm512_maskz_sqrt_ps(apart, u2));
    } else {
      const __m512 c = _mm512_max_ps(u2, _mm512_set1_ps(std::numeric_limits<float>::min()));
      const __m512 v = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), log_positive(c), _mm512_sub_ps(zero, _mm512_sqrt_ps(c)));
      return _mm512_mask_blend_ps(apart, _mm512_set1_ps(-std::numeric_limits<float>::infinity()), v);
    }
  }
}

template <bool kWeighted, CostMode kCost>
float logits_rows(float* row, int64_t n, RowTerms<float> terms, const float* sq_norms, const float* log_w) {
  const __m512 vs = _mm512_set1_ps(terms.scale), vh = _mm512_set1_ps(terms.shift);
  const __m512 vo = _mm512_set1_ps(terms.offset);
  constexpr float kNear = float(kCoincidentUlps) * std::numeric_limits<float>::epsilon();
  const __m512 nh = _mm512_set1_ps(kNear * terms.shift), no = _mm512_set1_ps(kNear * terms.offset);
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    __m512 v = cost_logits<kCost>(_mm512_loadu_ps(row + j), _mm512_loadu_ps(sq_norms + j), vs, vh, vo, nh, no);
    if (kWeighted) v = _mm512_add_ps(v, _mm512_loadu_ps(log_w + j));
    _mm512_storeu_ps(row + j, v);
    m = _mm512_max_ps(m, v);
  }
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    __m512 v = cost_logits<kCost>(_mm512_maskz_loadu_ps(k, row + j), _mm512_maskz_loadu_ps(k, sq_norms + j), vs, vh,
                                  vo, nh, no);
    if (kWeighted) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, log_w + j));
    _mm512_mask_storeu_ps(row + j, k, v);
    m = _mm512_mask_max_ps(m, k, m, v);
  }
  return _mm512_reduce_max_ps(m);
}

float logits(float* row, int64_t n, RowTerms<float> terms, const float* sq_norms, const float* log_w) {
  return with_logit_form(log_w != nullptr, terms.cost, [&](auto weighted, auto cost) {
    return logits_rows<decltype(weighted)::value, decltype(cost)::value>(row, n, terms, sq_norms, log_w);
  });
}

double exp_sum(float* row, int64_t n, float max) {
  const __m512 vm = _mm512_set1_ps(max);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(row + j), vm));
    _mm512_storeu_ps(row + j, e);
    a0 = _mm512_add_pd(a0, widen_lo(e));
    a1 = _mm512_add_pd(a1, widen_hi(e));
  }
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    const __m512 v = _mm512_mask_loadu_ps(vm, k, row + j);  // unused lanes: exp(0), then zeroed
    const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(_mm512_sub_ps(v, vm)));
    _mm512_mask_storeu_ps(row + j, k, e);
    a0 = _mm512_add_pd(a0, widen_lo(e));
    a1 = _mm512_add_pd(a1, widen_hi(e));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}


// Four independent vectors of outputs a step (the k loop is short: d <= kFusedDotsMaxDim).
void dot_row(const float* x, int64_t d, const float* tile_t, int64_t ld, int64_t n, float* row) {
  int64_t j = 0;
  for (; j + 64 <= n; j += 64) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t k = 0; k < d; ++k) {
      const __m512 xk = _mm512_set1_ps(x[k]);
      const float* t = tile_t + k * ld + j;
      a0 = _mm512_fmadd_ps(xk, _mm512_loadu_ps(t), a0);
      a1 = _mm512_fmadd_ps(xk, _mm512_loadu_ps(t + 16), a1);
      a2 = _mm512_fmadd_ps(xk, _mm512_loadu_ps(t + 32), a2);
      a3 = _mm512_fmadd_ps(xk, _mm512_loadu_ps(t + 48), a3);
    }
    _mm512_storeu_ps(row + j, a0);
    _mm512_storeu_ps(row + j + 16, a1);
    _mm512_storeu_ps(row + j + 32, a2);
    _mm512_storeu_ps(row + j + 48, a3);
  }
  for (; j + 16 <= n; j += 16) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < d; ++k) acc = _mm512_fmadd_ps(_mm512_set1_ps(x[k]), _mm512_loadu_ps(tile_t + k * ld + j), acc);
    _mm512_storeu_ps(row + j, acc);
  }
  for (; j < n; j += 16) {  // masked lanes load 0 and are not stored
    const __mmask16 m = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < d; ++k)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(x[k]), _mm512_maskz_loadu_ps(m, tile_t + k * ld + j), acc);
    _mm512_mask_storeu_ps(row + j, m, acc);
  }
}

}  // namespace

DenoiseRowOps<float> denoise_row_ops_avx512() { return {logits, exp_sum, dot_row}; }

}  // namespace gencore::score

#include "gencore/isa_end.h"
