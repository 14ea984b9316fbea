// AVX-VNNI row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h): the VNNI kernel in its VEX encoding, for
// CPUs with AVX2 and AVX-VNNI but no AVX-512 (Alder Lake and later client cores,
// Sierra Forest), where the AVX2 kernel's three instructions per dot product
// (vpmaddubsw, vpaddw, vpmaddwd) become one vpdpbusd. 16 vector registers: the
// register budget of the AVX2 kernel, less its constant of ones.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul_planes.h"

#define GENCORE_ISA avxvnni
#include "gencore/isa_begin.h"

#include "quant/group_rows_planes_simd.h"

namespace gencore::quant {
namespace {

struct VexDpbusd {
  static __m256i apply(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_avx_epi32(acc, u8, s8); }
};

struct Registers16 {
  // At 3 planes, 2 weight rows x 1 activation row hold 6 accumulators, 2 float totals, 4 nibble
  // vectors, 2 code vectors and the nibble mask; the same 2 x 1 for several activation rows (the
  // AVX2 kernel's 1 x 2 loads one weight row's bytes for 12 activation-code loads: measured 1.15x
  // slower at batch 32, and 3 x 1 no faster than 2 x 1, on Zen 5 capped at this level).
  static constexpr int kWeightRows1 = 2, kWeightRows3 = 2;
  static constexpr int kBatchWeightRows1 = 1, kBatchWeightRows3 = 2;
  static constexpr int kRowsPerCall1 = 4, kRowsPerCall3 = 1;
  // row_whole_groups: 3 rows measured 1.15x slower than 2 at 3 planes (4096 x 4096 g128, batch 1)
  static constexpr int kWholeGroupRows1 = 2, kWholeGroupRows3 = 2;
};

using VnniDot = DpbusdDot<VexDpbusd, Registers16>;

}  // namespace

void group_rows_planes_avxvnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                               float* out, int64_t ldo) {
  plane_rows_all<VnniDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
