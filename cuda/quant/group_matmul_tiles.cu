// Group-quantized matmul on tensor cores (group_matmul_tiles.cuh), for the larger batches.
// A block of 4 warps owns a 64 x 64 tile of y [M, N] and walks K in chunks of 32: it loads
// the x chunk [64, 32] (float32) and dequantizes the weight chunk [64, 32] from its codes,
// (q - z) * s exactly as the CPU kernel rounds it, both into shared memory (zeros past M, N
// and K, so partial tiles, odd K and partial groups need no other case). Each warp owns a
// 32 x 32 piece: 2 x 2 wmma m16n16k8 accumulators.
//
// Precision (3xTF32): a TF32 tensor-core product keeps 11 bits of each operand. Every value
// v is split into big = v with its 13 low mantissa bits cleared (a TF32 value, exact) and
// small = tf32(v - big) (v - big is exact in float32), and a * b is accumulated as
// a_small b_big + a_big b_small + a_big b_big in float32; the dropped a_small b_small and
// the rounding of small are below 2^-21 |a b|, so the sums keep float32 accuracy (the
// tests ask 1e-5 of max |x| |W|^T, as of the CPU kernels; a host emulation gives ~1e-7 at
// K = 300 and 4096, where plain TF32 gives 3-8e-5).
// Non-finite values stay non-finite (an inf's small part is taken as 0; inf times a zero
// part gives NaN where the float32 product is inf).
#include "quant/group_matmul_tiles.cuh"

#include <mma.h>

#include <atomic>

#include "common/check.cuh"
#include "common/launch.cuh"
#include "quant/warp_rows.cuh"

namespace gencore::gpu {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 32;
constexpr int kThreads = 128;           // 4 warps as 2 x 2 pieces of 32 x 32
constexpr int kLd = kTileK + 4;         // padded operand rows (wmma: a multiple of 4 floats)
constexpr int kLdOut = kTileN + 4;      // padded rows of the output tile
constexpr int kRowStep = kThreads / kTileK;
constexpr int kSmemFloats = (kTileM + kTileN) * kLd;
static_assert(kTileM * kLdOut <= kSmemFloats, "the output tile reuses the operand tiles' shared memory");
static_assert(kTileM == 64 && kTileN == 64 && kThreads == 128, "the warp layout below");

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
namespace wmma = nvcuda::wmma;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

// Loads a float32 fragment from shared memory and splits it, element by element (both
// fragments have the same layout): big + small ~= v to ~2^-22 relative.
template <class Frag>
__device__ __forceinline__ void load_split(Frag& big, Frag& small, const float* p, unsigned ld) {
  wmma::load_matrix_sync(big, p, ld);
#pragma unroll
  for (int i = 0; i < big.num_elements; ++i) {
    const float v = big.x[i];
    const float hi = __uint_as_float(__float_as_uint(v) & 0xffffe000u);
    big.x[i] = hi;
    small.x[i] = isfinite(v) ? wmma::__float_to_tf32(__fsub_rn(v, hi)) : 0.0f;
  }
}
#endif

// y [M, N] = x [M, K] . dequant(W)^T + bias; block b owns the tile (b % m_tiles, b / m_tiles),
// so consecutive blocks share a weight tile (read from L2 after the first).
template <int BITS>
__global__ void __launch_bounds__(kThreads)
    group_matmul_tiles_kernel(const float* __restrict__ x, int M, int K, const uint8_t* __restrict__ data, int N,
                              int64_t stride, const float* __restrict__ scales, const float* __restrict__ zeros,
                              int G, int group, const float* __restrict__ bias, float* __restrict__ y,
                              int m_tiles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  __shared__ __align__(32) float smem[kSmemFloats];
  float* xs = smem;                   // [kTileM][kLd]: x[m0 + r, k0 + c]
  float* ws = smem + kTileM * kLd;    // [kTileN][kLd]: dequant(W)[n0 + r, k0 + c]
  const int m0 = int(blockIdx.x % unsigned(m_tiles)) * kTileM;
  const int n0 = int(blockIdx.x / unsigned(m_tiles)) * kTileN;
  const int warp = threadIdx.x >> 5;
  const int wm = (warp & 1) * 32, wn = (warp >> 1) * 32;
  const int c = threadIdx.x % kTileK;   // the chunk column this thread fills (a warp: one row, coalesced)
  const int r0 = threadIdx.x / kTileK;  // its first row, then every kRowStep rows

  FragC acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  for (int k0 = 0; k0 < K; k0 += kTileK) {
    const int k = k0 + c;
    const bool in_k = k < K;
    const int g = in_k ? k / group : 0;
#pragma unroll 4
    for (int r = r0; r < kTileM; r += kRowStep) {
      const int m = m0 + r, n = n0 + r;
      xs[r * kLd + c] = in_k && m < M ? x[int64_t(m) * K + k] : 0.0f;
      const int64_t p = int64_t(n) * G + g;
      ws[r * kLd + c] = in_k && n < N ? quant_rows::dequantized<BITS>(data + n * stride, k, zeros[p], scales[p])
                                      : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 8) {
      FragA a_big[2], a_small[2];
      FragB b_big[2], b_small[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) load_split(a_big[i], a_small[i], xs + (wm + 16 * i) * kLd + kk, kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) load_split(b_big[j], b_small[j], ws + (wn + 16 * j) * kLd + kk, kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) {  // the small products first, into the same float32 sums
          wmma::mma_sync(acc[i][j], a_small[i], b_big[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], a_big[i], b_small[j], acc[i][j]);
          wmma::mma_sync(acc[i][j], a_big[i], b_big[j], acc[i][j]);
        }
    }
    __syncthreads();
  }

  float* out = smem;  // [kTileM][kLdOut], over the operand tiles (the loop ended on a barrier)
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(out + (wm + 16 * i) * kLdOut + wn + 16 * j, acc[i][j], kLdOut, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTileM * kTileN; e += kThreads) {
    const int r = e / kTileN, col = e % kTileN, m = m0 + r, n = n0 + col;
    if (m < M && n < N) y[int64_t(m) * N + n] = out[r * kLdOut + col] + (bias ? bias[n] : 0.0f);
  }
#endif
}

constexpr int kMaxDevices = 64;
std::atomic<signed char> tiles_usable_cache[kMaxDevices];  // 0 unknown, 1 yes, -1 no

}  // namespace

