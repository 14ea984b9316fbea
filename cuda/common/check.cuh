// Error checks for host code: every failure becomes a C++ exception, so
// nothing fails silently or aborts. pybind11 turns std::invalid_argument into
// ValueError and std::runtime_error into RuntimeError.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace gencore::gpu {

// Throws std::runtime_error naming the call, the CUDA error and the source
// location when `err` is not cudaSuccess.
inline void check_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  throw std::runtime_error(std::string("gencore CUDA error: ") + what + " failed with " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") at " +
                           file + ":" + std::to_string(line));
}

// Bad sizes, codes or pointers: std::invalid_argument("gencore._cuda.<op>: <msg>").
[[noreturn]] inline void fail_argument(const char* op, const std::string& msg) {
  throw std::invalid_argument(std::string("gencore._cuda.") + op + ": " + msg);
}

}  // namespace gencore::gpu

// Wraps a runtime call: GENCORE_CUDA_CHECK(cudaSetDevice(device));
#define GENCORE_CUDA_CHECK(call) ::gencore::gpu::check_cuda((call), #call, __FILE__, __LINE__)

// After every kernel launch: a launch error (bad configuration, too much shared
// memory, no kernel image for this GPU) is only visible through cudaGetLastError.
// `name` is a string literal naming the kernel.
#define GENCORE_CUDA_CHECK_LAUNCH(name) \
  ::gencore::gpu::check_cuda(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
