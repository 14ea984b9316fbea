// Mahalanobis distances to class Gaussians with a shared precision, CPU
// (Lee et al. 2018, "A Simple Unified Framework for Detecting OOD Samples").
//   features [Q, D], means [C, D], precision factor L [D, R] with Sigma^-1 = L L^T
//   -> out [Q, C] (reduce none, C-contiguous) or [Q] (reduce min),
//      nearest [Q] int64: the class of the minimum (lowest index on ties)
//   d_c(x) = ||(x - mu_c)^T L||^2
#pragma once
#include <cstdint>

#include "gencore/view.h"

namespace gencore::ood {

enum class MahalanobisReduce : int {
  none = 0,  // every class: out [Q, C]
  min = 1,   // closest class: out [Q]
};

// Inputs must be finite (std::invalid_argument names the first bad argument and
// row); a value that overflows comes out as inf or NaN, and a NaN wins the min.
template <typename T>
void mahalanobis(MatrixView<const T> features, MatrixView<const T> means,
                 MatrixView<const T> factor, MahalanobisReduce reduce, T* out, int64_t* nearest,
                 int num_threads);

}  // namespace gencore::ood
