// Residual (distance to a principal subspace) and ViM scores on the CPU.
//   features [N, D], principal P [D, R] (orthonormal columns), center u [D]
//   -> residual: out [N] = -||(I - P P^T)(x - u)||
//   -> vim:      out [N] = logsumexp(logits [N, C]) - alpha * ||(I - P P^T)(x - u)||
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::ood {

// logits.rows == 0 gives the residual score, otherwise ViM (logits.rows == N).
// Throws std::invalid_argument naming the first feature or logit row with NaN/inf.
// Extra memory per thread: a block of 128 rows of (x - u) [128, D], x P [128, R]
// and the re-projection of guarded rows [128, D]; plus one copy of P^T [R, D].
template <typename T>
void residual_scores(MatrixView<const T> features, MatrixView<const T> principal, const T* center,
                     MatrixView<const T> logits, double alpha, T* out, int num_threads);

}  // namespace gencore::ood
