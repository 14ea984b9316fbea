// Binding of the Mahalanobis CPU kernel (its own file so the ood family's
// bindings can grow in parallel without touching each other).
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ood/mahalanobis.h"

namespace gencore::bindings {

namespace {

template <typename T>
void mahalanobis_typed(const py::array& features, const py::array& means, const py::array& factor,
                       int reduce, py::array& out, py::array& nearest, int threads) {
  auto x = matrix_in<T>(features, "features");
  auto m = matrix_in<T>(means, "means");
  auto f = matrix_in<T>(factor, "precision_factor");
  GENCORE_CHECK(reduce == 0 || reduce == 1, "mahalanobis: unknown reduce code ", reduce);
  T* o = output<T>(out, "out", x.rows, reduce == 0 ? m.rows : 1);
  int64_t* nc = output<int64_t>(nearest, "nearest", x.rows, 1);
  py::gil_scoped_release release;
  ood::mahalanobis<T>(x, m, f, static_cast<ood::MahalanobisReduce>(reduce), o, nc, threads);
}

}  // namespace

void bind_ood_mahalanobis(py::module_& m) {
  m.def(
      "mahalanobis",
      [](const py::array& features, const py::array& means, const py::array& factor, int reduce,
         py::array& out, py::array& nearest, int threads) {
        // features [Q, D], means [C, D], factor [D, R]
        //   -> out [Q, C] (reduce 0) or [Q, 1] (reduce 1), nearest [Q, 1] int64
        if (py::dtype::of<double>().is(features.dtype()))
          mahalanobis_typed<double>(features, means, factor, reduce, out, nearest, threads);
        else
          mahalanobis_typed<float>(features, means, factor, reduce, out, nearest, threads);
      },
      py::arg("features"), py::arg("means"), py::arg("precision_factor"), py::arg("reduce"),
      py::arg("out"), py::arg("nearest"), py::arg("num_threads"),
      "Squared Mahalanobis distances ||(x - mu_c)^T L||^2; reduce 0 = every class [Q, C],\n"
      "1 = minimum over classes, written to out [Q, 1]; nearest [Q, 1] gets the closest class\n"
      "(lowest index on ties).");
}

}  // namespace gencore::bindings
