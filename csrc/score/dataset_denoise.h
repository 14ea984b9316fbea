// Exact denoiser of a finite data set (the posterior mean under the
// Gaussian-smoothed empirical distribution), CPU:
//   x [B, d], data [N, d], sigma [B], alpha [B], log_weights [N]?
//     -> denoised [B, d], log_z [B]
//   l_bi  = log w_i - ||x_b - alpha_b y_i||^2 / (2 sigma_b^2)
//   D_b   = sum_i softmax_i(l_b.) y_i,   log_z_b = logsumexp_i l_bi
// (see python/gencore/score/reference.py::dataset_denoise, the specification).
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::score {

// log_weights may be null (all weights 1) and may hold -inf (weight 0).
// denoised is C-contiguous [B, d], or null: log_z only, without the second
// GEMM (the softmin of a Sinkhorn iteration). Throws std::invalid_argument naming "x" or
// "data" and the first row holding NaN or inf.
template <typename T>
void dataset_denoise(MatrixView<const T> x, MatrixView<const T> data, const T* sigma, const T* alpha,
                     const T* log_weights, T* denoised, T* log_z, int num_threads);

// How a call of this shape is split over threads (what tests and benchmarks
// read to reach every path): queries in blocks of query_block rows, the data
// in data_chunks contiguous chunks (each merged as a log-sum-exp at the end),
// streamed in tiles of tile_rows rows.
struct DenoisePlan {
  int64_t query_block = 0;
  int64_t query_blocks = 0;
  int64_t data_chunks = 0;
  int64_t chunk_rows = 0;  // data rows per chunk, a multiple of tile_rows unless one chunk
  int64_t tile_rows = 0;
  int threads = 1;
  bool data_split() const { return data_chunks > 1; }
};
DenoisePlan dataset_denoise_plan(int64_t B, int64_t N, int64_t d, int num_threads);

// The epilogue of one tile row (one query against tile_rows data rows), per
// SIMD level. float32 has one table per level, each in its own translation
// unit; the portable table (dataset_denoise.cpp) serves float64 and the scalar level.
template <typename T>
struct DenoiseRowOps {
  // row[j] = row[j] * scale - shift * sq_norms[j] (+ log_w[j] when log_w is not
  // null) for j < n, in place; returns the maximum (-inf when every entry is).
  T (*logits)(T* row, int64_t n, T scale, T shift, const T* sq_norms, const T* log_w);
  // row[j] = exp(row[j] - max) in place for row[j] <= max (-inf gives 0);
  // returns the sum, accumulated in double.
  double (*exp_sum)(T* row, int64_t n, T max);
};

DenoiseRowOps<float> denoise_row_ops_avx2();
DenoiseRowOps<float> denoise_row_ops_avx512();

}  // namespace gencore::score
