// Vector helpers shared by the AVX-512 translation units of every family
// (float32, 16 lanes). Include this INSIDE the unit's target region, after
// gencore/isa_begin.h with GENCORE_ISA avx512 (or an ISA above it): the helpers
// are compiled with the unit's ISA and have internal linkage (anonymous
// namespace), so no copy is ever merged with baseline code.
//
// exp_nonpositive: Cephes' expf range reduction (x = n ln2 + r, |r| <= ln2/2,
// ln2 in two parts so n * hi is exact) and degree-6 polynomial, ~2 ulp, scaled
// by 2^n with vscalefps. For x <= 0 (softmax numerators, l - max); below
// ln(FLT_MIN), -inf and NaN give exactly 0.
//
// log_positive: Cephes' logf: x = m 2^e with m in [sqrt(1/2), sqrt(2)), a
// degree-8 polynomial in m - 1, ln2 in two parts; ~1 ulp for normal x > 0
// (callers clamp to FLT_MIN first: denormals, 0 and negatives are not handled).
#pragma once
#if !defined(GENCORE_ISA_REGION_OPEN)
#error "include gencore/vec_avx512.h inside an avx512 target region (after gencore/isa_begin.h)"
#endif
// <immintrin.h> and <cstdint> come from the unit, included before its region.

namespace gencore {
namespace {

inline __m512 exp_nonpositive(__m512 x) {
  const __m512 lowest = _mm512_set1_ps(-87.33654f);  // ln(FLT_MIN)
  const __mmask16 keep = _mm512_cmp_ps_mask(x, lowest, _CMP_GE_OQ);
  x = _mm512_max_ps(x, lowest);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts: exact n*hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(y, n));
}

// Cephes' logf core: log(1 + f) + e ln2 for f in [sqrt(1/2) - 1, sqrt(2) - 1] and an
// integer e (as float): a degree-8 polynomial, ln2 in two parts.
inline __m512 log_reduced(__m512 f, __m512 e) {
  __m512 p = _mm512_set1_ps(7.0376836292e-2f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.1514610310e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.1676998740e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.2420140846e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.4249322787e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-1.6668057665e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.0000714765e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(-2.4999993993e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(3.3333331174e-1f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, f), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), z, y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

inline __m512 log_positive(__m512 x) {
  __m512 e = _mm512_getexp_ps(x);                                     // floor(log2 x)
  __m512 m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // [1, 2)
  const __mmask16 high = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, high, m, _mm512_set1_ps(0.5f));
  e = _mm512_mask_add_ps(e, high, e, _mm512_set1_ps(1.0f));
  return log_reduced(_mm512_sub_ps(m, _mm512_set1_ps(1.0f)), e);
}

inline __m512d widen_lo(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
inline __m512d widen_hi(__m512 v) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// Lanes [0, left) set (left < 16).
inline __mmask16 tail_mask(int64_t left) { return __mmask16((1u << left) - 1u); }

}  // namespace
}  // namespace gencore
