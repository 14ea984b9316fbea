// AVX2 row kernels of the fused step: the bodies of
// ode/step_kernels.inc over the lanes of ode/lanes_avx2.inc (8 float32 / 4 float64 values).
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "ode/step_rows.h"

#define GENCORE_ISA avx2
#include "gencore/isa_begin.h"

namespace gencore::ode {
namespace {
#include "ode/lanes_scalar.inc"
#include "ode/lanes_avx2.inc"
#include "ode/step_kernels.inc"
}  // namespace

StepRowOps<float> step_row_ops_f32_avx2() { return make_step_row_ops<Lanes256f>(); }
StepRowOps<double> step_row_ops_f64_avx2() { return make_step_row_ops<Lanes256d>(); }

}  // namespace gencore::ode

#include "gencore/isa_end.h"
