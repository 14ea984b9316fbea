// AVX2 row kernel of the int8-activation path (group_matmul_a8.h). Per 64
// weights (32 bytes): the low and high nibbles as two vectors of 32 unsigned
// bytes, multiplied with the matching 32 activation codes by vpmaddubsw
// (u8 x s8 -> pairs summed in int16: at most 2 * 15 * 127, no saturation),
// the two results added in int16 (at most 7620) and widened to int32 by one
// vpmaddwd with ones. Blocks of 32 (groups of 32) put both nibble halves in
// one vector. The same code serves AVX-512 CPUs (pick_isa falls back to it):
// on Zen 4, 512-bit integer ops run at half rate, so there is little to gain.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul_a8.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

#include "quant/zero_share_avx2.h"

namespace gencore::quant {
namespace {

template <int NB>
void rows(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, const uint8_t* w,
          const float* s, const int32_t* z, int64_t K, int64_t group, int64_t block, float* out, int64_t ldo) {
  // Per group one float multiply-add of the whole int32 vector (no horizontal
  // sum per group); the zero points' share is subtracted once per row at the end.
  __m256 total[NB];
  float tail_total[NB];
  for (int b = 0; b < NB; ++b) {
    total[b] = _mm256_setzero_ps();
    tail_total[b] = 0.0f;
  }
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m128i low_nibbles128 = _mm_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    const int64_t whole = k0 + (k1 - k0) / block * block;
    __m256i acc[NB];
    for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_si256();
    if (block == 64) {
      for (int64_t k = k0; k < whole; k += 64) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k / 2));
        const __m256i lo = _mm256_and_si256(bytes, low_nibbles);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_nibbles);
        for (int b = 0; b < NB; ++b) {
          const int8_t* c = xc + b * ldx + k;
          const __m256i even = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
          const __m256i odd = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32)));
          acc[b] = _mm256_add_epi32(acc[b], _mm256_madd_epi16(_mm256_add_epi16(even, odd), ones));
        }
      }
    } else {
      for (int64_t k = k0; k < whole; k += 32) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k / 2));
        const __m256i codes = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles128),
                                               _mm_and_si128(bytes, low_nibbles128));
        for (int b = 0; b < NB; ++b) {
          const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xc + b * ldx + k));
          acc[b] = _mm256_add_epi32(acc[b], _mm256_madd_epi16(_mm256_maddubs_epi16(codes, c), ones));
        }
      }
    }
    for (int b = 0; b < NB; ++b) {
      const float scale = s[g] * xs[b * ldg + g];
      total[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[b]), _mm256_set1_ps(scale), total[b]);
      if (whole < k1) tail_total[b] += scale * float(dot_natural_a8(xc + b * ldx, w, whole, k1));
    }
  }
  const int64_t groups = (K + group - 1) / group;
  for (int b = 0; b < NB; ++b)
    out[b * ldo] = hsum8(total[b]) + tail_total[b] - zero_share_int(s, xs + b * ldg, z, xsum + b * ldg, groups);
}

}  // namespace

void group_rows_a8_avx2(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                        const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group, int64_t block,
                        float* out, int64_t ldo) {
  for (int b0 = 0; b0 < nb; b0 += 4) {
    const int n = nb - b0 < 4 ? nb - b0 : 4;
    const int8_t* c = xc + b0 * ldx;
    const float* scales = xs + b0 * ldg;
    const int32_t* sums = xsum + b0 * ldg;
    float* o = out + b0 * ldo;
    switch (n) {
      case 1: rows<1>(c, ldx, scales, sums, ldg, w, s, z, K, group, block, o, ldo); break;
      case 2: rows<2>(c, ldx, scales, sums, ldg, w, s, z, K, group, block, o, ldo); break;
      case 3: rows<3>(c, ldx, scales, sums, ldg, w, s, z, K, group, block, o, ldo); break;
      default: rows<4>(c, ldx, scales, sums, ldg, w, s, z, K, group, block, o, ldo); break;
    }
  }
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
