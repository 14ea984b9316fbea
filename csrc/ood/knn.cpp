// Exact kNN driver: the bank streams through per-thread tiles. For each tile,
// one dot-product tile gives -alpha * x·y for a block of queries, and a fused
// SIMD scan turns it into keys (key = tile * scale + bias, smaller is better)
// and offers them to a per-query top-k heap. Never allocates Q x N.
//
// Two sources of the tile:
//   blas:  a BLAS GEMM per [query block, 1024 bank rows];
//   fused: few float32 queries (Q <= the crossover of fused_dots()): a
//          hand-written kernel (knn_dots_*) computes the Q dot products of
//          each bank row as the bank streams by, 256 rows at a time, so the
//          tile is still in L1 when the scan reads it. BLAS packs its operands
//          and blocks for large M; for a handful of rows that is most of its time.
//
// Keys per metric (q = ||x||^2 is added back at the end, so it is left out):
//   sqeuclidean: gemm = -2 x·y, scale = 1,      bias = ||y||^2 -> value = key + q
//   inner:       gemm = -x·y,   scale = 1,      bias = 0       -> value = -key
//   cosine:      gemm = -x·y,   scale = 1/||y||, bias = 0      -> value = -key / ||x||
//
// Peak extra memory: 2 * N (scale, bias) + threads * (Qb * Nb + Qb * k * 2) elements
// plus, when the bank is split across threads (few queries), chunks * Q * k pairs.
#include "ood/knn.h"
#include "ood/knn_terms.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"

