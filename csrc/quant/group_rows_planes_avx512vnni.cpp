// AVX512-VNNI row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h) at 256 bits (EVEX vpdpbusd on ymm: the same
// layout as the AVX2 kernel, and on Zen 4 512-bit integer ops run at half rate
// anyway), with 32 vector registers (Registers32 in group_rows_planes_simd.h).
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

using VnniDot = DpbusdDot<EvexDpbusd, Registers32>;

}  // namespace

void group_rows_planes_avx512vnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                  float* out, int64_t ldo) {
  plane_rows_all<VnniDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
