// The fused solver step on the GPU (contract in ode/step.cuh).
//
// Plain steps: one elementwise kernel, a 2-D grid of (2048-element pieces of a
// row) x (rows), float4 accesses when every row pointer allows them.
// Rescale / thresholding: one block per row, three phases over the row (pass
// A, the select, pass B), the row re-read from L2 after pass A.
#include "ode/step.cuh"

#include <climits>
#include <cmath>
#include <string>

#include "common/block.cuh"
#include "common/check.cuh"
#include "common/launch.cuh"
#include "common/select.cuh"
#include "common/warp.cuh"

namespace gencore::gpu {
namespace {

constexpr int kPlainThreads = 256;
constexpr int64_t kPlainPiece = 2048;  // elements of a row one block of the plain kernel covers
constexpr int64_t kMaxGridY = 65535;

enum Input : int { kX, kCond, kUncond, kH1, kH2, kH3, kNoise, kInputs };

struct StepArgs {
  const float* in[kInputs];  // contiguous [B, M]; null: absent (kUncond: null without guidance)
  const double* coeffs;      // [B, 6]
  const double* guidance;    // [B]; null: no guidance
  float* x_next;
  float* d;
  int64_t B, M;
};

struct StatsParams {
  double phi;      // rescale; 0: off
  bool rescale;    // phi > 0, guidance, M > 1
  bool threshold;  // q > 0
  float q;         // the quantile, rounded to float as torch.quantile rounds it for float32 rows
  float t_max;
};

// One sample's coefficients, rounded to float as the reference rounds them.
struct RowCoeffs {
  float w, cx, cd, ch[4];
};

__device__ __forceinline__ RowCoeffs row_coeffs(const StepArgs& a, int64_t b) {
  RowCoeffs r;
  const double* c = a.coeffs + b * 6;
  r.cx = float(c[0]);
  r.cd = float(c[1]);
  for (int k = 0; k < 4; ++k) r.ch[k] = float(c[2 + k]);
  r.w = a.guidance ? float(a.guidance[b]) : 1.0f;
  return r;
}

// d_uncond + w (d_cond - d_uncond) in one FMA, as the CPU kernels form it.
__device__ __forceinline__ float guided(float c, float u, float w) { return fmaf(w, c - u, u); }

// c_x x + c_d d + c_1 h1 + ... at element i, in the reference's order.
__device__ __forceinline__ float combine(const StepArgs& a, const RowCoeffs& r, int64_t i, float d) {
  float acc = fmaf(r.cx, a.in[kX][i], r.cd * d);
  for (int k = 0; k < 4; ++k)
    if (a.in[kH1 + k]) acc = fmaf(r.ch[k], a.in[kH1 + k][i], acc);
  return acc;
}

// W consecutive floats at p (W = 4: one 16-byte access).
template <int W>
__device__ __forceinline__ void read(const float* p, float (&v)[W]) {
  if constexpr (W == 4) {
    const float4 q = *reinterpret_cast<const float4*>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
  } else {
    for (int k = 0; k < W; ++k) v[k] = p[k];
  }
}

template <int W>
__device__ __forceinline__ void write(float* p, const float (&v)[W]) {
  if constexpr (W == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else {
    for (int k = 0; k < W; ++k) p[k] = v[k];
  }
}

template <int W>
__global__ void __launch_bounds__(kPlainThreads) plain_step_kernel(StepArgs a) {
  const int64_t stride = int64_t(gridDim.x) * kPlainThreads * W;
  for (int64_t b = blockIdx.y; b < a.B; b += gridDim.y) {
    const RowCoeffs r = row_coeffs(a, b);
    for (int64_t j = (int64_t(blockIdx.x) * kPlainThreads + threadIdx.x) * W; j < a.M; j += stride) {
      const int64_t i = b * a.M + j;
      float d[W], t[W], out[W];
      read<W>(a.in[kCond] + i, d);
      if (a.in[kUncond]) {
        read<W>(a.in[kUncond] + i, t);
        for (int k = 0; k < W; ++k) d[k] = guided(d[k], t[k], r.w);
      }
      write<W>(a.d + i, d);
      read<W>(a.in[kX] + i, t);
      for (int k = 0; k < W; ++k) out[k] = fmaf(r.cx, t[k], r.cd * d[k]);
      for (int h = 0; h < 4; ++h)
        if (a.in[kH1 + h]) {
          read<W>(a.in[kH1 + h] + i, t);
          for (int k = 0; k < W; ++k) out[k] = fmaf(r.ch[h], t[k], out[k]);
        }
      write<W>(a.x_next + i, out);
    }
  }
}

// |v| as ordered bits: for v >= 0 (no NaN) the float's bits order like its value.
__device__ __forceinline__ unsigned abs_key(float v) { return __float_as_uint(v) & 0x7fffffffu; }

struct MinOp {
  __device__ __forceinline__ unsigned operator()(unsigned a, unsigned b) const { return a < b ? a : b; }
};

// Block-wide radix select (common/select.cuh) of the rank-th smallest |d[j]|
// (1-based, 1 <= rank <= M, no NaN): its key, its rank among the keys equal
// to it (1-based) and how many keys equal it. picked: 3 shared words.
__device__ void select_abs(const float* d, int64_t M, unsigned rank, unsigned* hist, unsigned* picked, unsigned& key,
                           unsigned& rank_among_equal, unsigned& equal) {
  unsigned prefix = 0, mask = 0;
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      const unsigned k = abs_key(d[j]);
      if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & (kRadixBins - 1)], 1u);
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // warp 0 finds the digit
      const DigitPick pick = find_digit(hist, rank);
      if (threadIdx.x == 0) picked[0] = pick.bin, picked[1] = pick.before, picked[2] = hist[pick.bin];
    }
    __syncthreads();  // every thread reads `picked` before the next pass's first barrier
    prefix |= picked[0] << shift;
    mask |= unsigned(kRadixBins - 1) << shift;
    rank -= picked[1];
    equal = picked[2];
  }
  key = prefix;
  rank_among_equal = rank;
}

