// Threads: every kernel takes its thread count per call (from
// gencore.set_num_threads on the Python side); nothing here changes global
// OpenMP state, so torch's own runtime is left alone.
#pragma once
#include <algorithm>
#include <cstdint>
#ifdef GENCORE_HAVE_OPENMP
#include <omp.h>
#endif

namespace gencore {

inline bool openmp_enabled() {
#ifdef GENCORE_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

inline int clamp_threads(int requested, int64_t work_items) {
  if (!openmp_enabled()) return 1;
  int64_t n = std::max<int64_t>(1, std::min<int64_t>(requested, work_items));
  return static_cast<int>(n);
}

inline int thread_id() {
#ifdef GENCORE_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace gencore
