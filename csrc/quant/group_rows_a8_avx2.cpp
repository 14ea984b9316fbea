// AVX2 row kernel of the int8-activation path (group_matmul_a8.h). Per 64
// weights (32 bytes): the low and high nibbles as two vectors of 32 unsigned
// bytes, multiplied with the matching 32 activation codes by vpmaddubsw
// (u8 x s8 -> pairs summed in int16: at most 2 * 15 * 127, no saturation),
// the two results added in int16 (at most 7620) and widened to int32 by one
// vpmaddwd with ones. Groups of 32 go in pairs, one per 128-bit lane, scaled
// by a vector of two group scales. The same code serves AVX-512 CPUs (pick_isa falls back to it):
// on Zen 4, 512-bit integer ops run at half rate, so there is little to gain.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul_a8.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

#include "quant/zero_share_avx2.h"

namespace gencore::quant {
namespace {

// The int32 pair sums of one laid-out 64-element block (group_matmul_a8.h) for
// activation row c: 8 lanes, the low 4 from the block's first 32 elements.
inline __m256i block_dot(__m256i lo, __m256i hi, const int8_t* c, __m256i ones) {
  const __m256i even = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)));
  const __m256i odd = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32)));
  return _mm256_madd_epi16(_mm256_add_epi16(even, odd), ones);
}

template <int NB>
void rows(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, const uint8_t* w,
          const float* s, const int32_t* z, int64_t K, int64_t group, float* out, int64_t ldo) {
  // Per group (or pair of groups of 32) one float multiply-add of the whole
  // int32 vector, no horizontal sum; the zero points' share is subtracted once per row.
  __m256 total[NB];
  float tail_total[NB];
  for (int b = 0; b < NB; ++b) {
    total[b] = _mm256_setzero_ps();
    tail_total[b] = 0.0f;
  }
  const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t groups = (K + group - 1) / group;
  auto load_nibbles = [&](int64_t k, __m256i& lo, __m256i& hi) {
    const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k / 2));
    lo = _mm256_and_si256(bytes, low_nibbles);
    hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low_nibbles);
  };
  if (group == kPairGroup) {  // each 64-element block: group g in the low lane, g + 1 in the high one
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      const int64_t g = k / 32;
      __m256i lo, hi;
      load_nibbles(k, lo, hi);
      for (int b = 0; b < NB; ++b) {
        const __m256 scale = _mm256_set_m128(_mm_set1_ps(s[g + 1] * xs[b * ldg + g + 1]),
                                             _mm_set1_ps(s[g] * xs[b * ldg + g]));
        total[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot(lo, hi, xc + b * ldx + k, ones)), scale, total[b]);
      }
    }
    for (int64_t g = k / 32; g < groups; ++g)
      for (int b = 0; b < NB; ++b)
        tail_total[b] += s[g] * xs[b * ldg + g] *
                         float(dot_natural_a8(xc + b * ldx, w, g * 32, g * 32 + 32 < K ? g * 32 + 32 : K));
  } else {
    for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
      const int64_t k1 = k0 + group < K ? k0 + group : K;
      __m256i acc[NB];
      for (int b = 0; b < NB; ++b) acc[b] = _mm256_setzero_si256();
      int64_t k = k0;
      for (; k + 64 <= k1; k += 64) {
        __m256i lo, hi;
        load_nibbles(k, lo, hi);
        for (int b = 0; b < NB; ++b) acc[b] = _mm256_add_epi32(acc[b], block_dot(lo, hi, xc + b * ldx + k, ones));
      }
      for (int b = 0; b < NB; ++b) {
        const float scale = s[g] * xs[b * ldg + g];
        total[b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[b]), _mm256_set1_ps(scale), total[b]);
        if (k < k1) tail_total[b] += scale * float(dot_natural_a8(xc + b * ldx, w, k, k1));
      }
    }
  }
  for (int b = 0; b < NB; ++b)
    out[b * ldo] = hsum8(total[b]) + tail_total[b] - zero_share_int(s, xs + b * ldg, z, xsum + b * ldg, groups);
}

}  // namespace

void group_rows_a8_avx2(const int8_t* xc, int64_t ldx, const float* xs, const int32_t* xsum, int64_t ldg, int nb,
                        const uint8_t* w, const float* s, const int32_t* z, int64_t K, int64_t group, float* out,
                        int64_t ldo) {
  for (int b0 = 0; b0 < nb; b0 += 4) {
    const int n = nb - b0 < 4 ? nb - b0 : 4;
    const int8_t* c = xc + b0 * ldx;
    const float* scales = xs + b0 * ldg;
    const int32_t* sums = xsum + b0 * ldg;
    float* o = out + b0 * ldo;
    switch (n) {
      case 1: rows<1>(c, ldx, scales, sums, ldg, w, s, z, K, group, o, ldo); break;
      case 2: rows<2>(c, ldx, scales, sums, ldg, w, s, z, K, group, o, ldo); break;
      case 3: rows<3>(c, ldx, scales, sums, ldg, w, s, z, K, group, o, ldo); break;
      default: rows<4>(c, ldx, scales, sums, ldg, w, s, z, K, group, o, ldo); break;
    }
  }
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
