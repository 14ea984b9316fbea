// Data-set denoiser, CPU driver: flash-attention style, an online log-sum-exp
// over tiles of the data, so nothing of size B x N exists.
//
// Everything is centred at the data mean c (one pass over the data in double,
// fused with its finiteness check): with x' = x - alpha c and y' = y - c,
//   ||x - alpha y||^2 = ||x'||^2 - 2 alpha x'.y' + alpha^2 ||y'||^2,
// whose float32 expansion no longer cancels on data far from the origin.
// ||x'||^2 / (2 sigma^2) is the same for every y, so the tiles work with
//   l'_bi = log w_i + (alpha_b x'_b.y'_i - alpha_b^2 ||y'_i||^2 / 2) / sigma_b^2
// and log_z = max + log(sum) - ||x'||^2 / (2 sigma^2) at the end.
//
// Per work item (a block of queries against a chunk of the data), per tile of
// tile_rows data rows, on one thread:
//   y' = y - c and ||y'||^2            the tile, centred into a thread buffer
//   S  = x' y'^T          [qb, tile]   BLAS, one GEMM
//   l' = S * scale - shift * ||y'||^2 + log w, its row max, then
//   P  = exp(l' - max)    in place     SIMD epilogue (DenoiseRowOps); a row
//                                      whose max grew rescales its sum and
//                                      accumulator by exp(old - new) first
//   A += P y'             [qb, d]      BLAS, one GEMM
// and finally D = A / sum + c. x' lives in the rows of the output D until the
// finished accumulator overwrites it.
//
// The euclidean costs (CostMode, Sinkhorn with p = 1) need ||x'||^2 inside the
// logits, which take the square root of the same expansion: l' = -sqrt(max(
// ||x'||^2 - 2 alpha x'.y' + alpha^2 ||y'||^2, 0)) / sigma (- log of it), and
// log_z = max + log(sum) with nothing subtracted. The stream is the same.
//
// log_z only (denoised null, what a Sinkhorn iteration needs): no accumulator
// and no second GEMM, so about half the work at large d; x' then lives in a
// buffer of B d elements.
//
// Threads: queries go in the fewest equal blocks of <= 256 (the GEMMs run
// ~20% faster on 256-row blocks than on 128). When the blocks can be dealt
// evenly (a multiple of the thread count, or >= 4 per thread) each is one item
// and streams all of the data (query split); otherwise, e.g. B <= 256, every
// block meets each of `threads` contiguous chunks of the data (data split):
// each item keeps a partial (max, sum, A) of its chunk, merged per query at the
// end exactly as a log-sum-exp merge.
//
// Up to kFusedDotsMaxDim dimensions (point clouds) the scores come from a SIMD
// dot row per query instead of the first GEMM (a GEMM with K = 3 costs more than
// the epilogue), from a transposed copy of the tile.
//
// Peak extra memory (elements): 2 kMeanChunks d + d (the mean) + 5 B, plus per thread
// tile_rows * (d + 1) + qb * (tile_rows + d + 2) (and tile_rows * d for small d); with the data split,
// data_chunks * B * (d + 2) for the partials. Nothing of size B x N.
#include "score/dataset_denoise.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <vector>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"
#include "gencore/rows.h"

