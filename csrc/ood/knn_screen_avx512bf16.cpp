// The screen's filter and exact refinement for one query row of a tile.
#include <immintrin.h>

#include "ood/knn_screen.h"

#define GENCORE_ISA avx512bf16
#include "gencore/isa_begin.h"

namespace gencore::ood {
namespace {

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

}  // namespace

void screen_row_avx512bf16(const float* approx, int64_t tn, int64_t base, const ScreenRowTerms& t,
                           const float* query, float query_norm, MatrixView<const float> bank,
                           TopKHeap<float>& bounds, TopKHeap<float>& exact) {
  const __m512 qnorm = _mm512_set1_ps(query_norm);
  __m512 threshold = _mm512_set1_ps(heap_threshold(bounds));
  alignas(64) float keys[16], margins[16];
  for (int64_t j = 0; j < tn; j += 16) {
    const __mmask16 live = tn - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (tn - j)) - 1);
    const int64_t g = base + j;
    const __m512 key = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(live, approx + j),
                                       _mm512_maskz_loadu_ps(live, t.key_scale + g),
                                       _mm512_maskz_loadu_ps(live, t.key_bias + g));
    const __m512 margin = _mm512_fmadd_ps(qnorm, _mm512_maskz_loadu_ps(live, t.margin_weight + g),
                                          _mm512_maskz_loadu_ps(live, t.margin_slack + g));
    __mmask16 pass =
        _mm512_mask_cmp_ps_mask(live, _mm512_sub_ps(key, margin), threshold, _CMP_LE_OQ);
    if (!pass) continue;
    _mm512_store_ps(keys, key);
    _mm512_store_ps(margins, margin);
    while (pass) {
      const int lane = __builtin_ctz(pass);
      pass &= pass - 1;
      const int64_t id = g + lane;
      if (keys[lane] - margins[lane] > heap_threshold(bounds)) continue;  // threshold tightened
      heap_offer(bounds, keys[lane] + margins[lane], id);
      const float exact_key = dot(query, bank.row(id), bank.cols) * t.key_scale[id] + t.key_bias[id];
      heap_offer(exact, exact_key, id);
    }
    threshold = _mm512_set1_ps(heap_threshold(bounds));
  }
}

}  // namespace gencore::ood

#include "gencore/isa_end.h"
