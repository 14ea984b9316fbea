// AVX512-VNNI row kernel of the integer-activation paths (group_matmul_planes.h,
// body in group_rows_planes_simd.h) at 256 bits (EVEX vpdpbusd on ymm: the same
// layout as the AVX2 kernel, and on Zen 4 512-bit integer ops run at half rate
// anyway), with 32 vector registers (Registers32 in group_rows_planes_simd.h).
// Several activation rows against groups of whole blocks take a 512-bit form
// (pair_rows) where the CPU's vector units are 512 bits wide (Zen 5).
#include <immintrin.h>

#include <cstdint>

#include "gencore/simd.h"
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

// p[0], p[1] in the low lanes.
inline __m128 load_two(const float* p) { return _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p))); }

// The 512-bit form of plane_rows for several activation rows and groups of whole blocks: each
// zmm holds the same 32-byte block of two weight rows (row 2i in the low 256 bits, 2i + 1 in the
// high), against the activation codes broadcast to both halves, so that one vpdpbusd does the
// work of two at the ymm kernel's layout. Each half's int32 lanes receive the products the ymm
// kernel's lanes do, and are scaled and summed in the same order, so both forms give the same
// results. NP pairs of weight rows against NB activation rows (kPairs*, below).
template <class Codes, int NP, int NB, int P>
void pair_rows(const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out, int64_t ldo) {
  constexpr bool kInt4 = Codes::kBits == 4;
  const bool pairs = kInt4 && group == kPairGroup;  // int4 groups of 32: two a block, one per 128-bit lane
  const int64_t step = pairs ? 2 * kPairGroup : group;  // elements per scaling step
  const int64_t groups = K / group;
  const __m512 base = _mm512_set1_ps(float(1 << digit_bits(Codes::kBits)));
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  // int4 groups of 32: each 128-bit lane holds one group, g (even lanes) or g + 1, of one row
  const __m512i lane_group = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
  const __m512i lane_row_group = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 total[NP][NB];
  for (int i = 0; i < NP; ++i)
    for (int b = 0; b < NB; ++b) total[i][b] = _mm512_setzero_ps();
  prefetch_next_params(w, 2 * NP, groups);
  for (int64_t k0 = 0; k0 < K; k0 += step) {
    __m512i acc[NP][NB][P];
    for (int i = 0; i < NP; ++i)
      for (int b = 0; b < NB; ++b)
        for (int p = 0; p < P; ++p) acc[i][b][p] = _mm512_setzero_si512();
    for (int64_t k = k0; k < k0 + step; k += Codes::kPerBlock) {
      const int64_t byte = Codes::byte_of(k);
      for (int j = 0; j < 2 * NP * 32; j += 64)  // the next rows, swept linearly as in plane_rows
        _mm_prefetch(reinterpret_cast<const char*>(w.data + 2 * NP * w.data_stride + byte * 2 * NP + j),
                     Codes::kPrefetchHint);
      __m512i lo[NP], hi[NP];
      for (int i = 0; i < NP; ++i) {
        const uint8_t* row = w.data + 2 * i * w.data_stride + byte;
        const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(load32(row)), load32(row + w.data_stride), 1);
        lo[i] = kInt4 ? _mm512_and_si512(v, low_nibbles) : v;
        hi[i] = kInt4 ? _mm512_and_si512(_mm512_srli_epi16(v, 4), low_nibbles) : v;
      }
      for (int b = 0; b < NB; ++b)
        for (int p = 0; p < P; ++p) {
          const int8_t* c = x.codes + b * x.ld + p * K + k;
          const __m512i even = _mm512_broadcast_i64x4(load32(c));
          if constexpr (kInt4) {
            const __m512i odd = _mm512_broadcast_i64x4(load32(c + 32));
            for (int i = 0; i < NP; ++i)
              acc[i][b][p] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[i][b][p], lo[i], even), hi[i], odd);
          } else {
            for (int i = 0; i < NP; ++i) acc[i][b][p] = _mm512_dpbusd_epi32(acc[i][b][p], lo[i], even);
          }
        }
    }
    // scale[i][b] = s[r, g] * sx[b, g] in the lanes of row r and group g, as one vector product of
    // the rows' scales (sv) and the activation rows' (sxv)
    const int64_t g = k0 / group;
    __m512 sxv[NB];
    for (int b = 0; b < NB; ++b) {
      const float* sx = x.scales + b * x.ldg + g;
      sxv[b] = pairs ? _mm512_permutexvar_ps(lane_group, _mm512_castps128_ps512(load_two(sx)))
                     : _mm512_set1_ps(sx[0]);
    }
    for (int i = 0; i < NP; ++i) {
      const float* s0 = w.scales + 2 * i * w.scale_stride + g;
      const float* s1 = s0 + w.scale_stride;
      const __m512 sv = pairs ? _mm512_permutexvar_ps(lane_row_group, _mm512_castps128_ps512(_mm_movelh_ps(
                                                                         load_two(s0), load_two(s1))))
                              : _mm512_insertf32x8(_mm512_set1_ps(s0[0]), _mm256_set1_ps(s1[0]), 1);
      for (int b = 0; b < NB; ++b) {
        __m512 f = _mm512_cvtepi32_ps(acc[i][b][0]);
        for (int p = 1; p < P; ++p) f = _mm512_fmadd_ps(f, base, _mm512_cvtepi32_ps(acc[i][b][p]));
        total[i][b] = _mm512_fmadd_ps(f, _mm512_mul_ps(sv, sxv[b]), total[i][b]);
      }
    }
  }
  for (int i = 0; i < NP; ++i)
    for (int b = 0; b < NB; ++b)
      for (int half = 0; half < 2; ++half) {
        const int r = 2 * i + half;
        const __m256 t = half ? _mm512_extractf32x8_ps(total[i][b], 1) : _mm512_castps512_ps256(total[i][b]);
        // code offset 0: the weight bytes enter vpdpbusd as they are (as in VnniDot)
        out[b * ldo + r] = hsum8(t) - zero_share_vec(w.scales + r * w.scale_stride, w.zeros + r * w.scale_stride,
                                                      x.sums + b * x.ldg, groups, 0.0f);
      }
}

