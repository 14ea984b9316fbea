// Bindings of the ot family's exact kernels.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace gencore::bindings {

void bind_ot_exact(py::module_& m) { (void)m; }

}  // namespace gencore::bindings
