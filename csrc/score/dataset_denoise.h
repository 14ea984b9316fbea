// Exact denoiser of a finite data set (the posterior mean under the
// Gaussian-smoothed empirical distribution), CPU:
//   x [B, d], data [N, d], sigma [B], alpha [B], log_weights [N]?
//     -> denoised [B, d], log_z [B]
//   l_bi  = log w_i - ||x_b - alpha_b y_i||^2 / (2 sigma_b^2)
//   D_b   = sum_i softmax_i(l_b.) y_i,   log_z_b = logsumexp_i l_bi
// (see python/gencore/score/reference.py::dataset_denoise, the specification).
// The same stream with another cost (CostMode) is gencore.ot's softmin for p = 1.
#pragma once
#include <cstdint>
#include <type_traits>

#include "gencore/view.h"

namespace gencore::score {

// The cost inside the logits, r_bi = ||x_b - alpha_b y_i||:
//   squared            l = log w - r^2 / (2 sigma^2)     (the denoiser; Sinkhorn p = 2 with sigma^2 = eps)
//   euclidean          l = log w - r / sigma             (Sinkhorn p = 1 with sigma = eps)
//   euclidean_inverse  l = log w - r / sigma - log(r / sigma), -inf where r = 0: the euclidean
//                      softmax weighted by sigma / r, whose mean and total give the gradient
//                      sum_i softmax_i (x - y_i) / r_i of the euclidean softmin (0 from y_i = x).
// r comes from the GEMM's expansion, r^2 = ||x'||^2 - 2 alpha x'.y' + alpha^2 ||y'||^2, whose
// rounding is a few ulp of ||x'||^2 + alpha^2 ||y'||^2: a coincident pair would get a residue
// r ~ sqrt(ulp) (||x'|| + ||y'||) instead of 0, noisy under any perturbation. So r^2 at most
// kCoincidentUlps ulp of that sum counts as r = 0 (coincident): a change of the cost below
// the expansion's own rounding, and an exact zero (zero subgradient) for equal points.
enum class CostMode : int { squared = 0, euclidean = 1, euclidean_inverse = 2 };
constexpr int kCoincidentUlps = 16;

// log_weights may be null (all weights 1) and may hold -inf (weight 0).
// denoised is C-contiguous [B, d], or null: log_z only, without the second
// GEMM (the softmin of a Sinkhorn iteration). Throws std::invalid_argument naming "x" or
// "data" and the first row holding NaN or inf.
template <typename T>
void dataset_denoise(MatrixView<const T> x, MatrixView<const T> data, const T* sigma, const T* alpha,
                     const T* log_weights, T* denoised, T* log_z, int num_threads,
                     CostMode cost = CostMode::squared);

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

// One query's coefficients of its tile logits (dataset_denoise.cpp's query_terms).
// With s = x'.y' from the GEMM and q = ||y'||^2:
//   squared:    l = s * scale - shift * q                          (scale = alpha / sigma^2,
//               shift = alpha^2 / (2 sigma^2); -||x'||^2 / (2 sigma^2) is added to log_z at the end)
//   euclidean*: u^2 = offset + shift * q - scale * s = r^2 / sigma^2  (scale = 2 alpha / sigma^2,
//               shift = alpha^2 / sigma^2, offset = ||x'||^2 / sigma^2), l = -u (- log u), and
//               u = 0 where u^2 <= kCoincidentUlps ulp (offset + shift * q)
template <typename T>
struct RowTerms {
  T scale, shift, offset;
  CostMode cost;
};

// The epilogue of one tile row (one query against tile_rows data rows), per
// SIMD level. float32 has one table per level, each in its own translation
// unit; the portable table (dataset_denoise.cpp) serves float64 and the scalar level.
template <typename T>
struct DenoiseRowOps {
  // row[j] = the logit of RowTerms from s = row[j] and q = sq_norms[j] (+ log_w[j] when
  // log_w is not null) for j < n, in place; returns the maximum (-inf when every entry is).
  T (*logits)(T* row, int64_t n, RowTerms<T> terms, const T* sq_norms, const T* log_w);
  // row[j] = exp(row[j] - max) in place for row[j] <= max (-inf gives 0);
  // returns the sum, accumulated in double.
  double (*exp_sum)(T* row, int64_t n, T max);
  // row[j] = sum_k x[k] tile_t[k * ld + j] for j < n, k < d (in k order; SIMD levels
  // fuse each multiply-add): the scores of one query for d <= kFusedDotsMaxDim, where
  // a GEMM with so small an inner dimension costs more than the whole epilogue.
  void (*dot_row)(const T* x, int64_t d, const T* tile_t, int64_t ld, int64_t n, T* row);
};

// Up to this many dimensions the scores come from dot_row, not a GEMM (point
// clouds: Sinkhorn in 2-D / 3-D). At d = 3, 5k x 5k, 2 threads, AVX2: the
// GEMM alone took ~8 ms of a 16 ms softmin.
constexpr int64_t kFusedDotsMaxDim = 8;

// fn(weighted, cost) with both as compile-time constants (std::bool_constant,
// std::integral_constant<CostMode, ...>): each ISA's tile loop is instantiated
// once per form and chosen once per row, outside the loop.
template <typename Fn>
decltype(auto) with_logit_form(bool weighted, CostMode cost, Fn&& fn) {
  auto by_cost = [&](auto w) -> decltype(auto) {
    switch (cost) {
      case CostMode::euclidean:
        return fn(w, std::integral_constant<CostMode, CostMode::euclidean>{});
      case CostMode::euclidean_inverse:
        return fn(w, std::integral_constant<CostMode, CostMode::euclidean_inverse>{});
      default:
        return fn(w, std::integral_constant<CostMode, CostMode::squared>{});
    }
  };
  return weighted ? by_cost(std::true_type{}) : by_cost(std::false_type{});
}

DenoiseRowOps<float> denoise_row_ops_avx2();
DenoiseRowOps<float> denoise_row_ops_avx512();

}  // namespace gencore::score
