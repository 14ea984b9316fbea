// The 256-bit row kernel of the integer-activation paths (group_matmul_planes.h),
// shared by the AVX2, AVX-VNNI and AVX512-VNNI units and by int4 and int8 weights:
// the units differ only in how one block's integer dot product is accumulated
// (`Dot`), the weight widths only in how a 32-byte block of codes meets the
// activation codes (`Int4Codes`, `Int8Codes`). Include INSIDE the unit's target
// region (after gencore/isa_begin.h), as gencore/vec_avx2.h: internal linkage,
// compiled with the unit's ISA.
//
// Per 32 bytes of each of NR weight rows (64 int4 codes as their low and high
// nibbles, or 32 int8 codes): multiplied with the matching codes of every plane
// of each of NB activation rows. The activation codes are loaded once for all
// NR weight rows (one activation row: NR > 1, the loads are what limits), the
// weight bytes once for all NB activation rows. Per group (int4 at groups of 32:
// pair of groups, one per 128-bit lane) the planes' int32 sums become one float
// vector (c = (p0 * 2^D + p1) * 2^D + p2), scaled by s[r, g] * sx[b, g] into a
// vector total with one FMA; one horizontal sum per output, minus the zero
// points' share, at the end.
//
// Dot provides: Acc (an accumulator of int32 lanes), zero(), sum(acc) -> __m256i;
// add(acc, lo, hi, even, odd) (int4: the nibbles against the 32 even-element and
// 32 odd-element codes); bytes<P>(v) -> Operands, add_bytes<P>(acc, operands, codes)
// and byte_offset<P>() (int8: add_bytes accumulates sum c (q - byte_offset));
// and the register budget at 1 and 3 planes: kWeightRows1 / kWeightRows3 (weight
// rows per call for one activation row), kWholeGroupRows1 / kWholeGroupRows3 (the
// same in row_whole_groups; kPairGroupRows3 there for int4 groups of 32 at 3
// planes), kBatchWeightRows1 / kBatchWeightRows3 and kRowsPerCall1 /
// kRowsPerCall3 (weight and activation rows per call for several).
#pragma once
#if !defined(GENCORE_ISA_REGION_OPEN)
#error "include quant/group_rows_planes_simd.h inside an ISA target region (after gencore/isa_begin.h)"
#endif

#include "quant/zero_share_avx2.h"

