// Bindings of the quant family's CUDA kernels. Pointers are Python ints
// (torch data_ptr()) to contiguous device memory, `stream` the caller's
// torch.cuda.current_stream(dev).cuda_stream. The GIL is released around the launch.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "quant/group_matmul.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_quant(py::module_& m) {
  m.def("group_matmul_max_rows", [] { return kGroupMatmulMaxRows; },
        "The most activation rows group_matmul() takes in one launch.");
  m.def(
      "group_matmul",
      [](std::uintptr_t x, int64_t M, int64_t K, std::uintptr_t data, int64_t N, std::uintptr_t scales,
         std::uintptr_t zeros, int64_t group, int bits, std::uintptr_t bias, std::uintptr_t out,
         std::uintptr_t stream, int device) {
        // x [M, K], data [N, ceil(K/2) | K], scales / zeros [N, G], bias [N] or 0 -> out [M, N]
        py::gil_scoped_release release;
        gpu::group_matmul(device_ptr<const float>(x), M, K, device_ptr<const uint8_t>(data), N,
                          device_ptr<const float>(scales), device_ptr<const float>(zeros), group, bits,
                          device_ptr<const float>(bias), device_ptr<float>(out), as_stream(stream), device);
      },
      py::arg("x_ptr"), py::arg("M"), py::arg("K"), py::arg("data_ptr"), py::arg("N"), py::arg("scales_ptr"),
      py::arg("zeros_ptr"), py::arg("group_size"), py::arg("bits"), py::arg("bias_ptr"), py::arg("out_ptr"),
      py::arg("stream"), py::arg("device"),
      "y [M, N] float32 = x [M, K] float32 . dequant(W)^T (+ bias [N] when bias_ptr != 0), W group-\n"
      "quantized (int4 two codes a byte, low nibble first, or int8; scales / zeros [N, ceil(K / group)]\n"
      "float32). M <= group_matmul_max_rows(). Queued on `stream`; never synchronises; no workspace.");
}

}  // namespace gencore::gpu::bindings
