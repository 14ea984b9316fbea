// AVX-512 row primitives of the dense Sinkhorn loop (float32, 16 lanes); the
// exponential is gencore/vec_avx512.h's (Cephes expf, ~2 ulp, exactly 0 below
// ln(FLT_MIN) and for -inf). Tails go through masked loads and stores.
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "ot/sinkhorn_dense.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"
#include "gencore/vec_avx512.h"  // exp_nonpositive, widen_lo/hi, tail_mask

namespace gencore::ot {
namespace {

// v = h - c * inv_reg, the one form every pass uses.
inline __m512 shifted(__m512 c, __m512 h, __m512 inv_reg) { return _mm512_fnmadd_ps(c, inv_reg, h); }

float shifted_max(const float* c, const float* h, float inv_reg, int64_t n) {
  const __m512 vr = _mm512_set1_ps(inv_reg);
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) mx = _mm512_max_ps(mx, shifted(_mm512_loadu_ps(c + j), _mm512_loadu_ps(h + j), vr));
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    mx = _mm512_mask_max_ps(mx, k, mx, shifted(_mm512_maskz_loadu_ps(k, c + j), _mm512_maskz_loadu_ps(k, h + j), vr));
  }
  return _mm512_reduce_max_ps(mx);
}

double shifted_exp_sum(const float* c, const float* h, float inv_reg, float shift, int64_t n) {
  const __m512 vr = _mm512_set1_ps(inv_reg), vs = _mm512_set1_ps(shift);
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(shifted(_mm512_loadu_ps(c + j), _mm512_loadu_ps(h + j), vr), vs));
    a0 = _mm512_add_pd(a0, widen_lo(e));
    a1 = _mm512_add_pd(a1, widen_hi(e));
  }
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    const __m512 v = shifted(_mm512_maskz_loadu_ps(k, c + j), _mm512_maskz_loadu_ps(k, h + j), vr);
    const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpositive(_mm512_sub_ps(v, vs)));
    a0 = _mm512_add_pd(a0, widen_lo(e));
    a1 = _mm512_add_pd(a1, widen_hi(e));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

// Running column log-sum-exps; a vector rescales only when one of its lanes
// sets a new max (rare once the max is seeded from the previous iteration).
inline void accumulate(__m512 v, float* col_max, float* col_sum, __mmask16 k) {
  __m512 mx = _mm512_maskz_loadu_ps(k, col_max), sum = _mm512_maskz_loadu_ps(k, col_sum);
  const __mmask16 up = _mm512_mask_cmp_ps_mask(k, v, mx, _CMP_GT_OQ);
  if (up) {
    const __m512 top = _mm512_mask_max_ps(mx, up, mx, v);
    sum = _mm512_mul_ps(sum, exp_nonpositive(_mm512_sub_ps(mx, top)));   // -inf - top: exactly 0
    mx = top;
    _mm512_mask_storeu_ps(col_max, k, mx);
  }
  _mm512_mask_storeu_ps(col_sum, k, _mm512_add_ps(sum, exp_nonpositive(_mm512_sub_ps(v, mx))));
}

void column_accumulate(const float* c, float h_i, float inv_reg, float* col_max, float* col_sum, int64_t n) {
  const __m512 vr = _mm512_set1_ps(inv_reg), vh = _mm512_set1_ps(h_i);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) accumulate(shifted(_mm512_loadu_ps(c + j), vh, vr), col_max + j, col_sum + j, 0xffff);
  if (j < n) {
    const __mmask16 k = tail_mask(n - j);
    accumulate(shifted(_mm512_maskz_loadu_ps(k, c + j), vh, vr), col_max + j, col_sum + j, k);
  }
}

}  // namespace

SinkhornRowOps<float> sinkhorn_row_ops_avx512() { return {shifted_max, shifted_exp_sum, column_accumulate}; }

}  // namespace gencore::ot
#include "gencore/isa_end.h"
