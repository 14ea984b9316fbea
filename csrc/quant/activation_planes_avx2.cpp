// AVX2 quantization of one activation row into planes (activation_planes.h): the
// portable unit's arithmetic 8 lanes at a time (IEEE division, clamping, rounding
// ties to even, int64 code sums), digits narrowed 32 at a time, the int4 blocks
// reordered with byte shuffles. Bit-exact with the portable unit.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "quant/activation_planes.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

namespace gencore::quant {
namespace {

// 32 int32 lanes (each within int8) -> 32 bytes in order.
inline __m256i narrow32(__m256i a, __m256i b, __m256i c, __m256i d) {
  const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// One 64-byte block in place: its 32 even elements, then its 32 odd ones.
inline void deinterleave_block(int8_t* block) {
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,  //
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  // Per 128-bit lane: its 8 even bytes, then its 8 odd; then the quadwords ordered even, even, odd, odd.
  auto halves = [&](const int8_t* p) {
    const __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), split);
    return _mm256_permute4x64_epi64(v, 0xD8);
  };
  const __m256i first = halves(block), second = halves(block + 32);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(block), _mm256_permute2x128_si256(first, second, 0x20));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(block + 32), _mm256_permute2x128_si256(first, second, 0x31));
}

struct Avx2RowOps {
  static float group_amax(const float* src, int64_t k0, int64_t k1) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 best = _mm256_setzero_ps();
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) best = _mm256_max_ps(best, _mm256_andnot_ps(sign, _mm256_loadu_ps(src + k)));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, best);
    float amax = *std::max_element(lanes, lanes + 8);
    for (; k < k1; ++k) amax = std::max(amax, std::fabs(src[k]));
    return amax;
  }

  // code[k] = round(clamp(src[k] / scale, -limit, limit)) over [k0, k1); returns their sum.
  static int64_t group_codes(const float* src, int64_t k0, int64_t k1, float scale, float limit, int32_t* code) {
    const __m256 s = _mm256_set1_ps(scale), hi = _mm256_set1_ps(limit), lo = _mm256_set1_ps(-limit);
    __m256i sum = _mm256_setzero_si256();  // 4 int64 lanes: exact for any group length
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) {
      const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(_mm256_loadu_ps(src + k), s), lo), hi);
      const __m256i c = _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(code + k), c);
      sum = _mm256_add_epi64(sum, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(c)));
      sum = _mm256_add_epi64(sum, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(c, 1)));
    }
    alignas(32) int64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
    int64_t total = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; k < k1; ++k) {
      code[k] = activation_code(src[k], scale, limit);
      total += code[k];
    }
    return total;
  }

  // The portable unit's next_digit: the least significant digit of each code into dst (or, for the
  // top plane, what is left of it), the rest kept in code.
  static void next_digit(int32_t* code, int64_t K, int digit, bool top, int8_t* dst) {
    const __m256i mask = _mm256_set1_epi32((1 << digit) - 1), half = _mm256_set1_epi32(1 << (digit - 1));
    const __m128i shift = _mm_cvtsi32_si128(digit);
    auto step = [&](int32_t* c) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
      if (top) return v;
      const __m256i low = _mm256_sub_epi32(_mm256_xor_si256(_mm256_and_si256(v, mask), half), half);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c), _mm256_sra_epi32(_mm256_sub_epi32(v, low), shift));
      return low;
    };
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m256i a = step(code + k), b = step(code + k + 8), c = step(code + k + 16), d = step(code + k + 24);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), narrow32(a, b, c, d));
    }
    for (; k < K; ++k) {
      const int32_t low = top ? code[k] : low_digit(code[k], digit);
      dst[k] = static_cast<int8_t>(low);
      code[k] = (code[k] - low) >> digit;
    }
  }

  static void lay_out_int4(int8_t* plane, int64_t K, int64_t group) {
    for_each_int4_block(K, group, [&](int64_t k) { deinterleave_block(plane + k); });
  }
};

}  // namespace

void quantize_activation_row_avx2(const float* src, const ActivationRowShape& shape, int32_t* code, int8_t* dst,
                                  float* sx, float* xz) {
  quantize_activation_row_with<Avx2RowOps>(src, shape, code, dst, sx, xz);
}

}  // namespace gencore::quant
#include "gencore/isa_end.h"
