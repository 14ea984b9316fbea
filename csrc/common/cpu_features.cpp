#include "gencore/simd.h"

#include <atomic>
#include <cstdlib>
#if defined(GENCORE_X86) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif
#include <string>
#include <vector>

#include "gencore/check.h"

namespace gencore {
namespace {

// AVX-VNNI (CPUID leaf 7, sub-leaf 1, EAX bit 4), read from CPUID itself: Clang's
// __builtin_cpu_supports does not know the name in every version CI builds with.
// Its ymm state is the one AVX2 already needs the OS to save.
bool cpuid_has_avx_vnni() {
#if defined(GENCORE_X86) && (defined(__GNUC__) || defined(__clang__))
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4));
#else
  return false;
#endif
}

// Each level includes the previous one, and checks exactly the features its
// translation units are compiled for (gencore/isa_targets.h). Without the x86
// ISA units (aarch64, GENCORE_PORTABLE_ONLY) the best level is scalar.
SimdLevel detect() {
#if defined(GENCORE_X86) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return SimdLevel::scalar;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return SimdLevel::avx512;
  return cpuid_has_avx_vnni() ? SimdLevel::avxvnni : SimdLevel::avx2;
#endif
  return SimdLevel::scalar;
}

// The level a cap of `wanted` gives on this CPU: at most the detected one, and
// avx2 for avxvnni where the CPU lacks AVX-VNNI (an AVX-512 CPU without it).
SimdLevel clamp_to_cpu(SimdLevel wanted, SimdLevel best) {
  const SimdLevel level = wanted < best ? wanted : best;
  if (level == SimdLevel::avxvnni && !cpu_has_avx_vnni()) return SimdLevel::avx2;
  return level;
}

SimdLevel initial_level() {
  SimdLevel best = detect();
  if (const char* env = std::getenv("GENCORE_SIMD")) {
    try {
      return clamp_to_cpu(parse_simd_level(env), best);
    } catch (const std::invalid_argument&) {
      // An unknown value is reported by the Python layer; keep the best level.
    }
  }
  return best;
}

std::atomic<int>& level_in_use() {
  static std::atomic<int> level{static_cast<int>(initial_level())};
  return level;
}

}  // namespace

SimdLevel detected_simd_level() {
  static const SimdLevel level = detect();
  return level;
}

SimdLevel simd_level() { return static_cast<SimdLevel>(level_in_use().load()); }

void set_simd_level(SimdLevel level) {
  level_in_use().store(static_cast<int>(clamp_to_cpu(level, detected_simd_level())));
}

// An AVX-512 extension beyond the avx512 level's features, usable only where that level is.
// (A macro: __builtin_cpu_supports takes a string literal.)
#if defined(GENCORE_X86) && (defined(__GNUC__) || defined(__clang__))
#define GENCORE_AVX512_EXTENSION(feature) \
  (detected_simd_level() == SimdLevel::avx512 && __builtin_cpu_supports(feature))
#else
#define GENCORE_AVX512_EXTENSION(feature) false
#endif

bool cpu_has_avx512_bf16() {
  static const bool has = GENCORE_AVX512_EXTENSION("avx512bf16");
  return has;
}

bool cpu_has_avx512_vnni() {
  static const bool has = GENCORE_AVX512_EXTENSION("avx512vnni");
  return has;
}

bool cpu_has_full_width_avx512() {
#if defined(GENCORE_X86) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = [] {
    if (detected_simd_level() != SimdLevel::avx512 || !__builtin_cpu_is("amd")) return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
    const unsigned family = ((eax >> 8) & 0xF) + (((eax >> 8) & 0xF) == 0xF ? (eax >> 20) & 0xFF : 0);
    return family >= 0x1A;  // Zen 5
  }();
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx_vnni() {
  static const bool has = detected_simd_level() >= SimdLevel::avx2 && cpuid_has_avx_vnni();
  return has;
}

std::vector<std::string> compiled_isas() {
#if defined(GENCORE_X86)
  return {"scalar", "avx2", "avxvnni", "avx512", "avx512bf16", "avx512vnni"};
#else
  return {"scalar"};
#endif
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::avx512: return "avx512";
    case SimdLevel::avxvnni: return "avxvnni";
    case SimdLevel::avx2: return "avx2";
    default: return "scalar";
  }
}

SimdLevel parse_simd_level(const std::string& name) {
  if (name == "scalar") return SimdLevel::scalar;
  if (name == "avx2") return SimdLevel::avx2;
  if (name == "avxvnni") return SimdLevel::avxvnni;
  if (name == "avx512") return SimdLevel::avx512;
  fail("simd level must be one of 'scalar', 'avx2', 'avxvnni', 'avx512'; got '", name, "'");
}

}  // namespace gencore