namespace gencore::ood {
namespace {

constexpr int64_t kMaxQueryBlock = 256;   // rows of one GEMM tile (queries)
constexpr int64_t kBankTile = 1024;       // columns of one GEMM tile (bank rows)
constexpr int64_t kFusedTile = 256;       // bank rows of one fused dot tile ([<= 32, 256] floats: L1)
constexpr int64_t kMinQueriesPerThread = 64;  // below this, split the bank instead
constexpr int64_t kChunkAlign = 16;       // bank chunks start on a multiple of this many rows
// Multiply-adds (Q * rows * D) a bank chunk needs before another thread pays
// for its wake-up and the merge (~10 us of work).
constexpr int64_t kMinChunkWork = int64_t(1) << 18;

template <typename T>
using OfferFn = void (*)(const T*, const T*, const T*, int64_t, int64_t, TopKHeap<T>&);

template <typename T>
OfferFn<T> pick_offer() {
  if constexpr (std::is_same_v<T, float>)
    return pick_isa(offer_tile_scalar<float>, GENCORE_ISA_FN(offer_tile_avx2),
                    GENCORE_ISA_FN(offer_tile_avx512));
  else
    return offer_tile_scalar<T>;  // float64 has no SIMD scan
}

// tile [nq, n] (row stride ld) = alpha * x [nq, D] . y [n, D]^T
template <typename T>
using TileFn = void (*)(const T* x, int64_t ldx, int64_t nq, const T* y, int64_t ldy, int64_t n, int64_t D,
                        T alpha, T* tile, int64_t ld);

template <typename T>
void blas_tile(const T* x, int64_t ldx, int64_t nq, const T* y, int64_t ldy, int64_t n, int64_t D, T alpha,
               T* tile, int64_t ld) {
  blas::gemm_abt(nq, n, D, alpha, x, ldx, y, ldy, T(0), tile, ld);
}

// The fused path's dot kernel at the SIMD level in use, and the most queries
// for which it beats the BLAS path.
template <typename T>
struct FusedDots {
  TileFn<T> dots;
  int64_t max_queries;  // 0: the BLAS path always
};

// Crossovers measured against SciPy's OpenBLAS (sgemm / dgemm) with 2 threads
// on N x D = 1000 x 256, 20000 x 128 and 100000 x 512 (AVX-512 Zen 4):
//   AVX-512 kernel: 0.5-0.8x BLAS's time for Q = 4..16, ~0.9-1.0x at Q = 32, 1.05-1.2x at 48-64;
//   AVX2 kernel: 0.5-0.8x for Q = 4..8, ~1.0x at 16, 1.2x at 24-32 (against BLAS's AVX-512
//     kernels here; an AVX2-only CPU's BLAS is slower, which only moves the crossover up);
//   portable float32 (SSE2 on x86-64): ~0.9x at Q = 4, 1.03-1.1x at 8;
//   portable float64: 1.0-1.05x at Q = 1..4, 1.2-1.5x at 8..16, so float64 stays on dgemm.
// At Q = 1 every kernel and BLAS are within noise (both stream the bank).
constexpr int64_t kFusedMaxQueriesAvx512 = 32;
constexpr int64_t kFusedMaxQueriesAvx2 = 16;
constexpr int64_t kFusedMaxQueriesPortable = 4;

template <typename T>
FusedDots<T> fused_dots() {
  if constexpr (std::is_same_v<T, float>) {
    const TileFn<float> dots = pick_isa<TileFn<float>>(knn_dots_portable, GENCORE_ISA_FN(knn_dots_avx2),
                                                       GENCORE_ISA_FN(knn_dots_avx512));
    if (dots == knn_dots_portable) return {dots, kFusedMaxQueriesPortable};
    return {dots, simd_level() >= SimdLevel::avx512 ? kFusedMaxQueriesAvx512 : kFusedMaxQueriesAvx2};
  } else {
    return {nullptr, 0};
  }
}

// How the (query block x bank) work is split over threads.
template <typename T>
struct Plan {
  TileFn<T> tile_fn;    // blas_tile or the fused kernel
  bool fused;
  int64_t bank_tile;    // bank rows per tile
  int64_t query_block;  // queries per work item
  int64_t query_blocks;
  int64_t bank_chunks;  // > 1: each chunk is searched separately, then merged
  int64_t chunk_rows;   // bank rows per chunk (a multiple of kChunkAlign unless one chunk)
  int threads;
};

template <typename T>
Plan<T> make_plan(int64_t Q, int64_t N, int64_t D, int threads) {
  Plan<T> p{};
  const FusedDots<T> fused = fused_dots<T>();
  p.fused = Q <= fused.max_queries;
  p.tile_fn = p.fused ? fused.dots : blas_tile<T>;
  p.bank_tile = p.fused ? kFusedTile : kBankTile;
  threads = std::max(threads, 1);
  if (!p.fused && (Q >= int64_t(threads) * kMinQueriesPerThread || threads == 1)) {
    p.query_block = std::min(kMaxQueryBlock, (Q + threads - 1) / threads);
    p.query_blocks = (Q + p.query_block - 1) / p.query_block;
    p.bank_chunks = 1;
    p.chunk_rows = N;
  } else {
    // Few queries: each thread reads a disjoint part of the bank once, in
    // chunks of about N / threads rows, as many as the work pays for.
    p.query_block = std::min(kMaxQueryBlock, Q);
    p.query_blocks = (Q + p.query_block - 1) / p.query_block;
    const int64_t work = Q * N * D;
    const int64_t aligned = (N + kChunkAlign - 1) / kChunkAlign;
    p.bank_chunks = std::clamp<int64_t>(std::min<int64_t>(threads, work / kMinChunkWork), 1, aligned);
    const int64_t per_chunk = (N + p.bank_chunks - 1) / p.bank_chunks;
    p.chunk_rows = (per_chunk + kChunkAlign - 1) / kChunkAlign * kChunkAlign;
    p.bank_chunks = (N + p.chunk_rows - 1) / p.chunk_rows;
  }
  p.threads = clamp_threads(threads, p.query_blocks * p.bank_chunks);
  return p;
}

// Searches bank rows [n0, n1) for queries [q0, q1); leaves heaps[i] unsorted.
template <typename T>
void search_block(const Plan<T>& plan, MatrixView<const T> queries, MatrixView<const T> bank, int64_t q0,
                  int64_t q1, int64_t n0, int64_t n1, const MetricTerms<T>& terms, OfferFn<T> offer, T* tile,
                  std::vector<TopKHeap<T>>& heaps) {
  const int64_t D = bank.cols, ld = plan.bank_tile;
  for (int64_t t0 = n0; t0 < n1; t0 += ld) {
    const int64_t tn = std::min(ld, n1 - t0);
    // tile [q1 - q0, tn] = alpha * queries[q0:q1] . bank[t0:t0+tn]^T
    plan.tile_fn(queries.row(q0), queries.row_stride, q1 - q0, bank.row(t0), bank.row_stride, tn, D, terms.alpha,
                 tile, ld);
    for (int64_t i = q0; i < q1; ++i)
      offer(tile + (i - q0) * ld, terms.scale.data() + t0, terms.bias.data() + t0, tn, t0, heaps[i - q0]);
  }
}

// Per-thread state of a search: a single-threaded BLAS (BLAS path only), one
// tile and the heaps of one query block.
template <typename T>
struct SearchScratch {
  std::optional<blas::SingleThreadedScope> one_blas_thread;
  std::vector<T> tile;            // [query_block, bank_tile]
  std::vector<T> heap_keys;       // [query_block, k]
  std::vector<int64_t> heap_ids;  // [query_block, k]
  std::vector<TopKHeap<T>> heaps;  // [query_block], views into heap_keys / heap_ids
};

thread_local const char* last_path = "none";

}  // namespace

const char* last_knn_path() { return last_path; }

int64_t knn_fused_max_queries(bool float64) {
  return float64 ? fused_dots<double>().max_queries : fused_dots<float>().max_queries;
}

template <typename T>
void knn(MatrixView<const T> queries, MatrixView<const T> bank, int64_t k, KnnMetric metric,
         T* values, int64_t* indices, int num_threads) {
  const int64_t Q = queries.rows, N = bank.rows;
  GENCORE_CHECK(queries.cols == bank.cols, "knn: queries have ", queries.cols,
                " columns but bank has ", bank.cols);
  GENCORE_CHECK(k >= 1 && k <= N, "knn: k must be in [1, N=", N, "], got ", k);
  GENCORE_CHECK(bank.cols >= 1, "knn: feature dimension must be >= 1");
  // The BLAS contract is checked up front so a bad call fails before any
  // work (parallel_for would carry the same error out of the region).
  GENCORE_CHECK(blas::available(), "knn: BLAS is not initialised (gencore._native sets it at import)");
  GENCORE_CHECK(bank.cols <= INT_MAX && bank.row_stride <= INT_MAX && queries.row_stride <= INT_MAX,
                "knn: rows longer than 2^31 - 1 elements are not supported by the BLAS interface");
  if (Q == 0) return;

  const MetricTerms<T> terms = metric_terms(queries, bank, metric, num_threads);
  if constexpr (std::is_same_v<T, float>) {
    if (const auto screen = knn_screen_plan(Q, bank.cols, terms, num_threads)) {
      last_path = "bf16-screen";
      knn_screened(*screen, queries, bank, k, metric, terms, values, indices, num_threads);
      return;
    }
  }
  const Plan<T> plan = make_plan<T>(Q, N, bank.cols, num_threads);
  last_path = plan.fused ? "fused" : "blas";
  const OfferFn<T> offer = pick_offer<T>();
  const int64_t items = plan.query_blocks * plan.bank_chunks;
  // Partial results of split banks: [chunks, Q, k] (key, id) pairs, sorted per query.
  std::vector<T> part_keys(plan.bank_chunks > 1 ? plan.bank_chunks * Q * k : 0);
  std::vector<int64_t> part_ids(part_keys.size());

  const int64_t qb_rows = plan.query_block;
  auto make_scratch = [&plan, qb_rows, k] {
    SearchScratch<T> s{std::nullopt, std::vector<T>(qb_rows * plan.bank_tile), std::vector<T>(qb_rows * k),
                       std::vector<int64_t>(qb_rows * k), std::vector<TopKHeap<T>>(qb_rows)};
    if (!plan.fused) s.one_blas_thread.emplace();
    return s;
  };
  // Items are (query block, bank chunk) pairs; dynamic: the last block is short.
  parallel_for(items, plan.threads, Schedule::dynamic, make_scratch, [&](SearchScratch<T>& s, int64_t item) {
    const int64_t qb = item / plan.bank_chunks, chunk = item % plan.bank_chunks;
    const int64_t q0 = qb * plan.query_block, q1 = std::min(Q, q0 + plan.query_block);
    const int64_t n0 = chunk * plan.chunk_rows, n1 = std::min(N, n0 + plan.chunk_rows);
    for (int64_t i = 0; i < q1 - q0; ++i)
      s.heaps[i] = TopKHeap<T>{s.heap_keys.data() + i * k, s.heap_ids.data() + i * k, k, 0};
    search_block(plan, queries, bank, q0, q1, n0, n1, terms, offer, s.tile.data(), s.heaps);
    for (int64_t i = q0; i < q1; ++i) {
      TopKHeap<T>& h = s.heaps[i - q0];
      heap_sort_ascending(h);
      if (plan.bank_chunks == 1) {
        for (int64_t r = 0; r < k; ++r) {
          values[i * k + r] = key_to_value(h.keys[r], terms.query_term[i], metric);
          indices[i * k + r] = h.ids[r];
        }
      } else {
        T* pk = part_keys.data() + (chunk * Q + i) * k;
        int64_t* pi = part_ids.data() + (chunk * Q + i) * k;
        for (int64_t r = 0; r < k; ++r) {  // a chunk smaller than k pads with +inf
          pk[r] = r < h.size ? h.keys[r] : std::numeric_limits<T>::infinity();
          pi[r] = r < h.size ? h.ids[r] : std::numeric_limits<int64_t>::max();
        }
      }
    }
  });
  if (plan.bank_chunks == 1) return;

  // Merge the sorted per-chunk lists: chunk order is bank order, so a stable
  // merge on (key, id) keeps the lower index first among equal keys.
  auto make_heads = [&plan] { return std::vector<int64_t>(plan.bank_chunks); };
  auto merge = [&](std::vector<int64_t>& head, int64_t i) {
    std::fill(head.begin(), head.end(), 0);
    for (int64_t r = 0; r < k; ++r) {
      int64_t best = -1;
      for (int64_t c = 0; c < plan.bank_chunks; ++c) {
        if (head[c] >= k) continue;
        const int64_t at = (c * Q + i) * k + head[c];
        if (best < 0) { best = c; continue; }
        const int64_t bat = (best * Q + i) * k + head[best];
        if (worse(part_keys[bat], part_ids[bat], part_keys[at], part_ids[at])) best = c;
      }
      const int64_t at = (best * Q + i) * k + head[best]++;
      values[i * k + r] = key_to_value(part_keys[at], terms.query_term[i], metric);
      indices[i * k + r] = part_ids[at];
    }
  };
  // A few queries' merge takes microseconds: not worth waking threads for.
  const int merge_threads = clamp_threads(num_threads, Q * k * plan.bank_chunks / (int64_t(1) << 14) + 1);
  parallel_for(Q, merge_threads, Schedule::fixed, make_heads, merge);
}

template void knn<float>(MatrixView<const float>, MatrixView<const float>, int64_t, KnnMetric,
                         float*, int64_t*, int);
template void knn<double>(MatrixView<const double>, MatrixView<const double>, int64_t, KnnMetric,
                          double*, int64_t*, int);

}  // namespace gencore::ood