namespace gencore::quant {
namespace {

// Two vectors: a decoded block of weight codes, or of activation codes.
struct Operands {
  __m256i a, b;
};

// The accumulator both Dots use: 8 int32 lanes. int8 weights by default: the codes
// as they are (vpdpbusd takes any u8 x s8 products exactly).
struct Int32Lanes {
  using Acc = __m256i;
  static Acc zero() { return _mm256_setzero_si256(); }
  static __m256i sum(const Acc& acc) { return acc; }
  template <int P>
  static Operands bytes(__m256i v) { return {v, v}; }
  template <int P>
  static constexpr int byte_offset() { return 0; }
};

// The Dot of the two VNNI units: an int4 block's dot product is two vpdpbusd (u8 nibbles
// times s8 codes, four products summed into each int32 lane), an int8 block's one (u8 codes:
// vpdpbusd sums in int32, so any s8 code is exact); the several weight rows and planes in flight
// give enough independent accumulators. Dpbusd::apply is the unit's encoding of vpdpbusd on ymm
// (EVEX or VEX); Budget holds its register budget (the constants listed above).
template <class Dpbusd, class Budget>
struct DpbusdDot : Int32Lanes, Budget {
  static void add(Acc& acc, __m256i lo, __m256i hi, __m256i even, __m256i odd) {
    acc = Dpbusd::apply(Dpbusd::apply(acc, lo, even), hi, odd);
  }
  template <int P>
  static void add_bytes(Acc& acc, const Operands& w, __m256i codes) { acc = Dpbusd::apply(acc, w.a, codes); }
};

// The register budgets of the two VNNI units (the constants listed above).
// AVX512-VNNI (group_rows_planes_avx512vnni.cpp): 32 vector registers.
struct Registers32 {
  // At 3 planes, 2 weight x 3 activation rows hold 18 accumulators, 6 float totals, 4 nibble vectors
  // and 2 code vectors (measured at batch 32: 4 activation rows of 1 weight row ran 2x slower).
  static constexpr int kWeightRows1 = 2, kWeightRows3 = 2;
  static constexpr int kBatchWeightRows1 = 2, kBatchWeightRows3 = 2;
  static constexpr int kRowsPerCall1 = 4, kRowsPerCall3 = 3;
  // row_whole_groups: at 3 planes 12 accumulators, 4 totals, 8 nibble and 2 code vectors (4 rows
  // measured 1.06x 2 rows at 3 planes, 1.8x at 1: 256 x 4096 g128 in L2). int4 groups of 32, whose
  // two scales a block per row take more registers and instructions: 2 rows measured 1.07-1.1x
  // faster than 4 on Zen 5 (4096 x 4096, batch 1).
  static constexpr int kWholeGroupRows1 = 4, kWholeGroupRows3 = 4, kPairGroupRows3 = 2;
};

// AVX-VNNI (group_rows_planes_avxvnni.cpp): 16 vector registers.
struct Registers16 {
  // At 3 planes, 2 weight rows x 1 activation row hold 6 accumulators, 2 float totals, 4 nibble
  // vectors, 2 code vectors and the nibble mask; the same 2 x 1 for several activation rows (the
  // AVX2 kernel's 1 x 2 loads one weight row's bytes for 12 activation-code loads: measured 1.15x
  // slower at batch 32, and 3 x 1 no faster than 2 x 1, on Zen 5 capped at this level).
  static constexpr int kWeightRows1 = 2, kWeightRows3 = 2;
  static constexpr int kBatchWeightRows1 = 1, kBatchWeightRows3 = 2;
  static constexpr int kRowsPerCall1 = 4, kRowsPerCall3 = 1;
  // row_whole_groups: 3 rows measured 1.15x slower than 2 at 3 planes (4096 x 4096 g128, batch 1)
  static constexpr int kWholeGroupRows1 = 2, kWholeGroupRows3 = 2, kPairGroupRows3 = 2;
};

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// A loaded vector the compiler must keep in a register: GCC otherwise folds the load into every
// instruction that reads it, as a memory operand of each vpdpbusd (measured on Zen 4: half the
// rate of register operands) or a second load of the weight bytes.
inline void keep_in_register(__m256i& v) { __asm__("" : "+v"(v)); }

// int4 weights: 64 codes per 32 bytes, the low nibbles (the block's even elements) and the
// high ones (odd) against the activations' block laid out as 32 even, then 32 odd codes.
struct Int4Codes {
  static constexpr int kBits = 4;
  static constexpr int kPerBlock = 64;
  static constexpr bool kGroupPairs = true;  // groups of 32: two a block, one per 128-bit lane
  static constexpr bool kExactRuns = false;  // a group's lanes cannot overflow int32 (kMaxExactRun)
  // The next rows into L1: into L2 (T1) measured 10-15% slower (4096 x 4096 g128, 1 thread, both levels)
  static constexpr auto kPrefetchHint = _MM_HINT_T0;
  static int64_t byte_of(int64_t k) { return k / 2; }
  template <class Dot, int P>
  static Operands weights(__m256i v) {
    const __m256i low_nibbles = _mm256_set1_epi8(0x0F);
    return {_mm256_and_si256(v, low_nibbles), _mm256_and_si256(_mm256_srli_epi16(v, 4), low_nibbles)};
  }
  static Operands activations(const int8_t* c) { return {load32(c), load32(c + 32)}; }
  template <class Dot, int P>
  static void add(typename Dot::Acc& acc, const Operands& w, const Operands& c) {
    Dot::add(acc, w.a, w.b, c.a, c.b);
  }
  template <class Dot, int P>
  static constexpr int offset() { return 0; }
};

// int8 weights: 32 codes per 32 bytes against 32 activation codes in natural order; the
// Dot decodes the bytes (and may offset them: the kernel then adds offset * sum(c) back).
struct Int8Codes {
  static constexpr int kBits = 8;
  static constexpr int kPerBlock = 32;
  static constexpr bool kGroupPairs = false;  // a group of 32 is one block
  static constexpr bool kExactRuns = true;    // long groups in runs of kMaxExactRun
  // The next rows into L2 (T1), twice the bytes of int4 rows ahead: into L1 measured 20-35% slower
  // at AVX512-VNNI, no faster at AVX2 (4096 x 4096 g128, 1 thread)
  static constexpr auto kPrefetchHint = _MM_HINT_T1;
  static int64_t byte_of(int64_t k) { return k; }
  template <class Dot, int P>
  static Operands weights(__m256i v) { return Dot::template bytes<P>(v); }
  static Operands activations(const int8_t* c) {
    const __m256i v = load32(c);
    return {v, v};
  }
  template <class Dot, int P>
  static void add(typename Dot::Acc& acc, const Operands& w, const Operands& c) {
    Dot::template add_bytes<P>(acc, w, c.a);
  }
  template <class Dot, int P>
  static constexpr int offset() { return Dot::template byte_offset<P>(); }
};

template <class Dot, class Codes, int P>
inline __m256 planes_to_float(const typename Dot::Acc* acc) {
  const __m256 base = _mm256_set1_ps(float(1 << digit_bits(Codes::kBits)));
  __m256 f = _mm256_cvtepi32_ps(Dot::sum(acc[0]));
  for (int p = 1; p < P; ++p) f = _mm256_fmadd_ps(f, base, _mm256_cvtepi32_ps(Dot::sum(acc[p])));
  return f;
}

// int8 weights: weights per run of whole blocks summed in int32 lanes before they are scaled into
// the float totals: the largest lane sum, 2^18 / 32 blocks of at most 4 x 255 x 128, stays below
// 2^31 (only groups longer than this, per-channel int8 of a very wide layer, take more than one
// run). int4 lanes take at most 8 x 15 x 128 a 64-weight block: one run up to ~8.9M weights.
constexpr int64_t kMaxExactRun = int64_t(1) << 18;

// The scales and zeros of the `rows` weight rows after w's first `rows`, into L1: they are read at
// the end of each group, while those rows' codes stream.
inline void prefetch_next_params(const WeightRows& w, int rows, int64_t groups) {
  for (int r = rows; r < 2 * rows; ++r)
    for (int64_t g = 0; g < groups; g += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(w.scales + r * w.scale_stride + g), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w.zeros + r * w.scale_stride + g), _MM_HINT_T0);
    }
}

