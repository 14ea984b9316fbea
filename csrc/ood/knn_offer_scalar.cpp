// Portable key scan; also the float64 path and the tails of the SIMD scans.
#include "ood/knn.h"

namespace gencore::ood {

template <typename T>
void offer_tile_scalar(const T* tile, const T* scale, const T* bias, int64_t n, int64_t base,
                       TopKHeap<T>& heap) {
  int64_t j = 0;
  for (; j < n && !heap_full(heap); ++j) heap_offer(heap, tile[j] * scale[j] + bias[j], base + j);
  T threshold = heap_threshold(heap);
  for (; j < n; ++j) {
    T key = tile[j] * scale[j] + bias[j];
    if (key < threshold) {
      heap_replace_top(heap, key, base + j);
      threshold = heap_threshold(heap);
    }
  }
}

template void offer_tile_scalar<float>(const float*, const float*, const float*, int64_t, int64_t,
                                       TopKHeap<float>&);
template void offer_tile_scalar<double>(const double*, const double*, const double*, int64_t,
                                        int64_t, TopKHeap<double>&);

}  // namespace gencore::ood
