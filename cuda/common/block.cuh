// Block-wide reductions. Every thread of the block must call them (they end
// in barriers), blockDim.x must be a multiple of 32 (at most 1024), and every
// thread gets the result. The warps' partials are combined by every thread in
// the same order, so all threads (and all runs) get the same bits.
#pragma once
#include <cuda_runtime.h>

#include "common/warp.cuh"

namespace gencore::gpu {

// op(a, b): an associative combination (a sum, a min, an or). scratch: 32
// values of shared memory, free for the call (it may be reused right after).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  __syncthreads();  // the previous reduction's readers are done with scratch
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = scratch[0];
  for (int i = 1; i < warps; ++i) v = op(v, scratch[i]);
  return v;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

}  // namespace gencore::gpu
