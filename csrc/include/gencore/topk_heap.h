// Bounded max-heap of the k best (smallest) keys seen so far, ordered by
// (key, index) so that ties go to the lower index and results are deterministic.
// Storage is caller-owned (one slice of a per-thread arena per query). Shared by
// every family that selects a top-k (kNN, GEN's top-M logits, ...).
//
// The operations live in an anonymous namespace on purpose: the AVX2 and
// AVX-512 scans inline them. Included before an ISA unit's target region
// (gencore/isa_begin.h) they are baseline code anyway; internal linkage also
// guarantees that no unit's copy is ever merged with another's.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>

#include "gencore/config.h"

namespace gencore {

template <typename T>
struct TopKHeap {
  T* keys;
  int64_t* ids;
  int64_t k;
  int64_t size;
};

namespace {

template <typename T>
inline bool heap_full(const TopKHeap<T>& h) { return h.size == h.k; }

// Keys at or above this cannot enter (they would have a larger index than every
// resident, which scans in increasing index order guarantee).
template <typename T>
inline T heap_threshold(const TopKHeap<T>& h) {
  return heap_full(h) ? h.keys[0] : std::numeric_limits<T>::infinity();
}

template <typename T>
inline bool worse(T ka, int64_t ia, T kb, int64_t ib) { return ka > kb || (ka == kb && ia > ib); }

template <typename T>
inline void heap_sift_down(TopKHeap<T>& h, int64_t i, int64_t n, T key, int64_t id) {
  for (;;) {
    int64_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && worse(h.keys[child + 1], h.ids[child + 1], h.keys[child], h.ids[child])) ++child;
    if (!worse(h.keys[child], h.ids[child], key, id)) break;
    h.keys[i] = h.keys[child];
    h.ids[i] = h.ids[child];
    i = child;
  }
  h.keys[i] = key;
  h.ids[i] = id;
}

// Replaces the worst resident; the caller guarantees (key, id) beats it.
template <typename T>
inline void heap_replace_top(TopKHeap<T>& h, T key, int64_t id) { heap_sift_down(h, 0, h.size, key, id); }

// Offers (key, id) regardless of the threshold; NaN keys (overflowed
// distances) rank as +inf so the heap order stays valid.
template <typename T>
inline void heap_offer(TopKHeap<T>& h, T key, int64_t id) {
  if (std::isnan(key)) key = std::numeric_limits<T>::infinity();
  if (!heap_full(h)) {
    int64_t i = h.size++;
    while (i > 0) {
      int64_t parent = (i - 1) / 2;
      if (!worse(key, id, h.keys[parent], h.ids[parent])) break;
      h.keys[i] = h.keys[parent];
      h.ids[i] = h.ids[parent];
      i = parent;
    }
    h.keys[i] = key;
    h.ids[i] = id;
  } else if (worse(h.keys[0], h.ids[0], key, id)) {
    heap_replace_top(h, key, id);
  }
}

// Heapsort in place: afterwards keys/ids are ascending by (key, id).
template <typename T>
inline void heap_sort_ascending(TopKHeap<T>& h) {
  for (int64_t end = h.size - 1; end > 0; --end) {
    T key = h.keys[end];
    int64_t id = h.ids[end];
    h.keys[end] = h.keys[0];
    h.ids[end] = h.ids[0];
    heap_sift_down(h, 0, end, key, id);
  }
}

}  // namespace

}  // namespace gencore
