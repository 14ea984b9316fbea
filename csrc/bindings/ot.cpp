// Bindings of the ot family's CPU kernels: one binder per op group.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace gencore::bindings {

void bind_ot_sinkhorn(py::module_& m);  // ot_sinkhorn.cpp
void bind_ot_exact(py::module_& m);     // ot_exact.cpp

void bind_ot(py::module_& m) {
  bind_ot_sinkhorn(m);
  bind_ot_exact(m);
}

}  // namespace gencore::bindings
