// Mahalanobis driver: "whiten once, one GEMM".
//
// Everything is centred at the mean of the class means, mu_bar. Distances do not
// change, but the float32 expansion below no longer cancels on features far from
// the origin (non-negative ReLU features, for one):
//   once per call: m~ = (means - mu_bar) L [C, R] and ||m~_c||^2 [C]
//   per block of up to 256 queries, on one thread:
//     xc = x - mu_bar [Qb, D], fused with the finiteness check of the rows
//     z  = xc L       [Qb, R]    BLAS, one GEMM, or one per panel of L (below)
//     g  = -2 z m~^T  [Qb, Cb]   BLAS, classes in tiles of up to 1024
//     v  = ||m~_c||^2 + g; nearest = argmin_c v; d = max(||z||^2 + v, 0)
//   reduce none: g is written straight into the output rows and finished in place;
//   reduce min keeps only the running minimum of v per query.
// Both reductions round identically, so min == the row minimum of none, bit for bit.
//
// Panels: L is cut into panels of 16-64 rows; a panel whose non-zero columns
// all lie in [c0, c1) adds xc[:, rows] . L[rows, c0:c1] to z[:, c0:c1] only;
// all-zero row panels are skipped. A triangular factor (the Cholesky factor of
// the precision is lower triangular, the inverse-transposed Cholesky factor of
// the covariance upper) costs about half of a dense one. Rows, not columns:
// then the BLAS packs each element of xc once, not once per panel (measured
// ~5% faster at D = 512). When panels would save less than 20% of the work,
// one GEMM over the whole factor runs instead.
//
// Peak extra memory (elements): R*D (L^T) + C*R (m~) + C + D, plus per thread
// Qb*(D + R + 2) + Qb*min(C, 1024) (reduce min only), Qb <= 256. Nothing of
// size Q x C x D, Q x D or Q x R is allocated.
#include "ood/mahalanobis.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/parallel.h"
#include "gencore/rows.h"

