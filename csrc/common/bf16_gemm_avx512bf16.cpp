// bf16 pack + GEMM of the screening passes (see gencore/bf16_gemm.h for layouts and the
// error model). An avx512bf16 target region (gencore/isa_begin.h); entered only after
// a CPU check.
//
// Nothing from the standard library is used inside the region, on purpose: the
// kernels need nothing from it, and a template instantiated here is one more thing
// tools/check_isa_symbols.py would have to prove harmless.
#include "gencore/bf16_gemm.h"

// GCC 12's own intrinsic headers (the _mm512_undefined_* self-initialisation) trip
// -Wmaybe-uninitialized once inlined; the warning is attributed to header lines.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#define GENCORE_ISA avx512bf16
#include "gencore/isa_begin.h"

namespace gencore {
namespace {

constexpr int kMR = static_cast<int>(kBf16PanelA);  // 8
constexpr int kNR = static_cast<int>(kBf16PanelB);  // 48
constexpr int kNV = kNR / 16;                        // 3 accumulator vectors per row
static_assert(kNR % 16 == 0 && 16 % kMR == 0, "pack transposes 16-row groups");

inline int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }
inline __mmask16 lanes_below(int64_t count) {
  if (count <= 0) return 0;
  return count >= 16 ? static_cast<__mmask16>(0xFFFF)
                     : static_cast<__mmask16>((1u << static_cast<unsigned>(count)) - 1u);
}

// ---------------------------------------------------------------- pack

// 32 fp32 values -> 16 words of two bf16 each (element 2k low, 2k+1 high), rounded to
// nearest even. vcvtne2ps2bf16 is exact RNE (NaN -> quiet NaN, overflow -> inf) except
// that it flushes subnormal inputs to zero; the pack promises plain RNE so the caller's
// error bound can treat it as rounding, so blocks holding a subnormal take the slower
// integer path. Real data almost never do, and the branch is then always predicted.
inline __m512i round_pairs_exact(__m512 lo16, __m512 hi16) {
  const __m512i bias = _mm512_set1_epi32(0x7FFF);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i lsb = _mm512_set1_epi32(0x00010000);  // lowest bit kept by bf16
  const __m512i quiet = _mm512_set1_epi32(0x00400000);
  auto round_one = [&](__m512 x) {
    const __m512i bits = _mm512_castps_si512(x);
    // Adding 0x7FFF (+1 when the kept part is odd) carries into the kept half exactly
    // when RNE rounds up, including the carry into the exponent (overflow -> inf).
    const __mmask16 odd = _mm512_test_epi32_mask(bits, lsb);
    const __m512i up = _mm512_add_epi32(bits, bias);
    const __m512i r = _mm512_mask_add_epi32(up, odd, up, one);
    // The same carry would turn a NaN with a small payload into inf.
    const __mmask16 nan = _mm512_fpclass_ps_mask(x, 0x81);  // QNaN | SNaN
    return _mm512_mask_or_epi32(r, nan, bits, quiet);
  };
  const __m512i r0 = round_one(lo16);
  const __m512i r1 = round_one(hi16);
  // The bf16 is the high half of each rounded word: take odd 16-bit lanes of (r0, r1).
  const __m512i odd_halves = _mm512_set_epi16(
      63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
      31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_permutex2var_epi16(r0, odd_halves, r1);
}

inline __m512i round_pairs(__m512 lo16, __m512 hi16) {
  const __mmask16 subnormal = static_cast<__mmask16>(_mm512_fpclass_ps_mask(lo16, 0x20) |
                                                     _mm512_fpclass_ps_mask(hi16, 0x20));
  if (__builtin_expect(subnormal == 0, 1)) return (__m512i)_mm512_cvtne2ps_pbh(hi16, lo16);
  return round_pairs_exact(lo16, hi16);
}

// In-register transpose of 16 rows x 16 words: on return v[q] lane r = old v[r] lane q.
inline void transpose16(__m512i v[16]) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
  }
  // b[4i + k], 128-bit chunk L: rows 4i..4i+3 of word 4L + k.
  for (int i = 0; i < 4; ++i) {
    b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  // What is left is a 4x4 transpose of 128-bit chunks for each k.
  for (int k = 0; k < 4; ++k) {
    const __m512i p0 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0x44);
    const __m512i p1 = _mm512_shuffle_i32x4(b[k], b[4 + k], 0xEE);
    const __m512i p2 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0x44);
    const __m512i p3 = _mm512_shuffle_i32x4(b[8 + k], b[12 + k], 0xEE);
    v[k] = _mm512_shuffle_i32x4(p0, p2, 0x88);
    v[4 + k] = _mm512_shuffle_i32x4(p0, p2, 0xDD);
    v[8 + k] = _mm512_shuffle_i32x4(p1, p3, 0x88);
    v[12 + k] = _mm512_shuffle_i32x4(p1, p3, 0xDD);
  }
}

