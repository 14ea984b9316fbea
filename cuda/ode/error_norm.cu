// The error norm on the GPU (contract in ode/error_norm.cuh): one block per
// row, threads striding over it, one block reduction in double.
#include "ode/error_norm.cuh"

#include <cmath>
#include <string>

#include "common/block.cuh"
#include "common/check.cuh"
#include "common/launch.cuh"

namespace gencore::gpu {
namespace {

// max(|a|, |b|), NaN when either is NaN (as torch.maximum): fmaxf would drop a NaN.
__device__ __forceinline__ float abs_max(float a, float b) {
  return isnan(a) || isnan(b) ? NAN : fmaxf(fabsf(a), fabsf(b));
}

__global__ void error_norm_kernel(const float* err, const float* y, const float* y_new, int64_t M, float atol,
                                  float rtol, float* out) {
  __shared__ double scratch[32];
  const int64_t base = int64_t(blockIdx.x) * M;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const float scale = fmaf(rtol, abs_max(y[base + j], y_new[base + j]), atol);
    const double r = double(err[base + j]) / double(scale);
    acc = fma(r, r, acc);
  }
  acc = block_reduce(acc, SumOp{}, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = M > 0 ? float(sqrt(acc / double(M))) : 0.0f;
}

}  // namespace

void ode_error_norm(const float* err, const float* y, const float* y_new, int64_t B, int64_t M, double atol,
                    double rtol, float* out, cudaStream_t stream, int device) {
  const char* op = "ode_error_norm";
  if (B < 0 || M < 0) fail_argument(op, "need B >= 0 and M >= 0, got B=" + std::to_string(B) + ", M=" + std::to_string(M));
  if (!(atol >= 0.0 && rtol >= 0.0 && atol + rtol > 0.0))
    fail_argument(op, "atol and rtol must be >= 0 and not both 0, got atol=" + std::to_string(atol) +
                          ", rtol=" + std::to_string(rtol));
  if (B == 0) return;
  if (!out || (M > 0 && (!err || !y || !y_new))) fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  const int threads = M >= 4096 ? 256 : M >= 512 ? 128 : 32;
  error_norm_kernel<<<blocks_for(B, 1, op), threads, 0, stream>>>(err, y, y_new, M, float(atol), float(rtol), out);
  GENCORE_CUDA_CHECK_LAUNCH("error_norm_kernel");
}

}  // namespace gencore::gpu