namespace gencore::score {
namespace {

// Data rows per tile (the K of the second GEMM): about kTileElements elements,
// within [kMinTileRows, kMaxTileRows]. At d = 3072 (256 rows) 256 to 1024 rows
// timed the same; the bound keeps a thread's tile buffer near 1 MiB of float32
// where d allows (at d = 3072, 256 rows: 3 MiB).
constexpr int64_t kTileElements = int64_t(1) << 18;
constexpr int64_t kMinTileRows = 256, kMaxTileRows = 1024;
constexpr int64_t kMaxQueryBlock = 256;        // queries per GEMM tile
constexpr int64_t kMinBlocksPerThread = 4;     // from this many blocks per thread, whole blocks deal evenly enough
constexpr int64_t kWorkPerThread = int64_t(1) << 22;  // B * N * d multiply-adds that pay for a thread
constexpr int64_t kMeanChunks = 16;            // fixed, so the mean is the same for any thread count

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- portable epilogue

template <typename T, CostMode kCost>
T cost_logit(T s, T q, const RowTerms<T>& t) {
  if constexpr (kCost == CostMode::squared) {
    return s * t.scale - t.shift * q;
  } else {
    constexpr T kNear = T(kCoincidentUlps) * std::numeric_limits<T>::epsilon();
    const T u2 = t.offset + t.shift * q - t.scale * s;  // r^2 / sigma^2
    const bool apart = u2 > kNear * t.offset + kNear * t.shift * q;
    if constexpr (kCost == CostMode::euclidean) return apart ? -std::sqrt(u2) : T(0);
    return apart ? -(std::sqrt(u2) + T(0.5) * std::log(u2)) : -std::numeric_limits<T>::infinity();
  }
}

template <typename T>
T logits_portable(T* row, int64_t n, RowTerms<T> terms, const T* sq_norms, const T* log_w) {
  return with_logit_form(log_w != nullptr, terms.cost, [&](auto weighted, auto cost) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < n; ++j) {
      T v = cost_logit<T, decltype(cost)::value>(row[j], sq_norms[j], terms);
      if constexpr (decltype(weighted)::value) v += log_w[j];
      row[j] = v;
      m = v > m ? v : m;
    }
    return m;
  });
}

template <typename T>
double exp_sum_portable(T* row, int64_t n, T max) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const T e = std::exp(row[j] - max);
    row[j] = e;
    acc += double(e);
  }
  return acc;
}

template <typename T>
void dot_row_portable(const T* x, int64_t d, const T* tile_t, int64_t ld, int64_t n, T* row) {
  for (int64_t j = 0; j < n; ++j) {
    T acc = 0;
    for (int64_t k = 0; k < d; ++k) acc += x[k] * tile_t[k * ld + j];  // std::fma would be a libm call here
    row[j] = acc;
  }
}

template <typename T>
DenoiseRowOps<T> denoise_row_ops_portable() {
  return {logits_portable<T>, exp_sum_portable<T>, dot_row_portable<T>};
}

template <typename T>
DenoiseRowOps<T> pick_row_ops() {
  return pick_row_table<T, DenoiseRowOps>(denoise_row_ops_portable<T>, GENCORE_ISA_FN(denoise_row_ops_avx2),
                                              GENCORE_ISA_FN(denoise_row_ops_avx512));
}

// ---------------------------------------------------------------- passes over the inputs

double squared_norm(const float* row, int64_t n, SquaredNormFn norm) { return norm(row, n); }
double squared_norm(const double* row, int64_t n, SquaredNormFn) {
  double acc = 0.0;
  for (int64_t j = 0; j < n; ++j) acc += row[j] * row[j];
  return acc;
}

// The data mean c [d] (accumulated in double, rounded to T once), and the
// first data row holding NaN or inf into `bad`.
template <typename T>
std::vector<T> data_mean(MatrixView<const T> data, int num_threads, MinIndex& bad) {
  const int64_t N = data.rows, d = data.cols;
  const int64_t chunks = std::min(N, kMeanChunks), rows_per_chunk = ceil_div(N, chunks);
  std::vector<double> partial(chunks * d, 0.0);
  const int threads = clamp_threads(num_threads, N * d / kWorkPerThread + 1);
  parallel_for(chunks, threads, Schedule::fixed, [&](int64_t chunk) {
    double* sum = partial.data() + chunk * d;
    for (int64_t r = chunk * rows_per_chunk; r < std::min(N, (chunk + 1) * rows_per_chunk); ++r) {
      const T* y = data.row(r);
      T poison = 0;  // y * 0 is NaN exactly when y is NaN or inf
      for (int64_t j = 0; j < d; ++j) {
        sum[j] += double(y[j]);
        poison += y[j] * T(0);
      }
      if (poison != T(0)) bad.offer(r);
    }
  });
  std::vector<T> center(d);
  for (int64_t j = 0; j < d; ++j) {
    double s = 0.0;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * d + j];
    center[j] = T(s / double(N));
  }
  return center;
}

