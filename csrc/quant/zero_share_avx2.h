// The zero points' share of a row's result, 8 groups per step (a scalar
// loop costs as much as the weights themselves at groups of 32). Include
// INSIDE an avx2 (or higher) target region, as gencore/vec_avx2.h: internal
// linkage, compiled with the unit's ISA.
#pragma once
#if !defined(GENCORE_ISA_REGION_OPEN)
#error "include quant/zero_share_avx2.h inside an ISA target region (after gencore/isa_begin.h)"
#endif

namespace gencore::quant {
namespace {

inline float hsum8(__m256 v) {
  __m128 t = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  t = _mm_add_ps(t, _mm_movehl_ps(t, t));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// sum_g a[g] * (b[g] - offset) * c[g] (scales, zeros less the kernel's code offset, activation sums)
inline float zero_share_vec(const float* a, const float* b, const float* c, int64_t groups, float offset) {
  const __m256 off = _mm256_set1_ps(offset);
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8)
    acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(a + g), _mm256_sub_ps(_mm256_loadu_ps(b + g), off)),
                          _mm256_loadu_ps(c + g), acc);
  float rest = 0.0f;
  for (; g < groups; ++g) rest += a[g] * (b[g] - offset) * c[g];
  return hsum8(acc) + rest;
}

}  // namespace
}  // namespace gencore::quant