template <class Dot, class Codes, int NR, int NB, int P>
void plane_rows(const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out, int64_t ldo) {
  __m256 total[NR][NB];
  float tail_total[NR][NB];
  for (int r = 0; r < NR; ++r)
    for (int b = 0; b < NB; ++b) {
      total[r][b] = _mm256_setzero_ps();
      tail_total[r][b] = 0.0f;
    }
  constexpr int offset = Codes::template offset<Dot, P>();
  const int64_t groups = (K + group - 1) / group;
  prefetch_next_params(w, NR, groups);
  typename Dot::Acc acc[NR][NB][P];
  // The whole blocks of [k0, k1) into fresh accumulators.
  auto accumulate = [&](int64_t k0, int64_t k1) {
    for (int r = 0; r < NR; ++r)
      for (int b = 0; b < NB; ++b)
        for (int p = 0; p < P; ++p) acc[r][b][p] = Dot::zero();
#pragma GCC unroll 2  // groups of 128 (int4): both blocks in one iteration, the group's finish overlaps the next
    for (int64_t k = k0; k + Codes::kPerBlock <= k1; k += Codes::kPerBlock) {
      const int64_t byte = Codes::byte_of(k);
      // The next NR weight rows, swept linearly while these NR are read (NR x 32 bytes a block; the
      // rows of a packed weight are contiguous): one stream ahead of the loads, where one prefetch
      // per row (NR streams 2 KB apart) measured slower than none. Into the cache level of
      // Codes::kPrefetchHint.
      for (int j = 0; j < NR * 32; j += 64)
        _mm_prefetch(reinterpret_cast<const char*>(w.data + NR * w.data_stride + byte * NR + j),
                     Codes::kPrefetchHint);
      Operands wv[NR];
      for (int r = 0; r < NR; ++r) wv[r] = Codes::template weights<Dot, P>(load32(w.data + r * w.data_stride + byte));
      for (int b = 0; b < NB; ++b)
        for (int p = 0; p < P; ++p) {
          const Operands c = Codes::activations(x.codes + b * x.ld + p * K + k);
          for (int r = 0; r < NR; ++r) Codes::template add<Dot, P>(acc[r][b][p], wv[r], c);
        }
    }
  };
  // Scaled into the totals in loops without calls (the partial blocks' scalar tails
  // come after), so the compiler keeps acc and total in registers.
  auto scale_in = [&](const __m256 (&scale)[NR][NB]) {
    for (int r = 0; r < NR; ++r)
      for (int b = 0; b < NB; ++b)
        total[r][b] = _mm256_fmadd_ps(planes_to_float<Dot, Codes, P>(acc[r][b]), scale[r][b], total[r][b]);
  };
  auto tail = [&](int64_t g, int64_t k0, int64_t k1) {  // natural order, scalar
    for (int r = 0; r < NR; ++r)
      for (int b = 0; b < NB; ++b)
        tail_total[r][b] += w.scales[r * w.scale_stride + g] * x.scales[b * x.ldg + g] *
                            float(dot_natural_all_planes<Codes::kBits>(x.codes + b * x.ld, K, P,
                                                                      w.data + r * w.data_stride, k0, k1, offset));
  };
  __m256 scale[NR][NB];
  // int4 at groups of 32: each 64-element block holds group g in the low lane, g + 1 in the high one
  if (Codes::kGroupPairs && group == kPairGroup) {
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
      const int64_t g = k / 32;
      accumulate(k, k + 64);
      for (int r = 0; r < NR; ++r)
        for (int b = 0; b < NB; ++b) {
          const float* s = w.scales + r * w.scale_stride;
          const float* sx = x.scales + b * x.ldg;
          scale[r][b] = _mm256_set_m128(_mm_set1_ps(s[g + 1] * sx[g + 1]), _mm_set1_ps(s[g] * sx[g]));
        }
      scale_in(scale);
    }
    for (int64_t g = k / 32; g < groups; ++g) tail(g, g * 32, g * 32 + 32 < K ? g * 32 + 32 : K);
  } else {
    for (int64_t k0 = 0, g = 0; k0 < K; k0 += group, ++g) {
      const int64_t k1 = k0 + group < K ? k0 + group : K;
      const int64_t whole = k0 + (k1 - k0) / Codes::kPerBlock * Codes::kPerBlock;
      for (int r = 0; r < NR; ++r)
        for (int b = 0; b < NB; ++b)
          scale[r][b] = _mm256_set1_ps(w.scales[r * w.scale_stride + g] * x.scales[b * x.ldg + g]);
      if constexpr (Codes::kExactRuns) {
        for (int64_t run = k0; run < whole; run += kMaxExactRun) {
          accumulate(run, whole - run < kMaxExactRun ? whole : run + kMaxExactRun);
          scale_in(scale);
        }
      } else {  // straight-line code: measured 5-10% faster for int4 than the loop above
        accumulate(k0, whole);
        scale_in(scale);
      }
      if (whole < k1) tail(g, whole, k1);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int b = 0; b < NB; ++b)
      out[b * ldo + r] = hsum8(total[r][b]) + tail_total[r][b] -
                         zero_share_vec(w.scales + r * w.scale_stride, w.zeros + r * w.scale_stride,
                                        x.sums + b * x.ldg, groups, float(offset));
}

