// Running top-k of the exact kNN: merges one chunk of keys into each query's
// current k best, in place.
//   run keys [qs, k] + run indices [qs, k] (sorted, first `have` valid)
//   + chunk keys [qs, ldk] (first nc valid)  ->  run [qs, k] (first kk valid, sorted)
//
// One block per query. Candidates are numbered by position p: the running list
// first (p < have), then the chunk (p = have + j for bank row chunk_start + j).
// Every running entry comes from an earlier chunk, so it has a lower bank index
// than any chunk entry, and the running list is sorted by (key, index); hence
// ordering candidates by (key, p) is the same as by (key, bank index), and the
// 64-bit composite (ordered key bits << 32 | p) is a total order with no ties
// that encodes "smaller key first, lower index on equal keys".
//
// Steps: (1) MSB-first radix select, 8 bits per pass over the composite, finds
// the threshold t with exactly kk candidates <= t (usually 4 passes: the key
// bits; the position bits only matter for equal keys); (2) those kk composites
// are gathered into shared memory; (3) bitonic sort; (4) write back.
// Once the list is full, a chunk key can only enter if it is strictly below the
// current k-th key; when no chunk key is, the block returns after one pass and
// the running list is left as it is (the common case late in a large bank).
// Included by knn.cu only (it defines a non-template kernel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu::knn_detail {

constexpr int kMergeThreads = 256;
constexpr int kRadixBins = 256;  // 8 bits per pass
constexpr unsigned kFullMask = 0xffffffffu;

// Order-preserving map float -> uint32 (for canonical keys: -0 and NaN payloads
// are normalised in knn_tile.cuh), and its inverse.
__device__ __forceinline__ uint32_t key_to_ordered(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float ordered_to_key(uint32_t o) {
  return __uint_as_float((o & 0x80000000u) ? (o & 0x7fffffffu) : ~o);
}

// The candidate set of one query, read straight from global memory (L2-resident
// between passes) every time it is scanned.
struct MergeCandidates {
  const float* run;    // [have] running keys
  const float* chunk;  // [nc] chunk keys
  int have;
  int count;           // have + nc
  uint32_t bound;      // a chunk key competes only if its ordered bits are below this

  // False when p is not a candidate; else its composite in `comp`.
  __device__ __forceinline__ bool get(int p, uint64_t& comp) const {
    if (p >= count) return false;
    uint32_t o;
    if (p < have) {
      o = key_to_ordered(run[p]);
    } else {
      o = key_to_ordered(chunk[p - have]);
      if (o >= bound) return false;
    }
    comp = (uint64_t(o) << 32) | uint32_t(p);
    return true;
  }
};

struct RadixState {
  unsigned bin;     // digit of the pass that holds the rank-th candidate
  unsigned before;  // candidates (matching the prefix) in lower digits
  unsigned total;   // candidates matching the prefix
  unsigned taken;   // gather counter
};

// Warp 0 only: finds the digit holding the rank-th (1-based) element of `hist`.
// Each lane owns 8 consecutive bins; a warp scan gives the lane that crosses.
__device__ __forceinline__ void find_bin(const unsigned* hist, unsigned rank, RadixState* st) {
  const int lane = threadIdx.x % 32;
  const int first = lane * (kRadixBins / 32);
  unsigned local = 0;
#pragma unroll
  for (int j = 0; j < kRadixBins / 32; ++j) local += hist[first + j];
  unsigned inclusive = local;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const unsigned v = __shfl_up_sync(kFullMask, inclusive, off);
    if (lane >= off) inclusive += v;
  }
  const unsigned exclusive = inclusive - local;
  if (exclusive < rank && rank <= inclusive) {  // exactly one lane
    unsigned running = exclusive;
    for (int j = 0; j < kRadixBins / 32; ++j) {
      const unsigned h = hist[first + j];
      if (running + h >= rank) {
        st->bin = unsigned(first + j);
        st->before = running;
        break;
      }
      running += h;
    }
  }
  if (lane == 31) st->total = inclusive;
}

