// Per-metric terms shared by the kNN drivers (baseline translation units only).
// Keys are "smaller is better": key = (alpha * x.y) * scale_j + bias_j, and the
// query's own term is applied when a key becomes a value.
#pragma once
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "gencore/bf16_gemm.h"
#include "gencore/rows.h"
#include "gencore/view.h"
#include "ood/knn.h"
#include "ood/knn_screen.h"

namespace gencore::ood {

template <typename T>
struct MetricTerms {
  T alpha;                    // GEMM scale
  std::vector<T> bank_sq;     // [N] ||y||^2
  std::vector<T> query_sq;    // [Q] ||x||^2
  std::vector<T> scale;       // [N]
  std::vector<T> bias;        // [N]
  std::vector<T> query_term;  // [Q]: ||x||^2 (sqeuclidean) or 1/||x|| (cosine)
};

// The norm pass doubles as the finiteness check of both inputs.
template <typename T>
inline MetricTerms<T> metric_terms(MatrixView<const T> queries, MatrixView<const T> bank, KnnMetric metric,
                            int threads) {
  const int64_t N = bank.rows, Q = queries.rows;
  MetricTerms<T> t;
  t.alpha = metric == KnnMetric::sqeuclidean ? T(-2) : T(-1);
  t.bank_sq.resize(N);
  t.query_sq.resize(Q);
  squared_row_norms(bank, t.bank_sq.data(), "bank", threads);
  squared_row_norms(queries, t.query_sq.data(), "queries", threads);
  t.scale.assign(N, T(1));
  t.bias.assign(N, T(0));
  t.query_term.assign(Q, T(0));
  // Cosine normalizes rows like torch.nn.functional.normalize: norms below
  // 1e-12 count as 1e-12, so tiny and zero rows give similarities near 0
  // instead of dividing by an underflowed norm.
  const T eps = T(1e-12);
  if (metric == KnnMetric::sqeuclidean) {
    t.bias = t.bank_sq;
    t.query_term = t.query_sq;
  } else if (metric == KnnMetric::cosine) {
    for (int64_t j = 0; j < N; ++j) t.scale[j] = T(1) / std::max(std::sqrt(t.bank_sq[j]), eps);
    for (int64_t i = 0; i < Q; ++i) t.query_term[i] = T(1) / std::max(std::sqrt(t.query_sq[i]), eps);
  }
  return t;
}

template <typename T>
inline T key_to_value(T key, T query_term, KnnMetric metric) {
  switch (metric) {
    case KnnMetric::sqeuclidean: return std::max(key + query_term, T(0));
    case KnnMetric::cosine: return -key * query_term;
    default: return -key;
  }
}

// The ISA kernels of the bf16-screened float32 search (knn_screened.cpp).
struct KnnScreenKernels {
  Bf16GemmKernels gemm;
  ScreenRowFn screen_row = nullptr;
};

// The screen's kernels when it applies: the CPU has AVX512-BF16 at the SIMD
// level in use and the problem is large enough for the screen to pay off;
// nullopt otherwise (and always in builds without the x86 ISA units).
std::optional<KnnScreenKernels> knn_screen_plan(int64_t Q, int64_t D, const MetricTerms<float>& terms,
                                                int threads);
void knn_screened(const KnnScreenKernels& kernels, MatrixView<const float> queries,
                  MatrixView<const float> bank, int64_t k, KnnMetric metric, const MetricTerms<float>& terms,
                  float* values, int64_t* indices, int num_threads);

}  // namespace gencore::ood
