// Error checks for the CUDA runtime: every failure becomes a C++ exception
// (std::runtime_error -> RuntimeError in Python) naming the call, the CUDA
// error and the source location, so nothing fails silently or aborts.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace gencore::gpu {

// Throws std::runtime_error when `err` is not cudaSuccess.
inline void check_cuda(cudaError_t err, const char* what, const char* file, int line) {
  if (err == cudaSuccess) return;
  throw std::runtime_error(std::string("gencore CUDA error: ") + what + " failed with " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") at " +
                           file + ":" + std::to_string(line));
}

}  // namespace gencore::gpu

// Wraps a runtime call: GENCORE_CUDA_CHECK(cudaMallocAsync(&p, bytes, stream));
#define GENCORE_CUDA_CHECK(call) ::gencore::gpu::check_cuda((call), #call, __FILE__, __LINE__)

// After every kernel launch: a launch error (bad configuration, too much shared
// memory, no kernel image for this GPU) is only visible through cudaGetLastError.
// `name` is a string literal naming the kernel.
#define GENCORE_CUDA_CHECK_LAUNCH(name) \
  ::gencore::gpu::check_cuda(cudaGetLastError(), "launch of " name, __FILE__, __LINE__)
