// Group-quantized matmul (group_matmul.cuh). Fewer than kGroupMatmulTileRows activation
// rows: one warp per output row n. The warp's lanes walk the row's K elements 32 apart
// (x reads coalesced, packed weight bytes read once), dequantize each weight in registers
// and multiply it into up to kRowsPerPass activation rows; a warp reduction per row gives
// the outputs. The weight row is re-read (from L1/L2) once per pass of kRowsPerPass rows.
// More rows: the tensor-core tiles of group_matmul_tiles.cu (where the device's kernel image
// has TF32 tensor cores, sm_80 and later; else the warp kernel takes any M).
#include "quant/group_matmul.cuh"

#include <algorithm>
#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "quant/group_matmul_tiles.cuh"
#include "quant/warp_rows.cuh"

namespace gencore::gpu {
namespace {

using quant_rows::kRowsPerPass;
using quant_rows::kWarpsPerBlock;

template <int BITS>
__global__ void group_matmul_kernel(const float* __restrict__ x, int M, int K, const uint8_t* __restrict__ data,
                                    int N, int64_t data_stride, const float* __restrict__ scales,
                                    const float* __restrict__ zeros, int G, int group,
                                    const float* __restrict__ bias, float* __restrict__ y) {
  const auto pass = [&](int n, int lane, int m0, int rows, float (&acc)[kRowsPerPass]) {
    const uint8_t* q = data + n * data_stride;
    const float* s = scales + int64_t(n) * G;
    const float* z = zeros + int64_t(n) * G;
    for (int k = lane; k < K; k += 32) {
      const int g = k / group;
      const float w = quant_rows::dequantized<BITS>(q, k, z[g], s[g]);
#pragma unroll
      for (int b = 0; b < kRowsPerPass; ++b)
        if (b < rows) acc[b] = fmaf(x[int64_t(m0 + b) * K + k], w, acc[b]);
    }
  };
  quant_rows::warp_per_output_row(M, N, bias, y, pass);
}

}  // namespace

void group_matmul(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, const float* scales,
                  const float* zeros, int64_t group, int bits, const float* bias, float* y, cudaStream_t stream,
                  int device) {
  const char* op = "group_matmul";
  if (bits != 4 && bits != 8) fail_argument(op, "bits must be 4 or 8, got " + std::to_string(bits));
  if (M < 0 || N < 0 || K < 0 || group < 1) fail_argument(op, "need M, N, K >= 0 and group >= 1");
  if (M > INT_MAX || K > INT_MAX || N > INT_MAX) fail_argument(op, "M, K and N must fit in int");
  if (M == 0 || N == 0) return;
  if (!y || (K > 0 && (!x || !data || !scales || !zeros))) fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  const int64_t G = K == 0 ? 0 : ceil_div(K, group);
  const int64_t stride = bits == 4 ? (K + 1) / 2 : K;
  group = std::min(group, std::max<int64_t>(K, 1));  // one group per row: k / group == 0, and it fits in int
  if (M >= kGroupMatmulTileRows && group_matmul_tiles_usable(device)) {
    group_matmul_tiles(x, M, K, data, N, stride, scales, zeros, G, group, bits, bias, y, stream);
    return;
  }
  const unsigned blocks = blocks_for(N, kWarpsPerBlock, op);
  if (bits == 4)
    group_matmul_kernel<4><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(x, int(M), int(K), data, int(N), stride, scales,
                                                                       zeros, int(G), int(group), bias, y);
  else
    group_matmul_kernel<8><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(x, int(M), int(K), data, int(N), stride, scales,
                                                                       zeros, int(G), int(group), bias, y);
  GENCORE_CUDA_CHECK_LAUNCH("group_matmul_kernel");
}

}  // namespace gencore::gpu
