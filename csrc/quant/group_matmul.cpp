// group_matmul driver (group_matmul.h). Two paths:
//   rows: few activation rows (memory bound): the integer-activation kernels at
//         21-23 bits (group_matmul_planes.h), each weight row streamed from memory once.
//   blas: many activation rows (compute bound). Each thread dequantizes a tile
//         of kTileRows weight rows into a float buffer once and runs SciPy's
//         sgemm on it against all activation rows.
// Outputs of different threads are blocks of at least 16 columns of y (64
// bytes), so threads share a cache line only where a block edge is not aligned.
// Peak extra memory: group_matmul_planes.cpp's (rows) or threads x kTileRows x K floats (blas).
#include "quant/group_matmul.h"
#include "quant/group_matmul_planes.h"
#include "quant/group_tail.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/isa.h"
#include "gencore/parallel.h"

namespace gencore::quant {
namespace {

constexpr int64_t kTileRows = 64;  // weight rows per dequantized tile of the blas path
// From this many activation rows on, dequantize + sgemm beats the fused
// kernels (measured, bench/quant/bench_group_matmul.py). The portable kernel: 16.
// int4 weights with a SIMD integer kernel: 2 x 3 rows per call (AVX512-VNNI),
// 32 x 4096 x 11008 took 42 ms against sgemm's 56 (dequantize + sgemm: 70); they
// meet at about 96 rows (avx2: at about 64). int8 weights (twice the integer
// work per weight byte), 11008 x 4096, 1 thread: AVX512-VNNI 48 rows 75 ms against
// dequantize + sgemm's 81, 64 rows 103 against 96; AVX2 16 rows 38 against 54,
// 32 rows 75 against 69.
constexpr int64_t kBlasMinRows = 16;
constexpr int64_t kBlasMinRowsInt4Simd = 64;
constexpr int64_t kBlasMinRowsInt8Vnni = 56;
constexpr int64_t kBlasMinRowsInt8Avx2 = 32;

thread_local const char* last_path = "none";

void check_group_params(const PackedWeight& w) {
  GENCORE_CHECK(w.bits == 4 || w.bits == 8, "bits must be 4 or 8, got ", w.bits);
  GENCORE_CHECK(w.group >= 1, "group_size must be >= 1, got ", w.group);
  GENCORE_CHECK(w.group >= w.cols || w.group % kBlock == 0,
                "group_size must be a multiple of 32 or cover all of K, got ", w.group, " for K=", w.cols);
}

int64_t groups_of(const PackedWeight& w) { return w.cols == 0 ? 0 : (w.cols + w.group - 1) / w.group; }

}  // namespace

int useful_threads(int threads, int64_t work) {
  constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;
  return static_cast<int>(std::clamp<int64_t>(work / kMinWorkPerThread, 1, std::max(threads, 1)));
}

void check_row_params(const PackedWeight& w, int64_t n, int64_t groups) {
  const float* s = w.scales + n * w.scale_stride;
  const float* z = w.zeros + n * w.scale_stride;
  // v - v is 0 for finite v and NaN otherwise: a branch-free loop the compiler vectorises
  // (at groups of 32 a branchy one costs a tenth of the kernel).
  bool scales_finite = true, zeros_finite = true;
  for (int64_t g = 0; g < groups; ++g) {
    scales_finite &= (s[g] - s[g]) == 0.0f;
    zeros_finite &= (z[g] - z[g]) == 0.0f;
  }
  if (!scales_finite) fail_non_finite_row("scales", n);
  if (!zeros_finite) fail_non_finite_row("zeros", n);
}

namespace {

DequantRowFn dequantize_row_fn() {
  return pick_isa<DequantRowFn>(dequantize_row_portable, GENCORE_ISA_FN(dequantize_row_avx2),
                                GENCORE_ISA_FN(dequantize_row_avx512));
}

void dequantize_row(DequantRowFn fn, const PackedWeight& w, int64_t n, float* out) {
  fn(w.data + n * w.data_stride, w.scales + n * w.scale_stride, w.zeros + n * w.scale_stride, w.cols, w.group,
     w.bits, out);
}

void check_activations(MatrixView<const float> x, int threads) {
  parallel_for(x.rows, threads, Schedule::fixed, [&](int64_t m) {
    const float* src = x.row(m);
    require_finite_row(src, x.cols, "x", m);
  });
}

void blas_path(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y, int threads) {
  const int64_t M = x.rows, N = w.rows, K = w.cols, groups = groups_of(w);
  check_activations(x, threads);
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  const DequantRowFn dequant = dequantize_row_fn();
  struct State {
    blas::SingleThreadedScope single;
    std::vector<float> tile;
  };
  parallel_for(tiles, threads, Schedule::dynamic,
               [&] { return State{blas::SingleThreadedScope(), std::vector<float>(size_t(kTileRows * K))}; },
               [&](State& state, int64_t t) {
                 const int64_t n0 = t * kTileRows, n1 = std::min(N, n0 + kTileRows);
                 for (int64_t n = n0; n < n1; ++n) {
                   check_row_params(w, n, groups);
                   dequantize_row(dequant, w, n, state.tile.data() + (n - n0) * K);
                 }
                 blas::gemm_abt(M, n1 - n0, K, 1.0f, x.data, x.row_stride, state.tile.data(), K, 0.0f, y + n0, N);
                 add_bias(bias, M, N, n0, n1, y);
               });
}

}  // namespace

const char* last_group_matmul_path() { return last_path; }

int64_t group_matmul_blas_min_rows(int bits) {
  const SimdLevel level = simd_level();
  if (level < SimdLevel::avx2) return kBlasMinRows;
  if (bits == 4) return kBlasMinRowsInt4Simd;
  // the kernel pick_isa chooses in group_matmul_planes.cpp
  return level >= SimdLevel::avx512 && cpu_has_avx512_vnni() ? kBlasMinRowsInt8Vnni : kBlasMinRowsInt8Avx2;
}

void group_matmul(MatrixView<const float> x, const PackedWeight& w, const float* bias, float* y, int threads) {
  check_group_params(w);
  GENCORE_CHECK(x.cols == w.cols, "x has ", x.cols, " columns, the weight has K=", w.cols);
  const int64_t M = x.rows, N = w.rows;
  if (M == 0 || N == 0) return;
  if (w.cols == 0) {  // an empty sum
    std::fill(y, y + M * N, 0.0f);
    add_bias(bias, M, N, 0, N, y);
    return;
  }
  threads = useful_threads(threads, M * N * w.cols);
  if (M >= group_matmul_blas_min_rows(w.bits) && blas::available()) {
    last_path = "blas";
    blas_path(x, w, bias, y, threads);
  } else {
    last_path = "rows";
    group_matmul_split_activations(x, w, bias, y, threads);
  }
}

void dequantize(const PackedWeight& w, float* out, int64_t ld, int threads) {
  check_group_params(w);
  const int64_t groups = groups_of(w);
  const DequantRowFn dequant = dequantize_row_fn();
  threads = useful_threads(threads, w.rows * w.cols);
  parallel_for(w.rows, threads, Schedule::fixed, [&](int64_t n) {
    check_row_params(w, n, groups);
    dequantize_row(dequant, w, n, out + n * ld);
  });
}

}  // namespace gencore::quant
