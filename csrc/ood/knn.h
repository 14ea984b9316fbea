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

// Which path the calling thread's last knn() call took ("blas", "fused" or
// "bf16-screen"); lets tests prove each path is exercised.
const char* last_knn_path();

// The most queries for which knn() takes the fused path at the SIMD level in
// use (float32, or float64 when `float64`); 0 when it never does.
int64_t knn_fused_max_queries(bool float64);

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

// Dot tile of the fused small-query path (few queries: the tile of one bank
// chunk stays in L1 between these dot products and the key scan):
//   queries x [nq, D] (row stride ldx), bank rows y [n, D] (row stride ldy)
//   -> tile [nq, n] (row stride ld) = alpha * x . y^T,
// accumulated in float32 (as the BLAS path's sgemm does, with FMAs where the ISA
// has them), so both paths agree within float32 rounding and exactly on integer data.
// The bank is read once per call; the queries stay in cache. float32 only:
// for float64 a portable kernel does not beat dgemm.
void knn_dots_portable(const float* x, int64_t ldx, int64_t nq, const float* y, int64_t ldy, int64_t n,
                       int64_t D, float alpha, float* tile, int64_t ld);
void knn_dots_avx2(const float* x, int64_t ldx, int64_t nq, const float* y, int64_t ldy, int64_t n, int64_t D,
                   float alpha, float* tile, int64_t ld);
void knn_dots_avx512(const float* x, int64_t ldx, int64_t nq, const float* y, int64_t ldy, int64_t n,
                     int64_t D, float alpha, float* tile, int64_t ld);

}  // namespace gencore::ood
