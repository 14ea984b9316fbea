// Run-time SIMD level. One dispatch per kernel call, outside hot loops.
// GENCORE_SIMD=scalar|avx2|avx512 (read once at import) or set_simd_level()
// caps the level so tests can exercise every path the CPU supports.
#pragma once
#include <string>
#include <vector>

#include "gencore/config.h"

namespace gencore {

enum class SimdLevel : int { scalar = 0, avx2 = 1, avx512 = 2 };

SimdLevel detected_simd_level();          // best level this CPU and this build support
SimdLevel simd_level();                   // level in use (detected, capped by override)
void set_simd_level(SimdLevel level);     // cap; clamped to the detected level
bool cpu_has_avx512_bf16();               // extra feature for the bf16 screening kernel
bool cpu_has_avx512_vnni();               // extra feature for the quant integer-activation kernel
const char* simd_level_name(SimdLevel level);
// The ISA kernel sets compiled into this build ({"scalar"} without the x86 ISA
// units: aarch64, GENCORE_PORTABLE_ONLY), whatever the CPU supports.
std::vector<std::string> compiled_isas();
SimdLevel parse_simd_level(const std::string& name);

}  // namespace gencore
