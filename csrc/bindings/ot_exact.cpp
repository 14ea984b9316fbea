// Bindings of the ot family's exact kernels: EMD (network simplex, batched)
// and the 1-D Wasserstein distances of sliced Wasserstein.
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ot/emd.h"
#include "ot/sliced.h"

namespace gencore::bindings {

namespace {

// a [B, n], b [B, m] float64; cost [B, n, m] (C-contiguous per problem) or [n, m] with B = 1
//   -> cost [B], index [B, 2, n+m-1], mass [B, n+m-1], nnz [B], u [B, n], v [B, m], n_iter [B], status [B]
void emd(const py::array& a, const py::array& b, const py::array& cost, int64_t max_iter, py::array& total,
         py::array& index, py::array& mass, py::array& nnz, py::array& u, py::array& v, py::array& n_iter,
         py::array& status, int threads) {
  const auto av = rows_in<double>(a, "a");
  const auto bv = rows_in<double>(b, "b");
  GENCORE_CHECK(av.row_stride == av.cols && bv.row_stride == bv.cols, "emd: a and b must be contiguous");
  const int64_t batch = av.rows, n = av.cols, m = bv.cols;
  GENCORE_CHECK(bv.rows == batch, "b: expected ", batch, " rows, got ", bv.rows);
  GENCORE_CHECK(cost.ndim() == 2 || cost.ndim() == 3, "M: expected a 2-D or 3-D array");
  const int64_t k_max = n + m - 1;
  dispatch_floating(cost, "M", [&](auto tag) {
    using T = decltype(tag);
    ot::EmdProblems<T> p;
    p.batch = batch, p.n = n, p.m = m, p.a = av.data, p.b = bv.data;
    if (cost.ndim() == 2) {
      const auto c = matrix_in<T>(cost, "M");
      GENCORE_CHECK(batch == 1 && c.rows == n && c.cols == m, "M: expected shape [", n, ", ", m, "]");
      p.cost = c.data, p.cost_row_stride = c.row_stride, p.cost_batch_stride = n * c.row_stride;
    } else {
      const auto c = rows_in<T>(cost, "M");
      GENCORE_CHECK(cost.shape(0) == batch && cost.shape(1) == n && cost.shape(2) == m, "M: expected shape [",
                    batch, ", ", n, ", ", m, "]");
      p.cost = c.data, p.cost_row_stride = m, p.cost_batch_stride = c.row_stride;
    }
    ot::EmdOutputs o;
    o.cost = rows_out<double>(total, "cost", batch, 1);
    o.index = rows_out<int64_t>(index, "index", batch, 2 * k_max);
    o.mass = rows_out<double>(mass, "mass", batch, k_max);
    o.nnz = rows_out<int64_t>(nnz, "nnz", batch, 1);
    o.u = rows_out<double>(u, "u", batch, n);
    o.v = rows_out<double>(v, "v", batch, m);
    o.n_iter = rows_out<int64_t>(n_iter, "n_iter", batch, 1);
    o.status = rows_out<int64_t>(status, "status", batch, 1);
    py::gil_scoped_release release;
    ot::emd<T>(p, max_iter, o, threads);
  });
}

// x [P, n], y [P, m] projected points (any order); wx [n], wy [m] float64 weights summing to 1
//   -> out [P] W_p^p; grad_x [P, n], grad_y [P, m] (when not None) d W_p^p / d x, y
void sliced_1d(const py::array& x, const py::array& y, const py::array& wx, const py::array& wy, double p,
               py::array& out, const py::object& grad_x, const py::object& grad_y, int threads) {
  dispatch_floating(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const auto xv = matrix_in<T>(x, "x");
    const auto yv = matrix_in<T>(y, "y");
    GENCORE_CHECK(yv.rows == xv.rows, "y: expected ", xv.rows, " rows, got ", yv.rows);
    GENCORE_CHECK(xv.cols < (int64_t(1) << 31) && yv.cols < (int64_t(1) << 31), "sliced: at most 2^31 - 1 points");
    ot::Sliced1dInputs<T> in{xv, yv, vector_in<double>(wx, "wx", xv.cols), vector_in<double>(wy, "wy", yv.cols), p};
    GENCORE_CHECK(p > 0, "p: must be > 0");
    T* o = vector_out<T>(out, "out", xv.rows);
    T* gx = nullptr;
    T* gy = nullptr;
    py::array gxa, gya;
    if (!grad_x.is_none()) gxa = grad_x.cast<py::array>(), gx = output<T>(gxa, "grad_x", xv.rows, xv.cols);
    if (!grad_y.is_none()) gya = grad_y.cast<py::array>(), gy = output<T>(gya, "grad_y", yv.rows, yv.cols);
    py::gil_scoped_release release;
    ot::sliced_1d<T>(in, o, gx, gy, threads);
  });
}

}  // namespace

void bind_ot_exact(py::module_& m) {
  m.def("emd", &emd, py::arg("a"), py::arg("b"), py::arg("M"), py::arg("max_iter"), py::arg("cost"),
        py::arg("index"), py::arg("mass"), py::arg("nnz"), py::arg("u"), py::arg("v"), py::arg("n_iter"),
        py::arg("status"), py::arg("num_threads"),
        "Exact OT by the network simplex, B problems in parallel; status 0 = optimal,\n"
        "1 = pivot limit reached (feasible plan), 2 = infeasible (mass left on artificial arcs).");
  m.def("sliced_1d", &sliced_1d, py::arg("x"), py::arg("y"), py::arg("wx"), py::arg("wy"), py::arg("p"),
        py::arg("out"), py::arg("grad_x"), py::arg("grad_y"), py::arg("num_threads"),
        "W_p^p between the 1-D weighted empirical measures of each row of projected points (rows sorted\n"
        "here, by a stable radix sort), and optionally its gradient with respect to the points.");
}

}  // namespace gencore::bindings
