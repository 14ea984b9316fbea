// AVX-VNNI row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h): the VNNI kernel in its VEX encoding, for
// CPUs with AVX2 and AVX-VNNI but no AVX-512 (Alder Lake and later client cores,
// Sierra Forest), where the AVX2 kernel's three instructions per dot product
// (vpmaddubsw, vpaddw, vpmaddwd) become one vpdpbusd. 16 vector registers
// (Registers16 in group_rows_planes_simd.h).
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

using VnniDot = DpbusdDot<VexDpbusd, Registers16>;

}  // namespace

void group_rows_planes_avxvnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                               float* out, int64_t ldo) {
  plane_rows_all<VnniDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
