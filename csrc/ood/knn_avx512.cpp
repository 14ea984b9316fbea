// AVX-512 key scan: 64 keys per step are compared with the heap threshold and
// only the (rare, after warm-up) lanes that beat it touch the heap.
#include <immintrin.h>

#include "ood/knn.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"

namespace gencore::ood {

void offer_tile_avx512(const float* tile, const float* scale, const float* bias, int64_t n,
                       int64_t base, TopKHeap<float>& heap) {
  int64_t j = 0;
  for (; j < n && !heap_full(heap); ++j) heap_offer(heap, tile[j] * scale[j] + bias[j], base + j);
  __m512 threshold = _mm512_set1_ps(heap_threshold(heap));
  alignas(64) float keys[64];
  for (; j + 64 <= n; j += 64) {
    __m512 k[4];
    uint64_t mask = 0;
    for (int v = 0; v < 4; ++v) {
      k[v] = _mm512_fmadd_ps(_mm512_loadu_ps(tile + j + 16 * v), _mm512_loadu_ps(scale + j + 16 * v),
                             _mm512_loadu_ps(bias + j + 16 * v));
      mask |= uint64_t(_mm512_cmp_ps_mask(k[v], threshold, _CMP_LT_OQ)) << (16 * v);
    }
    if (!mask) continue;
    for (int v = 0; v < 4; ++v) _mm512_store_ps(keys + 16 * v, k[v]);
    float t = heap_threshold(heap);
    while (mask) {
      int lane = __builtin_ctzll(mask);
      mask &= mask - 1;
      if (keys[lane] < t) {  // the threshold tightens as lanes enter
        heap_replace_top(heap, keys[lane], base + j + lane);
        t = heap_threshold(heap);
      }
    }
    threshold = _mm512_set1_ps(t);
  }
  offer_tile_scalar(tile + j, scale + j, bias + j, n - j, base + j, heap);
}

}  // namespace gencore::ood

#include "gencore/isa_end.h"
