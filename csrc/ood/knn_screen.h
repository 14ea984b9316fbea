// bf16-screened exact kNN (float32): a bf16 GEMM gives approximate scores, a
// rigorous error bound decides which bank rows might still be in the top-k, and
// only those are recomputed exactly in fp32. The result is the exact fp32 answer
// (same contract as the BLAS path), at about twice the GEMM throughput on CPUs
// with AVX512-BF16.
//
// Bound: with u = 2^-8 (bf16 rounding) and g = depth * 2^-24 (fp32 summation),
//   |approx(x.y) - x.y| <= (2u + u^2 + 2g) ||x|| ||y||   (Cauchy-Schwarz),
// so key_j lies in [approx_key_j - margin_j, approx_key_j + margin_j] with
//   margin_j = ||x|| * weight_j + slack_j.
// The k-th smallest upper bound seen so far is a threshold every true top-k row
// stays under; rows whose lower bound exceeds it are dropped unrefined.
#pragma once
#include <cstdint>

#include "gencore/view.h"
#include "gencore/topk_heap.h"

namespace gencore::ood {

// Per bank row terms, indexed by the global bank row.
struct ScreenRowTerms {
  const float* key_scale;     // key = approx * key_scale + key_bias
  const float* key_bias;
  const float* margin_weight; // margin = ||x|| * margin_weight + margin_slack
  const float* margin_slack;
};

// approx [tn]: approximate x.y for bank rows base .. base + tn - 1 of one query.
// Offers the upper bounds to `bounds` and the exact keys of rows that pass the
// screen to `exact`. One implementation per ISA that has a bf16 GEMM.
using ScreenRowFn = void (*)(const float* approx, int64_t tn, int64_t base, const ScreenRowTerms& terms,
                             const float* query, float query_norm, MatrixView<const float> bank,
                             TopKHeap<float>& bounds, TopKHeap<float>& exact);
void screen_row_avx512bf16(const float* approx, int64_t tn, int64_t base, const ScreenRowTerms& terms,
                           const float* query, float query_norm, MatrixView<const float> bank,
                           TopKHeap<float>& bounds, TopKHeap<float>& exact);

// Relative bound factor (2u + u^2 + 2g), with a safety factor for the few extra
// roundings of the key arithmetic.
inline double screen_relative_bound(int64_t depth) {
  const double u = 1.0 / 256.0, g = double(depth) * 0x1p-24;
  return (2 * u + u * u + 2 * g / (1 - g)) * (1 + 0x1p-8);
}

}  // namespace gencore::ood
