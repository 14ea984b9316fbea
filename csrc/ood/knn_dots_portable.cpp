// Portable dot tile of the fused small-query kNN path (knn_dots in knn.h): the
// twin of knn_dots_avx2 / _avx512 for other CPUs and SIMD levels. GCC/Clang
// vector extensions of 4 floats (SSE2 on x86-64, NEON on aarch64, plain
// registers elsewhere) hold each dot product's partial sums in 8 lanes, so no
// reassociation is asked of the compiler (no -ffast-math here) and the
// accumulators stay in registers.
#include <cstring>

#include "ood/knn.h"

namespace gencore::ood {
namespace {

constexpr int kRows = 4;   // bank rows per group, read once per query from L1
constexpr int kWidth = 4;  // lanes of one Vec

typedef float Vec __attribute__((vector_size(16)));

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);  // an unaligned vector load
  return v;
}

}  // namespace

void knn_dots_portable(const float* x, int64_t ldx, int64_t nq, const float* y, int64_t ldy, int64_t n,
                       int64_t D, float alpha, float* tile, int64_t ld) {
  for (int64_t r0 = 0; r0 < n; r0 += kRows) {
    const int rows = int(n - r0 < kRows ? n - r0 : kRows);
    const float* yr[kRows];
    for (int r = 0; r < kRows; ++r) yr[r] = y + (r0 + (r < rows ? r : rows - 1)) * ldy;
    for (int64_t q = 0; q < nq; ++q) {
      const float* xq = x + q * ldx;
      Vec lo[kRows] = {}, hi[kRows] = {};
      int64_t d = 0;
      for (; d + 2 * kWidth <= D; d += 2 * kWidth) {
        const Vec a = load(xq + d), b = load(xq + d + kWidth);
        for (int r = 0; r < kRows; ++r) {
          lo[r] += a * load(yr[r] + d);
          hi[r] += b * load(yr[r] + d + kWidth);
        }
      }
      for (int r = 0; r < kRows; ++r) {
        if (r >= rows) break;
        const Vec v = lo[r] + hi[r];
        float s = (v[0] + v[1]) + (v[2] + v[3]);
        for (int64_t e = d; e < D; ++e) s += xq[e] * yr[r][e];
        tile[q * ld + r0 + r] = alpha * s;
      }
    }
  }
}

}  // namespace gencore::ood
