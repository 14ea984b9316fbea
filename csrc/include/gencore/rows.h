// Per-row squared norms with a fused finiteness check: one pass over the data
// that every pairwise kernel needs anyway, so refusing NaN/inf costs nothing
// extra. Accumulates in double, so float32 rows cannot overflow.
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore {

// out[r] = sum_c m[r, c]^2 for r < m.rows. Throws std::invalid_argument naming
// `what` and the first bad row when a row holds NaN or inf (for float64 rows,
// values whose square overflows count as inf).
void squared_row_norms(MatrixView<const float> m, float* out, const char* what, int num_threads);
void squared_row_norms(MatrixView<const double> m, double* out, const char* what, int num_threads);

// One row, per SIMD level (internal; dispatch lives in rows.cpp).
double squared_norm_scalar(const float* row, int64_t n);
double squared_norm_avx2(const float* row, int64_t n);
double squared_norm_avx512(const float* row, int64_t n);

// The squared_norm_* of the SIMD level in use: pick once per call, outside hot loops.
using SquaredNormFn = double (*)(const float* row, int64_t n);
SquaredNormFn squared_norm_kernel();

}  // namespace gencore