// xc[b] = x[b] - alpha_b c (rows of the C-contiguous output) and x_sq[b] = ||xc[b]||^2;
// the first row of x holding NaN or inf into `bad`.
template <typename T>
void centre_queries(MatrixView<const T> x, const T* alpha, const T* center, T* xc, double* x_sq,
                    int num_threads, MinIndex& bad) {
  const int64_t B = x.rows, d = x.cols;
  const SquaredNormFn norm = squared_norm_kernel();
  const int threads = clamp_threads(num_threads, B * d / kWorkPerThread + 1);
  parallel_for(B, threads, Schedule::fixed, [&](int64_t b) {
    const T* in = x.row(b);
    T* out = xc + b * d;
    const T a = alpha[b];
    T poison = 0;
    for (int64_t j = 0; j < d; ++j) {
      out[j] = in[j] - a * center[j];
      poison += in[j] * T(0);
    }
    if (poison != T(0)) bad.offer(b);
    x_sq[b] = squared_norm(out, d, norm);
  });
}

// ---------------------------------------------------------------- the tiled stream

// Per-query coefficients of the tile logits (RowTerms), in T, computed in double.
template <typename T>
struct QueryTerms {
  std::vector<T> scale, shift, offset;
  std::vector<double> half_inv_var;  // squared cost: 1 / (2 sigma^2), for log_z (0 for the euclidean costs)
  CostMode cost;
  RowTerms<T> row(int64_t b) const { return {scale[b], shift[b], offset[b], cost}; }
};

// x_sq [B] = ||x'||^2 (the euclidean costs need it inside the logits; the squared one
// adds it to log_z at the end).
template <typename T>
QueryTerms<T> query_terms(int64_t B, const T* sigma, const T* alpha, const double* x_sq, CostMode cost) {
  QueryTerms<T> q{std::vector<T>(B), std::vector<T>(B), std::vector<T>(B), std::vector<double>(B), cost};
  const bool squared = cost == CostMode::squared;
  for (int64_t b = 0; b < B; ++b) {
    const double a = double(alpha[b]), inv_var = 1.0 / (double(sigma[b]) * double(sigma[b]));
    q.scale[b] = T((squared ? 1.0 : 2.0) * a * inv_var);
    q.shift[b] = T((squared ? 0.5 : 1.0) * a * a * inv_var);
    q.offset[b] = T(squared ? 0.0 : x_sq[b] * inv_var);
    q.half_inv_var[b] = squared ? 0.5 * inv_var : 0.0;
  }
  return q;
}

// The running state of a block of queries over the tiles it has seen:
// max and sum of the softmax numerators and the accumulator A [rows, d].
template <typename T>
struct Running {
  T* max;
  double* sum;
  T* acc;  // row stride d; null: log_z only
};

// Per-thread state: a single-threaded BLAS and the tile buffers.
template <typename T>
struct TileScratch {
  blas::SingleThreadedScope one_blas_thread;
  std::vector<T> tile;       // [tile_rows, d] centred data rows
  std::vector<T> tile_t;     // [d, tile_rows] the same, transposed (d <= kFusedDotsMaxDim: no GEMM)
  std::vector<T> sq_norms;   // [tile_rows]
  std::vector<T> scores;     // [query_block, tile_rows] logits, then softmax numerators
  std::vector<T> acc;        // [query_block, d] (query split)
  std::vector<T> max;        // [query_block]
  std::vector<double> sum;   // [query_block]
};

