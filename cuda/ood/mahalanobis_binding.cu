// pybind11 glue of the Mahalanobis CUDA kernel (its own file, so cuda/module.cu
// only gains one declaration and one call).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "ood/mahalanobis.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_ood_mahalanobis(py::module_& m) {
  m.def(
      "mahalanobis",
      [](std::uintptr_t z, std::uintptr_t mt, int64_t Q, int64_t C, int64_t R, int reduce,
         std::uintptr_t out, std::uintptr_t nearest, std::uintptr_t stream, int device) {
        // z [Q, R], mt [C, R] -> out [Q, C] (reduce 0) or [Q] (reduce 1), nearest [Q] int64
        py::gil_scoped_release release;
        gencore::gpu::mahalanobis(reinterpret_cast<const float*>(z), reinterpret_cast<const float*>(mt),
                                  Q, C, R, static_cast<MahalanobisReduce>(reduce),
                                  reinterpret_cast<float*>(out), reinterpret_cast<int64_t*>(nearest),
                                  reinterpret_cast<cudaStream_t>(stream), device);
      },
      py::arg("z_ptr"), py::arg("mt_ptr"), py::arg("Q"), py::arg("C"), py::arg("R"),
      py::arg("reduce"), py::arg("out_ptr"), py::arg("nearest_ptr"), py::arg("stream"),
      py::arg("device"),
      "Squared Mahalanobis distances from whitened inputs, fp32: z [Q, R], mt [C, R] ->\n"
      "out [Q, C] (reduce 0) or [Q] (reduce 1, minimum over classes), nearest [Q] int64.\n"
      "Queued on `stream`, never synchronises.");
}

}  // namespace gencore::gpu::bindings
