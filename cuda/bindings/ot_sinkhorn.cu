// Bindings of the ot family's dense Sinkhorn CUDA kernel (the point-cloud
// solver's softmin is score's, bound in score.cu).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "ot/sinkhorn_dense.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_ot_sinkhorn(py::module_& m) {
  m.def("sinkhorn_dense_workspace_bytes", &gpu::sinkhorn_dense_workspace_bytes, py::arg("B"), py::arg("n"),
        py::arg("m"), "Workspace bytes of sinkhorn_dense: B (n + m) floats.");
  m.def(
      "sinkhorn_dense",
      [](std::uintptr_t cost, std::uintptr_t a, std::uintptr_t b, int64_t B, int64_t n, int64_t m, double reg,
         double damping, double tol, int64_t max_iter, int64_t plateau, std::uintptr_t f, std::uintptr_t g,
         std::uintptr_t n_iter, std::uintptr_t error, std::uintptr_t status, std::uintptr_t workspace,
         int64_t workspace_bytes, std::uintptr_t stream, int device) {
        py::gil_scoped_release release;
        gpu::sinkhorn_dense(device_ptr<const float>(cost), device_ptr<const float>(a), device_ptr<const float>(b), B,
                            n, m, reg, damping, tol, max_iter, plateau, device_ptr<float>(f), device_ptr<float>(g),
                            device_ptr<int64_t>(n_iter), device_ptr<double>(error), device_ptr<int64_t>(status),
                            device_ptr<void>(workspace), workspace_bytes, as_stream(stream), device);
      },
      py::arg("M_ptr"), py::arg("a_ptr"), py::arg("b_ptr"), py::arg("B"), py::arg("n"), py::arg("m"), py::arg("reg"),
      py::arg("damping"), py::arg("tol"), py::arg("max_iter"), py::arg("plateau"), py::arg("f_out_ptr"),
      py::arg("g_out_ptr"), py::arg("n_iter_out_ptr"), py::arg("error_out_ptr"), py::arg("status_out_ptr"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"), py::arg("device"),
      "Dense log-domain Sinkhorn, fp32: M [B, n, m], a [B, n], b [B, m] -> f [B, n], g [B, m], n_iter [B] int64,\n"
      "error [B] float64, status [B] int64 (0 converged, 1 max_iter, 2 plateau); one block per problem runs\n"
      "the whole loop. Queued on `stream`; never synchronises.");
}

}  // namespace gencore::gpu::bindings