// Both operands share one routine: rows are taken 16 at a time (a panel of 48 is three
// such groups, a group of 16 is two panels of 8), 16 pairs along depth at a time, and
// the transpose turns 16 row-major pair vectors into 16 "one pair, 16 rows" vectors,
// which are exactly the contiguous runs the packed layouts are made of.
template <int Panel>
void pack_rows(const float* src, int64_t rows, int64_t ld, int64_t depth, uint32_t* dst) {
  const int64_t kp = (depth + 1) / 2;
  const int64_t padded_rows = (rows + Panel - 1) / Panel * Panel;
  for (int64_t r0 = 0; r0 < padded_rows; r0 += 16) {
    for (int64_t q0 = 0; q0 < kp; q0 += 16) {
      const int64_t d0 = 2 * q0;
      const __mmask16 m_lo = lanes_below(depth - d0);
      const __mmask16 m_hi = lanes_below(depth - d0 - 16);
      __m512i v[16];
      for (int r = 0; r < 16; ++r) {
        if (r0 + r < rows) {
          const float* s = src + (r0 + r) * ld + d0;
          v[r] = round_pairs(_mm512_maskz_loadu_ps(m_lo, s), _mm512_maskz_loadu_ps(m_hi, s + 16));
        } else {
          v[r] = _mm512_setzero_si512();  // padding rows must be zero: the kernel computes them
        }
      }
      transpose16(v);
      const int64_t nq = min64(16, kp - q0);
      if (Panel % 16 == 0) {
        uint32_t* base = dst + (r0 / Panel * kp + q0) * Panel + r0 % Panel;
        for (int64_t q = 0; q < nq; ++q) _mm512_storeu_si512(base + q * Panel, v[q]);
      } else {  // Panel == 8: the low half of each vector is panel r0/8, the high half the next
        uint32_t* base0 = dst + (r0 / Panel * kp + q0) * Panel;
        for (int64_t q = 0; q < nq; ++q)
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(base0 + q * Panel), _mm512_castsi512_si256(v[q]));
        if (r0 + 8 < padded_rows) {
          uint32_t* base1 = base0 + kp * Panel;
          for (int64_t q = 0; q < nq; ++q)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(base1 + q * Panel), _mm512_extracti64x4_epi64(v[q], 1));
        }
      }
    }
  }
}

// ---------------------------------------------------------------- kernel

