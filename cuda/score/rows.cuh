// Row loops of the score family's memory-bound kernels (DSM loss and its
// backward, the DMD gradient, the data-set denoiser's tile epilogue).
//
// Rows of M floats are cut into segments of kSegment elements, one warp per
// segment and kSegmentWarps warps per block: a small M gives one segment per
// row and so several rows per block; a large M gives many warps per row, so a
// batch of a few huge rows still fills the GPU. Row reductions over several
// segments go through per-segment partial sums (double) in caller workspace,
// summed in a fixed order by a second kernel: deterministic, no atomics.
//
// Inside a segment or a row, lanes stride over the elements 4 at a time
// (float4) when every row pointer involved is 16-byte aligned (M % 4 == 0 and
// 16-byte aligned bases), else one at a time; both are coalesced.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "common/launch.cuh"
#include "common/warp.cuh"
#include "common/workspace.cuh"

namespace gencore::gpu::score_rows {

constexpr int kSegmentWarps = 8;
constexpr int kSegmentThreads = kSegmentWarps * 32;
constexpr int64_t kSegment = 4096;  // elements per warp: 32 float4 a lane per array

// Segments per row of M >= 0 elements (1 for M <= kSegment, M = 0 included).
inline int64_t segments_per_row(int64_t M) { return std::max<int64_t>(1, ceil_div(M, kSegment)); }

// The partial sums a split row reduction needs: B x S doubles when S =
// segments_per_row(M) > 1, nothing otherwise.
inline WorkspaceLayout partials_layout(int64_t B, int64_t M, int64_t& offset) {
  WorkspaceLayout layout;
  const int64_t S = segments_per_row(M);
  offset = layout.reserve<double>(S > 1 ? B * S : 0);
  return layout;
}

// Blocks of kSegmentWarps segment-warps covering B rows of S segments.
inline unsigned segment_blocks(int64_t B, int64_t S, const char* op) { return blocks_for(B * S, kSegmentWarps, op); }

// True when rows of M floats at each pointer can be read as float4.
inline bool vec4_rows(int64_t M, std::initializer_list<const void*> ptrs) {
  if (M % 4 != 0) return false;
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// One warp's segment: elements [begin, end) of row `row`, segment `index` of S.
struct Segment {
  int64_t row, index, begin, end;
};

// The segment of the calling warp; false for warps past the last segment
// (whole warps, so full-warp shuffles stay legal for those that continue).
__device__ __forceinline__ bool warp_segment(int64_t B, int64_t M, int64_t S, Segment& s) {
  const int64_t g = int64_t(blockIdx.x) * kSegmentWarps + threadIdx.x / 32;
  if (g >= B * S) return false;
  s.row = g / S;
  s.index = g - s.row * S;
  s.begin = s.index * kSegment;
  s.end = std::min(M, s.begin + kSegment);
  return true;
}

template <int W>
struct Floats {
  float v[W];
};

template <int W>
__device__ __forceinline__ Floats<W> load(const float* p) {
  Floats<W> f;
  if constexpr (W == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    f.v[0] = q.x, f.v[1] = q.y, f.v[2] = q.z, f.v[3] = q.w;
  } else {
    static_assert(W == 1, "1 or 4 floats");
    f.v[0] = p[0];
  }
  return f;
}

template <int W>
__device__ __forceinline__ void store(float* p, const Floats<W>& f) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(f.v[0], f.v[1], f.v[2], f.v[3]);
  } else {
    p[0] = f.v[0];
  }
}

template <int W>
using Width = std::integral_constant<int, W>;

// body(j, Width<W>) for j = begin + W * first, + W * stride, ... < end, with
// W = 4 (kVec4: begin, end multiples of 4) or 1. `first` is the lane (or
// thread) index, `stride` the lanes (threads) sharing the range.
template <bool kVec4, typename Body>
__device__ __forceinline__ void for_each(int64_t begin, int64_t end, int first, int stride, Body&& body) {
  constexpr int W = kVec4 ? 4 : 1;
#pragma unroll 4
  for (int64_t j = begin + int64_t(W) * first; j < end; j += int64_t(W) * stride) body(j, Width<W>{});
}

// Sum of a row's S partials (lanes strided, then the warp's butterfly: a fixed
// order, so every warp of the row gets the same bits). Every lane gets it.
__device__ __forceinline__ double sum_partials(const double* __restrict__ p, int64_t S, int lane) {
  double v = 0.0;
  for (int64_t i = lane; i < S; i += 32) v += p[i];
  return warp_sum(v);
}

}  // namespace gencore::gpu::score_rows
