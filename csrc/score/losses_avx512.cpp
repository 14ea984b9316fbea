// AVX-512 row primitives of the score-matching losses (float32; see
// LossRowOps). Sums of squares and absolute values are widened to double in
// four independent accumulators (two per 16 lanes, two blocks per step) to hide
// the add latency; the error terms themselves are float32, as in the reference.
#include <immintrin.h>

#include <cstdint>

#include "score/losses.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"
#include "gencore/vec_avx512.h"

namespace gencore::score {
namespace {

// cs x + co raw - t
inline __m512 dsm_error(__m512 raw, __m512 x, __m512 t, __m512 cs, __m512 co) {
  return _mm512_fmadd_ps(co, raw, _mm512_fmsub_ps(cs, x, t));
}

inline bool clean(__m512 poison) { return _mm512_cmp_ps_mask(poison, poison, _CMP_UNORD_Q) == 0; }

struct Sum4 {
  // An explicit constructor: an implicit one would not be compiled in the target region.
  Sum4() : a0(_mm512_setzero_pd()), a1(_mm512_setzero_pd()), a2(_mm512_setzero_pd()), a3(_mm512_setzero_pd()) {}
  __m512d a0, a1, a2, a3;
  double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a0, a1), _mm512_add_pd(a2, a3))); }
};

// sum_j e_j^2 for e = cs x + co raw - t; with kWriteError also out_j = k e_j (the
// loss's gradient written in the same pass as the loss).
template <bool kWriteError>
double dsm_sq_sum_impl(const float* raw, const float* x, const float* t, int64_t n, float cs, float co, float k,
                       float* out) {
  const __m512 vcs = _mm512_set1_ps(cs), vco = _mm512_set1_ps(co), vk = _mm512_set1_ps(k);
  Sum4 s;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 e0 = dsm_error(_mm512_loadu_ps(raw + j), _mm512_loadu_ps(x + j), _mm512_loadu_ps(t + j), vcs, vco);
    const __m512 e1 = dsm_error(_mm512_loadu_ps(raw + j + 16), _mm512_loadu_ps(x + j + 16),
                                _mm512_loadu_ps(t + j + 16), vcs, vco);
    if constexpr (kWriteError) {
      _mm512_storeu_ps(out + j, _mm512_mul_ps(vk, e0));
      _mm512_storeu_ps(out + j + 16, _mm512_mul_ps(vk, e1));
    }
    const __m512d l0 = widen_lo(e0), h0 = widen_hi(e0), l1 = widen_lo(e1), h1 = widen_hi(e1);
    s.a0 = _mm512_fmadd_pd(l0, l0, s.a0);
    s.a1 = _mm512_fmadd_pd(h0, h0, s.a1);
    s.a2 = _mm512_fmadd_pd(l1, l1, s.a2);
    s.a3 = _mm512_fmadd_pd(h1, h1, s.a3);
  }
  for (; j < n; j += 16) {  // masked lanes load 0 and add 0
    const __mmask16 m = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const __m512 e = dsm_error(_mm512_maskz_loadu_ps(m, raw + j), _mm512_maskz_loadu_ps(m, x + j),
                               _mm512_maskz_loadu_ps(m, t + j), vcs, vco);
    if constexpr (kWriteError) _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(vk, e));
    const __m512d l = widen_lo(e), h = widen_hi(e);
    s.a0 = _mm512_fmadd_pd(l, l, s.a0);
    s.a1 = _mm512_fmadd_pd(h, h, s.a1);
  }
  return s.total();
}

double dsm_sq_sum(const float* raw, const float* x, const float* t, int64_t n, float cs, float co) {
  return dsm_sq_sum_impl<false>(raw, x, t, n, cs, co, 0.0f, nullptr);
}

double dsm_sq_sum_with_error(const float* raw, const float* x, const float* t, int64_t n, float cs, float co,
                             float k, float* out) {
  return dsm_sq_sum_impl<true>(raw, x, t, n, cs, co, k, out);
}

bool dsm_scaled_error(const float* raw, const float* x, const float* t, int64_t n, float cs, float co, float k,
                      float* out) {
  const __m512 vcs = _mm512_set1_ps(cs), vco = _mm512_set1_ps(co), vk = _mm512_set1_ps(k);
  const __m512 zero = _mm512_setzero_ps();
  __m512 poison = zero;  // e * 0 is NaN exactly when e is NaN or inf
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = dsm_error(_mm512_loadu_ps(raw + j), _mm512_loadu_ps(x + j), _mm512_loadu_ps(t + j), vcs, vco);
    poison = _mm512_fmadd_ps(e, zero, poison);
    _mm512_storeu_ps(out + j, _mm512_mul_ps(vk, e));
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 e = dsm_error(_mm512_maskz_loadu_ps(m, raw + j), _mm512_maskz_loadu_ps(m, x + j),
                               _mm512_maskz_loadu_ps(m, t + j), vcs, vco);
    poison = _mm512_fmadd_ps(e, zero, poison);
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(vk, e));
  }
  return clean(poison);
}

inline __m512 abs_diff(__m512 a, __m512 b) { return _mm512_abs_ps(_mm512_sub_ps(a, b)); }

double abs_diff_sum(const float* a, const float* b, int64_t n) {
  Sum4 s;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 e0 = abs_diff(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j));
    const __m512 e1 = abs_diff(_mm512_loadu_ps(a + j + 16), _mm512_loadu_ps(b + j + 16));
    s.a0 = _mm512_add_pd(s.a0, widen_lo(e0));
    s.a1 = _mm512_add_pd(s.a1, widen_hi(e0));
    s.a2 = _mm512_add_pd(s.a2, widen_lo(e1));
    s.a3 = _mm512_add_pd(s.a3, widen_hi(e1));
  }
  for (; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const __m512 e = abs_diff(_mm512_maskz_loadu_ps(k, a + j), _mm512_maskz_loadu_ps(k, b + j));
    s.a0 = _mm512_add_pd(s.a0, widen_lo(e));
    s.a1 = _mm512_add_pd(s.a1, widen_hi(e));
  }
  return s.total();
}

bool scaled_diff(const float* a, const float* b, int64_t n, float scale, float* out) {
  const __m512 vs = _mm512_set1_ps(scale), zero = _mm512_setzero_ps();
  __m512 poison = zero;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = _mm512_sub_ps(_mm512_loadu_ps(a + j), _mm512_loadu_ps(b + j));
    poison = _mm512_fmadd_ps(e, zero, poison);
    _mm512_storeu_ps(out + j, _mm512_mul_ps(e, vs));
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 e = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, b + j));
    poison = _mm512_fmadd_ps(e, zero, poison);
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(e, vs));
  }
  return clean(poison);
}

}  // namespace

LossRowOps<float> loss_row_ops_avx512() { return {dsm_sq_sum, dsm_sq_sum_with_error, dsm_scaled_error, abs_diff_sum, scaled_diff}; }

}  // namespace gencore::score

#include "gencore/isa_end.h"
