// Bindings of the ot family's CUDA kernels: one binder per op group.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_ot_sinkhorn(py::module_& m);  // ot_sinkhorn.cu
void bind_ot_sliced(py::module_& m);    // ot_sliced.cu

void bind_ot(py::module_& m) {
  bind_ot_sinkhorn(m);
  bind_ot_sliced(m);
}

}  // namespace gencore::gpu::bindings
