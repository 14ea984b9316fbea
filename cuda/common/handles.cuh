// Python ints -> CUDA handles, for the bindings: a torch tensor's data_ptr()
// becomes a typed device pointer, torch.cuda.Stream.cuda_stream a cudaStream_t
// (0 is the legacy default stream). No checks are possible here: the kernels
// check for null, the Python layer for devices, dtypes and contiguity.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace gencore::gpu {

template <typename T>
T* device_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace gencore::gpu