// nb (1 <= nb <= NB) activation rows in one call of pair_rows.
template <class Codes, int NP, int NB, int P>
void pair_rows_upto(int nb, const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out,
                    int64_t ldo) {
  if constexpr (NB > 1)
    if (nb < NB) return pair_rows_upto<Codes, NP, NB - 1, P>(nb, x, w, K, group, out, ldo);
  pair_rows<Codes, NP, NB, P>(x, w, K, group, out, ldo);
}

// All nb activation rows against the weight rows, 2 NP at a time (the rows left over, fewer than
// 2 NP, through the ymm kernel), NB activation rows a call.
template <class Codes, int P, int NP, int NB>
void pair_rows_batch(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group, float* out,
                     int64_t ldo) {
  int r = 0;
  for (; r + 2 * NP <= w.rows; r += 2 * NP)
    for (int b0 = 0; b0 < nb; b0 += NB) {
      ActivationPlanes part = x;
      part.codes += b0 * x.ld;
      part.scales += b0 * x.ldg;
      part.sums += b0 * x.ldg;
      pair_rows_upto<Codes, NP, NB, P>(nb - b0 < NB ? nb - b0 : NB, part, w.from(r, 2 * NP), K, group,
                                       out + b0 * ldo + r, ldo);
    }
  if (r < w.rows) plane_rows_all<VnniDot>(x, nb, w.from(r, w.rows - r), K, group, out + r, ldo);
}

// Pairs of weight rows and activation rows per pair_rows call. 3 planes: 2 x 2 hold 12 accumulators,
// 4 float totals, 4 weight and 2 code vectors; measured on Zen 5 (1 thread, int4 g128, 8 x 4096 x
// 4096 and 32 x 11008 x 4096): 1.9 / 20 ms, against 2.4-2.7 / 24-27 ms for 2 x 1, 3 x 1 or 1 x 3,
// 2.6 / 27 ms for 2 x 3 (which spills), and 2.9 / 31 ms for the ymm kernel. 1 plane: 2 x 3, 10.3 ms
// at batch 32 against 10.7-11 ms for 2 x 2 or 2 x 4 and 13.5 ms for the ymm kernel.
constexpr int kPairsPerCall1 = 2, kRowsPerPairCall1 = 3;
constexpr int kPairsPerCall3 = 2, kRowsPerPairCall3 = 2;

template <class Codes>
void pair_rows_codes(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group, float* out,
                     int64_t ldo) {
  if (x.planes == 1)
    pair_rows_batch<Codes, 1, kPairsPerCall1, kRowsPerPairCall1>(x, nb, w, K, group, out, ldo);
  else
    pair_rows_batch<Codes, 3, kPairsPerCall3, kRowsPerPairCall3>(x, nb, w, K, group, out, ldo);
}

}  // namespace

void group_rows_planes_avx512vnni(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group,
                                  float* out, int64_t ldo) {
  // One activation row stays on the ymm kernel: there the weight's bytes, read once, are what limits.
  if (nb > 1 && cpu_has_full_width_avx512()) {
    if (w.bits == 4 && whole_group_rows<Int4Codes>(K, group))
      return pair_rows_codes<Int4Codes>(x, nb, w, K, group, out, ldo);
    if (w.bits == 8 && whole_group_rows<Int8Codes>(K, group))
      return pair_rows_codes<Int8Codes>(x, nb, w, K, group, out, ldo);
  }
  plane_rows_all<VnniDot>(x, nb, w, K, group, out, ldo);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
