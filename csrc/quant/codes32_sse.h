// 32 weight codes in natural order as two vectors of 16 bytes: the part of the
// row dequantization the AVX2 and AVX-512 units share. Include INSIDE an ISA
// target region (after gencore/isa_begin.h), as gencore/vec_avx2.h: internal
// linkage, compiled with the unit's ISA.
#pragma once
#if !defined(GENCORE_ISA_REGION_OPEN)
#error "include quant/codes32_sse.h inside an ISA target region (after gencore/isa_begin.h)"
#endif

#include <cstdint>

namespace gencore::quant {
namespace {

// Codes k .. k + 15 into first, k + 16 .. k + 31 into second, of a row of `bits`-bit codes
// (int4: two a byte, low nibble first; k even).
inline void load_codes32(const uint8_t* q, int64_t k, int bits, __m128i& first, __m128i& second) {
  if (bits == 4) {
    const __m128i low_nibbles = _mm_set1_epi8(0x0F);
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k / 2));
    const __m128i lo = _mm_and_si128(bytes, low_nibbles);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles);
    first = _mm_unpacklo_epi8(lo, hi);
    second = _mm_unpackhi_epi8(lo, hi);
  } else {
    first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k));
    second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + k + 16));
  }
}

}  // namespace
}  // namespace gencore::quant