// Streams data rows [n0, n1) through queries [q0, q0 + rows) (centred rows of xc),
// starting from an empty running state.
template <typename T>
void stream_block(const T* xc, int64_t q0, int64_t rows, MatrixView<const T> data, int64_t n0, int64_t n1,
                  const T* center, const T* log_w, const QueryTerms<T>& terms, const DenoiseRowOps<T>& ops,
                  SquaredNormFn norm, int64_t tile_rows, TileScratch<T>& s, Running<T> run) {
  const int64_t d = data.cols;
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  std::fill(run.max, run.max + rows, kNegInf);
  std::fill(run.sum, run.sum + rows, 0.0);
  if (run.acc) std::fill(run.acc, run.acc + rows * d, T(0));
  const bool fused_dots = d <= kFusedDotsMaxDim;
  for (int64_t t0 = n0; t0 < n1; t0 += tile_rows) {
    const int64_t tn = std::min(tile_rows, n1 - t0);
    for (int64_t r = 0; r < tn; ++r) {
      const T* y = data.row(t0 + r);
      T* yc = s.tile.data() + r * d;
      for (int64_t j = 0; j < d; ++j) yc[j] = y[j] - center[j];
      if (fused_dots)
        for (int64_t j = 0; j < d; ++j) s.tile_t[j * tile_rows + r] = yc[j];
      s.sq_norms[r] = T(squared_norm(yc, d, norm));
    }
    // scores [rows, tn] = xc[q0 : q0 + rows] . y'^T (row by row below for small d)
    if (!fused_dots)
      blas::gemm_abt(rows, tn, d, T(1), xc + q0 * d, d, s.tile.data(), d, T(0), s.scores.data(), tile_rows);
    for (int64_t i = 0; i < rows; ++i) {
      T* row = s.scores.data() + i * tile_rows;
      if (fused_dots) ops.dot_row(xc + (q0 + i) * d, d, s.tile_t.data(), tile_rows, tn, row);
      const T tile_max = ops.logits(row, tn, terms.row(q0 + i), s.sq_norms.data(), log_w ? log_w + t0 : nullptr);
      if (!(tile_max > run.max[i])) {  // the max stays (or the whole tile has weight 0 so far)
        if (run.max[i] == kNegInf) {
          std::fill(row, row + tn, T(0));
          continue;
        }
      } else {
        if (run.max[i] != kNegInf) {  // rescale what was accumulated to the new max
          const double r = std::exp(double(run.max[i]) - double(tile_max));
          run.sum[i] *= r;
          if (run.acc) {
            T* a = run.acc + i * d;
            for (int64_t j = 0; j < d; ++j) a[j] *= T(r);
          }
        }
        run.max[i] = tile_max;
      }
      run.sum[i] += ops.exp_sum(row, tn, run.max[i]);
    }
    // A [rows, d] += P [rows, tn] . y' [tn, d]
    if (run.acc) blas::gemm_ab(rows, d, tn, T(1), s.scores.data(), tile_rows, s.tile.data(), d, T(1), run.acc, d);
  }
}

// D_b = A_b / sum + c (unless denoised is null) and log_z_b = max + log(sum) - ||x'_b||^2 / (2 sigma^2)
// (half_inv_var = 0 for the euclidean costs, whose logits hold ||x'_b||^2 already).
template <typename T>
void finish_query(const T* acc, T max, double sum, const T* center, double x_sq, double half_inv_var, int64_t d,
                  T* denoised, T* log_z) {
  const double inv = 1.0 / sum;
  if (denoised)
    for (int64_t j = 0; j < d; ++j) denoised[j] = T(double(acc[j]) * inv + double(center[j]));
  *log_z = T(double(max) + std::log(sum) - x_sq * half_inv_var);
}

}  // namespace

