// Residual / ViM driver: rows go through per-thread blocks of up to 128:
//   1. xc = x - u into a block buffer, ||xc||^2 in double (doubles as the
//      finiteness check of the features),
//   2. y = xc P by one BLAS GEMM per block ([b, D] x [D, R]),
//   3. epilogue per row: r^2 = ||xc||^2 - ||y||^2 (exact when P^T P = I).
//
// Why not always ||xc - y P^T||: that is a second GEMM of the same size. The
// difference form needs only one, but cancels when the residual is a small
// part of xc: its error is ~eps * ||xc||^2 / r^2 relative. Rows with
// r^2 <= ||xc||^2 / 64 (residual below 1/8 of ||xc||) are therefore redone
// explicitly, r = ||xc - y P^T|| with one GEMM over just those rows, whose
// error is ~eps * ||xc|| / r. So every row's error stays within a few
// eps * ||xc|| * sqrt(D) at the price of the second GEMM only where it matters.
//
// ViM first writes logsumexp(logits) into `out` with the logit kernel, then the
// epilogue subtracts alpha * r in place.
#include "ood/vim.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/parallel.h"
#include "gencore/rows.h"
#include "ood/logits.h"

namespace gencore::ood {
namespace {

constexpr int64_t kMaxBlock = 128;           // rows per GEMM
constexpr int64_t kMinBlock = 16;            // smaller blocks starve the GEMM
constexpr double kExplicitBelow = 1.0 / 64;  // r^2 / ||xc||^2 below this: explicit residual

// Per-thread state: a single-threaded BLAS and the buffers of one block.
template <typename T>
struct Block {
  blas::SingleThreadedScope one_blas_thread;
  std::vector<T> xc, y, y_guarded, reprojected;
  std::vector<double> sq_norm, r;
  std::vector<int64_t> guarded;

  Block(int64_t rows, int64_t D, int64_t R)
      : xc(rows * D), y(rows * R), y_guarded(rows * R), reprojected(rows * D), sq_norm(rows), r(rows),
        guarded(rows) {}
};

double squared_norm_f64(const double* row, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += row[i] * row[i];
  return acc;
}

// ||row||^2 in double: the SIMD kernels of gencore/rows.h for float32 rows.
template <typename T>
using SqNorm = double (*)(const T*, int64_t);

template <typename T>
SqNorm<T> pick_sq_norm() {
  if constexpr (std::is_same_v<T, float>) return squared_norm_kernel();
  else return squared_norm_f64;
}

// Residual norms of rows [i0, i0 + b) into r[0, b). Returns the first row
// (absolute) with NaN/inf, or -1.
template <typename T>
int64_t block_residuals(MatrixView<const T> x, MatrixView<const T> p, const T* pt, const T* u,
                        int64_t i0, int64_t b, SqNorm<T> sq_norm, Block<T>& w, double* r) {
  const int64_t D = x.cols, R = p.cols;
  int64_t bad = -1;
  for (int64_t i = 0; i < b; ++i) {
    const T* xi = x.row(i0 + i);
    T* ci = w.xc.data() + i * D;
    for (int64_t d = 0; d < D; ++d) ci[d] = xi[d] - u[d];
    const double sq = sq_norm(ci, D);
    if (!std::isfinite(sq) && bad < 0) bad = i0 + i;
    w.sq_norm[i] = sq;
  }
  if (R > 0)  // y [b, R] = xc [b, D] . (P^T [R, D])^T
    blas::gemm_abt(b, R, D, T(1), w.xc.data(), D, pt, D, T(0), w.y.data(), R);

  int64_t n_guarded = 0;
  for (int64_t i = 0; i < b; ++i) {
    const T* yi = w.y.data() + i * R;
    const double nx = w.sq_norm[i], r2 = nx - sq_norm(yi, R);
    if (nx > 0.0 && !(r2 > kExplicitBelow * nx)) {
      std::copy(yi, yi + R, w.y_guarded.data() + n_guarded * R);
      w.guarded[n_guarded++] = i;
    } else {
      r[i] = std::sqrt(std::max(r2, 0.0));
    }
  }
  if (n_guarded > 0) {  // reprojected [g, D] = y_guarded [g, R] . (P [D, R])^T
    blas::gemm_abt(n_guarded, D, R, T(1), w.y_guarded.data(), R, p.data, p.row_stride, T(0),
                   w.reprojected.data(), D);
    for (int64_t g = 0; g < n_guarded; ++g) {
      const int64_t i = w.guarded[g];
      const T* ci = w.xc.data() + i * D;
      const T* zi = w.reprojected.data() + g * D;
      double sq = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        const double e = double(ci[d]) - double(zi[d]);
        sq += e * e;
      }
      r[i] = std::sqrt(sq);
    }
  }
  return bad;
}

}  // namespace

template <typename T>
void residual_scores(MatrixView<const T> features, MatrixView<const T> principal, const T* center,
                     MatrixView<const T> logits, double alpha, T* out, int num_threads) {
  const int64_t N = features.rows, D = features.cols, R = principal.cols;
  GENCORE_CHECK(D >= 1, "residual: features need at least one column");
  GENCORE_CHECK(principal.rows == D, "residual: principal must be [D=", D, ", R], got [", principal.rows,
                ", ", R, "]");
  GENCORE_CHECK(R <= D, "residual: principal has R=", R, " > D=", D, " columns");
  const bool vim = logits.rows > 0;
  GENCORE_CHECK(!vim || logits.rows == N, "vim: logits have ", logits.rows, " rows, features ", N);
  GENCORE_CHECK(std::isfinite(alpha), "vim: alpha must be finite");
  if (N == 0) return;
  if (vim) logit_scores<T>(logits, LogitScore::energy, LogitParams{}, MatrixView<const T>{}, out, num_threads);

  std::vector<T> pt(R * D);  // P^T [R, D]: the GEMM operand with unit stride along D
  for (int64_t d = 0; d < D; ++d)
    for (int64_t j = 0; j < R; ++j) pt[j * D + d] = principal.row(d)[j];

  const int threads0 = std::max(1, num_threads);
  const int64_t block = std::clamp((N + threads0 - 1) / threads0, kMinBlock, kMaxBlock);
  const int64_t blocks = (N + block - 1) / block;
  const int threads = clamp_threads(num_threads, std::min(blocks, N * D * (R + 1) / (int64_t(1) << 18) + 1));
  const SqNorm<T> sq_norm = pick_sq_norm<T>();
  MinIndex first_bad;
  auto make_block = [=] { return Block<T>(block, D, R); };
  parallel_for(blocks, threads, Schedule::fixed, make_block, [&](Block<T>& w, int64_t bi) {
    const int64_t i0 = bi * block, b = std::min(block, N - i0);
    const int64_t bad =
        block_residuals(features, principal, pt.data(), center, i0, b, sq_norm, w, w.r.data());
    if (bad >= 0) first_bad.offer(bad);
    for (int64_t i = 0; i < b; ++i)
      out[i0 + i] = vim ? T(double(out[i0 + i]) - alpha * w.r[i]) : T(-w.r[i]);
  });
  if (first_bad.any()) fail_non_finite_row("features", first_bad.get());
}

template void residual_scores<float>(MatrixView<const float>, MatrixView<const float>, const float*,
                                     MatrixView<const float>, double, float*, int);
template void residual_scores<double>(MatrixView<const double>, MatrixView<const double>, const double*,
                                      MatrixView<const double>, double, double*, int);

}  // namespace gencore::ood
