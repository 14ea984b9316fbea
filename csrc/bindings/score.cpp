// Bindings of the score family's CPU kernels: the data-set denoiser, the
// Gaussian mixture, the fused DSM loss (and its backward), the DMD gradient.
// Each binding checks shapes, views the numpy arrays (zero copy), releases the
// GIL and calls the kernel for the inputs' floating dtype.
#include <pybind11/stl.h>

#include <string>
#include <tuple>

#include "bindings/arrays.h"
#include "gencore/check.h"
#include "score/dataset_denoise.h"
#include "score/gmm.h"
#include "score/losses.h"

namespace gencore::bindings {

namespace {

template <typename T>
const T* optional_vector_in(const py::object& a, const char* name, py::ssize_t n) {
  return a.is_none() ? nullptr : vector_in<T>(a.cast<py::array>(), name, n);
}

// x [B, d], data [N, d], sigma [B], alpha [B], log_weights [N] or None
//   -> denoised [B, d] (None: log_z only), log_z [B]; cost: a score::CostMode
void dataset_denoise(const py::array& x, const py::array& data, const py::array& sigma, const py::array& alpha,
                     const py::object& log_weights, const py::object& denoised, py::array& log_z, int threads,
                     int cost) {
  GENCORE_CHECK(cost >= 0 && cost <= int(score::CostMode::euclidean_inverse),
                "dataset_denoise: cost must be 0 (squared), 1 (euclidean) or 2 (euclidean_inverse), got ", cost);
  dispatch_floating(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const auto xs = matrix_in<T>(x, "x");
    const auto ys = matrix_in<T>(data, "data");
    const T* s = vector_in<T>(sigma, "sigma", xs.rows);
    const T* a = vector_in<T>(alpha, "alpha", xs.rows);
    const T* lw = optional_vector_in<T>(log_weights, "log_weights", ys.rows);
    T* out = nullptr;
    if (!denoised.is_none()) {
      py::array denoised_array = denoised.cast<py::array>();
      out = output<T>(denoised_array, "denoised", xs.rows, xs.cols);
    }
    T* lz = vector_out<T>(log_z, "log_z", xs.rows);
    py::gil_scoped_release release;
    score::dataset_denoise<T>(xs, ys, s, a, lw, out, lz, threads, score::CostMode(cost));
  });
}

// -> (plan, query_block, data_chunks, tile_rows, threads); plan is "query-split" or "data-split"
std::tuple<std::string, int64_t, int64_t, int64_t, int> dataset_denoise_plan(int64_t b, int64_t n, int64_t d,
                                                                            int threads) {
  const score::DenoisePlan p = score::dataset_denoise_plan(b, n, d, threads);
  return {p.data_split() ? "data-split" : "query-split", p.query_block, p.data_chunks, p.tile_rows, p.threads};
}

// x [B, d], means [K, d], log_weights [K], eigvals [K, d], eigvecs [K * d, d] or None,
// sigma [B], alpha [B] -> log_prob [B], score [B, d]
void gmm_score(const py::array& x, const py::array& means, const py::array& log_weights, const py::array& eigvals,
               const py::object& eigvecs, const py::array& sigma, const py::array& alpha, py::array& log_prob,
               py::array& score_out, int threads) {
  dispatch_floating(x, "x", [&](auto tag) {
    using T = decltype(tag);
    const auto xs = matrix_in<T>(x, "x");
    const auto mu = matrix_in<T>(means, "means");
    const T* lw = vector_in<T>(log_weights, "log_weights", mu.rows);
    const auto lam = matrix_in<T>(eigvals, "eigvals");
    MatrixView<const T> vecs{};
    if (!eigvecs.is_none()) vecs = matrix_in<T>(eigvecs.cast<py::array>(), "eigvecs");
    const T* s = vector_in<T>(sigma, "sigma", xs.rows);
    const T* a = vector_in<T>(alpha, "alpha", xs.rows);
    T* lp = vector_out<T>(log_prob, "log_prob", xs.rows);
    T* sc = output<T>(score_out, "score", xs.rows, xs.cols);
    py::gil_scoped_release release;
    score::gmm_score<T>(xs, mu, lw, lam, vecs, s, a, lp, sc, threads);
  });
}

// The inputs of both DSM kernels: raw, x, target [B, M], c_skip, c_out, weight [B].
template <typename T>
struct DsmInputs {
  MatrixView<const T> raw, x, target;
  const T *c_skip, *c_out, *weight;
};

template <typename T>
DsmInputs<T> dsm_inputs(const py::array& raw, const py::array& x, const py::array& target, const py::array& c_skip,
                        const py::array& c_out, const py::array& weight) {
  DsmInputs<T> in{matrix_in<T>(raw, "raw"), matrix_in<T>(x, "x"), matrix_in<T>(target, "target"), nullptr, nullptr,
                  nullptr};
  in.c_skip = vector_in<T>(c_skip, "c_skip", in.raw.rows);
  in.c_out = vector_in<T>(c_out, "c_out", in.raw.rows);
  in.weight = vector_in<T>(weight, "weight", in.raw.rows);
  return in;
}

// ... -> loss [B]
void dsm_loss(const py::array& raw, const py::array& x, const py::array& target, const py::array& c_skip,
              const py::array& c_out, const py::array& weight, py::array& loss, int threads) {
  dispatch_floating(raw, "raw", [&](auto tag) {
    using T = decltype(tag);
    const DsmInputs<T> in = dsm_inputs<T>(raw, x, target, c_skip, c_out, weight);
    T* out = vector_out<T>(loss, "loss", in.raw.rows);
    py::gil_scoped_release release;
    score::dsm_loss<T>(in.raw, in.x, in.target, in.c_skip, in.c_out, in.weight, out, threads);
  });
}

// ..., grad_scale -> loss [B], grad_raw [B, M] in one pass
void dsm_loss_and_grad(const py::array& raw, const py::array& x, const py::array& target, const py::array& c_skip,
                       const py::array& c_out, const py::array& weight, double grad_scale, py::array& loss,
                       py::array& grad_raw, int threads) {
  dispatch_floating(raw, "raw", [&](auto tag) {
    using T = decltype(tag);
    const DsmInputs<T> in = dsm_inputs<T>(raw, x, target, c_skip, c_out, weight);
    T* l = vector_out<T>(loss, "loss", in.raw.rows);
    T* g = output<T>(grad_raw, "grad_raw", in.raw.rows, in.raw.cols);
    py::gil_scoped_release release;
    score::dsm_loss_and_grad<T>(in.raw, in.x, in.target, in.c_skip, in.c_out, in.weight, T(grad_scale), l, g,
                                threads);
  });
}

// ..., grad_loss [B] -> grad_raw [B, M]
void dsm_loss_backward(const py::array& raw, const py::array& x, const py::array& target, const py::array& c_skip,
                       const py::array& c_out, const py::array& weight, const py::array& grad_loss,
                       py::array& grad_raw, int threads) {
  dispatch_floating(raw, "raw", [&](auto tag) {
    using T = decltype(tag);
    const DsmInputs<T> in = dsm_inputs<T>(raw, x, target, c_skip, c_out, weight);
    const T* g = vector_in<T>(grad_loss, "grad_loss", in.raw.rows);
    T* out = output<T>(grad_raw, "grad_raw", in.raw.rows, in.raw.cols);
    py::gil_scoped_release release;
    score::dsm_loss_backward<T>(in.raw, in.x, in.target, in.c_skip, in.c_out, in.weight, g, out, threads);
  });
}

// x0, denoised_real, denoised_fake [B, M] -> out [B, M]
void dmd_gradient(const py::array& x0, const py::array& real, const py::array& fake, py::array& out, int threads) {
  dispatch_floating(x0, "x0", [&](auto tag) {
    using T = decltype(tag);
    const auto x = matrix_in<T>(x0, "x0");
    const auto r = matrix_in<T>(real, "denoised_real");
    const auto f = matrix_in<T>(fake, "denoised_fake");
    T* o = output<T>(out, "out", x.rows, x.cols);
    py::gil_scoped_release release;
    score::dmd_gradient<T>(x, r, f, o, threads);
  });
}

}  // namespace

