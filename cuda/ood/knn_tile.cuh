// Distance tile of the exact kNN: one slab of queries against one chunk of the
// bank, written as "smaller is better" keys.
//   queries [qs, D] (slab), bank [nc, D] (chunk) -> keys [qs, ldk], columns [0, nc) written
//
// A register-blocked fp32 GEMM (A * B^T, both operands row-major with D
// contiguous): a block of 256 threads (16 x 16) owns a (64*HM) x (64*HN) output
// tile and walks D in steps of kTileK through shared memory; each thread owns a
// (4*HM) x (4*HN) micro-tile made of 4x4 pieces 64 rows/columns apart, so its
// shared-memory reads are float4 and conflict-free. Plain fp32 FMA only: no
// tensor cores, hence no TF32 rounding. The dot product of every output is
// accumulated in increasing d, so identical rows give bit-identical keys and the
// index tie-break is meaningful. Squared norms (L2 only) are accumulated from
// the same shared tiles by otherwise idle lanes, in the same d order, so no
// norm workspace exists and every block computes the same norm for a row.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "common/check.cuh"

namespace gencore::gpu::knn_detail {

constexpr int kTileThreads = 256;
constexpr int kTileK = 8;    // depth of one shared-memory step over D
constexpr int kTilePad = 4;  // row stride = 4 (mod 32) banks: transposed stores are conflict-free,
                             // and stays a multiple of 16 bytes for float4 reads

// One canonical bit pattern per key value, so equal keys compare equal as bits
// in the selection: -0 -> +0, any NaN -> the positive quiet NaN (ranks last).
__device__ __forceinline__ float canonical_key(float key) {
  if (key != key) return __uint_as_float(0x7fc00000u);
  return key == 0.0f ? 0.0f : key;
}

// L2: ||x||^2 + ||y||^2 - 2 x.y clamped at 0 (a NaN stays NaN); IP: -x.y.
__device__ __forceinline__ float make_key(float dot, float qnorm, float bnorm, bool l2) {
  float key = -dot;
  if (l2) {
    key = fmaf(-2.0f, dot, qnorm + bnorm);
    key = key < 0.0f ? 0.0f : key;
  }
  return canonical_key(key);
}

template <int HM, int HN>
__global__ void __launch_bounds__(kTileThreads)
    knn_tile_kernel(const float* __restrict__ queries, const float* __restrict__ bank, int qs,
                    int nc, int D, bool l2, float* __restrict__ keys, int64_t ldk) {
  constexpr int BM = 64 * HM, BN = 64 * HN;  // output tile: BM queries x BN bank rows
  constexpr int TM = 4 * HM, TN = 4 * HN;    // per-thread micro-tile
  constexpr int kLoadRows = kTileThreads / kTileK;  // rows one load sweep covers (32)
  constexpr int LA = BM / kLoadRows, LB = BN / kLoadRows;
  static_assert(BM + BN <= kTileThreads, "one norm lane per tile row and column");
  static_assert(BM % kLoadRows == 0 && BN % kLoadRows == 0, "whole load sweeps");

  __shared__ __align__(16) float As[kTileK][BM + kTilePad];  // transposed: [d][query]
  __shared__ __align__(16) float Bs[kTileK][BN + kTilePad];  // transposed: [d][bank row]
  __shared__ float qnorm_s[BM];
  __shared__ float bnorm_s[BN];

  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;
  const int row0 = blockIdx.y * BM;  // first query of the tile (slab-local)
  const int col0 = blockIdx.x * BN;  // first bank row of the tile (chunk-local)

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
      ra[r] = (g < qs && d < D) ? queries[int64_t(g) * D + d] : 0.0f;
    }
#pragma unroll
    for (int r = 0; r < LB; ++r) {
      const int g = col0 + lrow + r * kLoadRows;
      rb[r] = (g < nc && d < D) ? bank[int64_t(g) * D + d] : 0.0f;
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
  float norm = 0.0f;  // lane tid < BM: query row tid; BM <= tid < BM + BN: bank row tid - BM

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
      float a[TM], b[TN];
#pragma unroll
      for (int h = 0; h < HM; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(&As[kk][h * 64 + ty * 4]);
        a[h * 4 + 0] = v.x, a[h * 4 + 1] = v.y, a[h * 4 + 2] = v.z, a[h * 4 + 3] = v.w;
      }
#pragma unroll
      for (int h = 0; h < HN; ++h) {
        const float4 v = *reinterpret_cast<const float4*>(&Bs[kk][h * 64 + tx * 4]);
        b[h * 4 + 0] = v.x, b[h * 4 + 1] = v.y, b[h * 4 + 2] = v.z, b[h * 4 + 3] = v.w;
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();  // the next store() overwrites As/Bs
  }

  if (l2) {
    if (tid < BM) qnorm_s[tid] = norm;
    else if (tid < BM + BN) bnorm_s[tid - BM] = norm;
  }
  __syncthreads();

  // Registers -> keys: 4 consecutive columns per piece, one float4 store where
  // the piece is inside the chunk (ldk and the column are multiples of 4).
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = (i / 4) * 64 + ty * 4 + (i % 4);
    if (row0 + r >= qs) continue;
    float* out = keys + int64_t(row0 + r) * ldk;
    const float qn = l2 ? qnorm_s[r] : 0.0f;
#pragma unroll
    for (int h = 0; h < HN; ++h) {
      const int c = h * 64 + tx * 4;
      float v[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = make_key(acc[i][h * 4 + j], qn, l2 ? bnorm_s[c + j] : 0.0f, l2);
      const int g = col0 + c;
      if (g + 4 <= nc) {
        *reinterpret_cast<float4*>(out + g) = make_float4(v[0], v[1], v[2], v[3]);
      } else {
#pragma unroll
        for (int j = 0; j < 4; ++j)
          if (g + j < nc) out[g + j] = v[j];
      }
    }
  }
}

// keys [qs, ldk] = tile(queries [qs, D], bank [nc, D]); few queries get a
// 64-row tile so less of the block computes padding. Shared by the kNN and
// Mahalanobis drivers.
inline void launch_tile(const float* queries, const float* bank, int qs, int nc, int D, bool l2,
                        float* keys, int64_t ldk, cudaStream_t stream) {
  const unsigned cols = unsigned((int64_t(nc) + 127) / 128);
  if (qs <= 64) {
    const dim3 grid(cols, unsigned((int64_t(qs) + 63) / 64));
    knn_tile_kernel<1, 2><<<grid, kTileThreads, 0, stream>>>(queries, bank, qs, nc, D, l2, keys, ldk);
    GENCORE_CUDA_CHECK_LAUNCH("knn_tile_kernel<64x128>");
  } else {
    const dim3 grid(cols, unsigned((int64_t(qs) + 127) / 128));
    knn_tile_kernel<2, 2><<<grid, kTileThreads, 0, stream>>>(queries, bank, qs, nc, D, l2, keys, ldk);
    GENCORE_CUDA_CHECK_LAUNCH("knn_tile_kernel<128x128>");
  }
}

}  // namespace gencore::gpu::knn_detail