DenoisePlan dataset_denoise_plan(int64_t B, int64_t N, int64_t d, int num_threads) {
  DenoisePlan p{};
  p.tile_rows = std::clamp<int64_t>(kTileElements / std::max<int64_t>(d, 1), kMinTileRows, kMaxTileRows);
  const int64_t tiles = std::max<int64_t>(1, ceil_div(N, p.tile_rows));
  const int64_t work = B * N * std::max<int64_t>(d, 1);
  const int threads = clamp_threads(std::max(num_threads, 1), work / kWorkPerThread + 1);
  // The GEMMs run best on full query blocks: the fewest blocks of <= kMaxQueryBlock
  // queries, of equal size.
  int64_t blocks = std::max<int64_t>(1, ceil_div(B, kMaxQueryBlock));
  if (threads == 1 || blocks >= kMinBlocksPerThread * threads || blocks % threads == 0) {
    // Many queries: blocks of queries, a multiple of the thread count of them.
    blocks = ceil_div(blocks, threads) * threads;
    p.data_chunks = 1;
    p.chunk_rows = N;
  } else {
    // Few queries: every block against each of `threads` disjoint chunks of the data.
    p.data_chunks = std::min<int64_t>(threads, tiles);
    p.chunk_rows = ceil_div(tiles, p.data_chunks) * p.tile_rows;
    p.data_chunks = ceil_div(N, p.chunk_rows);
  }
  p.query_block = std::max<int64_t>(1, ceil_div(B, blocks));
  p.query_blocks = ceil_div(B, p.query_block);
  p.threads = clamp_threads(threads, p.query_blocks * p.data_chunks);
  return p;
}

