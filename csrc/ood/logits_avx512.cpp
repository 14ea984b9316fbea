// AVX-512 row primitives of the logit scores (float32). exp is the cost of
// every softmax-based score, so it is a vector polynomial (gencore/vec_avx512.h:
// Cephes' expf, ~2 ulp). Arguments are always (l - max) / T <= 0; below
// ln(FLT_MIN) the result is flushed to exactly 0.
#include <immintrin.h>

#include "ood/logits.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"
#include "gencore/vec_avx512.h"  // exp_nonpositive, log_reduced, widen_lo/hi, tail_mask

namespace gencore::ood {
namespace {

// log(1 - p) for p in [0, 1/2] with Cephes' logf polynomial on f in [-0.293, 0.415]:
//   p < 1 - sqrt(1/2):  log1p(f), f = -p          (exact f: no rounding of 1 - p)
//   otherwise:          log1p(f) - ln2, f = 1 - 2p
inline __m512 log_one_minus(__m512 p) {
  const __mmask16 big = _mm512_cmp_ps_mask(p, _mm512_set1_ps(0.29289321881f), _CMP_GE_OQ);
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 f = _mm512_mask_blend_ps(big, _mm512_sub_ps(_mm512_setzero_ps(), p),
                                        _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), p, one));
  const __m512 e = _mm512_maskz_mov_ps(big, _mm512_set1_ps(-1.0f));
  return log_reduced(f, e);
}

float row_max(const float* row, int64_t n, bool* finite) {
  __m512 m = _mm512_set1_ps(row[0]);
  __m512 poison = _mm512_setzero_ps();  // x * 0 is NaN exactly for NaN / inf
  const __m512 zero = _mm512_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 v = _mm512_loadu_ps(row + j);
    m = _mm512_max_ps(m, v);
    poison = _mm512_fmadd_ps(v, zero, poison);
  }
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    const __m512 v = _mm512_maskz_loadu_ps(k, row + j);
    m = _mm512_mask_max_ps(m, k, m, v);
    poison = _mm512_fmadd_ps(v, zero, poison);
  }
  *finite = _mm512_cmp_ps_mask(poison, poison, _CMP_UNORD_Q) == 0;
  return _mm512_reduce_max_ps(m);
}

int64_t find(const float* row, int64_t n, float value) {
  const __m512 v = _mm512_set1_ps(value);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const unsigned hit = _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, row + j), v, _CMP_EQ_OQ);
    if (hit) return j + __builtin_ctz(hit);
  }
  return n;
}

double exp_sum(const float* row, int64_t n, float m, float inv_t, float* store) {
  const __m512 vm = _mm512_set1_ps(m), vt = _mm512_set1_ps(inv_t);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(row + j), vm), vt));
    if (store) _mm512_storeu_ps(store + j, e);
    a0 = _mm512_add_pd(a0, widen_lo(e));
    a1 = _mm512_add_pd(a1, widen_hi(e));
  }
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    const __m512 v = _mm512_mask_loadu_ps(vm, k, row + j);  // masked lanes: exp(0), then zeroed
    const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(_mm512_mul_ps(_mm512_sub_ps(v, vm), vt)));
    if (store) _mm512_mask_storeu_ps(store + j, k, e);
    a0 = _mm512_add_pd(a0, widen_lo(e));
    a1 = _mm512_add_pd(a1, widen_hi(e));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

double kl_dot(const float* row, const float* e, const float* log_d, int64_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m), zero = _mm512_setzero_ps();
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const __m512 ev = _mm512_maskz_loadu_ps(k, e + j);
    const __mmask16 live = _mm512_mask_cmp_ps_mask(k, ev, zero, _CMP_GT_OQ);  // 0 * -inf stays out
    const __m512 z = _mm512_sub_ps(_mm512_maskz_loadu_ps(live, row + j), vm);
    const __m512 t = _mm512_sub_ps(z, _mm512_maskz_loadu_ps(live, log_d + j));
    const __m512 prod = _mm512_maskz_mul_ps(live, ev, t);
    a0 = _mm512_add_pd(a0, widen_lo(prod));
    a1 = _mm512_add_pd(a1, widen_hi(prod));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

double gen_sum(const float* v, int64_t n, float m, double log_s, double gamma, bool skip_max, float floor) {
  const __m512 vm = _mm512_set1_ps(m), vls = _mm512_set1_ps(float(log_s)), vg = _mm512_set1_ps(float(gamma));
  const __m512 vfloor = _mm512_set1_ps(floor);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (int64_t j = 0; j < n; j += 16) {
    __mmask16 live = n - j >= 16 ? __mmask16(0xffff) : tail_mask(n - j);
    const __m512 x = _mm512_mask_loadu_ps(vm, live, v + j);  // unused lanes: z = 0, then dropped
    live &= _mm512_cmp_ps_mask(x, vfloor, _CMP_GT_OQ);
    if (skip_max) live &= _mm512_cmp_ps_mask(x, vm, _CMP_NEQ_UQ);
    const __m512 log_p = _mm512_sub_ps(_mm512_sub_ps(x, vm), vls);  // <= 0
    const __m512 p = exp_nonpositive(log_p);
    const __m512 t = exp_nonpositive(_mm512_mul_ps(vg, _mm512_add_ps(log_p, log_one_minus(p))));
    const __m512 kept = _mm512_maskz_mov_ps(live, t);
    a0 = _mm512_add_pd(a0, widen_lo(kept));
    a1 = _mm512_add_pd(a1, widen_hi(kept));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

}  // namespace

LogitRowOps<float> logit_row_ops_avx512() { return {row_max, find, exp_sum, kl_dot, gen_sum}; }

}  // namespace gencore::ood

#include "gencore/isa_end.h"
