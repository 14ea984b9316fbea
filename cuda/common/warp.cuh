// Full-warp reductions. Every lane of the warp must call them (they shuffle
// with the full mask) and every lane gets the result.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ double warp_max(double v) {
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// (value, index) of the lane pair that `before(a, ia, b, ib)` ranks first.
// `before` must be a strict order that decides between any two pairs with
// different indices (the callers break equal values by the lower index), so
// the answer does not depend on the butterfly's pairing.
template <typename Before>
__device__ __forceinline__ void warp_arg_best(float& v, int64_t& at, Before before) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, off);
    const int64_t oat = __shfl_xor_sync(kFullMask, at, off);
    if (before(ov, oat, v, at)) v = ov, at = oat;
  }
}

}  // namespace gencore::gpu
