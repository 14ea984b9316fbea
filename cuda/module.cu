// The _cuda extension: device queries and the CUDA kernels, on raw device
// pointers (torch's data_ptr()) and the caller's stream. Imports and answers
// device_count() == 0 on a machine without a driver or a GPU.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "ood/knn.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {
void bind_ood_mahalanobis(py::module_& m);
}

namespace {

// A failed query (no driver, no device) is cleared so it cannot surface later
// as the "last error" of an unrelated launch.
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return v;
}

// "80;90" (the GENCORE_CUDA_ARCHS spelling), from nvcc's list of the
// architectures this translation unit was compiled for.
std::string compiled_archs() {
#ifdef __CUDA_ARCH_LIST__
  constexpr int archs[] = {__CUDA_ARCH_LIST__};
  std::string out;
  for (int a : archs) {
    if (!out.empty()) out += ';';
    out += std::to_string(a / 10);
  }
  return out;
#else
  return "unknown";
#endif
}

template <typename T>
T* device_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// queries [Q, D], bank [N, D] -> values [Q, k], indices [Q, k]; see ood/knn.cuh.
void knn(std::uintptr_t queries, std::uintptr_t bank, int64_t Q, int64_t N, int64_t D, int64_t k,
         int metric, std::uintptr_t values, std::uintptr_t indices, std::uintptr_t stream,
         int device) {
  py::gil_scoped_release release;
  gencore::gpu::knn(device_ptr<const float>(queries), device_ptr<const float>(bank), Q, N, D, k,
                    static_cast<gencore::gpu::KnnMetric>(metric), device_ptr<float>(values),
                    device_ptr<int64_t>(indices), reinterpret_cast<cudaStream_t>(stream), device);
}

}  // namespace

void bind_ood_logits(py::module_& m);  // appended below

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "gencore CUDA kernels (raw device pointers, caller's stream)";
  m.def("device_count", &device_count, "Visible CUDA devices; 0 without a driver or a GPU.");
  m.def("runtime_version", &runtime_version, "CUDA runtime version compiled in, e.g. 13000.");
  m.def("driver_version", &driver_version, "CUDA driver version; 0 without a driver.");
  m.def("compiled_archs", &compiled_archs, "Architectures with device code, e.g. '80;90'.");
  m.def("max_k", [] { return gencore::gpu::kKnnMaxK; }, "Largest k knn() accepts.");
  m.def("knn", &knn, py::arg("queries_ptr"), py::arg("bank_ptr"), py::arg("Q"), py::arg("N"),
        py::arg("D"), py::arg("k"), py::arg("metric"), py::arg("values_ptr"),
        py::arg("indices_ptr"), py::arg("stream"), py::arg("device"),
        "Exact kNN, fp32. queries [Q, D], bank [N, D] -> values [Q, k] float32, indices [Q, k]\n"
        "int64, best first (metric 0: squared L2 ascending; 1: inner product descending); ties\n"
        "go to the lower index. Queued on `stream`, never synchronises.");
  gencore::gpu::bindings::bind_ood_mahalanobis(m);
  bind_ood_logits(m);
}

// ---------------------------------------------------------------- ood: logit scores, residual / ViM
#include "ood/logits.cuh"

void bind_ood_logits(py::module_& m) {
  m.def(
      "logit_scores",
      [](std::uintptr_t logits, int64_t N, int64_t C, int score, double temperature, double gamma, int64_t top_m,
         std::uintptr_t log_templates, std::uintptr_t out, std::uintptr_t stream, int device) {
        py::gil_scoped_release release;
        gencore::gpu::logit_scores(device_ptr<const float>(logits), N, C, score, temperature, gamma, top_m,
                                   device_ptr<const float>(log_templates), device_ptr<float>(out),
                                   reinterpret_cast<cudaStream_t>(stream), device);
      },
      py::arg("logits_ptr"), py::arg("N"), py::arg("C"), py::arg("score"), py::arg("temperature"),
      py::arg("gamma"), py::arg("top_m"), py::arg("log_templates_ptr"), py::arg("out_ptr"), py::arg("stream"),
      py::arg("device"),
      "Logit OOD scores, fp32: logits [N, C] -> out [N] (0 max logit, 1 MSP, 2 energy, 3 GEN, 4 KL\n"
      "matching against log_templates [C, C]). Queued on `stream`, never synchronises.");
  m.def(
      "residual_scores",
      [](std::uintptr_t residual, int64_t N, int64_t D, std::uintptr_t logits, int64_t C, double alpha,
         std::uintptr_t out, std::uintptr_t stream, int device) {
        py::gil_scoped_release release;
        gencore::gpu::residual_scores(device_ptr<const float>(residual), N, D, device_ptr<const float>(logits), C,
                                      alpha, device_ptr<float>(out), reinterpret_cast<cudaStream_t>(stream), device);
      },
      py::arg("residual_ptr"), py::arg("N"), py::arg("D"), py::arg("logits_ptr"), py::arg("C"), py::arg("alpha"),
      py::arg("out_ptr"), py::arg("stream"), py::arg("device"),
      "fp32: residual [N, D] -> out [N] = -||residual||, or with logits [N, C] (ptr != 0)\n"
      "logsumexp(logits) - alpha ||residual|| (ViM). Queued on `stream`, never synchronises.");
}
