// Exact k-nearest-neighbour search on the GPU, fp32.
//   queries [Q, D], bank [N, D] (row-major, contiguous, device memory)
//   -> values [Q, k] float32, indices [Q, k] int64, best first.
// Same contract as csrc/ood/knn.h for the two metrics below; cosine is done by
// the Python layer as inner product on unit rows.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

enum class KnnMetric : int {
  sqeuclidean = 0,    // ||x||^2 + ||y||^2 - 2 x.y clamped at 0, ascending
  inner_product = 1,  // x.y, descending
};

// Largest k the kernels support (the per-query sort lives in shared memory).
constexpr int64_t kKnnMaxK = 4096;

// Ties go to the lower bank index; a NaN (from overflow) ranks after every
// number, +inf included. `values` and `indices` must be contiguous [Q, k]: they
// double as the running top-k between bank chunks. Everything is queued on
// `stream` on `device`; the host is never synchronised. Throws
// std::invalid_argument on bad sizes, std::runtime_error on CUDA errors.
// Peak extra device memory: min(Q, 4096) * chunk * 4 bytes <= 256 MiB
// (see knn.cu for the chunk size).
void knn(const float* queries, const float* bank, int64_t Q, int64_t N, int64_t D, int64_t k,
         KnnMetric metric, float* values, int64_t* indices, cudaStream_t stream, int device);

}  // namespace gencore::gpu