void bind_score(py::module_& m) {
  m.def("dataset_denoise", &dataset_denoise, py::arg("x"), py::arg("data"), py::arg("sigma"), py::arg("alpha"),
        py::arg("log_weights"), py::arg("denoised"), py::arg("log_z"), py::arg("num_threads"), py::arg("cost") = 0,
        "Exact denoiser of a data set: denoised [B, d] = softmax_i(l_bi) . data, log_z [B] = logsumexp_i l_bi,\n"
        "l_bi = log w_i - ||x_b - alpha_b y_i||^2 / (2 sigma_b^2) (log_weights None: all w_i = 1; denoised None:\n"
        "log_z only, without the second GEMM). cost 1: l_bi = log w_i - r_bi / sigma_b with r_bi =\n"
        "||x_b - alpha_b y_i||; cost 2: that minus log(r_bi / sigma_b), -inf where r_bi = 0 (score::CostMode).");
  m.def("dataset_denoise_plan", &dataset_denoise_plan, py::arg("b"), py::arg("n"), py::arg("d"),
        py::arg("num_threads"),
        "How dataset_denoise splits a [b, d] x [n, d] call: (plan 'query-split' | 'data-split', query_block,\n"
        "data_chunks, tile_rows, threads).");
  m.def("gmm_score", &gmm_score, py::arg("x"), py::arg("means"), py::arg("log_weights"), py::arg("eigvals"),
        py::arg("eigvecs"), py::arg("sigma"), py::arg("alpha"), py::arg("log_prob"), py::arg("score"),
        py::arg("num_threads"),
        "log p(x) [B] and score [B, d] of a Gaussian mixture smoothed at (sigma, alpha); eigvecs [K * d, d]\n"
        "(rows k d .. k d + d - 1: U_k, columns are eigenvectors) or None for axis-aligned components.");
  m.def("dsm_loss", &dsm_loss, py::arg("raw"), py::arg("x"), py::arg("target"), py::arg("c_skip"), py::arg("c_out"),
        py::arg("weight"), py::arg("loss"), py::arg("num_threads"),
        "loss [B] = weight * mean_j (c_skip x + c_out raw - target)^2 (0 for M = 0).");
  m.def("dsm_loss_and_grad", &dsm_loss_and_grad, py::arg("raw"), py::arg("x"), py::arg("target"), py::arg("c_skip"),
        py::arg("c_out"), py::arg("weight"), py::arg("grad_scale"), py::arg("loss"), py::arg("grad_raw"),
        py::arg("num_threads"),
        "dsm_loss and, in the same pass, grad_raw [B, M] = d (grad_scale sum_b loss_b) / d raw\n"
        "(dsm_loss_backward's answer for grad_loss = grad_scale everywhere).");
  m.def("dsm_loss_backward", &dsm_loss_backward, py::arg("raw"), py::arg("x"), py::arg("target"), py::arg("c_skip"),
        py::arg("c_out"), py::arg("weight"), py::arg("grad_loss"), py::arg("grad_raw"), py::arg("num_threads"),
        "grad_raw [B, M] = 2 grad_loss weight c_out (c_skip x + c_out raw - target) / M.");
  m.def("dmd_gradient", &dmd_gradient, py::arg("x0"), py::arg("denoised_real"), py::arg("denoised_fake"),
        py::arg("out"), py::arg("num_threads"),
        "out [B, M] = (fake - real) / mean_j |x0 - real|, 0 for a sample whose normaliser is 0.");
}

}  // namespace gencore::bindings
