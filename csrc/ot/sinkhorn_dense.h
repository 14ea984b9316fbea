// Log-domain Sinkhorn on given dense cost matrices: a batch of independent
// problems, the whole iteration loop native (gencore.ot.sinkhorn_cost_matrix).
//
// Problem b, with weights a [n], b [m] (>= 0, some positive) and cost C [n, m]:
//   f, g = 0; then for it = 1, 2, ...:
//     f~_i  = -reg damping log sum_j exp(log b_j + g_j / reg - C_ij / reg)
//     error = sum_i a_i |1 - exp(min((f_i - f~_i) / reg, 60))| / sum_i a_i
//     f = f~
//     g_j   = -reg damping log sum_i exp(log a_i + f_i / reg - C_ij / reg)
//     stop when error <= tol (converged), when error has not improved on its
//     best for `plateau` iterations (plateau: float rounding floor), or at max_iter;
// the alternating (Gauss-Seidel) updates of POT's sinkhorn_log: after g's update
// the column marginals hold (balanced problems), so the row residual of f is the
// marginal error. damping = 1 / (1 + reg / rho) relaxes the marginals (unbalanced
// OT), 1 balanced. Each problem stops on its own. Specification:
// gencore.ot.reference.sinkhorn_dense (python/gencore/ot/reference.py).
//
// One iteration reads C once, in memory order: each row's log-sum-exp is two
// passes over that row (the max, then the exponentials: nothing can overflow
// at any reg), and the columns' log-sum-exps are running ones fed row by row
// (see DenseProblem in sinkhorn_dense.cpp).
#pragma once
#include <cstdint>

namespace gencore::ot {

enum class DenseSinkhornStatus : int64_t { converged = 0, max_iter = 1, plateau = 2 };

template <typename T>
struct DenseSinkhornProblems {
  int64_t batch = 0, n = 0, m = 0;
  const T* cost = nullptr;          // problem b, row i: cost + b * cost_batch_stride + i * cost_row_stride, m contiguous
  int64_t cost_row_stride = 0, cost_batch_stride = 0;
  const T* a = nullptr;             // [batch, n] contiguous
  const T* b = nullptr;             // [batch, m] contiguous
};

struct DenseSinkhornParams {
  double reg = 1.0, damping = 1.0, tol = 1e-6;
  int64_t max_iter = 1, plateau = 40;
};

template <typename T>
struct DenseSinkhornOutputs {
  T* f = nullptr;                   // [batch, n]
  T* g = nullptr;                   // [batch, m]
  int64_t* n_iter = nullptr;        // [batch]
  double* error = nullptr;          // [batch], the last measured error
  int64_t* status = nullptr;        // [batch], DenseSinkhornStatus
};

// Runs every problem; threads go to whole problems when there are enough of
// them, else to blocks of rows of each problem. Extra memory per problem in
// flight: n + (3 + 2 blocks) m values. Throws std::invalid_argument on bad
// sizes or parameters (reg <= 0, max_iter < 1, ...).
template <typename T>
void sinkhorn_dense(const DenseSinkhornProblems<T>& problems, const DenseSinkhornParams& params,
                    const DenseSinkhornOutputs<T>& out, int threads);

// Row primitives of one SIMD level; float32 has one table per level (each in its
// own translation unit), the portable template (sinkhorn_dense.cpp) serves
// float64 and the scalar level. v_j = h[j] - c[j] * inv_reg throughout, formed
// the same way (one fused multiply-add) in every pass, so v_j - max <= 0 exactly.
template <typename T>
struct SinkhornRowOps {
  // max_j v_j over j < n (n >= 1).
  T (*shifted_max)(const T* c, const T* h, T inv_reg, int64_t n);
  // sum_j exp(v_j - shift), in double.
  double (*shifted_exp_sum)(const T* c, const T* h, T inv_reg, T shift, int64_t n);
  // One row's terms v_j = h_i - c[j] * inv_reg into running column log-sum-exps:
  // col_max[j] = max(col_max[j], v_j) (col_sum[j] rescaled to it first), then
  // col_sum[j] += exp(v_j - col_max[j]).
  void (*column_accumulate)(const T* c, T h_i, T inv_reg, T* col_max, T* col_sum, int64_t n);
};

SinkhornRowOps<float> sinkhorn_row_ops_avx2();
SinkhornRowOps<float> sinkhorn_row_ops_avx512();

}  // namespace gencore::ot
