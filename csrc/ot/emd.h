// Exact optimal transport between discrete measures by the network simplex
// (Ahuja, Magnanti & Orlin, "Network Flows", ch. 11), batched over problems.
//
// Problem k: minimise sum_ij P_ij C_ij over P >= 0 with row sums a_k and
// column sums b_k (b_k is rescaled to the total of a_k; the caller checks
// that the totals agree). Every problem is solved in float64 whatever T is.
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::ot {

enum class EmdStatus : int64_t {
  optimal = 0,          // no arc with reduced cost below -tolerance
  iteration_limit = 1,  // max_iter pivots done: the plan is feasible, not (proven) optimal
  infeasible = 2,       // mass left on the artificial arcs at the end (totals that disagree)
};

// B problems n x m. Weights are float64 [B, n] / [B, m], contiguous; problem
// k's cost row i starts at cost + k * cost_batch_stride + i * cost_row_stride.
template <typename T>
struct EmdProblems {
  int64_t batch = 0, n = 0, m = 0;
  const double* a = nullptr;
  const double* b = nullptr;
  const T* cost = nullptr;
  int64_t cost_batch_stride = 0, cost_row_stride = 0;
};

// Caller-owned outputs, K = n + m - 1 (the most basic arcs a plan can use).
struct EmdOutputs {
  double* cost = nullptr;     // [B] sum_ij P_ij C_ij
  int64_t* index = nullptr;   // [B, 2, K] rows then columns of the plan's entries, sorted by (row, col), -1 padded
  double* mass = nullptr;     // [B, K] the entries' mass (> 0), 0 padded
  int64_t* nnz = nullptr;     // [B] entries used
  double* u = nullptr;        // [B, n] row duals
  double* v = nullptr;        // [B, m] column duals, u_i + v_j <= C_ij, = on the support, a.u = b.v
  int64_t* n_iter = nullptr;  // [B] pivots
  int64_t* status = nullptr;  // [B] EmdStatus
};

// Solves the B problems, up to `threads` at a time (one problem per thread).
// Throws std::invalid_argument naming "M" when a cost is NaN or inf.
template <typename T>
void emd(const EmdProblems<T>& problems, int64_t max_iter, const EmdOutputs& out, int threads);

}  // namespace gencore::ot
