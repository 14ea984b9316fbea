// Pieces of radix selection and sorting on the GPU, shared by the top-k
// selections (kNN's running merge, GEN's top-M of a logit row).
//
// Radix select finds the rank-th smallest key of a set MSB-first, 8 bits per
// pass: a pass histograms the digit of the keys that match the digits found
// so far, and find_digit says which digit holds the rank-th key. Larger-first
// selections select on ~ordered_bits(v), which reverses the order.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/warp.cuh"

namespace gencore::gpu {

constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;

// Order-preserving map float -> uint32 (a < b implies ordered_bits(a) <
// ordered_bits(b); -0 sorts just below +0, NaNs by payload above +inf or below
// -inf, so callers that need one key per value canonicalise first), and its inverse.
__device__ __forceinline__ uint32_t ordered_bits(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float from_ordered_bits(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

struct DigitPick {
  unsigned bin;     // the digit that holds the rank-th key
  unsigned before;  // keys in lower digits (so the next pass looks for rank - before)
  unsigned total;   // keys in the histogram
};

// Warp-cooperative (all 32 lanes; every lane returns the same pick):
// hist [kRadixBins], rank 1-based with 1 <= rank <= total. Each lane owns 8
// consecutive bins; a warp scan over the lanes' sums finds the lane that
// crosses rank, which then walks its own bins.
__device__ __forceinline__ DigitPick find_digit(const unsigned* hist, unsigned rank) {
  constexpr int kPerLane = kRadixBins / 32;
  const int lane = threadIdx.x % 32;
  const int first = lane * kPerLane;
  unsigned local = 0;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) local += hist[first + j];
  unsigned inclusive = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const unsigned v = __shfl_up_sync(kFullMask, inclusive, off);
    if (lane >= off) inclusive += v;
  }
  const unsigned exclusive = inclusive - local;
  int bin = -1;
  unsigned before = 0;
  if (exclusive < rank && rank <= inclusive) {  // exactly one lane
    unsigned running = exclusive;
    for (int j = 0; j < kPerLane; ++j) {
      const unsigned h = hist[first + j];
      if (running + h >= rank) {
        bin = first + j;
        before = running;
        break;
      }
      running += h;
    }
  }
  const int src = __ffs(__ballot_sync(kFullMask, bin >= 0)) - 1;
  DigitPick pick;
  pick.bin = unsigned(__shfl_sync(kFullMask, bin, src));
  pick.before = __shfl_sync(kFullMask, before, src);
  pick.total = __shfl_sync(kFullMask, inclusive, 31);
  return pick;
}

// Block-wide ascending bitonic sort of n (a power of two) keys in shared
// memory. The caller puts a barrier before it (the keys must be in place); for
// n >= 2 it ends with one, so the sorted keys are visible to every thread.
__device__ inline void bitonic_sort(uint64_t* a, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int i = 2 * t - (t & (stride - 1));  // lower element of pair t
        const int j = i + stride;
        const bool ascending = (i & size) == 0;
        const uint64_t x = a[i], y = a[j];
        if ((x > y) == ascending) {
          a[i] = y;
          a[j] = x;
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace gencore::gpu
