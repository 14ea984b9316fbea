// Pairwise distance tile: every row of `a` against every row of `b`, written
// as "smaller is better" keys. The building block of the pairwise ops (kNN,
// Mahalanobis on whitened rows, and the coming optimal-transport costs and
// data-set scores), which stream their problems through it one tile at a time.
//   a [m, D], b [n, D] (row-major, contiguous)
//   -> keys [m, ldk], columns [0, n) written:
//        l2:  ||a_i||^2 + ||b_j||^2 - 2 a_i.b_j, clamped at 0 (a NaN stays NaN)
//        ip:  -a_i.b_j
//      canonical: -0 is written as +0, every NaN as the positive quiet NaN.
//
// A register-blocked fp32 GEMM (A * B^T, both operands row-major with D
// contiguous): a block of 256 threads (16 x 16) owns a (64*HM) x (64*HN) output
// tile and walks D in steps of kTileK through shared memory; each thread owns a
// (4*HM) x (4*HN) micro-tile made of 4x4 pieces 64 rows/columns apart, so its
// shared-memory reads are float4 and conflict-free. Plain fp32 FMA only: no
// tensor cores, hence no TF32 rounding. The dot product of every output is
// accumulated in increasing d, so identical rows give bit-identical keys and
// index tie-breaks downstream are meaningful. Squared norms (l2 only) are
// accumulated from the same shared tiles by otherwise idle lanes, in the same
// d order, so no norm workspace exists and every block computes the same norm
// for a row.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/check.cuh"
#include "common/launch.cuh"

