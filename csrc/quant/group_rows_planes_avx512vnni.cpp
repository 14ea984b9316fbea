// AVX512-VNNI row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h) at 256 bits (EVEX vpdpbusd on ymm: the same
// layout as the AVX2 kernel, and on Zen 4 512-bit integer ops run at half rate
// anyway). One int4 block's dot product is two vpdpbusd (u8 nibbles times s8 codes,
// four products summed into each int32 lane), an int8 block's one (u8 codes: vpdpbusd
// sums in int32, so any s8 code is exact); the several weight rows and planes
// in flight give enough independent accumulators.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul_planes.h"

#define GENCORE_ISA avx512vnni
#include "gencore/isa_begin.h"

#include "quant/group_rows_planes_simd.h"

namespace gencore::quant {
namespace {

struct VnniDot : Int32Lanes {
  // 32 registers: at 3 planes, 2 weight x 3 activation rows hold 18 accumulators, 6 float totals,
  // 4 nibble vectors and 2 code vectors (measured at batch 32: 4 activation rows of 1 weight row ran 2x slower).
  static constexpr int kWeightRows1 = 2, kWeightRows3 = 2;
  static constexpr int kBatchWeightRows1 = 2, kBatchWeightRows3 = 2;
  static constexpr int kRowsPerCall1 = 4, kRowsPerCall3 = 3;
  // row_whole_groups: at 3 planes 12 accumulators, 4 totals, 8 nibble and 2 code vectors (4 rows
  // measured 1.06x 2 rows at 3 planes, 1.8x at 1: 256 x 4096 g128 in L2).
  static constexpr int kWholeGroupRows1 = 4, kWholeGroupRows3 = 4;
  static void add(Acc& acc, __m256i lo, __m256i hi, __m256i even, __m256i odd) {
    acc = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, lo, even), hi, odd);
  }
  template <int P>
  static void add_bytes(Acc& acc, const Operands& w, __m256i codes) { acc = _mm256_dpbusd_epi32(acc, w.a, codes); }
};

}  // namespace

void group_rows_planes_avx512vnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                  float* out, int64_t ldo) {
  plane_rows_all<VnniDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
