// Launch helpers for host code: grid sizes, the device guard, and (through
// check.cuh) the check that follows every launch. Nothing here synchronises
// the host or allocates.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "common/check.cuh"

namespace gencore::gpu {

// ceil(a / b) for a >= 0, b > 0.
__host__ __device__ constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The smallest multiple of `align` (> 0) that is >= a (>= 0).
__host__ __device__ constexpr int64_t round_up(int64_t a, int64_t align) { return ceil_div(a, align) * align; }

// Blocks of `threads` for a grid-stride loop over n >= 1 elements: enough to
// cover n, at most max_blocks (the loop covers the rest), at least 1.
inline unsigned grid_stride_blocks(int64_t n, int threads, int64_t max_blocks = 4096) {
  return unsigned(std::clamp<int64_t>(ceil_div(n, threads), 1, max_blocks));
}

// Blocks for `n` items at `per_block` items a block, without a grid-stride
// loop; more than 2^31 - 1 blocks is refused (std::invalid_argument naming op).
inline unsigned blocks_for(int64_t n, int64_t per_block, const char* op) {
  const int64_t blocks = ceil_div(n, per_block);
  if (blocks > INT_MAX) fail_argument(op, "too many rows: " + std::to_string(n));
  return unsigned(blocks);
}

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

}  // namespace gencore::gpu
