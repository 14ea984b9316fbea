// Driver of the integer-activation paths (group_matmul_planes.h): the
// activations are quantized once per call into the kernels' planes and block
// layout, then threads take blocks of weight rows, each streamed from memory
// once as in the float rows path (group_matmul.cpp).
// Peak extra memory: P x M x K bytes + 8 M x G bytes.
#include "quant/group_matmul_planes.h"

#include "quant/activation_planes.h"
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

// x [M, K] -> planes [M, P, K] laid out, scales sx and group sums xz [M, G]; refuses NaN/inf rows.
void quantize_activations(MatrixView<const float> x, const PackedWeight& w, int planes, int8_t* codes, float* sx,
                          float* xz, int threads) {
  const int64_t K = x.cols, G = (K + w.group - 1) / w.group;
  const ActivationRowShape shape = activation_row_shape(K, w.group, planes, w.bits);
  const ActivationRowQuantizer quantize_row = activation_row_quantizer();
  parallel_for(x.rows, threads, Schedule::fixed, [&] { return std::vector<int32_t>(size_t(K)); },
               [&](std::vector<int32_t>& code, int64_t m) {
    require_finite_row(x.row(m), K, "x", m);
    quantize_row(x.row(m), shape, code.data(), codes + m * planes * K, sx + m * G, xz + m * G);
  });
}

void require_integral_zeros(const PackedWeight& w, int64_t n, int64_t groups) {
  const float* z = w.zeros + n * w.scale_stride;
  // Branch-free and vectorised: (z + 1.5 * 2^23) - 1.5 * 2^23 rounds z to an integer when |z| <= 2^22
  // (an int conversion here cost a third of the int8-activation call).
  int bad = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const float rounded = (z[g] + 12582912.0f) - 12582912.0f;
    bad |= int(std::fabs(z[g]) > 65536.0f) | int(rounded != z[g]);
  }
  GENCORE_CHECK(!bad, "zeros must hold integers for int8 activations (row ", n, ")");
}

void group_matmul_planes(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y, int threads,
                         int planes) {
  GENCORE_CHECK(w.bits == 4 || w.bits == 8, "bits must be 4 or 8, got ", w.bits);
  GENCORE_CHECK(w.group >= 1 && (w.group >= w.cols || w.group % 32 == 0),
                "group_size must be a multiple of 32 or cover all of K, got ", w.group);
  GENCORE_CHECK(x.cols == w.cols, "x has ", x.cols, " columns, the weight has K=", w.cols);
  const int64_t M = x.rows, N = w.rows, K = w.cols;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    std::fill(y, y + M * N, 0.0f);  // an empty sum
    add_bias(bias, M, N, 0, N, y);
    return;
  }
  const int64_t G = (K + w.group - 1) / w.group;
  threads = useful_threads(threads, M * N * K);
  std::vector<int8_t> codes(static_cast<size_t>(M * planes * K));
  std::vector<float> sx(static_cast<size_t>(M * G)), xz(static_cast<size_t>(M * G));
  quantize_activations(x, w, planes, codes.data(), sx.data(), xz.data(), threads);
  const PlaneRowKernel kernel = plane_row_kernel();
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  // Dynamic: on a shared machine a descheduled thread would otherwise hold the whole call back.
  parallel_for(blocks, threads, Schedule::dynamic, [&](int64_t item) {
    const int64_t n0 = item * kRowBlock, n1 = std::min(N, n0 + kRowBlock);
    const WeightRows rows{w.data + n0 * w.data_stride, w.data_stride, w.scales + n0 * w.scale_stride,
                          w.zeros + n0 * w.scale_stride, w.scale_stride, static_cast<int>(n1 - n0), w.bits};
    for (int64_t m0 = 0; m0 < M; m0 += kMaxKernelRows) {
      const int nb = static_cast<int>(std::min<int64_t>(kMaxKernelRows, M - m0));
      const ActivationPlanes part{codes.data() + m0 * planes * K, planes * K, planes, sx.data() + m0 * G,
                                  xz.data() + m0 * G, G};
      kernel(part, nb, rows, K, w.group, y + m0 * N + n0, N);
    }
    // A NaN or inf among a row's scales or zeros always makes its outputs non-finite (inf * 0 is
    // NaN), so the parameters are checked only behind a non-finite output of the block (checking
    // every row cost a sixth of the call at batch 1). A refused row's outputs are never returned.
    bool finite = true;
    for (int64_t m = 0; m < M; ++m) finite &= all_finite(y + m * N + n0, n1 - n0);
    for (int64_t n = n0; n < n1; ++n) {
      if (!finite) check_row_params(w, n, G);
      if (planes == 1) require_integral_zeros(w, n, G);
    }
    add_bias(bias, M, N, n0, n1, y);
  });
}

}  // namespace

PlaneRowKernel plane_row_kernel() {
  return pick_isa<PlaneRowKernel>(group_rows_planes_portable, GENCORE_ISA_FN(group_rows_planes_avx2), nullptr, nullptr,
                                  GENCORE_ISA_FN(group_rows_planes_avx512vnni), GENCORE_ISA_FN(group_rows_planes_avxvnni));
}

const char* plane_row_kernel_name() {
  const PlaneRowKernel kernel = plane_row_kernel();
  // Without the x86 units every GENCORE_ISA_FN is null, and the portable kernel is the one picked.
  if (kernel == GENCORE_ISA_FN(group_rows_planes_avx512vnni)) return "avx512vnni";
  if (kernel == GENCORE_ISA_FN(group_rows_planes_avxvnni)) return "avxvnni";
  if (kernel == GENCORE_ISA_FN(group_rows_planes_avx2)) return "avx2";
  return "portable";
}

void group_matmul_int8_activations(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y,
                                   int threads) {
  group_matmul_planes(x, w, bias, y, threads, 1);
}

void group_matmul_split_activations(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y,
                                    int threads) {
  group_matmul_planes(x, w, bias, y, threads, kMaxPlanes);
}

}  // namespace gencore::quant