bool group_matmul_tiles_usable(int device) {
  // The PTX architecture of the image the driver picked for this device (an image built
  // for an older architecture, or JIT-compiled from its PTX, has an empty kernel body).
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached) {
    const signed char known = tiles_usable_cache[device].load(std::memory_order_relaxed);
    if (known != 0) return known > 0;
  }
  cudaFuncAttributes attributes{};
  GENCORE_CUDA_CHECK(cudaFuncGetAttributes(&attributes, group_matmul_tiles_kernel<4>));
  const bool usable = attributes.ptxVersion >= 80;
  if (cached) tiles_usable_cache[device].store(usable ? 1 : -1, std::memory_order_relaxed);
  return usable;
}

void group_matmul_tiles(const float* x, int64_t M, int64_t K, const uint8_t* data, int64_t N, int64_t stride,
                        const float* scales, const float* zeros, int64_t G, int64_t group, int bits,
                        const float* bias, float* y, cudaStream_t stream) {
  const char* op = "group_matmul";
  const int64_t m_tiles = ceil_div(M, kTileM);
  const unsigned blocks = blocks_for(m_tiles * ceil_div(N, kTileN), 1, op);
  const auto kernel = bits == 4 ? group_matmul_tiles_kernel<4> : group_matmul_tiles_kernel<8>;
  kernel<<<blocks, kThreads, 0, stream>>>(x, int(M), int(K), data, int(N), stride, scales, zeros, int(G),
                                          int(group), bias, y, int(m_tiles));
  GENCORE_CUDA_CHECK_LAUNCH("group_matmul_tiles_kernel");
}

}  // namespace gencore::gpu
