// AVX-512 row kernels of the error norm: the body of ode/error_norm_kernels.inc
// over the lanes of ode/lanes_avx512.inc.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "ode/error_norm_rows.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"

namespace gencore::ode {
namespace {
#include "ode/lanes_scalar.inc"
#include "ode/lanes_avx512.inc"
#include "ode/error_norm_kernels.inc"
}  // namespace

ErrorNormSum error_norm_row_f32_avx512(const float* err, const float* y, const float* y_new, int64_t n, float atol,
                                     float rtol) {
  return error_norm_row<Lanes512f>(err, y, y_new, n, atol, rtol);
}

ErrorNormSum error_norm_row_f64_avx512(const double* err, const double* y, const double* y_new, int64_t n,
                                     double atol, double rtol) {
  return error_norm_row<Lanes512d>(err, y, y_new, n, atol, rtol);
}

}  // namespace gencore::ode

#include "gencore/isa_end.h"
