// The _core extension: runtime helpers here, each family in its own file.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "gencore/blas.h"
#include "gencore/check.h"
#include "gencore/parallel.h"
#include "gencore/simd.h"

namespace py = pybind11;

namespace gencore::bindings {
void bind_ood(py::module_& m);
void bind_score(py::module_& m);
void bind_ode(py::module_& m);
void bind_ot(py::module_& m);
void bind_quant(py::module_& m);
void bind_test_hooks(py::module_& m);
}

namespace {

void* capsule_pointer(const py::capsule& c) {
  // SciPy names its capsules with the C signature; take whatever name it has.
  void* p = PyCapsule_GetPointer(c.ptr(), PyCapsule_GetName(c.ptr()));
  if (!p) throw py::error_already_set();
  return p;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  using namespace gencore;
  m.doc() = "gencore CPU kernels (see gencore._native)";
  // Which compiler built the kernels (CI builds with GCC and with Clang and
  // checks that the module it tests is the one it meant to build).
#if defined(__clang__)
  m.attr("compiler") = "clang " __clang_version__;
#elif defined(__GNUC__)
  m.attr("compiler") = "gcc " __VERSION__;
#else
  m.attr("compiler") = "unknown";
#endif
  m.def("set_blas", [](const py::capsule& sgemm, const py::capsule& dgemm) {
    blas::set_gemm(capsule_pointer(sgemm), capsule_pointer(dgemm));
  }, py::arg("sgemm"), py::arg("dgemm"), "Hand over SciPy's Fortran sgemm/dgemm capsules.");
  m.def("blas_info", &blas::describe);
  m.def("openmp", &openmp_enabled);
  m.def("detected_simd_level", [] { return simd_level_name(detected_simd_level()); });
  m.def("simd_level", [] { return simd_level_name(simd_level()); });
  m.def("set_simd_level", [](const std::string& name) { set_simd_level(parse_simd_level(name)); },
        py::arg("level"), "Cap the SIMD level (clamped to what the CPU supports).");
  m.def("has_avx512_bf16", &cpu_has_avx512_bf16);
  m.def("has_avx512_vnni", &cpu_has_avx512_vnni);
  m.def("has_avx_vnni", &cpu_has_avx_vnni);
  m.def("has_full_width_avx512", &cpu_has_full_width_avx512);
  m.def("compiled_isas", &compiled_isas,
        "ISA kernel sets built into this module: ['scalar'] for a portable-only (or non-x86) build.");
  bindings::bind_ood(m);  // one binder per family
  bindings::bind_score(m);
  bindings::bind_ode(m);
  bindings::bind_ot(m);
  bindings::bind_quant(m);
  bindings::bind_test_hooks(m);
}
