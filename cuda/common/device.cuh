// A stream-ordered scratch buffer for host code that launches work; it does
// not synchronise the host. (The device guard is in common/launch.cuh.)
#pragma once
#include <cuda_runtime.h>

#include <cstddef>

#include "common/check.cuh"

namespace gencore::gpu {

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
