// Bindings of the ode family's CUDA kernels: the fused solver step and the
// error norm. Pointers are Python ints (torch data_ptr(); 0 for an absent
// optional input) to contiguous device memory, `stream` is
// torch.cuda.current_stream(dev).cuda_stream, `device` the device index. The
// GIL is released around every launch; nothing here synchronises the host or
// allocates.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "ode/error_norm.cuh"
#include "ode/step.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

void bind_ode(py::module_& m) {
  m.def(
      "ode_step",
      [](std::uintptr_t x, std::uintptr_t d_cond, std::uintptr_t d_uncond, std::uintptr_t h1, std::uintptr_t h2,
         std::uintptr_t h3, std::uintptr_t noise, int64_t B, int64_t M, std::uintptr_t coeffs,
         std::uintptr_t guidance, double rescale, double threshold, double threshold_max, std::uintptr_t x_next,
         std::uintptr_t d, std::uintptr_t stream, int device) {
        // x, d_cond, d_uncond?, h1?, h2?, h3?, noise? [B, M], coeffs [B, 6], guidance [B]? -> x_next, d [B, M]
        py::gil_scoped_release release;
        gpu::ode_step(device_ptr<const float>(x), device_ptr<const float>(d_cond), device_ptr<const float>(d_uncond),
                      device_ptr<const float>(h1), device_ptr<const float>(h2), device_ptr<const float>(h3),
                      device_ptr<const float>(noise), B, M, device_ptr<const double>(coeffs),
                      device_ptr<const double>(guidance), rescale, threshold, threshold_max, device_ptr<float>(x_next),
                      device_ptr<float>(d), as_stream(stream), device);
      },
      py::arg("x_ptr"), py::arg("d_cond_ptr"), py::arg("d_uncond_ptr"), py::arg("h1_ptr"), py::arg("h2_ptr"),
      py::arg("h3_ptr"), py::arg("noise_ptr"), py::arg("B"), py::arg("M"), py::arg("coeffs_ptr"),
      py::arg("guidance_ptr"), py::arg("rescale"), py::arg("threshold"), py::arg("threshold_max"),
      py::arg("x_next_ptr"), py::arg("d_ptr"), py::arg("stream"), py::arg("device"),
      "The fused solver step, fp32: x, d_cond and the optional (pointer 0) d_uncond, h1, h2, h3,\n"
      "noise [B, M] float32, coeffs [B, 6] and guidance [B] (or 0) float64 -> x_next, d [B, M]\n"
      "float32. d = d_cond, or fma(w, d_cond - d_uncond, d_uncond); rescale phi > 0 (with\n"
      "guidance, M > 1): d *= phi std(d_cond) / std(d) + 1 - phi; threshold q > 0: t =\n"
      "min(max(1, quantile_q |d|), threshold_max) (torch.quantile's linear interpolation; NaN\n"
      "for a row holding NaN), d = clamp(d, -t, t) / t; x_next = c_x x + c_d d + c_1 h1 + c_2 h2\n"
      "+ c_3 h3 + c_z noise. NaN/inf propagate. No workspace. Queued on `stream`; never\n"
      "synchronises. ValueError on bad sizes or parameters.");
  m.def(
      "ode_error_norm",
      [](std::uintptr_t err, std::uintptr_t y, std::uintptr_t y_new, int64_t B, int64_t M, double atol,
         double rtol, std::uintptr_t out, std::uintptr_t stream, int device) {
        // err, y, y_new [B, M] -> out [B]
        py::gil_scoped_release release;
        gpu::ode_error_norm(device_ptr<const float>(err), device_ptr<const float>(y), device_ptr<const float>(y_new),
                            B, M, atol, rtol, device_ptr<float>(out), as_stream(stream), device);
      },
      py::arg("err_ptr"), py::arg("y_ptr"), py::arg("y_new_ptr"), py::arg("B"), py::arg("M"), py::arg("atol"),
      py::arg("rtol"), py::arg("out_ptr"), py::arg("stream"), py::arg("device"),
      "Per-sample mixed RMS error norm, fp32: err, y, y_new [B, M] float32 -> out [B] float32,\n"
      "out_b = sqrt(mean_j (err_bj / (atol + rtol max(|y_bj|, |y_new_bj|)))^2) (sums in double;\n"
      "0 for M = 0). NaN/inf propagate. No workspace. Queued on `stream`; never synchronises.\n"
      "ValueError on bad sizes or tolerances.");
}

}  // namespace gencore::gpu::bindings
