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

// Whole blocks of 64 where every group holds whole 64-element blocks, else 32.
int64_t block_of(const PackedWeight& w) { return (w.group % 64 == 0 || w.group >= w.cols) ? 64 : 32; }

void quantize_activations(MatrixView<const float> x, const PackedWeight& w, int64_t block, int8_t* xc, float* xs,
                          int32_t* xsum, int threads) {
  const int64_t K = x.cols, G = (K + w.group - 1) / w.group;
  parallel_for(x.rows, threads, Schedule::fixed, [&](int64_t m) {
    const float* src = x.row(m);
    require_finite_row(src, K, "x", m);
    int8_t* dst = xc + m * K;
    for (int64_t k0 = 0, g = 0; k0 < K; k0 += w.group, ++g) {
      const int64_t k1 = std::min(K, k0 + w.group);
      float amax = 0.0f;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(src[k]));
      float scale = amax / 127.0f;
      if (scale == 0.0f) scale = 1.0f;
      xs[m * G + g] = scale;
      auto code = [&](int64_t k) {
        return static_cast<int8_t>(std::clamp(std::nearbyint(src[k] / scale), -127.0f, 127.0f));
      };
      int32_t sum = 0;
      const int64_t whole = k0 + (k1 - k0) / block * block, half = block / 2;
      for (int64_t k = k0; k < whole; k += block)
        for (int64_t j = 0; j < half; ++j) {
          dst[k + j] = code(k + 2 * j);
          dst[k + half + j] = code(k + 2 * j + 1);
        }
      for (int64_t k = whole; k < k1; ++k) dst[k] = code(k);
      for (int64_t k = k0; k < k1; ++k) sum += dst[k];
      xsum[m * G + g] = sum;
    }
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
  const int64_t G = (K + w.group - 1) / w.group, block = block_of(w);
  threads = useful_threads(threads, M * N * K);
  std::vector<int8_t> xc(static_cast<size_t>(M * K));
  std::vector<float> xs(static_cast<size_t>(M * G));
  std::vector<int32_t> xsum(static_cast<size_t>(M * G));
  quantize_activations(x, w, block, xc.data(), xs.data(), xsum.data(), threads);
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
                            zeros.data(), K, w.group, block, y + m0 * N + n, N);
                   }
                   if (bias)
                     for (int64_t m = 0; m < M; ++m) y[m * N + n] += bias[n];
                 }
               });
}

}  // namespace gencore::quant