namespace gencore::ood {
namespace {

constexpr int64_t kMaxQueryBlock = 256;  // rows of one GEMM tile (queries or classes)
constexpr int64_t kClassTile = 1024;     // columns of one distance tile (classes)
// Rows of L per structure-aware GEMM: ~D/16, in [16, 64]. Short panels skip more
// of a triangle; at D = 512 and 1024 heights 16..64 timed the same, at D = 64
// height 16 was 1.4x faster than one 64-row panel (which skips nothing).
int64_t panel_rows(int64_t D) { return std::clamp<int64_t>(D / 16 / 16 * 16, 16, 64); }
constexpr double kPanelGain = 0.8;       // panels only when they do <= 80% of the dense work

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows [r0, r1) of L, non-zero only in columns [c0, c1) (c0 >= c1: all zero):
// z[:, c0:c1] += xc[:, r0:r1] . L[r0:r1, c0:c1].
struct Panel {
  int64_t r0, r1, c0, c1;
};

// What whitening needs: x -> (x - center) L.
template <typename T>
struct Whitener {
  int64_t D = 0, R = 0;
  std::vector<T> factor_t;  // [R, D] = L^T, since gemm_abt(x, L^T) = x L
  std::vector<T> center;    // [D] mean of the class means
  std::vector<Panel> panels;
  bool dense = true;        // one GEMM over panels[0] (beta 0) instead of accumulating panels
};

// L [D, R] -> the row panels with non-zero columns, or one dense panel.
template <typename T>
void make_panels(MatrixView<const T> factor, Whitener<T>& w) {
  const int64_t D = factor.rows, R = factor.cols;
  int64_t lo_all = R, hi_all = 0, rows_lo = D, rows_hi = 0;
  double panel_work = 0;
  w.panels.clear();
  const int64_t height = panel_rows(D);
  for (int64_t r0 = 0; r0 < D; r0 += height) {
    const int64_t r1 = std::min(D, r0 + height);
    int64_t lo = R, hi = 0;
    for (int64_t r = r0; r < r1; ++r) {
      const T* row = factor.row(r);
      int64_t first = 0, last = R;
      while (first < R && row[first] == T(0)) ++first;
      if (first == R) continue;
      while (row[last - 1] == T(0)) --last;
      lo = std::min(lo, first);
      hi = std::max(hi, last);
    }
    if (hi <= lo) continue;  // all-zero rows of L: those features do not matter
    w.panels.push_back({r0, r1, lo, hi});
    panel_work += double(hi - lo) * double(r1 - r0);
    lo_all = std::min(lo_all, lo);
    hi_all = std::max(hi_all, hi);
    rows_lo = std::min(rows_lo, r0);
    rows_hi = std::max(rows_hi, r1);
  }
  const double dense_work = double(std::max<int64_t>(hi_all - lo_all, 0)) * double(rows_hi - rows_lo);
  w.dense = w.panels.size() <= 1 || panel_work > kPanelGain * dense_work;
  if (w.dense && !w.panels.empty()) w.panels = {Panel{rows_lo, rows_hi, 0, R}};
}

template <typename T>
Whitener<T> make_whitener(MatrixView<const T> means, MatrixView<const T> factor) {
  Whitener<T> w;
  w.D = factor.rows;
  w.R = factor.cols;
  w.factor_t.resize(w.R * w.D);
  for (int64_t r = 0; r < w.D; ++r)
    for (int64_t c = 0; c < w.R; ++c) w.factor_t[c * w.D + r] = factor.row(r)[c];
  std::vector<double> sum(w.D, 0.0);
  for (int64_t k = 0; k < means.rows; ++k)
    for (int64_t j = 0; j < w.D; ++j) sum[j] += double(means.row(k)[j]);
  w.center.resize(w.D);
  for (int64_t j = 0; j < w.D; ++j) w.center[j] = T(sum[j] / double(means.rows));
  make_panels(factor, w);
  return w;
}

// rows [n, D] (row stride `stride`) -> xc [n, D] = rows - center (scratch) and
// z [n, ldz] columns [0, R) = xc L. Returns false when a row holds NaN or inf:
// v * 0 is 0 for finite v and NaN otherwise, so the check rides on the centring
// pass over data that the GEMM reads next anyway.
template <typename T>
bool whiten(const Whitener<T>& w, const T* rows, int64_t stride, int64_t n, T* xc, T* z,
            int64_t ldz) {
  const int64_t D = w.D;
  const T* center = w.center.data();
  T poison = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T* src = rows + i * stride;
    T* dst = xc + i * D;
#pragma omp simd reduction(+ : poison)
    for (int64_t j = 0; j < D; ++j) {
      dst[j] = src[j] - center[j];
      poison += src[j] * T(0);
    }
  }
  // Dense: one GEMM writes z. Panels accumulate, so z starts at 0; each query
  // element is packed by the BLAS once (a panel owns its rows), which is why
  // panels cut L by rows rather than by columns.
  if (!w.dense || w.panels.empty())
    for (int64_t i = 0; i < n; ++i) std::fill(z + i * ldz, z + i * ldz + w.R, T(0));
  for (const Panel& p : w.panels) {
    blas::gemm_abt(n, p.c1 - p.c0, p.r1 - p.r0, T(1), xc + p.r0, D,
                   w.factor_t.data() + p.c0 * D + p.r0, D, w.dense ? T(0) : T(1), z + p.c0, ldz);
  }
  return poison == T(0);
}

template <typename T>
T squared_norm(const T* v, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += v[j] * v[j];
  return acc;
}

// Per-thread state, buffers sized once per call.
template <typename T>
struct Scratch {
  blas::SingleThreadedScope one_blas_thread;
  std::vector<T> xc;    // [block, D]
  std::vector<T> z;     // [block, R]
  std::vector<T> zsq;   // [block]
  std::vector<T> tile;  // [block, class tile] (reduce min)
  std::vector<T> best;  // [block] running minimum of v
};

// Lowest-index minimum of v[c] for c < n, folded into (best, at) when strictly
// better; a NaN wins (first NaN). Two passes keep the first one vectorisable.
template <typename T>
void argmin_into(const T* v, int64_t n, int64_t base, T& best, int64_t& at) {
  if (best != best) return;
  T low = std::numeric_limits<T>::infinity();
  int nan = 0;
#pragma omp simd reduction(min : low) reduction(| : nan)
  for (int64_t c = 0; c < n; ++c) {
    low = std::min(low, v[c]);
    nan |= (v[c] != v[c]);
  }
  if (!nan && !(low < best)) return;
  for (int64_t c = 0; c < n; ++c) {
    if (nan ? v[c] != v[c] : v[c] == low) {
      best = v[c];
      at = base + c;
      return;
    }
  }
}

}  // namespace

