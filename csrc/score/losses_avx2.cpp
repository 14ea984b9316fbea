// AVX2 + FMA row primitives of the score-matching losses (float32), the twin
// of losses_avx512.cpp: error terms in float32, sums widened to double in four
// accumulators; tails through masked loads (zeros) and stores.
#include <immintrin.h>

#include <cstdint>

#include "score/losses.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"
#include "gencore/vec_avx2.h"

namespace gencore::score {
namespace {

// cs x + co raw - t
inline __m256 dsm_error(__m256 raw, __m256 x, __m256 t, __m256 cs, __m256 co) {
  return _mm256_fmadd_ps(co, raw, _mm256_fmsub_ps(cs, x, t));
}

inline bool clean(__m256 poison) { return _mm256_movemask_ps(_mm256_cmp_ps(poison, poison, _CMP_UNORD_Q)) == 0; }

inline __m256i lanes(int64_t left) { return left >= 8 ? _mm256_set1_epi32(-1) : tail_lanes(left); }

struct Sum4 {
  // An explicit constructor: an implicit one would not be compiled in the target region.
  Sum4() : a0(_mm256_setzero_pd()), a1(_mm256_setzero_pd()), a2(_mm256_setzero_pd()), a3(_mm256_setzero_pd()) {}
  __m256d a0, a1, a2, a3;
  double total() const { return hsum(_mm256_add_pd(_mm256_add_pd(a0, a1), _mm256_add_pd(a2, a3))); }
};

// sum_j e_j^2 for e = cs x + co raw - t; with kWriteError also out_j = k e_j (the
// loss's gradient written in the same pass as the loss).
template <bool kWriteError>
double dsm_sq_sum_impl(const float* raw, const float* x, const float* t, int64_t n, float cs, float co, float k,
                       float* out) {
  const __m256 vcs = _mm256_set1_ps(cs), vco = _mm256_set1_ps(co), vk = _mm256_set1_ps(k);
  Sum4 s;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 e0 = dsm_error(_mm256_loadu_ps(raw + j), _mm256_loadu_ps(x + j), _mm256_loadu_ps(t + j), vcs, vco);
    const __m256 e1 = dsm_error(_mm256_loadu_ps(raw + j + 8), _mm256_loadu_ps(x + j + 8),
                                _mm256_loadu_ps(t + j + 8), vcs, vco);
    if constexpr (kWriteError) {
      _mm256_storeu_ps(out + j, _mm256_mul_ps(vk, e0));
      _mm256_storeu_ps(out + j + 8, _mm256_mul_ps(vk, e1));
    }
    const __m256d l0 = widen_lo(e0), h0 = widen_hi(e0), l1 = widen_lo(e1), h1 = widen_hi(e1);
    s.a0 = _mm256_fmadd_pd(l0, l0, s.a0);
    s.a1 = _mm256_fmadd_pd(h0, h0, s.a1);
    s.a2 = _mm256_fmadd_pd(l1, l1, s.a2);
    s.a3 = _mm256_fmadd_pd(h1, h1, s.a3);
  }
  for (; j < n; j += 8) {  // masked lanes load 0 and add 0
    const __m256i m = lanes(n - j);
    const __m256 e = dsm_error(_mm256_maskload_ps(raw + j, m), _mm256_maskload_ps(x + j, m),
                               _mm256_maskload_ps(t + j, m), vcs, vco);
    if constexpr (kWriteError) _mm256_maskstore_ps(out + j, m, _mm256_mul_ps(vk, e));
    const __m256d l = widen_lo(e), h = widen_hi(e);
    s.a0 = _mm256_fmadd_pd(l, l, s.a0);
    s.a1 = _mm256_fmadd_pd(h, h, s.a1);
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
  const __m256 vcs = _mm256_set1_ps(cs), vco = _mm256_set1_ps(co), vk = _mm256_set1_ps(k);
  const __m256 zero = _mm256_setzero_ps();
  __m256 poison = zero;  // e * 0 is NaN exactly when e is NaN or inf
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = dsm_error(_mm256_loadu_ps(raw + j), _mm256_loadu_ps(x + j), _mm256_loadu_ps(t + j), vcs, vco);
    poison = _mm256_fmadd_ps(e, zero, poison);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(vk, e));
  }
  if (j < n) {
    const __m256i m = tail_lanes(n - j);
    const __m256 e = dsm_error(_mm256_maskload_ps(raw + j, m), _mm256_maskload_ps(x + j, m),
                               _mm256_maskload_ps(t + j, m), vcs, vco);
    poison = _mm256_fmadd_ps(e, zero, poison);
    _mm256_maskstore_ps(out + j, m, _mm256_mul_ps(vk, e));
  }
  return clean(poison);
}

inline __m256 abs_diff(__m256 a, __m256 b) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps(a, b));  // clear the sign bit
}

double abs_diff_sum(const float* a, const float* b, int64_t n) {
  Sum4 s;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 e0 = abs_diff(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    const __m256 e1 = abs_diff(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));
    s.a0 = _mm256_add_pd(s.a0, widen_lo(e0));
    s.a1 = _mm256_add_pd(s.a1, widen_hi(e0));
    s.a2 = _mm256_add_pd(s.a2, widen_lo(e1));
    s.a3 = _mm256_add_pd(s.a3, widen_hi(e1));
  }
  for (; j < n; j += 8) {
    const __m256i k = lanes(n - j);
    const __m256 e = abs_diff(_mm256_maskload_ps(a + j, k), _mm256_maskload_ps(b + j, k));
    s.a0 = _mm256_add_pd(s.a0, widen_lo(e));
    s.a1 = _mm256_add_pd(s.a1, widen_hi(e));
  }
  return s.total();
}

bool scaled_diff(const float* a, const float* b, int64_t n, float scale, float* out) {
  const __m256 vs = _mm256_set1_ps(scale), zero = _mm256_setzero_ps();
  __m256 poison = zero;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = _mm256_sub_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    poison = _mm256_fmadd_ps(e, zero, poison);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(e, vs));
  }
  if (j < n) {
    const __m256i m = tail_lanes(n - j);
    const __m256 e = _mm256_sub_ps(_mm256_maskload_ps(a + j, m), _mm256_maskload_ps(b + j, m));
    poison = _mm256_fmadd_ps(e, zero, poison);
    _mm256_maskstore_ps(out + j, m, _mm256_mul_ps(e, vs));
  }
  return clean(poison);
}

}  // namespace

LossRowOps<float> loss_row_ops_avx2() { return {dsm_sq_sum, dsm_sq_sum_with_error, dsm_scaled_error, abs_diff_sum, scaled_diff}; }

}  // namespace gencore::score

#include "gencore/isa_end.h"