// One activation row against NR weight rows whose groups are whole blocks (int4: 64-element
// blocks, or pairs of groups of 32; int8: 32-element blocks, groups within one exact run), with
// K a whole number of groups: GPTQ / AWQ's groups of 32 to 128 on layers of any usual width,
// and per-channel rows of such K. The batch-1 path's time is spent here. plane_rows in a tight
// form: pointers advance instead of being recomputed from k, the loads stay in registers
// (keep_in_register), and groups of up to four blocks are straight-line code with fresh
// accumulators (GCC otherwise keeps a loop of unknown trip count and copies every accumulator
// through it). Same sums in the same order as plane_rows. Measured against it on 256 x 4096
// int4 weights in L2, 1 thread: 1.5x (VNNI) and 1.3x (AVX2) at 3 planes, g128; 1.8x / 1.5x at
// 1 plane. FixedBlocks: blocks a step when known (0: group / block); Pairs: int4 groups of 32,
// two a block (one per 128-bit lane).
template <class Dot, class Codes, int NR, int P, int FixedBlocks, bool Pairs>
__attribute__((noinline)) void row_whole_groups(  // not inlined: one copy a configuration
    const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out) {
  constexpr int offset = Codes::template offset<Dot, P>();
  const int64_t blocks = FixedBlocks > 0 ? FixedBlocks : group / Codes::kPerBlock;
  const int64_t groups = K / group, steps = Pairs ? groups / 2 : groups;
  const uint8_t* rows[NR];
  const float* scales[NR];
  __m256 total[NR];
  for (int r = 0; r < NR; ++r) {
    rows[r] = w.data + r * w.data_stride;
    scales[r] = w.scales + r * w.scale_stride;
    total[r] = _mm256_setzero_ps();
  }
  // The next NR rows (contiguous in a packed weight), swept linearly ahead of the loads, as in plane_rows.
  const uint8_t* ahead = w.data + NR * w.data_stride;
  prefetch_next_params(w, NR, groups);
  const int8_t* codes = x.codes;  // plane p of block k at codes + p * K
  typename Dot::Acc acc[NR][P];
  auto add_block = [&] {
    for (int j = 0; j < NR * 32; j += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + j), Codes::kPrefetchHint);
    Operands wv[NR];
    for (int r = 0; r < NR; ++r) {
      __m256i bytes = load32(rows[r]);
      keep_in_register(bytes);
      wv[r] = Codes::template weights<Dot, P>(bytes);
    }
    for (int p = 0; p < P; ++p) {
      Operands c = Codes::activations(codes + p * K);
      keep_in_register(c.a);
      keep_in_register(c.b);
      for (int r = 0; r < NR; ++r) Codes::template add<Dot, P>(acc[r][p], wv[r], c);
    }
    for (int r = 0; r < NR; ++r) rows[r] += 32;
    ahead += NR * 32;
    codes += Codes::kPerBlock;
  };
  for (int64_t step = 0; step < steps; ++step) {
    for (int r = 0; r < NR; ++r)
      for (int p = 0; p < P; ++p) acc[r][p] = Dot::zero();
    if constexpr (FixedBlocks > 0) {
      for (int b = 0; b < FixedBlocks; ++b) add_block();
    } else {
      for (int64_t b = 0; b < blocks; ++b) add_block();
    }
    for (int r = 0; r < NR; ++r) {
      __m256 scale;
      if constexpr (Pairs) {
        const int64_t g = 2 * step;
        scale = _mm256_set_m128(_mm_set1_ps(scales[r][g + 1] * x.scales[g + 1]),
                                _mm_set1_ps(scales[r][g] * x.scales[g]));
      } else {
        scale = _mm256_set1_ps(scales[r][step] * x.scales[step]);
      }
      total[r] = _mm256_fmadd_ps(planes_to_float<Dot, Codes, P>(acc[r]), scale, total[r]);
    }
  }
  for (int r = 0; r < NR; ++r)
    out[r] = hsum8(total[r]) - zero_share_vec(scales[r], w.zeros + r * w.scale_stride, x.sums, groups, float(offset));
}

