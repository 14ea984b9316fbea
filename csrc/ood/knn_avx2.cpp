// AVX2 key scan: 32 keys per step are compared with the heap threshold and only
// the (rare, after warm-up) lanes that beat it touch the heap.
#include <immintrin.h>

#include "ood/knn.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

namespace gencore::ood {

void offer_tile_avx2(const float* tile, const float* scale, const float* bias, int64_t n,
                     int64_t base, TopKHeap<float>& heap) {
  int64_t j = 0;
  for (; j < n && !heap_full(heap); ++j) heap_offer(heap, tile[j] * scale[j] + bias[j], base + j);
  __m256 threshold = _mm256_set1_ps(heap_threshold(heap));
  alignas(32) float keys[32];
  for (; j + 32 <= n; j += 32) {
    __m256 k0 = _mm256_fmadd_ps(_mm256_loadu_ps(tile + j), _mm256_loadu_ps(scale + j),
                                _mm256_loadu_ps(bias + j));
    __m256 k1 = _mm256_fmadd_ps(_mm256_loadu_ps(tile + j + 8), _mm256_loadu_ps(scale + j + 8),
                                _mm256_loadu_ps(bias + j + 8));
    __m256 k2 = _mm256_fmadd_ps(_mm256_loadu_ps(tile + j + 16), _mm256_loadu_ps(scale + j + 16),
                                _mm256_loadu_ps(bias + j + 16));
    __m256 k3 = _mm256_fmadd_ps(_mm256_loadu_ps(tile + j + 24), _mm256_loadu_ps(scale + j + 24),
                                _mm256_loadu_ps(bias + j + 24));
    uint32_t mask =
        uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(k0, threshold, _CMP_LT_OQ))) |
        uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(k1, threshold, _CMP_LT_OQ))) << 8 |
        uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(k2, threshold, _CMP_LT_OQ))) << 16 |
        uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(k3, threshold, _CMP_LT_OQ))) << 24;
    if (!mask) continue;
    _mm256_store_ps(keys, k0);
    _mm256_store_ps(keys + 8, k1);
    _mm256_store_ps(keys + 16, k2);
    _mm256_store_ps(keys + 24, k3);
    float t = heap_threshold(heap);
    while (mask) {
      int lane = __builtin_ctz(mask);
      mask &= mask - 1;
      if (keys[lane] < t) {  // the threshold tightens as lanes enter
        heap_replace_top(heap, keys[lane], base + j + lane);
        t = heap_threshold(heap);
      }
    }
    threshold = _mm256_set1_ps(t);
  }
  offer_tile_scalar(tile + j, scale + j, bias + j, n - j, base + j, heap);
}

}  // namespace gencore::ood

#include "gencore/isa_end.h"
