// AVX-512 row kernel of group_matmul for int8 weights (group_matmul.h): each
// 32-element block of the weight row is widened to two vectors of 16 floats
// once and multiplied into up to 8 activation rows, so the
// weight row is read from memory once for all of them. Per row and group one
// vector partial sum, scaled into a vector total with one FMA; one horizontal
// sum per row at the end.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul.h"
#include "quant/group_tail.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"

#include "quant/zero_share_avx2.h"

namespace gencore::quant {
namespace {

template <int NB>
void rows(const float* xd, int64_t ldx, const float* xs, int64_t ldxs, const uint8_t* w, const float* s, const float* z, int64_t K,
          int64_t group, float* out, int64_t ldo) {
  __m512 total[NB];
  float tail_total[NB];
  for (int b = 0; b < NB; ++b) {
    total[b] = _mm512_setzero_ps();
    tail_total[b] = 0.0f;
  }
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    const int64_t whole = blocks_end(k0, k1);
    __m512 acc0[NB], acc1[NB];  // two independent FMA chains per row
    for (int b = 0; b < NB; ++b) acc0[b] = acc1[b] = _mm512_setzero_ps();
    for (int64_t k = k0; k < whole; k += kBlock) {
      const __m128i first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k));
      const __m128i second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k + 16));
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(first));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(second));
      for (int b = 0; b < NB; ++b) {
        const float* x = xd + b * ldx + k;
        acc0[b] = _mm512_fmadd_ps(_mm512_loadu_ps(x), w0, acc0[b]);
        acc1[b] = _mm512_fmadd_ps(_mm512_loadu_ps(x + 16), w1, acc1[b]);
      }
    }
    const __m512 scale = _mm512_set1_ps(s[g]);
    for (int b = 0; b < NB; ++b) {
      total[b] = _mm512_fmadd_ps(scale, _mm512_add_ps(acc0[b], acc1[b]), total[b]);
      if (whole < k1) tail_total[b] += s[g] * dot_natural(xd + b * ldx, w, whole, k1, 0.0f, 8);
    }
  }
  const int64_t groups = group_count(K, group);
  for (int b = 0; b < NB; ++b)
    out[b * ldo] = _mm512_reduce_add_ps(total[b]) + tail_total[b] - zero_share_vec(s, z, xs + b * ldxs, groups);
}

void rows_for(const float* xd, int64_t ldx, const float* xs, int64_t ldxs, int nb, const uint8_t* w, const float* s, const float* z, int64_t K,
              int64_t group, float* out, int64_t ldo) {
  switch (nb) {
    case 1: return rows<1>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 2: return rows<2>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 3: return rows<3>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 4: return rows<4>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 5: return rows<5>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 6: return rows<6>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    case 7: return rows<7>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
    default: return rows<8>(xd, ldx, xs, ldxs, w, s, z, K, group, out, ldo);
  }
}

}  // namespace

void group_rows_avx512(const float* xd, int64_t ldx, const float* xs, int64_t ldxs, int nb, const uint8_t* w, const float* s, const float* z,
                       int64_t K, int64_t group, float* out, int64_t ldo) {
  rows_for(xd, ldx, xs, ldxs, nb, w, s, z, K, group, out, ldo);
}

void dequantize_row_avx512(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                           float* out) {
  const __m128i low_nibbles = _mm_set1_epi8(0x0F);
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    const int64_t whole = blocks_end(k0, k1);
    const __m512 zero = _mm512_set1_ps(z[g]), scale = _mm512_set1_ps(s[g]);
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
      _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(first)), zero), scale));
      _mm512_storeu_ps(out + k + 16,
                       _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(second)), zero), scale));
    }
    for (int64_t k = whole; k < k1; ++k) out[k] = (float(quantized_at(q, k, bits)) - z[g]) * s[g];
  }
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
