// Exact kNN driver: the bank streams through per-thread tiles. For each tile,
// one BLAS GEMM gives -alpha * x·y for a block of queries, and a fused SIMD scan
// turns it into keys (key = gemm * scale + bias, smaller is better) and offers
// them to a per-query top-k heap. Never allocates Q x N.
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
constexpr int64_t kMinQueriesPerThread = 64;  // below this, split the bank instead

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

// How the (query block x bank) work is split over threads.
struct Plan {
  int64_t query_block;  // queries per work item
  int64_t query_blocks;
  int64_t bank_chunks;  // > 1: each chunk is searched separately, then merged
  int64_t chunk_rows;   // bank rows per chunk (multiple of kBankTile unless one chunk)
  int threads;
};

Plan make_plan(int64_t Q, int64_t N, int threads) {
  Plan p{};
  threads = std::max(threads, 1);
  if (Q >= int64_t(threads) * kMinQueriesPerThread || threads == 1) {
    p.query_block = std::min(kMaxQueryBlock, (Q + threads - 1) / threads);
    p.query_blocks = (Q + p.query_block - 1) / p.query_block;
    p.bank_chunks = 1;
    p.chunk_rows = N;
  } else {
    // Few queries: each thread reads a disjoint part of the bank once.
    p.query_block = std::min(kMaxQueryBlock, Q);
    p.query_blocks = (Q + p.query_block - 1) / p.query_block;
    int64_t tiles = (N + kBankTile - 1) / kBankTile;
    p.bank_chunks = std::max<int64_t>(1, std::min<int64_t>(threads, tiles));
    p.chunk_rows = ((tiles + p.bank_chunks - 1) / p.bank_chunks) * kBankTile;
    p.bank_chunks = (N + p.chunk_rows - 1) / p.chunk_rows;
  }
  p.threads = clamp_threads(threads, p.query_blocks * p.bank_chunks);
  return p;
}

// Searches bank rows [n0, n1) for queries [q0, q1); leaves heaps[i] unsorted.
template <typename T>
void search_block(MatrixView<const T> queries, MatrixView<const T> bank, int64_t q0, int64_t q1,
                  int64_t n0, int64_t n1, const MetricTerms<T>& terms, OfferFn<T> offer, T* tile,
                  std::vector<TopKHeap<T>>& heaps) {
  const int64_t D = bank.cols;
  for (int64_t t0 = n0; t0 < n1; t0 += kBankTile) {
    const int64_t tn = std::min(kBankTile, n1 - t0);
    // tile [q1 - q0, tn] = alpha * queries[q0:q1] . bank[t0:t0+tn]^T
    blas::gemm_abt(q1 - q0, tn, D, terms.alpha, queries.row(q0), queries.row_stride, bank.row(t0),
                   bank.row_stride, T(0), tile, kBankTile);
    for (int64_t i = q0; i < q1; ++i)
      offer(tile + (i - q0) * kBankTile, terms.scale.data() + t0, terms.bias.data() + t0, tn, t0,
            heaps[i - q0]);
  }
}

// Per-thread state of the BLAS path: a single-threaded BLAS, one GEMM tile and
// the heaps of one query block.
template <typename T>
struct SearchScratch {
  blas::SingleThreadedScope one_blas_thread;
  std::vector<T> tile;            // [query_block, kBankTile]
  std::vector<T> heap_keys;       // [query_block, k]
  std::vector<int64_t> heap_ids;  // [query_block, k]
  std::vector<TopKHeap<T>> heaps;  // [query_block], views into heap_keys / heap_ids
};

thread_local const char* last_path = "none";

}  // namespace

const char* last_knn_path() { return last_path; }

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
  last_path = "blas";
  const Plan plan = make_plan(Q, N, num_threads);
  const OfferFn<T> offer = pick_offer<T>();
  const int64_t items = plan.query_blocks * plan.bank_chunks;
  // Partial results of split banks: [chunks, Q, k] (key, id) pairs, sorted per query.
  std::vector<T> part_keys(plan.bank_chunks > 1 ? plan.bank_chunks * Q * k : 0);
  std::vector<int64_t> part_ids(part_keys.size());

  const int64_t qb_rows = plan.query_block;
  auto make_scratch = [qb_rows, k] {
    return SearchScratch<T>{blas::SingleThreadedScope{}, std::vector<T>(qb_rows * kBankTile),
                            std::vector<T>(qb_rows * k), std::vector<int64_t>(qb_rows * k),
                            std::vector<TopKHeap<T>>(qb_rows)};
  };
  // Items are (query block, bank chunk) pairs; dynamic: the last block is short.
  parallel_for(items, plan.threads, Schedule::dynamic, make_scratch, [&](SearchScratch<T>& s, int64_t item) {
    const int64_t qb = item / plan.bank_chunks, chunk = item % plan.bank_chunks;
    const int64_t q0 = qb * plan.query_block, q1 = std::min(Q, q0 + plan.query_block);
    const int64_t n0 = chunk * plan.chunk_rows, n1 = std::min(N, n0 + plan.chunk_rows);
    for (int64_t i = 0; i < q1 - q0; ++i)
      s.heaps[i] = TopKHeap<T>{s.heap_keys.data() + i * k, s.heap_ids.data() + i * k, k, 0};
    search_block(queries, bank, q0, q1, n0, n1, terms, offer, s.tile.data(), s.heaps);
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
  parallel_for(Q, num_threads, Schedule::fixed, make_heads, merge);
}

template void knn<float>(MatrixView<const float>, MatrixView<const float>, int64_t, KnnMetric,
                         float*, int64_t*, int);
template void knn<double>(MatrixView<const double>, MatrixView<const double>, int64_t, KnnMetric,
                          double*, int64_t*, int);

}  // namespace gencore::ood
