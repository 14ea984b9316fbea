// Bindings of the ood family's CPU kernels: kNN, Mahalanobis, logit scores,
// residual / ViM. Each binding checks codes and shapes, views the numpy
// arrays (zero copy), releases the GIL and calls the kernel for the inputs'
// floating dtype.
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ood/knn.h"
#include "ood/logits.h"
#include "ood/mahalanobis.h"
#include "ood/vim.h"

namespace gencore::bindings {

namespace {

// queries [Q, D], bank [N, D] -> values [Q, k], indices [Q, k] (int64)
void knn(const py::array& queries, const py::array& bank, int64_t k, int metric, py::array& values,
         py::array& indices, int threads) {
  GENCORE_CHECK(metric >= 0 && metric <= 2, "knn: unknown metric code ", metric);
  dispatch_floating(queries, "queries", [&](auto tag) {
    using T = decltype(tag);
    const auto q = matrix_in<T>(queries, "queries");
    const auto b = matrix_in<T>(bank, "bank");
    T* v = output<T>(values, "values", q.rows, k);
    int64_t* ix = output<int64_t>(indices, "indices", q.rows, k);
    py::gil_scoped_release release;
    ood::knn<T>(q, b, k, static_cast<ood::KnnMetric>(metric), v, ix, threads);
  });
}

// features [Q, D], means [C, D], factor [D, R]
//   -> out [Q, C] (reduce 0) or [Q] / [Q, 1] (reduce 1), nearest [Q] / [Q, 1] int64
void mahalanobis(const py::array& features, const py::array& means, const py::array& factor, int reduce,
                 py::array& out, py::array& nearest, int threads) {
  GENCORE_CHECK(reduce == 0 || reduce == 1, "mahalanobis: unknown reduce code ", reduce);
  dispatch_floating(features, "features", [&](auto tag) {
    using T = decltype(tag);
    const auto x = matrix_in<T>(features, "features");
    const auto m = matrix_in<T>(means, "means");
    const auto f = matrix_in<T>(factor, "precision_factor");
    T* o = reduce == 0 ? output<T>(out, "out", x.rows, m.rows) : vector_out<T>(out, "out", x.rows);
    int64_t* nc = vector_out<int64_t>(nearest, "nearest", x.rows);
    py::gil_scoped_release release;
    ood::mahalanobis<T>(x, m, f, static_cast<ood::MahalanobisReduce>(reduce), o, nc, threads);
  });
}

// logits [N, C] -> out [N] / [N, 1]; log_templates [C, C] for kl only
void logit_scores(const py::array& logits, int score, double temperature, double gamma, int64_t top_m,
                  const py::object& log_templates, py::array& out, int threads) {
  GENCORE_CHECK(score >= 0 && score <= 4, "logit_scores: unknown score code ", score);
  const auto kind = static_cast<ood::LogitScore>(score);
  GENCORE_CHECK(kind != ood::LogitScore::kl || !log_templates.is_none(),
                "kl_matching: log_templates is required");
  dispatch_floating(logits, "logits", [&](auto tag) {
    using T = decltype(tag);
    const auto l = matrix_in<T>(logits, "logits");
    MatrixView<const T> t{};
    if (kind == ood::LogitScore::kl) t = matrix_in<T>(log_templates.cast<py::array>(), "log_templates");
    T* o = vector_out<T>(out, "out", l.rows);
    const ood::LogitParams params{temperature, gamma, top_m};
    py::gil_scoped_release release;
    ood::logit_scores<T>(l, kind, params, t, o, threads);
  });
}

// features [N, D], principal [D, R], center [D] / [1, D], logits [N, C] or None -> out [N] / [N, 1]
void residual_scores(const py::array& features, const py::array& principal, const py::array& center,
                     const py::object& logits, double alpha, py::array& out, int threads) {
  dispatch_floating(features, "features", [&](auto tag) {
    using T = decltype(tag);
    const auto x = matrix_in<T>(features, "features");
    const auto p = matrix_in<T>(principal, "principal");
    const T* u = vector_in<T>(center, "center", x.cols);
    MatrixView<const T> l{};
    if (!logits.is_none()) l = matrix_in<T>(logits.cast<py::array>(), "logits");
    T* o = vector_out<T>(out, "out", x.rows);
    py::gil_scoped_release release;
    ood::residual_scores<T>(x, p, u, l, alpha, o, threads);
  });
}

}  // namespace

void bind_ood(py::module_& m) {
  m.def("knn", &knn, py::arg("queries"), py::arg("bank"), py::arg("k"), py::arg("metric"), py::arg("values"),
        py::arg("indices"), py::arg("num_threads"),
        "Exact kNN; metric 0 = squared L2, 1 = inner product, 2 = cosine.");
  m.def("last_knn_path", &ood::last_knn_path,
        "Path of this thread's last knn call: 'blas', 'fused' or 'bf16-screen' ('none' before any).");
  m.def("knn_fused_max_queries", &ood::knn_fused_max_queries, py::arg("float64") = false,
        "The most queries for which knn takes the fused small-query path at the SIMD level in use\n"
        "(float32, or float64); 0 when it never does.");
  m.def("mahalanobis", &mahalanobis, py::arg("features"), py::arg("means"), py::arg("precision_factor"),
        py::arg("reduce"), py::arg("out"), py::arg("nearest"), py::arg("num_threads"),
        "Squared Mahalanobis distances ||(x - mu_c)^T L||^2; reduce 0 = every class [Q, C],\n"
        "1 = minimum over classes, written to out [Q] (or [Q, 1]); nearest [Q] (or [Q, 1]) gets the\n"
        "closest class (lowest index on ties).");
  m.def("logit_scores", &logit_scores, py::arg("logits"), py::arg("score"), py::arg("temperature"),
        py::arg("gamma"), py::arg("top_m"), py::arg("log_templates"), py::arg("out"), py::arg("num_threads"),
        "Logit OOD scores (higher = more in-distribution); score 0 = max logit, 1 = MSP, 2 = energy,\n"
        "3 = GEN, 4 = KL matching.");
  m.def("residual_scores", &residual_scores, py::arg("features"), py::arg("principal"), py::arg("center"),
        py::arg("logits"), py::arg("alpha"), py::arg("out"), py::arg("num_threads"),
        "-||(I - P P^T)(x - u)||, or with logits the ViM score logsumexp(l) - alpha * ||...||.");
}

}  // namespace gencore::bindings
