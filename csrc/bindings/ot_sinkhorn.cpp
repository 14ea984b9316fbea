// Bindings of the ot family's dense Sinkhorn kernel (the point-cloud solver's
// softmin is score's gencore._softmin, bound in score.cpp).
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ot/sinkhorn_dense.h"

namespace gencore::bindings {

namespace {

// M [B, n, m] (each problem C-contiguous), a [B, n], b [B, m] of M's dtype
//   -> f [B, n], g [B, m] (M's dtype), n_iter [B] int64, error [B] float64, status [B] int64
void sinkhorn_dense(const py::array& cost, const py::array& a, const py::array& b, double reg, double damping,
                    double tol, int64_t max_iter, int64_t plateau, py::array& f, py::array& g, py::array& n_iter,
                    py::array& error, py::array& status, int threads) {
  GENCORE_CHECK(cost.ndim() == 3, "M: expected a 3-D array [B, n, m]");
  dispatch_floating(cost, "M", [&](auto tag) {
    using T = decltype(tag);
    const int64_t batch = cost.shape(0), n = cost.shape(1), m = cost.shape(2);
    const auto c = rows_in<T>(cost, "M");
    const auto av = rows_in<T>(a, "a");
    const auto bv = rows_in<T>(b, "b");
    GENCORE_CHECK(av.rows == batch && av.cols == n && av.row_stride == n, "a: expected a contiguous [", batch, ", ",
                  n, "] array");
    GENCORE_CHECK(bv.rows == batch && bv.cols == m && bv.row_stride == m, "b: expected a contiguous [", batch, ", ",
                  m, "] array");
    ot::DenseSinkhornProblems<T> p;
    p.batch = batch, p.n = n, p.m = m, p.cost = c.data, p.cost_row_stride = m, p.cost_batch_stride = c.row_stride;
    p.a = av.data, p.b = bv.data;
    ot::DenseSinkhornOutputs<T> o;
    o.f = rows_out<T>(f, "f", batch, n);
    o.g = rows_out<T>(g, "g", batch, m);
    o.n_iter = rows_out<int64_t>(n_iter, "n_iter", batch, 1);
    o.error = rows_out<double>(error, "error", batch, 1);
    o.status = rows_out<int64_t>(status, "status", batch, 1);
    ot::DenseSinkhornParams params;
    params.reg = reg, params.damping = damping, params.tol = tol, params.max_iter = max_iter, params.plateau = plateau;
    py::gil_scoped_release release;
    ot::sinkhorn_dense<T>(p, params, o, threads);
  });
}

}  // namespace

void bind_ot_sinkhorn(py::module_& m) {
  m.def("sinkhorn_dense", &sinkhorn_dense, py::arg("M"), py::arg("a"), py::arg("b"), py::arg("reg"),
        py::arg("damping"), py::arg("tol"), py::arg("max_iter"), py::arg("plateau"), py::arg("f"), py::arg("g"),
        py::arg("n_iter"), py::arg("error"), py::arg("status"), py::arg("num_threads"),
        "Log-domain Sinkhorn on B dense cost matrices M [B, n, m] with weights a [B, n], b [B, m] (float32 or\n"
        "float64), the whole loop native (csrc/ot/sinkhorn_dense.h): writes the potentials f [B, n], g [B, m],\n"
        "and per problem n_iter, the last marginal error and the status (0 converged, 1 max_iter, 2 plateau).");
}

}  // namespace gencore::bindings
