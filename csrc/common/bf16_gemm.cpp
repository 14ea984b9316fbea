// Run-time choice of the bf16 GEMM kernels (see gencore/bf16_gemm.h).
#include "gencore/bf16_gemm.h"

#include "gencore/isa.h"

namespace gencore {

Bf16GemmKernels bf16_gemm_kernels() {
  using Make = Bf16GemmKernels (*)();
  const Make make = pick_isa<Make>(nullptr, nullptr, nullptr, GENCORE_ISA_FN(bf16_gemm_kernels_avx512bf16));
  return make ? make() : Bf16GemmKernels{};
}

}  // namespace gencore
