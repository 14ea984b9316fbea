// Bindings of the ode family's CPU kernels: the fused solver step and the
// error norm of adaptive steps. Each binding views the numpy arrays (zero
// copy; optional inputs may be None), checks shapes and dtypes, releases the
// GIL and calls the kernel for the inputs' floating dtype. Called once per
// solver step, often on small tensors: arrays [B, ...] arrive with their
// sample shape (rows_in: no reshape on the Python side), optional ones as
// plain objects.
#include "bindings/arrays.h"
#include "gencore/check.h"
#include "ode/error_norm.h"
#include "ode/step.h"

namespace gencore::bindings {

namespace {

// An optional input [rows, ...] of rows x cols elements of dtype T: an empty view for None.
template <typename T>
MatrixView<const T> optional_rows(const py::object& a, const char* name, int64_t rows, int64_t cols) {
  if (a.is_none()) return {};
  GENCORE_CHECK(py::isinstance<py::array>(a), name, ": expected a numpy array or None");
  const auto v = rows_in<T>(py::reinterpret_borrow<py::array>(a), name);
  GENCORE_CHECK(v.rows == rows && v.cols == cols, name, ": expected shape [", rows, ", ", cols, "], got [", v.rows,
                ", ", v.cols, "]");
  return v;
}

// x, d_cond, d_uncond?, h1?, h2?, h3?, noise? [B, ...] (M elements a sample);
// coeffs [B, 6], guidance [B]? (float64) -> x_next [B, ...], d [B, ...]
void ode_step(const py::array& x, const py::object& d_cond, const py::object& d_uncond, const py::object& h1,
              const py::object& h2, const py::object& h3, const py::object& noise, const py::array& coeffs,
              const py::object& guidance, double rescale, double threshold, double threshold_max, py::array& x_next,
              py::array& d, int threads) {
  dispatch_floating(x, "x", [&](auto tag) {
    using T = decltype(tag);
    ode::StepInputs<T> in;
    in.x = rows_in<T>(x, "x");
    const int64_t B = in.x.rows, M = in.x.cols;
    GENCORE_CHECK(!d_cond.is_none(), "d_cond: required");
    in.d_cond = optional_rows<T>(d_cond, "d_cond", B, M);
    in.d_uncond = optional_rows<T>(d_uncond, "d_uncond", B, M);
    in.h1 = optional_rows<T>(h1, "h1", B, M);
    in.h2 = optional_rows<T>(h2, "h2", B, M);
    in.h3 = optional_rows<T>(h3, "h3", B, M);
    in.noise = optional_rows<T>(noise, "noise", B, M);
    in.coeffs = optional_rows<double>(coeffs, "coeffs", B, ode::kStepCoeffs);
    if (!guidance.is_none()) {
      GENCORE_CHECK(py::isinstance<py::array>(guidance), "guidance: expected a numpy array or None");
      in.guidance = vector_in<double>(py::reinterpret_borrow<py::array>(guidance), "guidance", B);
    }
    const ode::StepParams params{rescale, threshold, threshold_max};
    T* xn = rows_out<T>(x_next, "x_next", B, M);
    T* dd = rows_out<T>(d, "d", B, M);
    py::gil_scoped_release release;
    ode::step<T>(in, params, xn, dd, threads);
  });
}

// err, y, y_new [B, ...] -> out [B] (or [B, 1])
void ode_error_norm(const py::array& err, const py::array& y, const py::array& y_new, double atol, double rtol,
                    py::array& out, int threads) {
  dispatch_floating(err, "err", [&](auto tag) {
    using T = decltype(tag);
    const auto e = rows_in<T>(err, "err");
    const auto a = optional_rows<T>(y, "y", e.rows, e.cols);
    const auto c = optional_rows<T>(y_new, "y_new", e.rows, e.cols);
    T* o = vector_out<T>(out, "out", e.rows);
    py::gil_scoped_release release;
    ode::error_norm<T>(e, a, c, atol, rtol, o, threads);
  });
}

}  // namespace

void bind_ode(py::module_& m) {
  m.def("ode_step", &ode_step, py::arg("x"), py::arg("d_cond"), py::arg("d_uncond"), py::arg("h1"), py::arg("h2"),
        py::arg("h3"), py::arg("noise"), py::arg("coeffs"), py::arg("guidance"), py::arg("rescale"),
        py::arg("threshold"), py::arg("threshold_max"), py::arg("x_next"), py::arg("d"), py::arg("num_threads"),
        "The fused solver step (gencore::ode_step): x, d_cond [B, ...] and the optional (None)\n"
        "d_uncond, h1, h2, h3, noise of that shape and one floating dtype (any row stride, the\n"
        "rest C-contiguous), coeffs [B, 6] and guidance [B] (or None) float64 -> x_next and d,\n"
        "caller-allocated C-contiguous [B, ...] of that dtype (M elements a sample).\n"
        "d = d_cond, or d_uncond + w (d_cond - d_uncond); rescale phi > 0: d *= phi std(d_cond) /\n"
        "std(d) + 1 - phi; threshold q > 0: t = min(max(1, quantile_q |d|), threshold_max),\n"
        "d = clamp(d, -t, t) / t; x_next = c_x x + c_d d + c_1 h1 + c_2 h2 + c_3 h3 + c_z noise.\n"
        "ValueError naming the input and row that holds NaN or inf.");
  m.def("ode_error_norm", &ode_error_norm, py::arg("err"), py::arg("y"), py::arg("y_new"), py::arg("atol"),
        py::arg("rtol"), py::arg("out"), py::arg("num_threads"),
        "Per-sample mixed RMS error norm: err, y, y_new [B, ...] -> out [B] (or [B, 1]),\n"
        "out_b = sqrt(mean_j (err_bj / (atol + rtol max(|y_bj|, |y_new_bj|)))^2); 0 for M = 0.\n"
        "ValueError naming the input and row that holds NaN or inf.");
}

}  // namespace gencore::bindings
