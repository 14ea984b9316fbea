// Bindings of the ood family's CUDA kernels: kNN, Mahalanobis, logit scores
// and residual / ViM. Pointers are Python ints (torch data_ptr()) to
// contiguous device memory, `stream` is torch.cuda.current_stream(dev).cuda_stream,
// `device` the device index. The GIL is released around every launch; nothing
// here synchronises the host or allocates.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "ood/knn.cuh"
#include "ood/logits.cuh"
#include "ood/mahalanobis.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

namespace {

void bind_knn(py::module_& m) {
  m.def("knn_max_k", [] { return kKnnMaxK; },
        "Largest k that knn() accepts (its per-query sort lives in shared memory); larger k\n"
        "must run elsewhere (the Python layer uses the reference).");
  m.def("knn_workspace_bytes", &knn_workspace_bytes, py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("k"),
        "Bytes of the workspace knn() needs (0 when Q == 0; at most 256 MiB):\n"
        "  slab = min(Q, 4096)\n"
        "  chunk = min(round_up(N, 128), 2**18, (2**28 // (4 * slab)) // 128 * 128)\n"
        "  bytes = 4 * slab * chunk\n"
        "D and k do not change it today.");
  m.def(
      "knn",
      [](std::uintptr_t queries, std::uintptr_t bank, int64_t Q, int64_t N, int64_t D, int64_t k, int metric,
         std::uintptr_t values, std::uintptr_t indices, std::uintptr_t workspace, int64_t workspace_bytes,
         std::uintptr_t stream, int device) {
        // queries [Q, D], bank [N, D] -> values [Q, k], indices [Q, k]
        py::gil_scoped_release release;
        gpu::knn(device_ptr<const float>(queries), device_ptr<const float>(bank), Q, N, D, k,
                 static_cast<KnnMetric>(metric), device_ptr<float>(values), device_ptr<int64_t>(indices),
                 device_ptr<void>(workspace), workspace_bytes, as_stream(stream), device);
      },
      py::arg("queries_ptr"), py::arg("bank_ptr"), py::arg("Q"), py::arg("N"), py::arg("D"), py::arg("k"),
      py::arg("metric"), py::arg("values_ptr"), py::arg("indices_ptr"), py::arg("workspace_ptr"),
      py::arg("workspace_bytes"), py::arg("stream"), py::arg("device"),
      "Exact kNN, fp32: queries [Q, D], bank [N, D] float32 -> values [Q, k] float32 and\n"
      "indices [Q, k] int64, best first. metric 0: squared L2 ||x||^2 + ||y||^2 - 2 x.y clamped\n"
      "at 0, ascending; 1: inner product, descending. Ties go to the lower bank index; NaN\n"
      "ranks last. 1 <= k <= min(N, knn_max_k()). workspace: >= knn_workspace_bytes(Q, N, D, k)\n"
      "bytes, 16-byte aligned, on the same device and stream. Queued on `stream`; never\n"
      "synchronises. ValueError on bad sizes or a small workspace.");
}

void bind_mahalanobis(py::module_& m) {
  m.def(
      "mahalanobis_workspace_bytes",
      [](int64_t Q, int64_t C, int64_t R, int reduce) {
        return mahalanobis_workspace_bytes(Q, C, R, static_cast<MahalanobisReduce>(reduce));
      },
      py::arg("Q"), py::arg("C"), py::arg("R"), py::arg("reduce"),
      "Bytes of the workspace mahalanobis() needs (0 when Q == 0; at most 256 MiB + 16 KiB):\n"
      "  slab = min(Q, 4096)\n"
      "  chunk = min(round_up(C, 128), 16384)\n"
      "  bytes = 4 * slab * chunk + (4 * slab if reduce == 0 else 0)\n"
      "R does not change it today.");
  m.def(
      "mahalanobis",
      [](std::uintptr_t z, std::uintptr_t mt, int64_t Q, int64_t C, int64_t R, int reduce, std::uintptr_t out,
         std::uintptr_t nearest, std::uintptr_t workspace, int64_t workspace_bytes, std::uintptr_t stream,
         int device) {
        // z [Q, R], mt [C, R] -> out [Q, C] (reduce 0) or [Q] (reduce 1), nearest [Q]
        py::gil_scoped_release release;
        gpu::mahalanobis(device_ptr<const float>(z), device_ptr<const float>(mt), Q, C, R,
                         static_cast<MahalanobisReduce>(reduce), device_ptr<float>(out),
                         device_ptr<int64_t>(nearest), device_ptr<void>(workspace), workspace_bytes,
                         as_stream(stream), device);
      },
      py::arg("z_ptr"), py::arg("mt_ptr"), py::arg("Q"), py::arg("C"), py::arg("R"), py::arg("reduce"),
      py::arg("out_ptr"), py::arg("nearest_ptr"), py::arg("workspace_ptr"), py::arg("workspace_bytes"),
      py::arg("stream"), py::arg("device"),
      "Squared Mahalanobis distances from whitened inputs, fp32: z [Q, R], mt [C, R] float32 ->\n"
      "out = max(||z_q||^2 + ||mt_c||^2 - 2 z_q.mt_c, 0) as [Q, C] (reduce 0) or its minimum\n"
      "over classes [Q] (reduce 1), and nearest [Q] int64: the lowest class index among equal\n"
      "(clamped) distances; a NaN distance wins the min. workspace: >=\n"
      "mahalanobis_workspace_bytes(Q, C, R, reduce) bytes, 16-byte aligned, on the same device\n"
      "and stream. Queued on `stream`; never synchronises. ValueError on bad sizes or a small\n"
      "workspace.");
}

void bind_logits(py::module_& m) {
  m.def(
      "logit_scores",
      [](std::uintptr_t logits, int64_t N, int64_t C, int score, double temperature, double gamma,
         int64_t top_m, std::uintptr_t log_templates, std::uintptr_t out, std::uintptr_t stream, int device) {
        // logits [N, C] (+ log_templates [C, C]) -> out [N]
        py::gil_scoped_release release;
        gpu::logit_scores(device_ptr<const float>(logits), N, C, score, temperature, gamma, top_m,
                          device_ptr<const float>(log_templates), device_ptr<float>(out), as_stream(stream),
                          device);
      },
      py::arg("logits_ptr"), py::arg("N"), py::arg("C"), py::arg("score"), py::arg("temperature"),
      py::arg("gamma"), py::arg("top_m"), py::arg("log_templates_ptr"), py::arg("out_ptr"), py::arg("stream"),
      py::arg("device"),
      "Logit OOD scores, fp32 (higher = more in-distribution): logits [N, C] float32 -> out [N]\n"
      "float32. score 0: max logit; 1: MSP, max softmax(l / temperature); 2: energy,\n"
      "temperature * logsumexp(l / temperature); 3: GEN, -sum over the top_m largest p of\n"
      "p^gamma (1 - p)^gamma; 4: KL matching, -KL(softmax(l) || exp(log_templates[argmax l]))\n"
      "with log_templates [C, C] (pointer 0 for the other scores). A row with NaN/inf gives NaN.\n"
      "No workspace. Queued on `stream`; never synchronises.");
  m.def(
      "residual_scores",
      [](std::uintptr_t residual, int64_t N, int64_t D, std::uintptr_t logits, int64_t C, double alpha,
         std::uintptr_t out, std::uintptr_t stream, int device) {
        // residual [N, D] (+ logits [N, C]) -> out [N]
        py::gil_scoped_release release;
        gpu::residual_scores(device_ptr<const float>(residual), N, D, device_ptr<const float>(logits), C, alpha,
                             device_ptr<float>(out), as_stream(stream), device);
      },
      py::arg("residual_ptr"), py::arg("N"), py::arg("D"), py::arg("logits_ptr"), py::arg("C"), py::arg("alpha"),
      py::arg("out_ptr"), py::arg("stream"), py::arg("device"),
      "Residual / ViM scores, fp32: residual [N, D] float32 -> out [N] float32 = -||residual_i||,\n"
      "or with logits [N, C] (logits_ptr != 0) the ViM score logsumexp(logits_i) - alpha\n"
      "||residual_i||. A logits row with NaN/inf gives NaN. No workspace. Queued on `stream`;\n"
      "never synchronises.");
}

}  // namespace

void bind_ood(py::module_& m) {
  bind_knn(m);
  bind_mahalanobis(m);
  bind_logits(m);
}

}  // namespace gencore::gpu::bindings
