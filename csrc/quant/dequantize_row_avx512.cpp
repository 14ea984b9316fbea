// AVX-512 dequantization of one weight row (group_matmul.h): 32 codes at a time
// widened to two vectors of 16 floats, (q - z) * s in float32, bit-exact with the reference.
#include <immintrin.h>

#include <cstdint>

#include "quant/group_matmul.h"
#include "quant/group_tail.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"

#include "quant/codes32_sse.h"

namespace gencore::quant {

void dequantize_row_avx512(const uint8_t* q, const float* s, const float* z, int64_t K, int64_t group, int bits,
                           float* out) {
  for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
    const int64_t k1 = k0 + group < K ? k0 + group : K;
    const int64_t whole = blocks_end(k0, k1);
    const __m512 zero = _mm512_set1_ps(z[g]), scale = _mm512_set1_ps(s[g]);
    for (int64_t k = k0; k < whole; k += kBlock) {
      __m128i first, second;  // elements k..k+15 and k+16..k+31, natural order
      load_codes32(q, k, bits, first, second);
      _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(first)), zero), scale));
      _mm512_storeu_ps(out + k + 16,
                       _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(second)), zero), scale));
    }
    for (int64_t k = whole; k < k1; ++k) out[k] = (float(quantized_at(q, k, bits)) - z[g]) * s[g];
  }
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
