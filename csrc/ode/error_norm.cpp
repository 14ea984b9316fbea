// Error norm, CPU driver: one pass per row (ode/error_norm_rows.h), rows
// dealt to threads in contiguous ranges (small rows grouped). The finiteness
// check is folded into the pass; only a row whose sum or poison is not clean
// is searched for the input to blame (a zero scale, or a square that
// overflows, is no error).
#include "ode/error_norm.h"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"
#include "ode/error_norm_rows.h"

namespace gencore::ode {

namespace {
#include "ode/lanes_scalar.inc"
#include "ode/error_norm_kernels.inc"
}  // namespace

template <typename T>
ErrorNormSum error_norm_row_portable(const T* err, const T* y, const T* y_new, int64_t n, T atol, T rtol) {
  return error_norm_row<ScalarLanes<T>>(err, y, y_new, n, atol, rtol);
}

namespace {

constexpr int64_t kElementsPerThread = int64_t(1) << 15;

template <typename T>
ErrorNormRowFn<T> pick_row() {
  if constexpr (std::is_same_v<T, float>)
    return pick_isa<ErrorNormRowFn<float>>(error_norm_row_portable<float>, GENCORE_ISA_FN(error_norm_row_f32_avx2),
                                           GENCORE_ISA_FN(error_norm_row_f32_avx512));
  else
    return pick_isa<ErrorNormRowFn<double>>(error_norm_row_portable<double>, GENCORE_ISA_FN(error_norm_row_f64_avx2),
                                            GENCORE_ISA_FN(error_norm_row_f64_avx512));
}

template <typename T>
bool row_finite(const T* p, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (!std::isfinite(p[j])) return false;
  return true;
}

}  // namespace

template <typename T>
void error_norm(MatrixView<const T> err, MatrixView<const T> y, MatrixView<const T> y_new, double atol,
                double rtol, T* out, int num_threads) {
  const int64_t B = err.rows, M = err.cols;
  GENCORE_CHECK(y.rows == B && y.cols == M && y_new.rows == B && y_new.cols == M,
                "ode_error_norm: err, y and y_new must have one shape [B, M]");
  GENCORE_CHECK(atol >= 0 && rtol >= 0 && atol + rtol > 0,
                "ode_error_norm: atol and rtol must be >= 0 and not both 0, got atol=", atol, ", rtol=", rtol);
  const MatrixView<const T>* inputs[] = {&err, &y, &y_new};
  const char* names[] = {"err", "y", "y_new"};
  const ErrorNormRowFn<T> row = pick_row<T>();
  MinIndex first_bad;  // row * 3 + input
  const int threads = clamp_threads(num_threads, B * M / kElementsPerThread + 1);
  parallel_for(B, threads, Schedule::fixed, [&](int64_t b) {
    if (M == 0) {
      out[b] = T(0);
      return;
    }
    const ErrorNormSum s = row(err.row(b), y.row(b), y_new.row(b), M, T(atol), T(rtol));
    if (!s.clean)
      for (int k = 0; k < 3; ++k)
        if (!row_finite(inputs[k]->row(b), M)) first_bad.offer(b * 3 + k);
    out[b] = T(std::sqrt(s.sum / double(M)));
  });
  if (first_bad.any()) fail_non_finite_row(names[first_bad.get() % 3], first_bad.get() / 3);
}

template ErrorNormSum error_norm_row_portable<float>(const float*, const float*, const float*, int64_t, float, float);
template ErrorNormSum error_norm_row_portable<double>(const double*, const double*, const double*, int64_t, double,
                                                      double);
template void error_norm<float>(MatrixView<const float>, MatrixView<const float>, MatrixView<const float>, double,
                                double, float*, int);
template void error_norm<double>(MatrixView<const double>, MatrixView<const double>, MatrixView<const double>,
                                 double, double, double*, int);

}  // namespace gencore::ode
