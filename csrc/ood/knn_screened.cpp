// Driver of the bf16-screened exact kNN (the math is in knn_screen.h).
//
// Loop: the bank is packed to bf16 one super-tile at a time (all threads), then
// each thread takes query blocks and, per GEMM tile of the super-tile, runs the
// bf16 GEMM and screens every query row. Heaps for all queries persist across
// super-tiles.
//
// Peak extra memory (float32): 6 N floats of row terms, Q x D bf16 (packed
// queries), kSuperTile x D bf16 (packed bank), threads x kBlock x kTile floats,
// and 2 Q x k heap entries; independent of N apart from the row terms.
#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <vector>

#include "gencore/bf16_gemm.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"
#include "ood/knn_screen.h"
#include "ood/knn_terms.h"

namespace gencore::ood {
namespace {

constexpr int64_t kBlock = 256;                     // queries per work item (multiple of kBf16PanelA)
constexpr int64_t kTile = 20 * kBf16PanelB;         // bank rows per GEMM (960)
constexpr int64_t kSuperTile = 16 * kTile;          // bank rows packed at once (15360)
constexpr float kMaxSquaredNorm = 1e30f;            // keeps every bf16 product and sum finite

struct RowTerms {
  std::vector<float> key_scale, margin_weight, margin_slack;
};

RowTerms row_terms(const MetricTerms<float>& t, KnnMetric metric, int64_t depth) {
  const int64_t N = int64_t(t.bank_sq.size());
  const double rel = screen_relative_bound(depth);
  // vdpbf16ps treats subnormal inputs and products as zero: each of the depth
  // terms may lose up to 2^-126 * (1 + |other operand|).
  const double flush = double(depth) * 0x1p-126;
  RowTerms r;
  r.key_scale.resize(N);
  r.margin_weight.resize(N);
  r.margin_slack.resize(N);
  for (int64_t j = 0; j < N; ++j) {
    const double norm = std::sqrt(double(t.bank_sq[j]));
    r.key_scale[j] = t.alpha * t.scale[j];
    double weight = (rel * norm + flush) * std::abs(double(r.key_scale[j]));
    double slack = flush * (2 + norm) * std::abs(double(r.key_scale[j]));
    if (metric == KnnMetric::sqeuclidean) slack += 0x1p-22 * double(t.bank_sq[j]);  // rounding of + ||y||^2
    r.margin_weight[j] = float(weight * (1 + 0x1p-10));
    r.margin_slack[j] = float(slack * (1 + 0x1p-10));
  }
  return r;
}

}  // namespace

std::optional<KnnScreenKernels> knn_screen_plan(int64_t Q, int64_t D, const MetricTerms<float>& t,
                                                int threads) {
  // No portable twin: without AVX512-BF16 the BLAS path is the twin.
  const ScreenRowFn screen_row =
      pick_isa<ScreenRowFn>(nullptr, nullptr, nullptr, GENCORE_ISA_FN(screen_row_avx512bf16));
  const KnnScreenKernels kernels{bf16_gemm_kernels(), screen_row};
  if (!kernels.gemm || !kernels.screen_row) return std::nullopt;
  const int64_t N = int64_t(t.bank_sq.size());
  if (D < 32 || N < 4096 || Q < 64 * int64_t(std::max(threads, 1))) return std::nullopt;
  const float max_bank = *std::max_element(t.bank_sq.begin(), t.bank_sq.end());
  const float max_query = *std::max_element(t.query_sq.begin(), t.query_sq.end());
  if (!(max_bank < kMaxSquaredNorm && max_query < kMaxSquaredNorm)) return std::nullopt;
  return kernels;
}

void knn_screened(const KnnScreenKernels& kernels, MatrixView<const float> queries,
                  MatrixView<const float> bank, int64_t k, KnnMetric metric, const MetricTerms<float>& terms,
                  float* values, int64_t* indices, int num_threads) {
  const int64_t Q = queries.rows, N = bank.rows, D = bank.cols;
  const RowTerms rows = row_terms(terms, metric, D);
  const ScreenRowTerms row_view{rows.key_scale.data(), terms.bias.data(), rows.margin_weight.data(),
                                rows.margin_slack.data()};
  std::vector<float> query_norm(Q);
  for (int64_t i = 0; i < Q; ++i) query_norm[i] = std::sqrt(terms.query_sq[i]);

  std::vector<float> exact_keys(Q * k), bound_keys(Q * k);
  std::vector<int64_t> exact_ids(Q * k), bound_ids(Q * k);
  std::vector<TopKHeap<float>> exact(Q), bounds(Q);
  for (int64_t i = 0; i < Q; ++i) {
    exact[i] = TopKHeap<float>{exact_keys.data() + i * k, exact_ids.data() + i * k, k, 0};
    bounds[i] = TopKHeap<float>{bound_keys.data() + i * k, bound_ids.data() + i * k, k, 0};
  }
  std::vector<uint16_t> packed_queries(bf16_packed_elems_a(Q, D));
  std::vector<uint16_t> packed_bank(bf16_packed_elems_b(std::min(N, kSuperTile), D));
  const int64_t blocks = (Q + kBlock - 1) / kBlock;
  const int threads = clamp_threads(num_threads, blocks);
  // A thread's state: one GEMM tile [kBlock, kTile], left uninitialised (the
  // GEMM writes it before the screen reads it).
  auto make_tile = [] { return std::unique_ptr<float[]>(new float[size_t(kBlock) * kTile]); };

  parallel_for(blocks, threads, Schedule::fixed, [&](int64_t b) {
    const int64_t q0 = b * kBlock, rows_in_block = std::min(kBlock, Q - q0);
    kernels.gemm.pack_a(queries.row(q0), rows_in_block, queries.row_stride, D,
                        packed_queries.data() + bf16_packed_elems_a(q0, D));
  });
  for (int64_t s0 = 0; s0 < N; s0 += kSuperTile) {
    const int64_t s1 = std::min(N, s0 + kSuperTile);
    // All threads pack the super-tile, one run of whole B panels each ...
    const int64_t panels = (s1 - s0 + kBf16PanelB - 1) / kBf16PanelB;
    const int64_t chunk = ((panels + threads - 1) / threads) * kBf16PanelB;
    parallel_for(threads, threads, Schedule::fixed, [&](int64_t c) {
      const int64_t r0 = s0 + c * chunk, r1 = std::min(s1, r0 + chunk);
      if (r0 < r1)
        kernels.gemm.pack_b(bank.row(r0), r1 - r0, bank.row_stride, D,
                            packed_bank.data() + bf16_packed_elems_b(r0 - s0, D));
    });
    // ... then screen it against one query block per item (dynamic: the last block is short).
    auto screen_block = [&](std::unique_ptr<float[]>& tile_buffer, int64_t b) {
      float* tile = tile_buffer.get();
      const int64_t q0 = b * kBlock, q1 = std::min(Q, q0 + kBlock);
      for (int64_t t0 = s0; t0 < s1; t0 += kTile) {
        const int64_t tn = std::min(kTile, s1 - t0);
        // tile [q1 - q0, tn] ~= queries[q0:q1] . bank[t0:t0+tn]^T from bf16 operands
        kernels.gemm.gemm_abt(packed_queries.data() + bf16_packed_elems_a(q0, D), q1 - q0,
                              packed_bank.data() + bf16_packed_elems_b(t0 - s0, D), tn, D, tile, kTile);
        for (int64_t i = q0; i < q1; ++i)
          kernels.screen_row(tile + (i - q0) * kTile, tn, t0, row_view, queries.row(i), query_norm[i], bank,
                             bounds[i], exact[i]);
      }
    };
    parallel_for(blocks, threads, Schedule::dynamic, make_tile, screen_block);
  }
  parallel_for(Q, threads, Schedule::fixed, [&](int64_t i) {
    heap_sort_ascending(exact[i]);
    for (int64_t r = 0; r < k; ++r) {
      values[i * k + r] = key_to_value(exact[i].keys[r], terms.query_term[i], metric);
      indices[i * k + r] = exact[i].ids[r];
    }
  });
}

}  // namespace gencore::ood
