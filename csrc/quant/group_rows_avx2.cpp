// AVX2 row kernel of group_matmul for int8 weights (group_matmul.h), the twin of
// group_rows_avx512.cpp at 8 lanes: each 32-element weight block becomes four
// vectors of 8 floats once and is multiplied into up to 4 activation
// rows per call (16 registers: 4 partial sums, 4 totals, 4 weights, constants;
// the driver calls again for rows 5-8 while the weight row is still in L1).
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul.h"
#include "quant/group_tail.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

#include "quant/zero_share_avx2.h"

namespace gencore::quant {
namespace {

constexpr int kRowsPerCall = 4;

inline __m256 widen(__m128i bytes8) {  // the low 8 bytes as floats
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes8));
}

template <int NB>
void rows(const float* xd, int64_t ldx, const float* xs, int64_t ldxs, const uint8_t* w, const float* s, const float* z, int64_t K,
          int64_t group, float* out, int64_t ldo) {
  __m256 total[NB];
  float tail_total[NB];
  for (int b = 0; b < NB; ++b) {
    total[b] = _mm256_setzero_ps();
    tail_total[b] = 0.0f;
  }
  // Few rows: two FMA chains per row (the 16 registers allow it up to 2 rows).
  constexpr int kChains = NB <= 2 ? 2 : 1;
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    const int64_t whole = blocks_end(k0, k1);
    __m256 acc[NB][kChains];
    for (int b = 0; b < NB; ++b)
      for (int c = 0; c < kChains; ++c) acc[b][c] = _mm256_setzero_ps();
    for (int64_t k = k0; k < whole; k += kBlock) {
      const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k));
      const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16));
      const __m256 v[4] = {widen(first), widen(_mm_unpackhi_epi64(first, first)), widen(second),
                           widen(_mm_unpackhi_epi64(second, second))};
      for (int b = 0; b < NB; ++b) {
        const float* x = xd + b * ldx + k;
        for (int i = 0; i < 4; ++i)
          acc[b][i % kChains] = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8 * i), v[i], acc[b][i % kChains]);
      }
    }
    const __m256 scale = _mm256_set1_ps(s[g]);
    for (int b = 0; b < NB; ++b) {
      __m256 sum = acc[b][0];
      if constexpr (kChains == 2) sum = _mm256_add_ps(sum, acc[b][1]);
      total[b] = _mm256_fmadd_ps(scale, sum, total[b]);
      if (whole < k1) tail_total[b] += s[g] * dot_natural(xd + b * ldx, w, whole, k1, 0.0f, 8);
    }
  }
  const int64_t groups = group_count(K, group);
  for (int b = 0; b < NB; ++b)
    out[b * ldo] = hsum8(total[b]) + tail_total[b] - zero_share_vec(s, z, xs + b * ldxs, groups);
}

void rows_upto4(const float* xd, int64_t ldx, const float* xs, int64_t ldxs, int nb, const uint8_t* w, const float* s, const float* z,
                int64_t K, int64_t group, float* out, int64_t ldo) {
  switch (nb) {
    case 1: return rows<1>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 2: return rows<2>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 3: return rows<3>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    default: return rows<4>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
  }
}

}  // namespace

void group_rows_avx2(const float* xd, int64_t ldx, const float* xs, int64_t ldxs, int nb, const uint8_t* w, const float* s, const float* z,
                     int64_t K, int64_t group, float* out, int64_t ldo) {
  for (int b0 = 0; b0 < nb; b0 += kRowsPerCall) {
    const int n = nb - b0 < kRowsPerCall ? nb - b0 : kRowsPerCall;
    rows_upto4(xd + b0 * ldx, ldx, xs + b0 * ldxs, ldxs, n, w, s, z, K, group, out + b0 * ldo, ldo);
  }
}

void dequantize_row_avx2(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                         float* out) {
  const __m128i low_nibbles = _mm_set1_epi8(0x0F);
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    const int64_t whole = blocks_end(k0, k1);
    const __m256 zero = _mm256_set1_ps(z[g]), scale = _mm256_set1_ps(s[g]);
    for (int64_t k = k0; k < whole; k += kBlock) {
      __m128i first, second;  // elements k..k+15 and k+16..k+31, natural order
      if (bits == 4) {
        const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k / 2));
        const __m128i lo = _mm_and_si128(bytes, low_nibbles);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles);
        first = _mm_unpacklo_epi8(lo, hi);
        second = _mm_unpackhi_epi8(lo, hi);
      } else {
        first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k));
        second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k + 16));
      }
      const __m128i parts[4] = {first, _mm_unpackhi_epi64(first, first), second, _mm_unpackhi_epi64(second, second)};
      for (int i = 0; i < 4; ++i)
        _mm256_storeu_ps(out + k + 8 * i, _mm256_mul_ps(_mm256_sub_ps(widen(parts[i]), zero), scale));
    }
    for (int64_t k = whole; k < k1; ++k) out[k] = (float(quantized_at(q, k, bits)) - z[g]) * s[g];
  }
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
