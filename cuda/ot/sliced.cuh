// The 1-D step of sliced Wasserstein on the GPU, float32 points and float64
// cumulative weights. The glue sorts each projection (torch's segmented sort)
// and passes the sorted rows; this kernel integrates the distance between the
// two quantile functions and, optionally, its gradient, one block per row.
//
// Row k: W_p^p = sum_{i,j} overlap_ij |xs_ki - ys_kj|^p, overlap_ij the length of
// [cx_k,i-1, cx_ki) ∩ [cy_k,j-1, cy_kj) (cx, cy: cumulative weights, ascending,
// cx_k,-1 = cy_k,-1 = 0; the last interval of each reaches max(cx_k,n-1, cy_k,m-1),
// so rounding of the totals loses no mass). The same expression, in the rows'
// sorted order, as gencore.ot.reference.wasserstein_1d and the CPU kernel.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

// xs [P, n], ys [P, m] float32, sorted ascending per row; cx [P, n], cy [P, m]
// float64 cumulative weights per row. out [P] = W_p^p (float32). grad_xs [P, n],
// grad_ys [P, m] (both null, or both set) = d W_p^p / d xs, d ys in the sorted
// order, each element summed by one thread in a fixed order (deterministic); 0
// for a coinciding pair when p <= 1. All contiguous. Queued on `stream`; no
// workspace; never synchronises. Throws std::invalid_argument for P, n, m < 0,
// n or m == 0 with P > 0, p <= 0 or a null pointer.
void sliced_1d(const float* xs, const float* ys, const double* cx, const double* cy, int64_t P, int64_t n,
               int64_t m, double p, float* out, float* grad_xs, float* grad_ys, cudaStream_t stream, int device);

}  // namespace gencore::gpu
