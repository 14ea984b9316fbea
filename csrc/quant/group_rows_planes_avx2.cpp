// AVX2 row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h). One int4 block's dot product: vpmaddubsw of the
// nibbles (u8) with the codes (s8) -> pairs summed in int16 (at most
// 2 * 15 * 128), the even and odd halves added in int16 (at most 7680) and
// widened to int32 by one vpmaddwd with ones. int8 blocks: one vpmaddubsw of
// the bytes with the codes, widened at once (the pairs need all of int16). Also the kernel of AVX-512 CPUs
// without VNNI: on Zen 4, 512-bit integer ops run at half rate, so wider
// vectors would gain little.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul_planes.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

#include "quant/group_rows_planes_simd.h"

namespace gencore::quant {
namespace {

struct MaddDot : Int32Lanes {
  // 16 registers: at 3 planes, 2 weight rows x 1 activation row (or 1 x 2) hold 6 accumulators, 2 float totals,
  // 4 nibble vectors, 2 code vectors and the constants.
  static constexpr int kWeightRows1 = 2, kWeightRows3 = 2;
  static constexpr int kBatchWeightRows1 = 1, kBatchWeightRows3 = 1;
  static constexpr int kRowsPerCall1 = 4, kRowsPerCall3 = 2;
  static constexpr int kWholeGroupRows1 = 2, kWholeGroupRows3 = 2, kPairGroupRows3 = 2;  // as kWeightRows
  static void add(Acc& acc, __m256i lo, __m256i hi, __m256i even, __m256i odd) {
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, even), _mm256_maddubs_epi16(hi, odd));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  // int8 weights, codes q in [0, 255]. Three planes: the digits stay within [-64, 64], so the
  // pairs (at most 2 * 255 * 64 = 32640) fit int16 as they are. One plane: the codes reach +-127,
  // where 2 * 255 * 127 would saturate, so the weight enters as q - 128 in [-128, 127]: the
  // unsigned operand is |q - 128| <= 128 and its sign moves onto the code (vpsignb: |c| <= 127
  // never wraps), pairs at most 2 * 128 * 127 = 32512; the kernel adds 128 * sum(c) back
  // through the zero points (byte_offset).
  template <int P>
  static Operands bytes(__m256i v) {
    if constexpr (P == 1) {
      const __m256i centred = _mm256_xor_si256(v, _mm256_set1_epi8(char(0x80)));  // q - 128 as s8
      return {_mm256_abs_epi8(centred), centred};
    } else {
      return {v, v};
    }
  }
  template <int P>
  static void add_bytes(Acc& acc, const Operands& w, __m256i codes) {
    const __m256i signed_codes = P == 1 ? _mm256_sign_epi8(codes, w.b) : codes;
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w.a, signed_codes), _mm256_set1_epi16(1)));
  }
  template <int P>
  static constexpr int byte_offset() { return P == 1 ? 128 : 0; }
};

}  // namespace

void group_rows_planes_avx2(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                            float* out, int64_t ldo) {
  plane_rows_all<MaddDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
