// Row kernel of the error norm (csrc/ode/error_norm.cpp drives it), one per
// SIMD level and dtype, all from one body (ode/error_norm_kernels.inc).
#pragma once
#include <cstdint>

#include "gencore/config.h"

namespace gencore::ode {

struct ErrorNormSum {
  double sum;  // sum_j (err_j / (atol + rtol max(|y_j|, |y_new_j|)))^2
  bool clean;  // no NaN or inf reached it (else the driver looks for an input to blame)
};

template <typename T>
using ErrorNormRowFn = ErrorNormSum (*)(const T* err, const T* y, const T* y_new, int64_t n, T atol, T rtol);

template <typename T>
ErrorNormSum error_norm_row_portable(const T* err, const T* y, const T* y_new, int64_t n, T atol, T rtol);
ErrorNormSum error_norm_row_f32_avx2(const float* err, const float* y, const float* y_new, int64_t n, float atol,
                                     float rtol);
ErrorNormSum error_norm_row_f64_avx2(const double* err, const double* y, const double* y_new, int64_t n,
                                     double atol, double rtol);
ErrorNormSum error_norm_row_f32_avx512(const float* err, const float* y, const float* y_new, int64_t n,
                                       float atol, float rtol);
ErrorNormSum error_norm_row_f64_avx512(const double* err, const double* y, const double* y_new, int64_t n,
                                       double atol, double rtol);

}  // namespace gencore::ode
