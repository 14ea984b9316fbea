// Driver of the int8-activation path (group_matmul_a8.h): the activations are
// quantized once per call into the kernel's block layout, then threads take
// blocks of weight rows, each streamed from memory once as in the float rows
// path (group_matmul.cpp). Peak extra memory: M x K bytes + 8 M x G bytes.
#include "quant/group_matmul_a8.h"

#include "quant/group_tail.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"

namespace gencore::quant {
namespace {

constexpr int64_t kRowBlock = 16;  // weight rows per work item

// The kernels' layout of one row of codes (group_matmul_a8.h): natural -> laid out.
void lay_out(const int8_t* natural, int64_t K, int64_t group, int8_t* dst) {
  auto deinterleave = [&](int64_t k) {  // one 64-element block: 32 even elements, then 32 odd
    for (int64_t j = 0; j < 32; ++j) {
      dst[k + j] = natural[k + 2 * j];
      dst[k + 32 + j] = natural[k + 2 * j + 1];
    }
  };
  std::copy(natural, natural + K, dst);
  if (group == kPairGroup) {
    for (int64_t k = 0; k + 64 <= K; k += 64) deinterleave(k);
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += group) {
    const int64_t k1 = std::min(K, k0 + group);
    for (int64_t k = k0; k + 64 <= k1; k += 64) deinterleave(k);
  }
}

void quantize_activations(MatrixView<const float> x, const PackedWeight& w, int8_t* xc, float* xs, int32_t* xsum,
                          int threads) {
  const int64_t K = x.cols, G = (K + w.group - 1) / w.group;
  parallel_for(x.rows, threads, Schedule::fixed, [&] { return std::vector<int8_t>(size_t(K)); },
               [&](std::vector<int8_t>& natural, int64_t m) {
    const float* src = x.row(m);
    require_finite_row(src, K, "x", m);
    for (int64_t k0 = 0, g = 0; k0 < K; k0 += w.group, ++g) {
      const int64_t k1 = std::min(K, k0 + w.group);
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(src[k]));
      float scale = amax / 127.0f;
      if (scale == 0.0f) scale = 1.0f;
      xs[m * G + g] = scale;
      int32_t sum = 0;
      for (int64_t k = k0; k < k1; ++k) {
        natural[k] = static_cast<int8_t>(std::clamp(std::nearbyint(src[k] / scale), -127.0f, 127.0f));
        sum += natural[k];
      }
      xsum[m * G + g] = sum;
    }
    lay_out(natural.data(), K, w.group, xc + m * K);
  });
}

}  // namespace

void group_matmul_int8_activations(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y,
                                   int threads) {
  GENCORE_CHECK(w.bits == 4, "int8 activations need int4 weights, got bits=", w.bits);
  GENCORE_CHECK(w.group >= 1 && (w.group >= w.cols || w.group % 32 == 0),
                "group_size must be a multiple of 32 or cover all of K, got ", w.group);
  GENCORE_CHECK(x.cols == w.cols, "x has ", x.cols, " columns, the weight has K=", w.cols);
  const int64_t M = x.rows, N = w.rows, K = w.cols;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] = bias ? bias[n] : 0.0f;
    return;
  }
  const int64_t G = (K + w.group - 1) / w.group;
  threads = useful_threads(threads, M * N * K);
  std::vector<int8_t> xc(static_cast<size_t>(M * K));
  std::vector<float> xs(static_cast<size_t>(M * G));
  std::vector<int32_t> xsum(static_cast<size_t>(M * G));
  quantize_activations(x, w, xc.data(), xs.data(), xsum.data(), threads);
  const IntRowKernel kernel = pick_isa<IntRowKernel>(group_rows_a8_portable, GENCORE_ISA_FN(group_rows_a8_avx2),
                                                     nullptr);
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  parallel_for(blocks, threads, Schedule::dynamic, [&] { return std::vector<int32_t>(size_t(G)); },
               [&](std::vector<int32_t>& zeros, int64_t item) {
                 const int64_t n0 = item * kRowBlock, n1 = std::min(N, n0 + kRowBlock);
                 for (int64_t n = n0; n < n1; ++n) {
                   const float* s = w.scales + n * w.scale_stride;
                   const float* z = w.zeros + n * w.scale_stride;
                   check_row_params(w, n, G);
                   bool integral = true;
                   for (int64_t g = 0; g < G; ++g) {  // branch-free: vectorised
                     const float v = std::clamp(z[g], -65536.0f, 65536.0f);
                     zeros[g] = static_cast<int32_t>(v);
                     integral &= float(zeros[g]) == z[g];
                   }
                   GENCORE_CHECK(integral, "zeros must hold integers for int8 activations (row ", n, ")");
                   const uint8_t* q = w.data + n * w.data_stride;
                   for (int64_t m0 = 0; m0 < M; m0 += kMaxKernelRows) {
                     const int nb = static_cast<int>(std::min<int64_t>(kMaxKernelRows, M - m0));
                     kernel(xc.data() + m0 * K, K, xs.data() + m0 * G, xsum.data() + m0 * G, G, nb, q, s,
                            zeros.data(), K, w.group, y + m0 * N + n, N);
                   }
                   if (bias)
                     for (int64_t m = 0; m < M; ++m) y[m * N + n] += bias[n];
                 }
               });
}

}  // namespace gencore::quant
