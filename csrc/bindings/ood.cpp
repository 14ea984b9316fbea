// Bindings of the ood family's CPU kernels.
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ood/knn.h"

namespace gencore::bindings {

namespace {

template <typename T>
void knn_typed(const py::array& queries, const py::array& bank, int64_t k, int metric,
               py::array& values, py::array& indices, int threads) {
  auto q = matrix_in<T>(queries, "queries");
  auto b = matrix_in<T>(bank, "bank");
  T* v = output<T>(values, "values", q.rows, k);
  int64_t* ix = output<int64_t>(indices, "indices", q.rows, k);
  GENCORE_CHECK(metric >= 0 && metric <= 2, "knn: unknown metric code ", metric);
  py::gil_scoped_release release;
  ood::knn<T>(q, b, k, static_cast<ood::KnnMetric>(metric), v, ix, threads);
}

}  // namespace

void bind_ood(py::module_& m) {
  m.def(
      "knn",
      [](const py::array& queries, const py::array& bank, int64_t k, int metric, py::array& values,
         py::array& indices, int threads) {
        // queries [Q, D], bank [N, D] -> values [Q, k], indices [Q, k] (int64)
        if (py::dtype::of<double>().is(queries.dtype()))
          knn_typed<double>(queries, bank, k, metric, values, indices, threads);
        else
          knn_typed<float>(queries, bank, k, metric, values, indices, threads);
      },
      py::arg("queries"), py::arg("bank"), py::arg("k"), py::arg("metric"), py::arg("values"),
      py::arg("indices"), py::arg("num_threads"),
      "Exact kNN; metric 0 = squared L2, 1 = inner product, 2 = cosine.");
  m.def("last_knn_path", &ood::last_knn_path,
        "Path of this thread's last knn call: 'blas' or 'bf16-screen' ('none' before any).");
}

}  // namespace gencore::bindings
