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

// Largest k the kernels support (the per-query sort lives in shared memory);
// the Python layer runs the reference above it.
constexpr int64_t kKnnMaxK = 4096;

// Bytes of the workspace knn() needs: one keys tile of slab x chunk floats,
//   slab  = min(Q, 4096)
//   chunk = min(round_up(N, 128), 2^18, floor(2^28 / (4 * slab) / 128) * 128)
//   bytes = 4 * slab * chunk                      (0 for Q == 0; <= 256 MiB)
// independent of D and k (part of the signature so a later plan may use them).
// Throws std::invalid_argument for Q < 0 or N < 0.
int64_t knn_workspace_bytes(int64_t Q, int64_t N, int64_t D, int64_t k);

// Ties go to the lower bank index; a NaN (from overflow) ranks after every
// number, +inf included. `values` and `indices` must be contiguous [Q, k]: they
// double as the running top-k between bank chunks. `workspace` is caller
// memory of at least knn_workspace_bytes(Q, N, D, k) bytes, 16-byte aligned and
// ordered with `stream` (a torch tensor allocated while `stream` is current is).
// Everything is queued on `stream` on `device`; the host is never synchronised
// and nothing is allocated. Throws std::invalid_argument on bad sizes or a too
// small workspace, std::runtime_error on CUDA errors.
void knn(const float* queries, const float* bank, int64_t Q, int64_t N, int64_t D, int64_t k,
         KnnMetric metric, float* values, int64_t* indices, void* workspace,
         int64_t workspace_bytes, cudaStream_t stream, int device);

}  // namespace gencore::gpu
