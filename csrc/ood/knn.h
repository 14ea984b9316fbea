// Exact k-nearest-neighbour search, CPU.
//   queries [Q, D], bank [N, D] -> values [Q, k], indices [Q, k] (best first)
#pragma once
#include <cstdint>

#include "gencore/view.h"
#include "gencore/topk_heap.h"

namespace gencore::ood {

enum class KnnMetric : int {
  sqeuclidean = 0,  // ||x - y||^2, ascending
  inner_product = 1,  // x . y, descending
  cosine = 2,  // x . y / (max(||x||, 1e-12) max(||y||, 1e-12)), descending (F.normalize's eps)
};

// Which path the calling thread's last knn() call took ("blas" or
// "bf16-screen"); lets tests prove each path is exercised.
const char* last_knn_path();

template <typename T>
void knn(MatrixView<const T> queries, MatrixView<const T> bank, int64_t k, KnnMetric metric,
         T* values, int64_t* indices, int num_threads);

// Offers key_j = tile[j] * scale[j] + bias[j] for j < n (index base + j) to the
// heap, in increasing j. One implementation per SIMD level; float64 is scalar.
template <typename T>
void offer_tile_scalar(const T* tile, const T* scale, const T* bias, int64_t n, int64_t base,
                       TopKHeap<T>& heap);
void offer_tile_avx2(const float* tile, const float* scale, const float* bias, int64_t n,
                     int64_t base, TopKHeap<float>& heap);
void offer_tile_avx512(const float* tile, const float* scale, const float* bias, int64_t n,
                       int64_t base, TopKHeap<float>& heap);

}  // namespace gencore::ood