namespace gencore::gpu {

// One bit pattern per key value, so equal keys compare equal as bits in a
// selection: -0 -> +0, any NaN -> the positive quiet NaN (ranks last).
__device__ __forceinline__ float canonical_key(float key) {
  if (key != key) return __uint_as_float(0x7fc00000u);
  return key == 0.0f ? 0.0f : key;
}

namespace tile_detail {

constexpr int kTileThreads = 256;
constexpr int kTileK = 8;    // depth of one shared-memory step over D
constexpr int kTilePad = 4;  // row stride = 4 (mod 32) banks: transposed stores are conflict-free,
                             // and stays a multiple of 16 bytes for float4 reads

// l2: ||a||^2 + ||b||^2 - 2 a.b clamped at 0 (a NaN stays NaN); ip: -a.b.
__device__ __forceinline__ float make_key(float dot, float anorm, float bnorm, bool l2) {
  float key = -dot;
  if (l2) {
    key = fmaf(-2.0f, dot, anorm + bnorm);
    key = key < 0.0f ? 0.0f : key;
  }
  return canonical_key(key);
}

template <int HM, int HN>
__global__ void __launch_bounds__(kTileThreads)
    pairwise_tile_kernel(const float* __restrict__ a, const float* __restrict__ b, int m, int n,
                         int D, bool l2, float* __restrict__ keys, int64_t ldk) {
  constexpr int BM = 64 * HM, BN = 64 * HN;  // output tile: BM rows of a x BN rows of b
  constexpr int TM = 4 * HM, TN = 4 * HN;    // per-thread micro-tile
  constexpr int kLoadRows = kTileThreads / kTileK;  // rows one load sweep covers (32)
  constexpr int LA = BM / kLoadRows, LB = BN / kLoadRows;
  static_assert(BM + BN <= kTileThreads, "one norm lane per tile row and column");
  static_assert(BM % kLoadRows == 0 && BN % kLoadRows == 0, "whole load sweeps");

  __shared__ __align__(16) float As[kTileK][BM + kTilePad];  // transposed: [d][row of a]
  __shared__ __align__(16) float Bs[kTileK][BN + kTilePad];  // transposed: [d][row of b]
  __shared__ float anorm_s[BM];
  __shared__ float bnorm_s[BN];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int row0 = blockIdx.y * BM;  // first row of a in the tile
  const int col0 = blockIdx.x * BN;  // first row of b in the tile

  // Global -> registers: 8 consecutive lanes read 8 consecutive d of one row
  // (32-byte segments); rows and d beyond the edges read as 0, which adds
  // exactly nothing to dots and norms.
  const int lrow = tid / kTileK, lcol = tid % kTileK;
  float ra[LA], rb[LB];
  auto load = [&](int k0) {
    const int d = k0 + lcol;
#pragma unroll
    for (int r = 0; r < LA; ++r) {
      const int g = row0 + lrow + r * kLoadRows;
      ra[r] = (g < m && d < D) ? a[int64_t(g) * D + d] : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < LB; ++r) {
      const int g = col0 + lrow + r * kLoadRows;
      rb[r] = (g < n && d < D) ? b[int64_t(g) * D + d] : 0.0f;
    }
  };
  auto store = [&]() {
#pragma unroll
    for (int r = 0; r < LA; ++r) As[lcol][lrow + r * kLoadRows] = ra[r];
#pragma unroll
    for (int r = 0; r < LB; ++r) Bs[lcol][lrow + r * kLoadRows] = rb[r];
  };

  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  float norm = 0.0f;  // lane tid < BM: row tid of a; BM <= tid < BM + BN: row tid - BM of b

  load(0);
  for (int k0 = 0; k0 < D; k0 += kTileK) {
    store();
    __syncthreads();
    if (k0 + kTileK < D) load(k0 + kTileK);  // next step's loads overlap this step's math

    if (l2) {
      if (tid < BM) {
#pragma unroll
        for (int kk = 0; kk < kTileK; ++kk) norm = fmaf(As[kk][tid], As[kk][tid], norm);
      } else if (tid < BM + BN) {
#pragma unroll
        for (int kk = 0; kk < kTileK; ++kk) norm = fmaf(Bs[kk][tid - BM], Bs[kk][tid - BM], norm);
      }
    }

#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      float av[TM], bv[TN];
#pragma unroll
      for (int h = 0; h < HM; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(&As[kk][h * 64 + ty * 4]);
        av[h * 4 + 0] = v.x, av[h * 4 + 1] = v.y, av[h * 4 + 2] = v.z, av[h * 4 + 3] = v.w;
      }
#pragma unroll
      for (int h = 0; h < HN; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(&Bs[kk][h * 64 + tx * 4]);
        bv[h * 4 + 0] = v.x, bv[h * 4 + 1] = v.y, bv[h * 4 + 2] = v.z, bv[h * 4 + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();  // the next store() overwrites As/Bs
  }

  if (l2) {
    if (tid < BM) anorm_s[tid] = norm;
    else if (tid < BM + BN) bnorm_s[tid - BM] = norm;
  }
  __syncthreads();

  // Registers -> keys: 4 consecutive columns per piece, one float4 store where
  // the piece is inside [0, n) (ldk and the column are multiples of 4).
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = (i / 4) * 64 + ty * 4 + (i % 4);
    if (row0 + r >= m) continue;
    float* out = keys + int64_t(row0 + r) * ldk;
    const float an = l2 ? anorm_s[r] : 0.0f;
#pragma unroll
    for (int h = 0; h < HN; ++h) {
      const int c = h * 64 + tx * 4;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = make_key(acc[i][h * 4 + j], an, l2 ? bnorm_s[c + j] : 0.0f, l2);
      const int g = col0 + c;
      if (g + 4 <= n) {
        *reinterpret_cast<float4*>(out + g) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (g + j < n) out[g + j] = v[j];
      }
    }
  }
}

}  // namespace tile_detail

// Tile widths: a launch covers columns in steps of kPairwiseTileCols, so a
// caller that streams b in chunks of a multiple of it wastes no tile.
constexpr int64_t kPairwiseTileCols = 128;

// keys [m, ldk] = tile(a [m, D], b [n, D]) on `stream`, launch checked.
// Preconditions (the callers' plans guarantee them): 1 <= m, n; 1 <= D < 2^31;
// keys 16-byte aligned and ldk a multiple of 4 (float4 stores). Few rows of a
// get a 64-row tile so less of the block computes padding.
inline void launch_pairwise_tile(const float* a, const float* b, int m, int n, int D, bool l2,
                                 float* keys, int64_t ldk, cudaStream_t stream) {
  using tile_detail::kTileThreads;
  using tile_detail::pairwise_tile_kernel;
  const unsigned cols = unsigned(ceil_div(n, kPairwiseTileCols));
  if (m <= 64) {
    const dim3 grid(cols, unsigned(ceil_div(m, 64)));
    pairwise_tile_kernel<1, 2><<<grid, kTileThreads, 0, stream>>>(a, b, m, n, D, l2, keys, ldk);
    GENCORE_CUDA_CHECK_LAUNCH("pairwise_tile_kernel<64x128>");
  } else {
    const dim3 grid(cols, unsigned(ceil_div(m, 128)));
    pairwise_tile_kernel<2, 2><<<grid, kTileThreads, 0, stream>>>(a, b, m, n, D, l2, keys, ldk);
    GENCORE_CUDA_CHECK_LAUNCH("pairwise_tile_kernel<128x128>");
  }
}

// Streams a pairwise problem a [M, D] x b [N, D] through one keys tile
// [slab, chunk] (chunk a multiple of kPairwiseTileCols; the tile is caller
// workspace). For every slab of up to `slab` rows of a and, inside it, every
// chunk of up to `chunk` rows of b in increasing order (tie-breaks on the lower
// index rely on it), launches the tile into keys and then calls
// consume(m0, m, n0, n): rows [m0, m0 + m) of a against rows [n0, n0 + n) of b
// are in keys [m, chunk]. consume queues the kernels that read the tile on
// `stream`, so stream order keeps the next tile from overwriting it early.
template <typename Consume>
void stream_pairwise_tiles(const float* a, int64_t M, const float* b, int64_t N, int64_t D, bool l2,
                           float* keys, int64_t slab, int64_t chunk, cudaStream_t stream, Consume&& consume) {
  for (int64_t m0 = 0; m0 < M; m0 += slab) {
    const int m = int(std::min(slab, M - m0));
    for (int64_t n0 = 0; n0 < N; n0 += chunk) {
      const int n = int(std::min(chunk, N - n0));
      launch_pairwise_tile(a + m0 * D, b + n0 * D, m, n, int(D), l2, keys, chunk, stream);
      consume(m0, m, n0, n);
    }
  }
}

}  // namespace gencore::gpu
