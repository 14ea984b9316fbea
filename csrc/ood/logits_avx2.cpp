// AVX2 + FMA row primitives of the logit scores (float32); the same exp as
// logits_avx512.cpp (gencore/vec_avx2.h: Cephes expf, ~2 ulp). Arguments are
// (l - max) / T <= 0; below ln(FLT_MIN) the result is exactly 0.
#include <immintrin.h>

#include "ood/logits.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"
#include "gencore/vec_avx2.h"  // exp_nonpositive, log_reduced, widen_lo/hi, hsum, hmax

namespace gencore::ood {
namespace {

// log(1 - p) for p in [0, 1/2], as in logits_avx512.cpp (Cephes logf polynomial).
inline __m256 log_one_minus(__m256 p) {
  const __m256 big = _mm256_cmp_ps(p, _mm256_set1_ps(0.29289321881f), _CMP_GE_OQ);
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 f = _mm256_blendv_ps(_mm256_sub_ps(_mm256_setzero_ps(), p),
                                    _mm256_fnmadd_ps(_mm256_set1_ps(2.0f), p, one), big);
  const __m256 e = _mm256_and_ps(big, _mm256_set1_ps(-1.0f));
  return log_reduced(f, e);
}

float row_max(const float* row, int64_t n, bool* finite) {
  __m256 m = _mm256_set1_ps(row[0]);
  __m256 poison = _mm256_setzero_ps();  // x * 0 is NaN exactly for NaN / inf
  const __m256 zero = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(row + j);
    m = _mm256_max_ps(m, v);
    poison = _mm256_fmadd_ps(v, zero, poison);
  }
  float mx = hmax(m);
  float tail_poison = 0.0f;
  for (; j < n; ++j) {
    mx = row[j] > mx ? row[j] : mx;
    tail_poison += row[j] * 0.0f;
  }
  const __m256 bad = _mm256_cmp_ps(poison, poison, _CMP_UNORD_Q);
  *finite = _mm256_movemask_ps(bad) == 0 && tail_poison == 0.0f;
  return mx;
}

int64_t find(const float* row, int64_t n, float value) {
  const __m256 v = _mm256_set1_ps(value);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), v, _CMP_EQ_OQ));
    if (hit) return j + __builtin_ctz(unsigned(hit));
  }
  while (j < n && row[j] != value) ++j;
  return j;
}

double exp_sum(const float* row, int64_t n, float m, float inv_t, float* store) {
  const __m256 vm = _mm256_set1_ps(m), vt = _mm256_set1_ps(inv_t);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm), vt));
    if (store) _mm256_storeu_ps(store + j, e);
    a0 = _mm256_add_pd(a0, widen_lo(e));
    a1 = _mm256_add_pd(a1, widen_hi(e));
  }
  if (j < n) {  // tail through a padded copy: exp(0) in the unused lanes, then zeroed
    alignas(32) float v[8], out[8];
    for (int t = 0; t < 8; ++t) v[t] = j + t < n ? row[j + t] : m;
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32(int(n - j)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    const __m256 e = _mm256_and_ps(keep, exp_nonpositive(_mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(v), vm), vt)));
    _mm256_store_ps(out, e);
    if (store)
      for (int64_t t = 0; j + t < n; ++t) store[j + t] = out[t];
    a0 = _mm256_add_pd(a0, widen_lo(e));
    a1 = _mm256_add_pd(a1, widen_hi(e));
  }
  return hsum(_mm256_add_pd(a0, a1));
}

double kl_dot(const float* row, const float* e, const float* log_d, int64_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m), zero = _mm256_setzero_ps();
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 ev = _mm256_loadu_ps(e + j);
    const __m256 live = _mm256_cmp_ps(ev, zero, _CMP_GT_OQ);  // 0 * -inf stays out
    const __m256 t = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm), _mm256_loadu_ps(log_d + j));
    const __m256 prod = _mm256_and_ps(live, _mm256_mul_ps(ev, t));
    a0 = _mm256_add_pd(a0, widen_lo(prod));
    a1 = _mm256_add_pd(a1, widen_hi(prod));
  }
  double acc = hsum(_mm256_add_pd(a0, a1));
  for (; j < n; ++j)
    if (e[j] > 0.0f) acc += double(e[j] * ((row[j] - m) - log_d[j]));
  return acc;
}

// GEN terms of 8 values (lanes outside `live` give 0).
inline __m256 gen_terms(__m256 x, __m256 live, __m256 vm, __m256 vls, __m256 vg, __m256 vfloor, bool skip_max) {
  live = _mm256_and_ps(live, _mm256_cmp_ps(x, vfloor, _CMP_GT_OQ));
  if (skip_max) live = _mm256_and_ps(live, _mm256_cmp_ps(x, vm, _CMP_NEQ_UQ));
  const __m256 log_p = _mm256_sub_ps(_mm256_sub_ps(x, vm), vls);  // <= 0
  const __m256 p = exp_nonpositive(log_p);
  return _mm256_and_ps(live, exp_nonpositive(_mm256_mul_ps(vg, _mm256_add_ps(log_p, log_one_minus(p)))));
}

double gen_sum(const float* v, int64_t n, float m, double log_s, double gamma, bool skip_max, float floor) {
  const __m256 vm = _mm256_set1_ps(m), vls = _mm256_set1_ps(float(log_s)), vg = _mm256_set1_ps(float(gamma));
  const __m256 vfloor = _mm256_set1_ps(floor);
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 t = gen_terms(_mm256_loadu_ps(v + j), all, vm, vls, vg, vfloor, skip_max);
    a0 = _mm256_add_pd(a0, widen_lo(t));
    a1 = _mm256_add_pd(a1, widen_hi(t));
  }
  if (j < n) {  // tail through a padded copy: unused lanes hold m (z = 0) and are dropped
    alignas(32) float x[8];
    for (int64_t t = 0; t < 8; ++t) x[t] = j + t < n ? v[j + t] : m;
    const __m256 live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(int(n - j)),
                                                               _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    const __m256 t = gen_terms(_mm256_load_ps(x), live, vm, vls, vg, vfloor, skip_max);
    a0 = _mm256_add_pd(a0, widen_lo(t));
    a1 = _mm256_add_pd(a1, widen_hi(t));
  }
  return hsum(_mm256_add_pd(a0, a1));
}

}  // namespace

LogitRowOps<float> logit_row_ops_avx2() { return {row_max, find, exp_sum, kl_dot, gen_sum}; }

}  // namespace gencore::ood

#include "gencore/isa_end.h"
