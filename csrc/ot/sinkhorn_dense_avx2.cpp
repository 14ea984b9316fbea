// AVX2 + FMA row primitives of the dense Sinkhorn loop (float32, 8 lanes); the
// exponential is gencore/vec_avx2.h's (Cephes expf, ~2 ulp, exactly 0 below
// ln(FLT_MIN) and for -inf). Tails go through masked loads and stores.
#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "ot/sinkhorn_dense.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"
#include "gencore/vec_avx2.h"  // exp_nonpositive, widen_lo/hi, hsum, hmax, tail_lanes

namespace gencore::ot {
namespace {

// v = h - c * inv_reg, the one form every pass uses.
inline __m256 shifted(__m256 c, __m256 h, __m256 inv_reg) { return _mm256_fnmadd_ps(c, inv_reg, h); }

float shifted_max(const float* c, const float* h, float inv_reg, int64_t n) {
  const __m256 vr = _mm256_set1_ps(inv_reg);
  __m256 mx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) mx = _mm256_max_ps(mx, shifted(_mm256_loadu_ps(c + j), _mm256_loadu_ps(h + j), vr));
  if (j < n) {
    const __m256i lanes = tail_lanes(n - j);
    const __m256 v = shifted(_mm256_maskload_ps(c + j, lanes), _mm256_maskload_ps(h + j, lanes), vr);
    mx = _mm256_max_ps(mx, _mm256_blendv_ps(mx, v, _mm256_castsi256_ps(lanes)));
  }
  return hmax(mx);
}

double shifted_exp_sum(const float* c, const float* h, float inv_reg, float shift, int64_t n) {
  const __m256 vr = _mm256_set1_ps(inv_reg), vs = _mm256_set1_ps(shift);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_nonpositive(
        _mm256_sub_ps(shifted(_mm256_loadu_ps(c + j), _mm256_loadu_ps(h + j), vr), vs));
    a0 = _mm256_add_pd(a0, widen_lo(e));
    a1 = _mm256_add_pd(a1, widen_hi(e));
  }
  if (j < n) {
    const __m256i lanes = tail_lanes(n - j);
    const __m256 v = shifted(_mm256_maskload_ps(c + j, lanes), _mm256_maskload_ps(h + j, lanes), vr);
    const __m256 e = _mm256_and_ps(_mm256_castsi256_ps(lanes), exp_nonpositive(_mm256_sub_ps(v, vs)));
    a0 = _mm256_add_pd(a0, widen_lo(e));
    a1 = _mm256_add_pd(a1, widen_hi(e));
  }
  return hsum(_mm256_add_pd(a0, a1));
}

// Running column log-sum-exps; a vector rescales only when one of its lanes
// sets a new max (rare once the max is seeded from the previous iteration).
inline void accumulate(__m256 v, float* col_max, float* col_sum, __m256i lanes, bool tail) {
  const auto load = [&](const float* p) { return tail ? _mm256_maskload_ps(p, lanes) : _mm256_loadu_ps(p); };
  __m256 mx = load(col_max), sum = load(col_sum);
  if (_mm256_movemask_ps(_mm256_cmp_ps(v, mx, _CMP_GT_OQ))) {
    const __m256 top = _mm256_max_ps(mx, v);
    sum = _mm256_mul_ps(sum, exp_nonpositive(_mm256_sub_ps(mx, top)));   // -inf - top: exactly 0
    mx = top;
    if (tail) _mm256_maskstore_ps(col_max, lanes, mx);
    else _mm256_storeu_ps(col_max, mx);
  }
  sum = _mm256_add_ps(sum, exp_nonpositive(_mm256_sub_ps(v, mx)));
  if (tail) _mm256_maskstore_ps(col_sum, lanes, sum);
  else _mm256_storeu_ps(col_sum, sum);
}

void column_accumulate(const float* c, float h_i, float inv_reg, float* col_max, float* col_sum, int64_t n) {
  const __m256 vr = _mm256_set1_ps(inv_reg), vh = _mm256_set1_ps(h_i);
  const __m256i all = _mm256_set1_epi32(-1);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) accumulate(shifted(_mm256_loadu_ps(c + j), vh, vr), col_max + j, col_sum + j, all, false);
  if (j < n) {
    const __m256i lanes = tail_lanes(n - j);
    // unused lanes: v = -inf never sets a max (and is not stored)
    const __m256 v = _mm256_blendv_ps(_mm256_set1_ps(-std::numeric_limits<float>::infinity()),
                                      shifted(_mm256_maskload_ps(c + j, lanes), vh, vr), _mm256_castsi256_ps(lanes));
    accumulate(v, col_max + j, col_sum + j, lanes, true);
  }
}

}  // namespace

SinkhornRowOps<float> sinkhorn_row_ops_avx2() { return {shifted_max, shifted_exp_sum, column_accumulate}; }

}  // namespace gencore::ot
#include "gencore/isa_end.h"
