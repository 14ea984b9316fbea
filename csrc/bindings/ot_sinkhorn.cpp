// Bindings of the ot family's sinkhorn kernels.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace gencore::bindings {

void bind_ot_sinkhorn(py::module_& m) { (void)m; }

}  // namespace gencore::bindings
