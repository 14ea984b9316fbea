// AVX-512 row kernels of the fused step: the bodies of
// ode/step_kernels.inc over the lanes of ode/lanes_avx512.inc (16 float32 / 8 float64 values).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "ode/step_rows.h"

#define GENCORE_ISA avx512
#include "gencore/isa_begin.h"

namespace gencore::ode {
namespace {
#include "ode/lanes_scalar.inc"
#include "ode/lanes_avx512.inc"
#include "ode/step_kernels.inc"
}  // namespace

StepRowOps<float> step_row_ops_f32_avx512() { return make_step_row_ops<Lanes512f>(); }
StepRowOps<double> step_row_ops_f64_avx512() { return make_step_row_ops<Lanes512d>(); }

}  // namespace gencore::ode

#include "gencore/isa_end.h"