// One MR x (16 * NV) tile of C over the whole depth. The full 8 x 3 tile keeps 24
// accumulators in flight, enough to cover vdpbf16ps latency (6 cycles) at 2 per cycle,
// and needs 3 B loads + 8 A broadcasts per 24 instructions, well inside 2 loads/cycle.
// Depth is not blocked: C is written once, the 48-row B panel (96 B per depth element)
// streams from L1/L2 and the A block from L2; measured faster than kc blocking up to
// depth 4096. Smaller MR/NV instantiations serve the edge tiles so padding costs nothing.
template <int MR, int NV>
void tile_kernel(const uint32_t* a, const uint32_t* b, int64_t kp, float* c, int64_t ldc, __mmask16 last_cols) {
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  // do-while (kp >= 1 is the caller's job): with a zero-trip path GCC 12 merges it with
  // the loop exit by spilling all 24 accumulators through the stack on every tile.
  int64_t q = 0;
  do {
    __m512bh bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + q * kNR + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[q * kMR + i]));
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
    }
  } while (++q < kp);
  for (int i = 0; i < MR; ++i) {
    float* row = c + i * ldc;
    for (int v = 0; v + 1 < NV; ++v) _mm512_storeu_ps(row + 16 * v, acc[i][v]);
    _mm512_mask_storeu_ps(row + 16 * (NV - 1), last_cols, acc[i][NV - 1]);
  }
}

using TileFn = void (*)(const uint32_t*, const uint32_t*, int64_t, float*, int64_t, __mmask16);

template <int MR>
struct TileRow {
  static constexpr TileFn fns[kNV] = {&tile_kernel<MR, 1>, &tile_kernel<MR, 2>, &tile_kernel<MR, 3>};
};
static_assert(kNV == 3, "TileRow lists one instantiation per vector count");

constexpr const TileFn* kTiles[kMR] = {TileRow<1>::fns, TileRow<2>::fns, TileRow<3>::fns, TileRow<4>::fns,
                                       TileRow<5>::fns, TileRow<6>::fns, TileRow<7>::fns, TileRow<8>::fns};

void pack_a(const float* src, int64_t rows, int64_t ld, int64_t depth, uint16_t* dst) {
  pack_rows<kMR>(src, rows, ld, depth, reinterpret_cast<uint32_t*>(dst));
}

void pack_b(const float* src, int64_t rows, int64_t ld, int64_t depth, uint16_t* dst) {
  pack_rows<kNR>(src, rows, ld, depth, reinterpret_cast<uint32_t*>(dst));
}

// Loop order: B panel outer, query panels inner, so one 48-row B panel is reused by
// every query panel while it is hot in L1/L2, B is streamed from memory once, and the
// packed A (256 KB for the usual m = 256, depth = 512) is re-read from L2 per B panel.
// Blocking the query rows so A stays in L2 was tried and gained nothing measurable even
// at m = 4096, depth = 1024 (the A stream is only 32 B per 24 instructions).
void gemm_abt(const uint16_t* a_packed, int64_t m, const uint16_t* b_packed, int64_t n, int64_t depth,
              float* c, int64_t ldc) {
  const int64_t kp = (depth + 1) / 2;
  const uint32_t* a = reinterpret_cast<const uint32_t*>(a_packed);
  const uint32_t* b = reinterpret_cast<const uint32_t*>(b_packed);
  if (kp == 0) {  // empty sums; the tile kernel assumes at least one pair
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = 0.0f;
    return;
  }
  for (int64_t j0 = 0; j0 < n; j0 += kNR) {
    const int64_t nr = min64(kNR, n - j0);
    const int nv = static_cast<int>((nr + 15) / 16);
    const __mmask16 last_cols = lanes_below(nr - 16 * (nv - 1));
    const uint32_t* b_panel = b + (j0 / kNR) * kp * kNR;
    for (int64_t i0 = 0; i0 < m; i0 += kMR) {
      const int mr = static_cast<int>(min64(kMR, m - i0));
      kTiles[mr - 1][nv - 1](a + (i0 / kMR) * kp * kMR, b_panel, kp, c + i0 * ldc + j0, ldc, last_cols);
    }
  }
}

}  // namespace

Bf16GemmKernels bf16_gemm_kernels_avx512bf16() { return {pack_a, pack_b, gemm_abt}; }

}  // namespace gencore

#include "gencore/isa_end.h"
