#include "gencore/rows.h"

#include <cmath>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"

namespace gencore {
namespace {

double squared_norm_f64(const double* row, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += row[i] * row[i];
  return acc;
}

template <typename T, typename Norm>
void row_norms(MatrixView<const T> m, T* out, const char* what, int num_threads, Norm norm) {
  MinIndex first_bad;
  const int threads = clamp_threads(num_threads, m.rows * m.cols / (1 << 16) + 1);
  parallel_for(m.rows, threads, Schedule::fixed, [&](int64_t r) {
    const double sq = norm(m.row(r), m.cols);
    if (!std::isfinite(sq)) first_bad.offer(r);
    out[r] = T(sq);
  });
  if (first_bad.any()) fail_non_finite_row(what, first_bad.get());
}

}  // namespace

double squared_norm_scalar(const float* row, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += double(row[i]) * double(row[i]);
  return acc;
}

SquaredNormFn squared_norm_kernel() {
  return pick_isa(squared_norm_scalar, GENCORE_ISA_FN(squared_norm_avx2),
                  GENCORE_ISA_FN(squared_norm_avx512));
}

void squared_row_norms(MatrixView<const float> m, float* out, const char* what, int num_threads) {
  row_norms(m, out, what, num_threads, squared_norm_kernel());
}

void squared_row_norms(MatrixView<const double> m, double* out, const char* what, int num_threads) {
  row_norms(m, out, what, num_threads, squared_norm_f64);
}

}  // namespace gencore
