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
// are gathered into shared memory; (3) bitonic sort; (4) write back. The radix
// digit search, the ordered-bits map and the sort are common/select.cuh's.
// Once the list is full, a chunk key can only enter if it is strictly below the
// current k-th key; when no chunk key is, the block returns after one pass and
// the running list is left as it is (the common case late in a large bank).
// Included by knn.cu only (it defines a non-template kernel).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/select.cuh"
#include "common/warp.cuh"

namespace gencore::gpu::knn_detail {

constexpr int kMergeThreads = 256;

// The candidate set of one query, read straight from global memory (L2-resident
// between passes) every time it is scanned. Keys are canonical (pairwise_tile.cuh),
// so ordered_bits gives one pattern per value.
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
      o = ordered_bits(run[p]);
    } else {
      o = ordered_bits(chunk[p - have]);
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

// Block-wide: the threshold t such that exactly kk candidates have composite <= t.
// Returns false (the same in every thread) when no chunk key is a candidate.
__device__ inline bool select_threshold(const MergeCandidates& cand, unsigned kk, unsigned* hist,
                                 RadixState* st, uint64_t& threshold) {
  const int lane = threadIdx.x % 32;
  uint64_t prefix = 0, mask = 0;
  unsigned rank = kk;
  for (int shift = 64 - kRadixBits; shift >= 0; shift -= kRadixBits) {
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
    if (threadIdx.x < 32) {
      const DigitPick pick = find_digit(hist, rank);
      if (threadIdx.x == 0) st->bin = pick.bin, st->before = pick.before, st->total = pick.total;
    }
    __syncthreads();
    if (shift == 64 - kRadixBits && st->total == unsigned(cand.have)) return false;  // no chunk key competes
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
  cand.bound = have == k ? ordered_bits(run_keys[k - 1]) : 0xffffffffu;
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
    run_keys[i] = from_ordered_bits(uint32_t(comp >> 32));
    const int64_t id = int(p) < have ? run_idx[p] : chunk_start + (int64_t(p) - have);
    sorted[i] = uint64_t(id);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kk; i += blockDim.x) run_idx[i] = int64_t(sorted[i]);
}

}  // namespace gencore::gpu::knn_detail
