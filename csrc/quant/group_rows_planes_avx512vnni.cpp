// AVX512-VNNI row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h) at 256 bits (EVEX vpdpbusd on ymm: the same
// layout as the AVX2 kernel, and on Zen 4 512-bit integer ops run at half rate
// anyway), with 32 vector registers.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul_planes.h"

#define GENCORE_ISA avx512vnni
#include "gencore/isa_begin.h"

#include "quant/group_rows_planes_simd.h"

namespace gencore::quant {
namespace {

struct EvexDpbusd {
  static __m256i apply(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }
};

struct Registers32 {
  // At 3 planes, 2 weight x 3 activation rows hold 18 accumulators, 6 float totals, 4 nibble vectors
  // and 2 code vectors (measured at batch 32: 4 activation rows of 1 weight row ran 2x slower).
  static constexpr int kWeightRows1 = 2, kWeightRows3 = 2;
  static constexpr int kBatchWeightRows1 = 2, kBatchWeightRows3 = 2;
  static constexpr int kRowsPerCall1 = 4, kRowsPerCall3 = 3;
  // row_whole_groups: at 3 planes 12 accumulators, 4 totals, 8 nibble and 2 code vectors (4 rows
  // measured 1.06x 2 rows at 3 planes, 1.8x at 1: 256 x 4096 g128 in L2).
  static constexpr int kWholeGroupRows1 = 4, kWholeGroupRows3 = 4;
};

using VnniDot = DpbusdDot<EvexDpbusd, Registers32>;

}  // namespace

void group_rows_planes_avx512vnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                  float* out, int64_t ldo) {
  plane_rows_all<VnniDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