// Block-wide: the threshold t such that exactly kk candidates have composite <= t.
// Returns false (the same in every thread) when no chunk key is a candidate.
__device__ inline bool select_threshold(const MergeCandidates& cand, unsigned kk, unsigned* hist,
                                 RadixState* st, uint64_t& threshold) {
  const int lane = threadIdx.x % 32;
  uint64_t prefix = 0, mask = 0;
  unsigned rank = kk;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    // Whole warps iterate together (blockDim is a multiple of 32) so the
    // warp-aggregated atomics below see every lane: lanes with the same digit
    // add once, which matters because most keys share their top bits.
    for (int base = 0; base < cand.count; base += blockDim.x) {
      uint64_t comp = 0;
      const bool valid = cand.get(base + int(threadIdx.x), comp) && (comp & mask) == prefix;
      const unsigned digit = valid ? unsigned(comp >> shift) & (kRadixBins - 1) : kRadixBins;
      const unsigned peers = __match_any_sync(kFullMask, digit);
      if (valid && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], unsigned(__popc(peers)));
    }
    __syncthreads();
    if (threadIdx.x < 32) find_bin(hist, rank, st);
    __syncthreads();
    if (shift == 56 && st->total == unsigned(cand.have)) return false;  // no chunk key competes
    const unsigned bin = st->bin;
    prefix |= uint64_t(bin) << shift;
    mask |= uint64_t(kRadixBins - 1) << shift;
    rank -= st->before;
    const bool done = hist[bin] == rank;  // all of this bin is needed: no finer digits
    __syncthreads();                      // hist and st are rewritten by the next pass
    if (done) {
      threshold = prefix | (shift > 0 ? (uint64_t(1) << shift) - 1 : 0);
      return true;
    }
  }
  threshold = prefix;  // unreachable: at shift 0 every bin holds at most one composite
  return true;
}

// Block-wide ascending bitonic sort of n (a power of two) keys in shared memory.
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

// grid: one block per query of the slab; dynamic shared memory: sort_size * 8 bytes.
// kk = min(k, have + nc); sort_size = the next power of two >= kk (<= kKnnMaxK).
__global__ void __launch_bounds__(kMergeThreads)
    knn_merge_kernel(const float* __restrict__ chunk_keys, int64_t ldk, int nc,
                     int64_t chunk_start, float* run_keys, int64_t* run_idx, int k, int have,
                     int kk, int sort_size) {
  extern __shared__ uint64_t sorted[];  // [sort_size]
  __shared__ unsigned hist[kRadixBins];
  __shared__ RadixState st;

  const int64_t q = blockIdx.x;
  run_keys += q * k;
  run_idx += q * k;
  MergeCandidates cand;
  cand.run = run_keys;
  cand.chunk = chunk_keys + q * ldk;
  cand.have = have;
  cand.count = have + nc;
  // Full list: a chunk key equal to the k-th key loses on index, so strictly below.
  cand.bound = have == k ? key_to_ordered(run_keys[k - 1]) : 0xffffffffu;
  if (threadIdx.x == 0) st.taken = 0;  // published by the barriers in select_threshold

  uint64_t threshold = 0;
  if (!select_threshold(cand, unsigned(kk), hist, &st, threshold)) return;

  // Gather the kk winners (any order; warp-aggregated slot allocation).
  const int lane = threadIdx.x % 32;
  for (int base = 0; base < cand.count; base += blockDim.x) {
    uint64_t comp = 0;
    const bool take = cand.get(base + int(threadIdx.x), comp) && comp <= threshold;
    const unsigned ballot = __ballot_sync(kFullMask, take);
    unsigned slot = 0;
    if (lane == 0 && ballot != 0) slot = atomicAdd(&st.taken, unsigned(__popc(ballot)));
    slot = __shfl_sync(kFullMask, slot, 0);
    if (take) sorted[slot + unsigned(__popc(ballot & ((1u << lane) - 1)))] = comp;
  }
  for (int i = kk + threadIdx.x; i < sort_size; i += blockDim.x) sorted[i] = ~uint64_t(0);
  __syncthreads();
  bitonic_sort(sorted, sort_size);

  // Write back in place. Old keys are no longer read; old indices are read in
  // the first loop and overwritten in the second, after a barrier. The sort
  // slot of entry i is reused to hold its bank index in between.
  for (int i = threadIdx.x; i < kk; i += blockDim.x) {
    const uint64_t comp = sorted[i];
    const uint32_t p = uint32_t(comp);
    run_keys[i] = ordered_to_key(uint32_t(comp >> 32));
    const int64_t id = int(p) < have ? run_idx[p] : chunk_start + (int64_t(p) - have);
    sorted[i] = uint64_t(id);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kk; i += blockDim.x) run_idx[i] = int64_t(sorted[i]);
}

}  // namespace gencore::gpu::knn_detail