// Whether row_whole_groups takes rows of K codes in groups of `group`.
template <class Codes>
bool whole_group_rows(int64_t K, int64_t group) {
  if (Codes::kGroupPairs && group == kPairGroup) return K % (2 * kPairGroup) == 0;
  return group % Codes::kPerBlock == 0 && K % group == 0 && (!Codes::kExactRuns || group <= kMaxExactRun);
}

// row_whole_groups' configurations: groups of one to four blocks unrolled (int4 g32 pairs, g64,
// g128; int8 g32, g64, g128), longer groups in a loop.
template <class Dot, class Codes, int NR, int P>
void row_whole_groups_for(const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out) {
  constexpr int64_t block = Codes::kPerBlock;
  if (Codes::kGroupPairs && group == kPairGroup)
    row_whole_groups<Dot, Codes, NR, P, 1, true>(x, w, K, group, out);
  else if (group == block)
    row_whole_groups<Dot, Codes, NR, P, 1, false>(x, w, K, group, out);
  else if (group == 2 * block)
    row_whole_groups<Dot, Codes, NR, P, 2, false>(x, w, K, group, out);
  else if (group == 4 * block)
    row_whole_groups<Dot, Codes, NR, P, 4, false>(x, w, K, group, out);
  else
    row_whole_groups<Dot, Codes, NR, P, 0, false>(x, w, K, group, out);
}

