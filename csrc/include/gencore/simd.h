// Run-time SIMD level. One dispatch per kernel call, outside hot loops.
// GENCORE_SIMD=scalar|avx2|avxvnni|avx512 (read once at import) or
// set_simd_level() caps the level so tests can exercise every path the CPU
// supports. avxvnni is AVX2 plus the VEX-encoded AVX-VNNI dot products of
// CPUs without AVX-512 (Alder Lake and later client cores): a level of its
// own, so that avx2 stays the plain AVX2 + FMA baseline on every CPU. An
// AVX-512 CPU without AVX-VNNI (Skylake-X to Ice Lake, Zen 4) skips it: a cap
// at avxvnni gives avx2 there.
#pragma once
#include <string>
#include <vector>

#include "gencore/config.h"

namespace gencore {

enum class SimdLevel : int { scalar = 0, avx2 = 1, avxvnni = 2, avx512 = 3 };

SimdLevel detected_simd_level();          // best level this CPU and this build support
SimdLevel simd_level();                   // level in use (detected, capped by override)
void set_simd_level(SimdLevel level);     // cap; clamped to the detected level (avxvnni: to avx2 without AVX-VNNI)
bool cpu_has_avx_vnni();                  // VEX AVX-VNNI, usable at level avxvnni and above
// AVX-512 whose 512-bit integer ops run at the rate of 256-bit ones (AMD Zen 5 and later, where
// measured: on Zen 4 they are split in two; on Intel they occupy two ports): kernels that gain
// from 512-bit vectors only then take them.
bool cpu_has_full_width_avx512();
bool cpu_has_avx512_bf16();               // extra feature for the bf16 screening kernel
bool cpu_has_avx512_vnni();               // extra feature for the quant integer-activation kernel
const char* simd_level_name(SimdLevel level);
// The ISA kernel sets compiled into this build ({"scalar"} without the x86 ISA
// units: aarch64, GENCORE_PORTABLE_ONLY), whatever the CPU supports.
std::vector<std::string> compiled_isas();
SimdLevel parse_simd_level(const std::string& name);

}  // namespace gencore
