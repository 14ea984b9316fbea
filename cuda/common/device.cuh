// RAII helpers for host code that launches work: a device guard and a
// stream-ordered scratch buffer. Neither synchronises the host.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "common/check.cuh"

namespace gencore::gpu {

// Makes `device` current for the scope and restores the caller's device after,
// so a call never changes the thread's current device behind torch's back.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    GENCORE_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) {
      GENCORE_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);  // a destructor must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Workspace from the stream-ordered allocator: allocated and freed in `stream`
// order, so kernels queued in between may use it and the host never waits.
// The free runs on every exit path (also when a later launch throws).
class StreamBuffer {
 public:
  StreamBuffer(size_t bytes, cudaStream_t stream) : stream_(stream) {
    if (bytes > 0) GENCORE_CUDA_CHECK(cudaMallocAsync(&ptr_, bytes, stream_));
  }
  ~StreamBuffer() {
    if (ptr_ != nullptr) cudaFreeAsync(ptr_, stream_);  // errors here have nowhere to go
  }
  StreamBuffer(const StreamBuffer&) = delete;
  StreamBuffer& operator=(const StreamBuffer&) = delete;

  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace gencore::gpu
