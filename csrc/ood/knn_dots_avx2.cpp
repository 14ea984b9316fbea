// AVX2 dot tile of the fused small-query kNN path (knn_dots in knn.h):
// 4 bank rows x 2 queries per step, 8 float32 accumulators of 8 lanes (13 of
// the 16 registers), reduced to the 8 dot products once per row group.
#include <immintrin.h>

#include <cstdint>

#include "ood/knn.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

#include "gencore/vec_avx2.h"

namespace gencore::ood {
namespace {

constexpr int kRows = 4;     // bank rows per group: one 128-bit store per query
constexpr int kQueries = 2;  // queries per group

// The lane sums of a, b, c, d as one vector [sum a, sum b, sum c, sum d].
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// out[q * ld + r] = alpha * x_q . y_r for q < QB, r < rows (rows <= 4; the
// pointers of missing rows repeat a valid one and their sums are not stored).
template <int QB>
inline void group(const float* x, int64_t ldx, const float* const* y, int rows, int64_t D, float alpha,
                  float* out, int64_t ld) {
  __m256 acc[QB][kRows];
  for (int q = 0; q < QB; ++q)
    for (int r = 0; r < kRows; ++r) acc[q][r] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= D; d += 8) {
    __m256 b[kRows];
    for (int r = 0; r < kRows; ++r) b[r] = _mm256_loadu_ps(y[r] + d);
    for (int q = 0; q < QB; ++q) {
      const __m256 a = _mm256_loadu_ps(x + q * ldx + d);
      for (int r = 0; r < kRows; ++r) acc[q][r] = _mm256_fmadd_ps(a, b[r], acc[q][r]);
    }
  }
  if (d < D) {
    const __m256i m = tail_lanes(D - d);
    __m256 b[kRows];
    for (int r = 0; r < kRows; ++r) b[r] = _mm256_maskload_ps(y[r] + d, m);
    for (int q = 0; q < QB; ++q) {
      const __m256 a = _mm256_maskload_ps(x + q * ldx + d, m);
      for (int r = 0; r < kRows; ++r) acc[q][r] = _mm256_fmadd_ps(a, b[r], acc[q][r]);
    }
  }
  const __m128 scale = _mm_set1_ps(alpha);
  for (int q = 0; q < QB; ++q) {
    const __m128 s = _mm_mul_ps(sum4(acc[q][0], acc[q][1], acc[q][2], acc[q][3]), scale);
    if (rows == kRows) {
      _mm_storeu_ps(out + q * ld, s);
    } else {
      alignas(16) float lanes[kRows];
      _mm_store_ps(lanes, s);
      for (int r = 0; r < rows; ++r) out[q * ld + r] = lanes[r];
    }
  }
}

}  // namespace

void knn_dots_avx2(const float* x, int64_t ldx, int64_t nq, const float* y, int64_t ldy, int64_t n,
                   int64_t D, float alpha, float* tile, int64_t ld) {
  for (int64_t r0 = 0; r0 < n; r0 += kRows) {
    const int rows = int(n - r0 < kRows ? n - r0 : kRows);
    const float* rowp[kRows];
    for (int r = 0; r < kRows; ++r) rowp[r] = y + (r0 + (r < rows ? r : rows - 1)) * ldy;
    // The group's 4 bank rows stay in L1 while every query group reads them.
    int64_t q0 = 0;
    for (; q0 + kQueries <= nq; q0 += kQueries)
      group<kQueries>(x + q0 * ldx, ldx, rowp, rows, D, alpha, tile + q0 * ld + r0, ld);
    if (q0 < nq) group<1>(x + q0 * ldx, ldx, rowp, rows, D, alpha, tile + q0 * ld + r0, ld);
  }
}

}  // namespace gencore::ood

#include "gencore/isa_end.h"
