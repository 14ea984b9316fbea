// Test-only entry points (underscore names): they exist so the test suite can
// prove properties of the runtime that no real input triggers on demand.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "gencore/check.h"
#include "gencore/parallel.h"

namespace gencore::bindings {
namespace py = pybind11;

namespace {

// What one item (or one thread's state) does when it is the chosen one.
void fail_as(const std::string& kind, int64_t where) {
  if (kind == "invalid_argument") fail("_test_parallel_throw: invalid_argument at ", where);
  if (kind == "bad_alloc") {
    // A real failed allocation: more doubles than the address space holds.
    std::vector<double> huge;
    huge.resize(huge.max_size());
    throw std::logic_error("_test_parallel_throw: the impossible allocation succeeded");
  }
  fail("_test_parallel_throw: unknown kind '", kind, "'");
}

// Runs a parallel_for over n_items with a fixed schedule (so every one of the
// threads gets items) and throws as asked:
//   kind "invalid_argument" / "bad_alloc": the body, at item throw_at;
//   kind "state:invalid_argument" / "state:bad_alloc": make_state, on the
//   thread whose id is throw_at.
// throw_at < 0 throws nothing. Returns how many distinct threads ran items.
int parallel_throw(int64_t n_items, int threads, int64_t throw_at, const std::string& kind) {
  const std::string state_prefix = "state:";
  const bool in_state = kind.rfind(state_prefix, 0) == 0;
  const std::string what = in_state ? kind.substr(state_prefix.size()) : kind;
  std::vector<std::atomic<bool>> ran(std::max(threads, 1));
  auto make_state = [&] {
    const int id = thread_id();
    if (in_state && id == throw_at) fail_as(what, id);
    return id;
  };
  parallel_for(n_items, threads, Schedule::fixed, make_state, [&](int id, int64_t item) {
    ran[id].store(true);
    if (!in_state && item == throw_at) fail_as(what, item);
  });
  int count = 0;
  for (const auto& r : ran) count += r.load();
  return count;
}

}  // namespace

void bind_test_hooks(py::module_& m) {
  m.def(
      "_test_parallel_throw",
      [](int64_t n_items, int threads, int64_t throw_at, const std::string& kind) {
        py::gil_scoped_release release;
        return parallel_throw(n_items, threads, throw_at, kind);
      },
      py::arg("n_items"), py::arg("threads"), py::arg("throw_at"), py::arg("kind"),
      "Test hook: a parallel_for whose item (or, for kind 'state:...', whose thread's state)\n"
      "throw_at throws std::invalid_argument or std::bad_alloc; returns the number of threads\n"
      "that ran items.");
}

}  // namespace gencore::bindings
