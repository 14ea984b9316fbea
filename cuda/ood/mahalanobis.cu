// Mahalanobis driver on the GPU: the distance tile is the shared pairwise L2
// tile (common/pairwise_tile.cuh: register-blocked fp32 FMA GEMM with the
// squared norms of both operands fused, clamped at 0) applied to whitened
// queries and whitened means; a second kernel copies the tile into the output
// (reduce none) and folds it into each query's running (minimum, nearest class).
//
// For each slab of up to 4096 queries and each chunk of up to 16384 classes, in
// increasing class order (the tie-break relies on it; the loop is
// common/pairwise_tile.cuh's stream_pairwise_tiles):
//   1. pairwise_tile_kernel     : keys [qs, chunk] = d (clamped)
//   2. mahalanobis_fold_kernel  : out rows (none), running best/nearest
// Both run on the caller's stream; stream order makes the keys tile safe to
// reuse by the next chunk. The running minimum lives in out itself (reduce
// min) or in the workspace after the keys tile (reduce none).
#include "ood/mahalanobis.cuh"

#include <algorithm>
#include <climits>
#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/pairwise_tile.cuh"
#include "common/warp.cuh"
#include "common/workspace.cuh"

namespace gencore::gpu {
namespace {

constexpr int64_t kMaxSlab = 4096;
constexpr int64_t kMaxChunk = 16384;  // 4096 x 16384 x 4 bytes = 256 MiB of keys
constexpr int64_t kChunkAlign = kPairwiseTileCols;  // whole tiles; keeps key rows 16-byte aligned
constexpr int kFoldThreads = 256;
constexpr int kFoldRowsPerBlock = kFoldThreads / 32;  // one warp per query row

struct MahalanobisPlan {
  int64_t slab;   // queries per slab
  int64_t chunk;  // classes per chunk = row stride of the keys tile
  WorkspaceLayout layout;
  int64_t keys;   // offset of keys [slab, chunk] float
  int64_t best;   // offset of best [slab] float (reduce none only)
};

MahalanobisPlan make_plan(int64_t Q, int64_t C, MahalanobisReduce reduce) {
  MahalanobisPlan p{};
  p.slab = std::min(Q, kMaxSlab);
  p.chunk = p.slab > 0 ? std::min(round_up(C, kChunkAlign), kMaxChunk) : 0;
  p.keys = p.layout.reserve<float>(p.slab * p.chunk);
  p.best = p.layout.reserve<float>(reduce == MahalanobisReduce::none ? p.slab : 0);
  return p;
}

// (a, ia) ranks before (b, ib): NaN first, then smaller value, then lower index.
__device__ __forceinline__ bool ranks_before(float a, int64_t ia, float b, int64_t ib) {
  const bool a_nan = a != a, b_nan = b != b;
  if (a_nan || b_nan) return a_nan && (!b_nan || ia < ib);
  return a < b || (a == b && ia < ib);
}

// keys [qs, ldk] (columns [0, nc) = classes c0 + j)
//   -> copy: out [qs, ldo] columns [c0, c0 + nc) = keys
//      best [qs], nearest [qs]: running minimum and its class; set on the first chunk
//      (`first`), otherwise replaced only by a strictly earlier rank, and earlier
//      chunks hold lower classes, so ties keep the lowest class.
__global__ void __launch_bounds__(kFoldThreads)
    mahalanobis_fold_kernel(const float* __restrict__ keys, int64_t ldk, int qs, int nc, int64_t c0,
                            bool first, bool copy, float* __restrict__ out, int64_t ldo,
                            float* __restrict__ best, int64_t* __restrict__ nearest) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kFoldRowsPerBlock + threadIdx.x / 32;
  if (row >= qs) return;  // whole warps leave together: the shuffles below stay full-warp
  const float* k = keys + int64_t(row) * ldk;
  float v = __int_as_float(0x7f800000);  // +inf
  int64_t at = LLONG_MAX;
  for (int j = lane; j < nc; j += 32) {
    const float kv = k[j];
    if (copy) out[int64_t(row) * ldo + c0 + j] = kv;
    if (ranks_before(kv, c0 + j, v, at)) v = kv, at = c0 + j;
  }
  warp_arg_best(v, at, [](float a, int64_t ia, float b, int64_t ib) { return ranks_before(a, ia, b, ib); });
  if (lane == 0 && (first || ranks_before(v, at, best[row], nearest[row]))) {
    best[row] = v;
    nearest[row] = at;
  }
}

void check_reduce(const char* op, MahalanobisReduce reduce) {
  if (reduce != MahalanobisReduce::none && reduce != MahalanobisReduce::min)
    fail_argument(op, "reduce must be 0 (none) or 1 (min), got " + std::to_string(int(reduce)));
}

void check_args(const float* z, const float* mt, int64_t Q, int64_t C, int64_t R,
                MahalanobisReduce reduce, const float* out, const int64_t* nearest) {
  auto fail = [](const std::string& msg) { fail_argument("mahalanobis", msg); };
  check_reduce("mahalanobis", reduce);
  if (Q < 0) fail("Q must be >= 0, got " + std::to_string(Q));
  if (C < 1) fail("C must be >= 1, got " + std::to_string(C));
  if (R < 1 || R > INT_MAX) fail("R must be in [1, 2^31 - 1], got " + std::to_string(R));
  if (Q > 0 && (!z || !mt || !out || !nearest)) fail("a data pointer is null");
}

}  // namespace

int64_t mahalanobis_workspace_bytes(int64_t Q, int64_t C, int64_t R, MahalanobisReduce reduce) {
  check_reduce("mahalanobis_workspace_bytes", reduce);
  if (Q < 0 || C < 0)
    fail_argument("mahalanobis_workspace_bytes", "need Q >= 0 and C >= 0, got Q=" + std::to_string(Q) +
                                                     ", C=" + std::to_string(C));
  return make_plan(Q, C, reduce).layout.bytes();
}

void mahalanobis(const float* z, const float* mt, int64_t Q, int64_t C, int64_t R,
                 MahalanobisReduce reduce, float* out, int64_t* nearest, void* workspace,
                 int64_t workspace_bytes, cudaStream_t stream, int device) {
  check_args(z, mt, Q, C, R, reduce, out, nearest);
  const MahalanobisPlan plan = make_plan(Q, C, reduce);
  const Workspace ws("mahalanobis", workspace, workspace_bytes, plan.layout);
  if (Q == 0) return;
  DeviceGuard guard(device);

  const bool to_min = reduce == MahalanobisReduce::min;
  float* keys = ws.at<float>(plan.keys);  // [slab, chunk]
  stream_pairwise_tiles(z, Q, mt, C, R, /*l2=*/true, keys, plan.slab, plan.chunk, stream,
                        [&](int64_t q0, int qs, int64_t c0, int nc) {
                          float* best = to_min ? out + q0 : ws.at<float>(plan.best);  // [qs]
                          mahalanobis_fold_kernel<<<unsigned(ceil_div(qs, kFoldRowsPerBlock)), kFoldThreads, 0,
                                                    stream>>>(keys, plan.chunk, qs, nc, c0, c0 == 0, !to_min,
                                                              to_min ? nullptr : out + q0 * C, C, best,
                                                              nearest + q0);
                          GENCORE_CUDA_CHECK_LAUNCH("mahalanobis_fold_kernel");
                        });
}

}  // namespace gencore::gpu