// torch.quantile(|d|, q) (linear) of one row times s, in float as torch computes it for
// float32 rows; every thread of the block calls it and gets the value.
__device__ float scaled_quantile(const float* d, int64_t M, float q, float s, unsigned* hist, unsigned* picked,
                                 unsigned* scratch) {
  const float rank = q * float(M - 1);
  const int64_t lo = min(int64_t(rank), M - 1), hi = min(int64_t(ceilf(rank)), M - 1);
  const float weight = rank - float(int64_t(rank));
  unsigned key, among, equal;
  select_abs(d, M, unsigned(lo + 1), hist, picked, key, among, equal);
  unsigned next = key;
  if (hi > lo && among >= equal) {  // position hi holds the smallest key above position lo's
    unsigned least = UINT_MAX;
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      const unsigned k = abs_key(d[j]);
      if (k > key && k < least) least = k;
    }
    next = block_reduce(least, MinOp{}, scratch);
  }
  const float a = __uint_as_float(key) * s, b = __uint_as_float(next) * s;
  return fabsf(weight) < 0.5f ? fmaf(weight, b - a, a) : fmaf(-(b - a), 1.0f - weight, b);  // torch's lerp
}

__global__ void stats_step_kernel(StepArgs a, StatsParams p) {
  __shared__ double sums[32];
  __shared__ unsigned words[32];
  __shared__ unsigned hist[kRadixBins];
  __shared__ unsigned picked[3];
  const int64_t b = blockIdx.x, M = a.M, base = b * M;
  const RowCoeffs r = row_coeffs(a, b);
  const float* c = a.in[kCond] + base;
  const float* u = a.in[kUncond] ? a.in[kUncond] + base : nullptr;
  float* d = a.d + base;

  // Pass A: d, and the shifted sums of d_cond and d (shifts: each row's first element).
  const double shift_c = p.rescale ? double(c[0]) : 0.0;
  const double shift_d = p.rescale ? double(u ? guided(c[0], u[0], r.w) : c[0]) : 0.0;
  double sc = 0.0, qc = 0.0, sd = 0.0, qd = 0.0;
  unsigned nans = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const float cv = c[j];
    const float dv = u ? guided(cv, u[j], r.w) : cv;
    d[j] = dv;
    nans += isnan(dv) ? 1u : 0u;
    if (p.rescale) {
      const double x = double(cv) - shift_c, y = double(dv) - shift_d;
      sc += x, qc += x * x, sd += y, qd += y * y;
    }
  }
  float s = 1.0f;
  if (p.rescale) {
    const double m = double(M);
    sc = block_reduce(sc, SumOp{}, sums) / m, qc = block_reduce(qc, SumOp{}, sums) / m;
    sd = block_reduce(sd, SumOp{}, sums) / m, qd = block_reduce(qd, SumOp{}, sums) / m;
    const float std_c = float(sqrt(fmax(qc - sc * sc, 0.0))), std_d = float(sqrt(fmax(qd - sd * sd, 0.0)));
    const float ratio = std_d > 0.0f ? std_c / std_d : 1.0f;
    s = float(p.phi * double(ratio) + (1.0 - p.phi));
  }
  float t = 0.0f;
  if (p.threshold) {
    // (the barriers of this reduction also make every thread's d visible to the select)
    if (block_reduce(nans, SumOp{}, words) > 0)
      t = NAN;  // torch.quantile of a row holding NaN
    else
      t = fminf(fmaxf(scaled_quantile(d, M, p.q, s, hist, picked, words), 1.0f), p.t_max);
  }

  // Pass B: each thread reads back the elements it wrote in pass A.
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    float v = d[j] * s;
    if (p.threshold) {
      if (!isnan(v)) v = fmaxf(fminf(v, t), -t);
      v = v / t;
    }
    d[j] = v;
    a.x_next[base + j] = combine(a, r, base + j, v);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

