// Bindings of the logit-score and residual / ViM CPU kernels (ood family).
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ood/logits.h"
#include "ood/vim.h"

namespace gencore::bindings {

namespace {

bool is_float64(const py::array& a) { return py::dtype::of<double>().is(a.dtype()); }

template <typename T>
void logit_scores_typed(const py::array& logits, int score, double temperature, double gamma, int64_t top_m,
                        const py::object& log_templates, py::array& out, int threads) {
  auto l = matrix_in<T>(logits, "logits");
  GENCORE_CHECK(score >= 0 && score <= 4, "logit_scores: unknown score code ", score);
  const auto kind = static_cast<ood::LogitScore>(score);
  MatrixView<const T> t{};
  if (kind == ood::LogitScore::kl) {
    GENCORE_CHECK(!log_templates.is_none(), "kl_matching: log_templates is required");
    t = matrix_in<T>(log_templates.cast<py::array>(), "log_templates");
  }
  T* o = output<T>(out, "out", l.rows, 1);
  ood::LogitParams params{temperature, gamma, top_m};
  py::gil_scoped_release release;
  ood::logit_scores<T>(l, kind, params, t, o, threads);
}

template <typename T>
void residual_typed(const py::array& features, const py::array& principal, const py::array& center,
                    const py::object& logits, double alpha, py::array& out, int threads) {
  auto x = matrix_in<T>(features, "features");
  auto p = matrix_in<T>(principal, "principal");
  auto u = matrix_in<T>(center, "center");
  GENCORE_CHECK(u.rows == 1 && u.cols == x.cols, "center: expected shape [1, ", x.cols, "]");
  MatrixView<const T> l{};
  if (!logits.is_none()) l = matrix_in<T>(logits.cast<py::array>(), "logits");
  T* o = output<T>(out, "out", x.rows, 1);
  py::gil_scoped_release release;
  ood::residual_scores<T>(x, p, u.data, l, alpha, o, threads);
}

}  // namespace

void bind_ood_logits(py::module_& m) {
  m.def(
      "logit_scores",
      [](const py::array& logits, int score, double temperature, double gamma, int64_t top_m,
         const py::object& log_templates, py::array& out, int threads) {
        // logits [N, C] -> out [N, 1]; log_templates [C, C] for kl only
        if (is_float64(logits))
          logit_scores_typed<double>(logits, score, temperature, gamma, top_m, log_templates, out, threads);
        else
          logit_scores_typed<float>(logits, score, temperature, gamma, top_m, log_templates, out, threads);
      },
      py::arg("logits"), py::arg("score"), py::arg("temperature"), py::arg("gamma"), py::arg("top_m"),
      py::arg("log_templates"), py::arg("out"), py::arg("num_threads"),
      "Logit OOD scores (higher = more in-distribution); score 0 = max logit, 1 = MSP, 2 = energy,\n"
      "3 = GEN, 4 = KL matching.");
  m.def(
      "residual_scores",
      [](const py::array& features, const py::array& principal, const py::array& center,
         const py::object& logits, double alpha, py::array& out, int threads) {
        // features [N, D], principal [D, R], center [1, D], logits [N, C] or None -> out [N, 1]
        if (is_float64(features))
          residual_typed<double>(features, principal, center, logits, alpha, out, threads);
        else
          residual_typed<float>(features, principal, center, logits, alpha, out, threads);
      },
      py::arg("features"), py::arg("principal"), py::arg("center"), py::arg("logits"), py::arg("alpha"),
      py::arg("out"), py::arg("num_threads"),
      "-||(I - P P^T)(x - u)||, or with logits the ViM score logsumexp(l) - alpha * ||...||.");
}

}  // namespace gencore::bindings