template <typename T>
void dataset_denoise(MatrixView<const T> x, MatrixView<const T> data, const T* sigma, const T* alpha,
                     const T* log_weights, T* denoised, T* log_z, int num_threads, CostMode cost) {
  const int64_t B = x.rows, N = data.rows, d = data.cols;
  GENCORE_CHECK(x.cols == d, "dataset_denoise: x has ", x.cols, " columns but data has ", d);
  GENCORE_CHECK(N >= 1, "dataset_denoise: data is empty");
  GENCORE_CHECK(d >= 1, "dataset_denoise: dimension d must be >= 1");
  GENCORE_CHECK(blas::available(), "dataset_denoise: BLAS is not initialised (gencore._native sets it at import)");
  GENCORE_CHECK(d <= INT_MAX / kMaxTileRows && B <= INT_MAX, "dataset_denoise: sizes exceed the 32-bit BLAS interface");
  if (B == 0) return;

  // The two passes every call makes anyway carry the finiteness checks.
  MinIndex bad_data, bad_x;
  const std::vector<T> center = data_mean(data, num_threads, bad_data);
  std::vector<double> x_sq(B);
  const bool with_denoised = denoised != nullptr;
  std::vector<T> xc_buffer(with_denoised ? 0 : B * d);  // log_z only: x' has no output rows to live in
  T* xc_rows = with_denoised ? denoised : xc_buffer.data();
  centre_queries(x, alpha, center.data(), xc_rows, x_sq.data(), num_threads, bad_x);
  GENCORE_CHECK(!bad_x.any(), "x contains NaN or inf (row ", bad_x.get(), "); inputs must be finite");
  GENCORE_CHECK(!bad_data.any(), "data contains NaN or inf (row ", bad_data.get(), "); inputs must be finite");

  const DenoisePlan plan = dataset_denoise_plan(B, N, d, num_threads);
  const QueryTerms<T> terms = query_terms(B, sigma, alpha, x_sq.data(), cost);
  const DenoiseRowOps<T> ops = pick_row_ops<T>();
  const SquaredNormFn norm = squared_norm_kernel();
  const T* xc = xc_rows;
  const int64_t chunks = plan.data_chunks, qb = plan.query_block, tile_rows = plan.tile_rows;
  // Partials of the data split: [chunks, B] max and sum, [chunks, B, d] accumulators.
  const bool split = plan.data_split();
  std::vector<T> part_max(split ? chunks * B : 0);
  std::vector<double> part_sum(part_max.size());
  std::vector<T> part_acc(split && with_denoised ? chunks * B * d : 0);

  auto make_scratch = [&] {
    return TileScratch<T>{blas::SingleThreadedScope{}, std::vector<T>(tile_rows * d),
                          std::vector<T>(d <= kFusedDotsMaxDim ? tile_rows * d : 0), std::vector<T>(tile_rows),
                          std::vector<T>(qb * tile_rows), std::vector<T>(split || !with_denoised ? 0 : qb * d),
                          std::vector<T>(split ? 0 : qb), std::vector<double>(split ? 0 : qb)};
  };
  // Items are (query block, data chunk) pairs; dynamic: the last block may be short.
  parallel_for(plan.query_blocks * chunks, plan.threads, Schedule::dynamic, make_scratch,
               [&](TileScratch<T>& s, int64_t item) {
    const int64_t block = item / chunks, chunk = item % chunks;
    const int64_t q0 = block * qb, rows = std::min(B, q0 + qb) - q0;
    const int64_t n0 = chunk * plan.chunk_rows, n1 = std::min(N, n0 + plan.chunk_rows);
    if (split) {
      const int64_t at = chunk * B + q0;
      stream_block(xc, q0, rows, data, n0, n1, center.data(), log_weights, terms, ops, norm, tile_rows, s,
                   Running<T>{part_max.data() + at, part_sum.data() + at,
                              with_denoised ? part_acc.data() + at * d : nullptr});
      return;
    }
    stream_block(xc, q0, rows, data, n0, n1, center.data(), log_weights, terms, ops, norm, tile_rows, s,
                 Running<T>{s.max.data(), s.sum.data(), with_denoised ? s.acc.data() : nullptr});
    for (int64_t i = 0; i < rows; ++i)  // x' of these rows is no longer needed
      finish_query(s.acc.data() + i * d, s.max[i], s.sum[i], center.data(), x_sq[q0 + i],
                   terms.half_inv_var[q0 + i], d, with_denoised ? denoised + (q0 + i) * d : nullptr,
                   log_z + q0 + i);
  });
  if (!split) return;

  // Log-sum-exp merge of the chunks' partials, per query, into chunk 0's slot.
  parallel_for(B, clamp_threads(num_threads, B * d * chunks / kWorkPerThread + 1), Schedule::fixed, [&](int64_t b) {
    T max = -std::numeric_limits<T>::infinity();
    for (int64_t c = 0; c < chunks; ++c) max = std::max(max, part_max[c * B + b]);
    T* acc = with_denoised ? part_acc.data() + b * d : nullptr;
    double sum = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      const T m = part_max[c * B + b];
      if (m == -std::numeric_limits<T>::infinity()) {  // a chunk of weight 0 adds nothing
        if (c == 0 && acc) std::fill(acc, acc + d, T(0));
        continue;
      }
      const double f = std::exp(double(m) - double(max));
      sum += f * part_sum[c * B + b];
      if (!acc) continue;
      const T* part = part_acc.data() + (c * B + b) * d;
      if (c == 0) {
        for (int64_t j = 0; j < d; ++j) acc[j] = T(f * double(part[j]));
      } else {
        for (int64_t j = 0; j < d; ++j) acc[j] += T(f * double(part[j]));
      }
    }
    finish_query(acc, max, sum, center.data(), x_sq[b], terms.half_inv_var[b], d,
                 with_denoised ? denoised + b * d : nullptr, log_z + b);
  });
}

template void dataset_denoise<float>(MatrixView<const float>, MatrixView<const float>, const float*, const float*,
                                     const float*, float*, float*, int, CostMode);
template void dataset_denoise<double>(MatrixView<const double>, MatrixView<const double>, const double*,
                                      const double*, const double*, double*, double*, int, CostMode);

}  // namespace gencore::score
