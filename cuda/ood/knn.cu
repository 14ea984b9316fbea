// Exact kNN driver: streams the bank through the GPU in chunks and keeps each
// query's running top-k in the output arrays themselves.
//   queries [Q, D], bank [N, D] -> values [Q, k] float32, indices [Q, k] int64
//
// For each slab of up to kMaxSlab queries and each chunk of up to `chunk` bank
// rows (in increasing bank order, which the tie-break relies on; the loop is
// common/pairwise_tile.cuh's stream_pairwise_tiles):
//   1. pairwise_tile_kernel : keys [qs, chunk] = distance tile
//   2. knn_merge_kernel     : run [qs, k] = top-k of (run, keys) (knn_merge.cuh)
// then, for inner product, values = -key. All kernels run on the caller's
// stream; the keys tile (the caller's workspace) is reused by the next chunk
// only after the merge has read it, by stream order.
//
// Workspace: one keys tile, slab * chunk * 4 bytes (the formula in knn.cuh),
// at most 256 MiB and independent of N; nothing of size Q x N or N exists.
#include "ood/knn.cuh"

#include <algorithm>
#include <climits>
#include <string>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/pairwise_tile.cuh"
#include "common/workspace.cuh"
#include "ood/knn_merge.cuh"

namespace gencore::gpu {
namespace {

using namespace knn_detail;

constexpr int64_t kTileBytes = int64_t(256) << 20;
constexpr int64_t kMaxSlab = 4096;               // queries per slab: keeps the merge grid <= 4096 blocks
constexpr int64_t kMaxChunk = int64_t(1) << 18;  // few queries: long chunks, fewer launches
constexpr int64_t kChunkAlign = kPairwiseTileCols;  // whole tiles; keeps rows of keys 16-byte aligned

struct KnnPlan {
  int64_t slab;   // queries per slab
  int64_t chunk;  // bank rows per chunk = row stride of the keys tile
  WorkspaceLayout layout;
  int64_t keys;   // offset of keys [slab, chunk] float in the workspace
};

KnnPlan make_plan(int64_t Q, int64_t N) {
  KnnPlan p{};
  p.slab = std::min(Q, kMaxSlab);
  p.chunk = 0;
  if (p.slab > 0) {
    const int64_t fit = kTileBytes / (int64_t(sizeof(float)) * p.slab) / kChunkAlign * kChunkAlign;
    p.chunk = std::min({round_up(N, kChunkAlign), kMaxChunk, fit});  // fit >= 16384 since slab <= 4096
  }
  p.keys = p.layout.reserve<float>(p.slab * p.chunk);
  return p;
}

int next_pow2(int n) {
  int p = 1;
  while (p < n) p <<= 1;
  return p;
}

// run [qs, k] (have valid) + keys [qs, ldk] (nc valid, bank rows from chunk_start) -> run
void launch_merge(const float* keys, int64_t ldk, int qs, int nc, int64_t chunk_start,
                  float* run_keys, int64_t* run_idx, int k, int have, cudaStream_t stream) {
  const int kk = std::min(k, have + nc);
  const int sort_size = next_pow2(kk);
  const size_t smem = size_t(sort_size) * sizeof(uint64_t);  // <= 32 KiB: no opt-in needed
  knn_merge_kernel<<<unsigned(qs), kMergeThreads, smem, stream>>>(keys, ldk, nc, chunk_start, run_keys,
                                                                  run_idx, k, have, kk, sort_size);
  GENCORE_CUDA_CHECK_LAUNCH("knn_merge_kernel");
}

// values [n]: key -> score for inner product (key = -score). 0 - x, not -x, so a
// zero score comes back as +0.
__global__ void knn_negate_kernel(float* values, int64_t n) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    values[i] = 0.0f - values[i];
}

void check_args(const float* queries, const float* bank, int64_t Q, int64_t N, int64_t D,
                int64_t k, KnnMetric metric, const float* values, const int64_t* indices) {
  auto fail = [](const std::string& msg) { fail_argument("knn", msg); };
  if (metric != KnnMetric::sqeuclidean && metric != KnnMetric::inner_product)
    fail("metric must be 0 (squared L2) or 1 (inner product), got " + std::to_string(int(metric)));
  if (Q < 0) fail("Q must be >= 0, got " + std::to_string(Q));
  if (D < 1 || D > INT_MAX) fail("D must be in [1, 2^31 - 1], got " + std::to_string(D));
  if (k < 1 || k > N) fail("k must be in [1, N=" + std::to_string(N) + "], got " + std::to_string(k));
  if (k > kKnnMaxK)
    fail("k must be <= " + std::to_string(kKnnMaxK) + " (knn_max_k), got " + std::to_string(k));
  if (Q > 0 && (!queries || !bank || !values || !indices)) fail("a data pointer is null");
}

}  // namespace

int64_t knn_workspace_bytes(int64_t Q, int64_t N, int64_t D, int64_t k) {
  if (Q < 0 || N < 0)
    fail_argument("knn_workspace_bytes", "need Q >= 0 and N >= 0, got Q=" + std::to_string(Q) +
                                             ", N=" + std::to_string(N));
  return make_plan(Q, N).layout.bytes();
}

void knn(const float* queries, const float* bank, int64_t Q, int64_t N, int64_t D, int64_t k,
         KnnMetric metric, float* values, int64_t* indices, void* workspace,
         int64_t workspace_bytes, cudaStream_t stream, int device) {
  check_args(queries, bank, Q, N, D, k, metric, values, indices);
  const KnnPlan plan = make_plan(Q, N);
  const Workspace ws("knn", workspace, workspace_bytes, plan.layout);
  if (Q == 0) return;
  DeviceGuard guard(device);

  const bool l2 = metric == KnnMetric::sqeuclidean;
  float* keys = ws.at<float>(plan.keys);  // [slab, chunk]
  stream_pairwise_tiles(queries, Q, bank, N, D, l2, keys, plan.slab, plan.chunk, stream,
                        [&](int64_t q0, int qs, int64_t n0, int nc) {
                          // values / indices rows [q0, q0 + qs) hold the slab's running
                          // top-k: keys until the end, then values.
                          const int have = int(std::min(k, n0));  // entries the running list holds so far
                          launch_merge(keys, plan.chunk, qs, nc, n0, values + q0 * k, indices + q0 * k, int(k),
                                       have, stream);
                        });

  if (!l2) {
    const int64_t n = Q * k;
    knn_negate_kernel<<<grid_stride_blocks(n, 256), 256, 0, stream>>>(values, n);
    GENCORE_CUDA_CHECK_LAUNCH("knn_negate_kernel");
  }
}

}  // namespace gencore::gpu