// nb (1 <= nb <= NB) activation rows, NR weight rows, in one call of plane_rows.
template <class Dot, class Codes, int P, int NR, int NB>
void plane_rows_upto(int nb, const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out,
                     int64_t ldo) {
  if constexpr (NB > 1)
    if (nb < NB) return plane_rows_upto<Dot, Codes, P, NR, NB - 1>(nb, x, w, K, group, out, ldo);
  plane_rows<Dot, Codes, NR, NB, P>(x, w, K, group, out, ldo);
}

// NR weight rows against all nb activation rows, PerCall of them at a time (the weight
// rows are read from memory once, then from L1).
template <class Dot, class Codes, int P, int NR, int PerCall>
void plane_rows_batch(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group, float* out,
                      int64_t ldo) {
  for (int b0 = 0; b0 < nb; b0 += PerCall) {
    ActivationPlanes part = x;
    part.codes += b0 * x.ld;
    part.scales += b0 * x.ldg;
    part.sums += b0 * x.ldg;
    const int n = nb - b0 < PerCall ? nb - b0 : PerCall;
    plane_rows_upto<Dot, Codes, P, NR, PerCall>(n, part, w, K, group, out + b0 * ldo, ldo);
  }
}

// One activation row against all weight rows, whose groups are whole blocks: NR at a time.
template <class Dot, class Codes, int P, int NR>
void whole_group_rows_all(const ActivationPlanes& x, const WeightRows& w, int64_t K, int64_t group, float* out) {
  int r = 0;
  for (; r + NR <= w.rows; r += NR) row_whole_groups_for<Dot, Codes, NR, P>(x, w.from(r, NR), K, group, out + r);
  for (; r < w.rows; ++r) row_whole_groups_for<Dot, Codes, 1, P>(x, w.from(r, 1), K, group, out + r);
}

// NR weight rows at a time (one activation row) or NRb (several).
template <class Dot, class Codes, int P, int NR, int NRb, int PerCall>
void plane_rows_for(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group, float* out,
                    int64_t ldo) {
  if (nb == 1) {  // the loads of the activation codes, shared by NR weight rows, are what limits
    if (whole_group_rows<Codes>(K, group)) {
      if (P == 3 && Codes::kGroupPairs && group == kPairGroup)
        return whole_group_rows_all<Dot, Codes, P, Dot::kPairGroupRows3>(x, w, K, group, out);
      return whole_group_rows_all<Dot, Codes, P, P == 1 ? Dot::kWholeGroupRows1 : Dot::kWholeGroupRows3>(x, w, K,
                                                                                                           group, out);
    }
    int r = 0;
    for (; r + NR <= w.rows; r += NR) plane_rows<Dot, Codes, NR, 1, P>(x, w.from(r, NR), K, group, out + r, ldo);
    for (; r < w.rows; ++r) plane_rows<Dot, Codes, 1, 1, P>(x, w.from(r, 1), K, group, out + r, ldo);
    return;
  }
  int r = 0;
  for (; r + NRb <= w.rows; r += NRb)
    plane_rows_batch<Dot, Codes, P, NRb, PerCall>(x, nb, w.from(r, NRb), K, group, out + r, ldo);
  for (; r < w.rows; ++r) plane_rows_batch<Dot, Codes, P, 1, PerCall>(x, nb, w.from(r, 1), K, group, out + r, ldo);
}

template <class Dot, class Codes>
void plane_rows_codes(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group, float* out,
                      int64_t ldo) {
  if (x.planes == 1)
    plane_rows_for<Dot, Codes, 1, Dot::kWeightRows1, Dot::kBatchWeightRows1, Dot::kRowsPerCall1>(x, nb, w, K, group,
                                                                                                 out, ldo);
  else
    plane_rows_for<Dot, Codes, 3, Dot::kWeightRows3, Dot::kBatchWeightRows3, Dot::kRowsPerCall3>(x, nb, w, K, group,
                                                                                                 out, ldo);
}

// The entry point's body.
template <class Dot>
void plane_rows_all(const ActivationPlanes& x, int nb, const WeightRows& w, int64_t K, int64_t group, float* out,
                    int64_t ldo) {
  if (w.bits == 4)
    plane_rows_codes<Dot, Int4Codes>(x, nb, w, K, group, out, ldo);
  else
    plane_rows_codes<Dot, Int8Codes>(x, nb, w, K, group, out, ldo);
}

}  // namespace
}  // namespace gencore::quant
