// Bindings of the ot family's sliced-Wasserstein CUDA kernel. (EMD has none:
// the network simplex is sequential; its CUDA entry runs the CPU kernel on host
// copies, see python/gencore/ot/ops/_emd.py.)
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "ot/sliced.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_ot_sliced(py::module_& m) {
  m.def(
      "sliced_1d",
      [](std::uintptr_t xs, std::uintptr_t ys, std::uintptr_t cx, std::uintptr_t cy, int64_t P, int64_t n, int64_t m,
         double p, std::uintptr_t out, std::uintptr_t grad_xs, std::uintptr_t grad_ys, std::uintptr_t stream,
         int device) {
        py::gil_scoped_release release;
        gpu::sliced_1d(device_ptr<const float>(xs), device_ptr<const float>(ys), device_ptr<const double>(cx),
                       device_ptr<const double>(cy), P, n, m, p, device_ptr<float>(out), device_ptr<float>(grad_xs),
                       device_ptr<float>(grad_ys), as_stream(stream), device);
      },
      py::arg("xs_ptr"), py::arg("ys_ptr"), py::arg("cx_ptr"), py::arg("cy_ptr"), py::arg("P"), py::arg("n"),
      py::arg("m"), py::arg("p"), py::arg("out_ptr"), py::arg("grad_xs_out_ptr"), py::arg("grad_ys_out_ptr"),
      py::arg("stream"), py::arg("device"),
      "Sliced Wasserstein's 1-D step, fp32 points: xs [P, n], ys [P, m] sorted rows, cx [P, n], cy [P, m]\n"
      "float64 cumulative weights -> out [P] = W_p^p; grad_xs, grad_ys (both 0 or both set) = its gradient\n"
      "in the sorted order (deterministic, no atomics). Queued on `stream`; never synchronises.");
}

}  // namespace gencore::gpu::bindings
