// Vector helpers shared by the AVX2 + FMA translation units of every family
// (float32, 8 lanes). Include this INSIDE the unit's target region, after
// gencore/isa_begin.h with GENCORE_ISA avx2: the helpers are compiled with the
// unit's ISA and have internal linkage (anonymous namespace), so no copy is
// ever merged with baseline code (tools/check_isa_symbols.py allows them).
//
// exp_nonpositive: Cephes' expf range reduction (x = n ln2 + r, |r| <= ln2/2,
// ln2 in two parts so n * hi is exact) and degree-6 polynomial, ~2 ulp, with
// 2^n built in the exponent field. For x <= 0 (softmax numerators, l - max);
// below ln(FLT_MIN), -inf and NaN give exactly 0, so 2^n is always normal.
#pragma once
#if !defined(GENCORE_ISA_REGION_OPEN)
#error "include gencore/vec_avx2.h inside an avx2 target region (after gencore/isa_begin.h)"
#endif
// <immintrin.h> and <cstdint> come from the unit, included before its region.

namespace gencore {
namespace {

inline __m256 exp_nonpositive(__m256 x) {
  const __m256 lowest = _mm256_set1_ps(-87.33654f);  // ln(FLT_MIN)
  const __m256 keep = _mm256_cmp_ps(x, lowest, _CMP_GE_OQ);
  x = _mm256_max_ps(x, lowest);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // n in [-126, 0]: 2^n = (n + 127) << 23 as float bits.
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(keep, _mm256_mul_ps(y, _mm256_castsi256_ps(bits)));
}

inline __m256d widen_lo(__m256 v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
inline __m256d widen_hi(__m256 v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }

inline double hsum(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes [0, left) set, for _mm256_maskload_ps / _mm256_maskstore_ps (left < 8).
inline __m256i tail_lanes(int64_t left) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

}  // namespace
}  // namespace gencore
