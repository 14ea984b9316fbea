// Bindings of the quant family's CUDA kernels. Pointers are Python ints
// (torch data_ptr()) to contiguous device memory, `stream` the caller's
// torch.cuda.current_stream(dev).cuda_stream. The GIL is released around the launch.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "quant/group_matmul.cuh"
#include "quant/group_matmul_int8.cuh"
#include "quant/quantize.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_quant(py::module_& m) {
  m.def("group_matmul_tile_rows", [] { return kGroupMatmulTileRows; },
        "The fewest activation rows group_matmul() runs on tensor cores (64 x 64 tiles, 3xTF32,\n"
        "sm_80 and later); fewer rows take one warp per output row.");
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
      "float32). Any M: from group_matmul_tile_rows() rows on tensor cores at float32 accuracy (3xTF32).\n"
      "Queued on `stream`; never synchronises; no workspace.");
  m.def("group_matmul_int8_workspace_bytes", &gpu::group_matmul_int8_workspace_bytes, py::arg("M"), py::arg("K"),
        py::arg("group_size"), "Workspace bytes group_matmul_int8() needs (the activations' codes and scales).");
  m.def(
      "group_matmul_int8",
      [](std::uintptr_t x, int64_t M, int64_t K, std::uintptr_t data, int64_t N, std::uintptr_t scales,
         std::uintptr_t zeros, int64_t group, int bits, std::uintptr_t bias, std::uintptr_t out,
         std::uintptr_t workspace, int64_t workspace_bytes, std::uintptr_t stream, int device) {
        // x [M, K], data [N, ceil(K/2) | K], scales / zeros [N, G], bias [N] or 0 -> out [M, N]
        py::gil_scoped_release release;
        gpu::group_matmul_int8(device_ptr<const float>(x), M, K, device_ptr<const uint8_t>(data), N,
                               device_ptr<const float>(scales), device_ptr<const float>(zeros), group, bits,
                               device_ptr<const float>(bias), device_ptr<float>(out), device_ptr<void>(workspace),
                               workspace_bytes, as_stream(stream), device);
      },
      py::arg("x_ptr"), py::arg("M"), py::arg("K"), py::arg("data_ptr"), py::arg("N"), py::arg("scales_ptr"),
      py::arg("zeros_ptr"), py::arg("group_size"), py::arg("bits"), py::arg("bias_ptr"), py::arg("out_ptr"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"), py::arg("device"),
      "y [M, N] float32 = the int8-activation product (W4A8 / W8A8, quant/group_matmul_int8.cuh): x [M, K]\n"
      "quantized per row and group to int8, exact integer group dots with the weight codes. Any M.\n"
      "Queued on `stream`; never synchronises; workspace of group_matmul_int8_workspace_bytes(M, K, group_size).");
  m.def(
      "quant_quantize",
      [](std::uintptr_t weight, int64_t N, int64_t K, int bits, int64_t group, bool symmetric, int clip_steps,
         std::uintptr_t data, std::uintptr_t scales, std::uintptr_t zeros, std::uintptr_t stream, int device) {
        py::gil_scoped_release release;
        gpu::quant_quantize(device_ptr<const float>(weight), N, K, bits, group, symmetric, clip_steps,
                            device_ptr<uint8_t>(data), device_ptr<float>(scales), device_ptr<float>(zeros),
                            as_stream(stream), device);
      },
      py::arg("weight_ptr"), py::arg("N"), py::arg("K"), py::arg("bits"), py::arg("group_size"), py::arg("symmetric"),
      py::arg("clip_steps"), py::arg("data_out_ptr"), py::arg("scales_out_ptr"), py::arg("zeros_out_ptr"),
      py::arg("stream"), py::arg("device"),
      "weight [N, K] float32 -> data [N, ceil(K/2) | K] uint8, scales / zeros [N, G] float32, bit for bit the\n"
      "CPU kernel's (clip_steps > 1: MSE-optimal clipping). Queued on `stream`; never synchronises.");
  m.def(
      "quant_dequantize",
      [](std::uintptr_t data, std::uintptr_t scales, std::uintptr_t zeros, int64_t N, int64_t K, int bits,
         int64_t group, std::uintptr_t out, std::uintptr_t stream, int device) {
        py::gil_scoped_release release;
        gpu::quant_dequantize(device_ptr<const uint8_t>(data), device_ptr<const float>(scales),
                              device_ptr<const float>(zeros), N, K, bits, group, device_ptr<float>(out),
                              as_stream(stream), device);
      },
      py::arg("data_ptr"), py::arg("scales_ptr"), py::arg("zeros_ptr"), py::arg("N"), py::arg("K"), py::arg("bits"),
      py::arg("group_size"), py::arg("out_ptr"), py::arg("stream"), py::arg("device"),
      "out [N, K] float32 = (q - zero) * scale. Queued on `stream`; never synchronises.");
}

}  // namespace gencore::gpu::bindings
