// Int8-activation group matmul (group_matmul_int8.cuh), two launches:
//   1. one warp per (activation row, group): max |x| by a warp reduction, then the
//      group's codes c and its scale sx into the workspace;
//   2. one warp per output row n, as group_matmul.cu: the lanes walk each group
//      32 elements apart, summing c q and c in int32 for up to kRowsPerPass
//      activation rows (exact: at most 127 x 255 x ceil(group / 32) per lane), and
//      scale each group's lane sums in float32; one warp reduction per output.
// Any M: passes of kRowsPerPass rows re-read the weight row from L1/L2.
#include "quant/group_matmul_int8.cuh"

#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/workspace.cuh"
#include "quant/warp_rows.cuh"

namespace gencore::gpu {
namespace {

using quant_rows::kRowsPerPass;
using quant_rows::kWarpsPerBlock;

struct Plan {
  WorkspaceLayout layout;
  int64_t codes = 0, scales = 0;  // offsets: c [M, K] int8, sx [M, G] float32
};

Plan plan_for(int64_t M, int64_t K, int64_t G) {
  Plan plan;
  plan.codes = plan.layout.reserve<int8_t>(M * K);
  plan.scales = plan.layout.reserve<float>(M * G);
  return plan;
}

// grid: (G, ceil(M / kWarpsPerBlock)) blocks of kWarpsPerBlock warps, one (row, group) each.
__global__ void quantize_activations_kernel(const float* __restrict__ x, int M, int K, int G, int group,
                                            int8_t* __restrict__ codes, float* __restrict__ sx) {
  const int lane = threadIdx.x & 31;
  const int m = blockIdx.y * kWarpsPerBlock + (threadIdx.x >> 5);
  const int g = blockIdx.x;
  if (m >= M) return;
  const int k0 = g * group, k1 = min(K, k0 + group);
  const float* row = x + int64_t(m) * K;
  float amax = 0.0f;
  for (int k = k0 + lane; k < k1; k += 32) amax = fmaxf(amax, fabsf(row[k]));
  for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  float scale = __fdiv_rn(amax, 127.0f);  // IEEE division, as the CPU and the reference divide
  if (scale == 0.0f) scale = 1.0f;
  for (int k = k0 + lane; k < k1; k += 32) {
    const float v = fminf(fmaxf(rintf(__fdiv_rn(row[k], scale)), -127.0f), 127.0f);  // ties to even
    codes[int64_t(m) * K + k] = static_cast<int8_t>(v);
  }
  if (lane == 0) sx[int64_t(m) * G + g] = scale;
}

template <int BITS>
__global__ void group_matmul_int8_kernel(const int8_t* __restrict__ codes, const float* __restrict__ sx, int M,
                                         int K, const uint8_t* __restrict__ data, int N, int64_t data_stride,
                                         const float* __restrict__ scales, const float* __restrict__ zeros, int G,
                                         int group, const float* __restrict__ bias, float* __restrict__ y) {
  const auto pass = [&](int n, int lane, int m0, int rows, float (&acc)[kRowsPerPass]) {
    const uint8_t* q = data + n * data_stride;
    const float* s = scales + int64_t(n) * G;
    const float* z = zeros + int64_t(n) * G;
    for (int g = 0; g < G; ++g) {
      const int k0 = g * group, k1 = min(K, k0 + group);
      int dot[kRowsPerPass], sum[kRowsPerPass];
#pragma unroll
      for (int b = 0; b < kRowsPerPass; ++b) dot[b] = sum[b] = 0;
      for (int k = k0 + lane; k < k1; k += 32) {
        const int code = quant_rows::weight_code<BITS>(q, k);
#pragma unroll
        for (int b = 0; b < kRowsPerPass; ++b)
          if (b < rows) {
            const int c = codes[int64_t(m0 + b) * K + k];
            dot[b] += c * code;
            sum[b] += c;
          }
      }
#pragma unroll
      for (int b = 0; b < kRowsPerPass; ++b)
        if (b < rows) acc[b] = fmaf(s[g] * sx[int64_t(m0 + b) * G + g], float(dot[b]) - z[g] * float(sum[b]), acc[b]);
    }
  };
  quant_rows::warp_per_output_row(M, N, bias, y, pass);
}

void check_sizes(const char* op, int64_t M, int64_t K, int64_t group) {
  if (M < 0 || K < 0 || group < 1) fail_argument(op, "need M, K >= 0 and group >= 1");
  if (K > INT_MAX || M > INT_MAX) fail_argument(op, "M and K must fit in int");
}

}  // namespace

int64_t group_matmul_int8_workspace_bytes(int64_t M, int64_t K, int64_t group) {
  check_sizes("group_matmul_int8_workspace_bytes", M, K, group);
  return plan_for(M, K, K == 0 ? 0 : ceil_div(K, group)).layout.bytes();
}

void group_matmul_int8(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, const float* scales,
                       const float* zeros, int64_t group, int bits, const float* bias, float* y, void* workspace,
                       int64_t workspace_bytes, cudaStream_t stream, int device) {
  const char* op = "group_matmul_int8";
  if (bits != 4 && bits != 8) fail_argument(op, "bits must be 4 or 8, got " + std::to_string(bits));
  check_sizes(op, M, K, group);
  if (N < 0 || N > INT_MAX) fail_argument(op, "N must be in [0, INT_MAX]");
  const int64_t G = K == 0 ? 0 : ceil_div(K, group);
  const Plan plan = plan_for(M, K, G);
  const Workspace ws(op, workspace, workspace_bytes, plan.layout);
  if (M == 0 || N == 0) return;
  if (!y || (K > 0 && (!x || !data || !scales || !zeros))) fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  int8_t* codes = ws.at<int8_t>(plan.codes);
  float* sx = ws.at<float>(plan.scales);
  if (G > 0) {
    // grid.y is limited to 65535 blocks of kWarpsPerBlock rows
    if (ceil_div(M, kWarpsPerBlock) > 65535) fail_argument(op, "M = " + std::to_string(M) + " exceeds 262140 rows");
    const dim3 grid(unsigned(G), unsigned(ceil_div(M, kWarpsPerBlock)));
    quantize_activations_kernel<<<grid, 32 * kWarpsPerBlock, 0, stream>>>(x, int(M), int(K), int(G), int(group),
                                                                          codes, sx);
    GENCORE_CUDA_CHECK_LAUNCH("quantize_activations_kernel");
  }
  const int64_t stride = bits == 4 ? (K + 1) / 2 : K;
  const unsigned blocks = blocks_for(N, kWarpsPerBlock, op);
  if (bits == 4)
    group_matmul_int8_kernel<4><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
        codes, sx, int(M), int(K), data, int(N), stride, scales, zeros, int(G), int(group), bias, y);
  else
    group_matmul_int8_kernel<8><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(
        codes, sx, int(M), int(K), data, int(N), stride, scales, zeros, int(G), int(group), bias, y);
  GENCORE_CUDA_CHECK_LAUNCH("group_matmul_int8_kernel");
}

}  // namespace gencore::gpu
