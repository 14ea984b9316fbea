// Threads: every kernel takes its thread count per call (from
// gencore.set_num_threads on the Python side); nothing here changes global
// OpenMP state, so torch's own runtime is left alone.
//
// Every parallel loop of the CPU kernels is a parallel_for. A C++ exception
// that leaves an OpenMP region calls std::terminate and kills the Python
// process, and anything may throw in a region: a per-thread buffer
// (std::bad_alloc), a BLAS contract check (std::invalid_argument). So
// parallel_for catches inside the region, keeps the first exception of any
// thread, lets the remaining items be skipped, and rethrows it on the calling
// thread after the region, where pybind11 turns it into a Python exception
// (std::bad_alloc -> MemoryError, std::invalid_argument -> ValueError).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <limits>
#include <optional>
#include <type_traits>
#ifdef GENCORE_HAVE_OPENMP
#include <omp.h>
#endif

#include "gencore/config.h"

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

// How items are dealt to threads; the choice is per loop and never global.
enum class Schedule {
  fixed,    // schedule(static): equal contiguous ranges, item i always on the same thread
  dynamic,  // schedule(dynamic, 1): one item at a time, for items of uneven cost
};

// The lowest index any thread reported (the first bad row of a check run in
// parallel, say), so a message can name the same row whatever the schedule.
class MinIndex {
 public:
  void offer(int64_t index) {
    int64_t seen = least_.load(std::memory_order_relaxed);
    while (index < seen && !least_.compare_exchange_weak(seen, index, std::memory_order_relaxed)) {
    }
  }
  bool any() const { return get() != kNone; }
  int64_t get() const { return least_.load(std::memory_order_relaxed); }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> least_{kNone};
};

namespace detail {

// The first exception thrown by any thread of a region. capture() is called
// from a catch block; the slot is written once, by the thread that claimed it,
// and read only after the region's closing barrier.
class FirstError {
 public:
  void capture() noexcept {
    bool expected = false;
    if (claimed_.compare_exchange_strong(expected, true, std::memory_order_relaxed))
      error_ = std::current_exception();
  }
  bool failed() const { return claimed_.load(std::memory_order_relaxed); }
  void rethrow_if_any() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::atomic<bool> claimed_{false};
  std::exception_ptr error_;
};

}  // namespace detail

// Runs body(state, item) for item in [0, n_items) on up to `threads` threads.
// Each thread first makes its own state with make_state() inside the region
// (per-thread buffers, a single-threaded BLAS scope): it lives on that thread
// for all the items it runs and is destroyed at the end of the region. The
// first exception (from make_state or body, on any thread) is rethrown here
// after the region; items not yet started when it was thrown are skipped.
template <typename MakeState, typename Body>
void parallel_for(int64_t n_items, int threads, Schedule schedule, MakeState&& make_state, Body&& body) {
  if (n_items <= 0) return;
  const int team = clamp_threads(threads, n_items);
  if (team == 1) {  // no region to leave: run inline, exceptions propagate as usual
    auto state = make_state();
    for (int64_t item = 0; item < n_items; ++item) body(state, item);
    return;
  }
  using State = std::decay_t<decltype(make_state())>;
  detail::FirstError error;
#pragma omp parallel num_threads(team)
  {
    std::optional<State> state;
    try {
      state.emplace(make_state());
    } catch (...) {
      error.capture();
    }
    // A thread whose state failed still takes part in the worksharing loop
    // (every thread of a team must), it just runs nothing.
    auto run = [&](int64_t item) {
      if (error.failed()) return;
      try {
        body(*state, item);
      } catch (...) {
        error.capture();
      }
    };
    if (schedule == Schedule::dynamic) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < n_items; ++item) run(item);
    } else {
#pragma omp for schedule(static)
      for (int64_t item = 0; item < n_items; ++item) run(item);
    }
  }
  error.rethrow_if_any();
}

// The same without per-thread state: body(item).
template <typename Body>
void parallel_for(int64_t n_items, int threads, Schedule schedule, Body&& body) {
  struct NoState {};
  parallel_for(n_items, threads, schedule, [] { return NoState{}; },
               [&body](NoState&, int64_t item) { body(item); });
}

}  // namespace gencore