template <typename T>
void mahalanobis(MatrixView<const T> features, MatrixView<const T> means,
                 MatrixView<const T> factor, MahalanobisReduce reduce, T* out, int64_t* nearest,
                 int num_threads) {
  const int64_t Q = features.rows, C = means.rows, D = factor.rows, R = factor.cols;
  GENCORE_CHECK(D >= 1 && R >= 1, "mahalanobis: precision_factor must be [D, R] with D, R >= 1, got [",
                D, ", ", R, "]");
  GENCORE_CHECK(features.cols == D, "mahalanobis: features have ", features.cols,
                " columns but precision_factor has ", D, " rows");
  GENCORE_CHECK(means.cols == D, "mahalanobis: means have ", means.cols,
                " columns but precision_factor has ", D, " rows");
  GENCORE_CHECK(C >= 1, "mahalanobis: means is empty (C = 0)");
  GENCORE_CHECK(reduce == MahalanobisReduce::none || reduce == MahalanobisReduce::min,
                "mahalanobis: unknown reduce code ", int(reduce));

  // The small inputs get their finiteness check up front (one pass each).
  std::vector<T> msq(std::max(C, D));
  squared_row_norms(factor, msq.data(), "precision_factor", num_threads);
  squared_row_norms(means, msq.data(), "means", num_threads);
  if (Q == 0) return;

  const Whitener<T> w = make_whitener(means, factor);
  const int64_t class_tile = std::min(C, kClassTile);
  auto scratch_for = [&](int64_t block, bool tile) {
    return [&w, block, tile, class_tile] {
      return Scratch<T>{blas::SingleThreadedScope{}, std::vector<T>(block * w.D),
                        std::vector<T>(block * w.R), std::vector<T>(block),
                        std::vector<T>(tile ? block * class_tile : 0), std::vector<T>(block)};
    };
  };

  // m~ [C, R] = (means - mu_bar) L, then ||m~_c||^2.
  std::vector<T> mt(C * R);
  // Blocks of classes / queries, dynamic: the last block is short.
  parallel_for(ceil_div(C, kMaxQueryBlock), num_threads, Schedule::dynamic,
               scratch_for(kMaxQueryBlock, false), [&](Scratch<T>& s, int64_t b) {
                 const int64_t c0 = b * kMaxQueryBlock, c1 = std::min(C, c0 + kMaxQueryBlock);
                 whiten(w, means.row(c0), means.row_stride, c1 - c0, s.xc.data(), mt.data() + c0 * R, R);
               });
  for (int64_t c = 0; c < C; ++c) msq[c] = squared_norm(mt.data() + c * R, R);

  const int threads = std::max(num_threads, 1);
  const int64_t block = std::min(kMaxQueryBlock, ceil_div(Q, threads));
  const bool to_min = reduce == MahalanobisReduce::min;
  std::atomic<bool> bad_features{false};
  parallel_for(ceil_div(Q, block), num_threads, Schedule::dynamic, scratch_for(block, to_min),
               [&](Scratch<T>& s, int64_t b) {
    const int64_t q0 = b * block, q1 = std::min(Q, q0 + block), n = q1 - q0;
    T* z = s.z.data();
    if (!whiten(w, features.row(q0), features.row_stride, n, s.xc.data(), z, R)) {
      bad_features.store(true, std::memory_order_relaxed);
      return;
    }
    for (int64_t i = 0; i < n; ++i) {
      s.zsq[i] = squared_norm(z + i * R, R);
      s.best[i] = std::numeric_limits<T>::infinity();
      nearest[q0 + i] = 0;
    }
    T* rows = to_min ? nullptr : out + q0 * C;  // none: out[q0:q1, :] [n, C] holds g, v, then d
    for (int64_t c0 = 0; c0 < C; c0 += kClassTile) {
      const int64_t tc = std::min(kClassTile, C - c0);
      T* g = to_min ? s.tile.data() : rows + c0;
      const int64_t ldg = to_min ? tc : C;
      blas::gemm_abt(n, tc, R, T(-2), z, R, mt.data() + c0 * R, R, T(0), g, ldg);
      for (int64_t i = 0; i < n; ++i) {
        T* v = g + i * ldg;
#pragma omp simd
        for (int64_t c = 0; c < tc; ++c) v[c] = msq[c0 + c] + v[c];
        argmin_into(v, tc, c0, s.best[i], nearest[q0 + i]);
        if (!to_min) {
          const T zsq = s.zsq[i];
#pragma omp simd
          for (int64_t c = 0; c < tc; ++c) v[c] = std::max(zsq + v[c], T(0));
        }
      }
    }
    if (to_min)
      for (int64_t i = 0; i < n; ++i) out[q0 + i] = std::max(s.zsq[i] + s.best[i], T(0));
  });
  if (bad_features.load()) {
    // Rare path: one more pass finds the first bad row and throws the shared message.
    std::vector<T> norms(Q);
    squared_row_norms(features, norms.data(), "features", num_threads);
    fail("mahalanobis: features contain NaN or inf; inputs must be finite");
  }
}

template void mahalanobis<float>(MatrixView<const float>, MatrixView<const float>,
                                 MatrixView<const float>, MahalanobisReduce, float*, int64_t*, int);
template void mahalanobis<double>(MatrixView<const double>, MatrixView<const double>,
                                  MatrixView<const double>, MahalanobisReduce, double*, int64_t*,
                                  int);

}  // namespace gencore::ood