void ode_step(const float* x, const float* d_cond, const float* d_uncond, const float* h1, const float* h2,
              const float* h3, const float* noise, int64_t B, int64_t M, const double* coeffs, const double* guidance,
              double rescale, double threshold, double threshold_max, float* x_next, float* d, cudaStream_t stream,
              int device) {
  const char* op = "ode_step";
  if (B < 0 || M < 0) fail_argument(op, "need B >= 0 and M >= 0, got B=" + std::to_string(B) + ", M=" + std::to_string(M));
  if (M > INT_MAX) fail_argument(op, "M must be < 2^31, got " + std::to_string(M));
  if (!(rescale >= 0.0 && rescale <= 1.0)) fail_argument(op, "rescale must be in [0, 1], got " + std::to_string(rescale));
  if (!(threshold >= 0.0 && threshold < 1.0))
    fail_argument(op, "threshold must be in [0, 1), got " + std::to_string(threshold));
  if (!(threshold_max > 0.0)) fail_argument(op, "threshold_max must be > 0, got " + std::to_string(threshold_max));
  if (guidance != nullptr && d_uncond == nullptr) fail_argument(op, "guidance needs d_uncond");
  if (B == 0 || M == 0) return;
  if (!x || !d_cond || !coeffs || !x_next || !d) fail_argument(op, "a data pointer is null");
  DeviceGuard guard(device);
  const bool guided_step = guidance != nullptr;
  StepArgs a{{x, d_cond, guided_step ? d_uncond : nullptr, h1, h2, h3, noise}, coeffs, guidance, x_next, d, B, M};
  StatsParams p{rescale, rescale > 0.0 && guided_step && M > 1, threshold > 0.0, float(threshold),
                float(threshold_max)};
  if (!p.rescale && !p.threshold) {
    bool vec4 = M % 4 == 0 && aligned16(x_next) && aligned16(d);
    for (const float* q : a.in) vec4 = vec4 && (q == nullptr || aligned16(q));
    const dim3 grid(unsigned(std::min<int64_t>(ceil_div(M, kPlainPiece), INT_MAX)),
                    unsigned(std::min<int64_t>(B, kMaxGridY)));
    if (vec4)
      plain_step_kernel<4><<<grid, kPlainThreads, 0, stream>>>(a);
    else
      plain_step_kernel<1><<<grid, kPlainThreads, 0, stream>>>(a);
    GENCORE_CUDA_CHECK_LAUNCH("plain_step_kernel");
    return;
  }
  // One block per row, sized to the row: the select's passes are block-wide.
  const int threads = M >= 16384 ? 512 : M >= 2048 ? 256 : 64;
  stats_step_kernel<<<blocks_for(B, 1, op), threads, 0, stream>>>(a, p);
  GENCORE_CUDA_CHECK_LAUNCH("stats_step_kernel");
}

}  // namespace gencore::gpu
