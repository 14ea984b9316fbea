// Bindings of the score family's CUDA kernels: the data-set denoiser's tile
// epilogue, the Gaussian-mixture score (iso/diagonal, and the full-covariance
// tile), the DSM loss and its backward, the DMD gradient. Pointers are Python
// ints (torch data_ptr()) to contiguous device memory, `stream` is
// torch.cuda.current_stream(dev).cuda_stream, `device` the device index. The
// GIL is released around every launch; nothing here synchronises the host or
// allocates.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "common/handles.cuh"
#include "score/dataset_denoise.cuh"
#include "score/gmm.cuh"
#include "score/losses.cuh"

namespace py = pybind11;

namespace gencore::gpu::bindings {

namespace {

void bind_dataset(py::module_& m) {
  m.def(
      "dataset_denoise_tile",
      [](std::uintptr_t scores, int64_t B, int64_t T, std::uintptr_t tile_sq, std::uintptr_t log_w,
         std::uintptr_t sigma, std::uintptr_t alpha, std::uintptr_t running_max, std::uintptr_t total,
         std::uintptr_t rescale, std::uintptr_t stream, int device, int cost, std::uintptr_t x_sq) {
        // scores [B, T] in place, tile_sq [T], log_w [T]?, sigma, alpha [B], x_sq [B]? -> running_max, total,
        // rescale [B]
        py::gil_scoped_release release;
        gpu::dataset_denoise_tile(device_ptr<float>(scores), B, T, device_ptr<const float>(tile_sq),
                                  device_ptr<const float>(log_w), device_ptr<const float>(sigma),
                                  device_ptr<const float>(alpha), device_ptr<float>(running_max),
                                  device_ptr<float>(total), device_ptr<float>(rescale), as_stream(stream), device,
                                  cost, device_ptr<const float>(x_sq));
      },
      py::arg("scores_ptr"), py::arg("B"), py::arg("T"), py::arg("tile_sq_ptr"), py::arg("log_w_ptr"),
      py::arg("sigma_ptr"), py::arg("alpha_ptr"), py::arg("running_max_ptr"), py::arg("total_ptr"),
      py::arg("rescale_ptr"), py::arg("stream"), py::arg("device"), py::arg("cost") = 0, py::arg("x_sq_ptr") = 0,
      "One step of the data-set denoiser's online log-sum-exp, fp32, in place: scores [B, T]\n"
      "(x'.y'^T of a data tile), tile_sq [T] = ||y'||^2, log_w [T] (pointer 0: weights 1), sigma,\n"
      "alpha [B]. l = log_w + (alpha scores - alpha^2 tile_sq / 2) / sigma^2; m = max(running_max,\n"
      "max_t l); m' = m if finite else 0; scores := exp(l - m'); rescale := exp(running_max - m');\n"
      "total := total rescale + sum_t scores; running_max := m. A row of -inf logits keeps its\n"
      "max and total. T >= 1. cost 1 (euclidean): l = log_w - u, u^2 = max(x_sq - 2 alpha scores +\n"
      "alpha^2 tile_sq, 0) / sigma^2 with x_sq [B] = ||x'||^2; cost 2: l = log_w - u - log u, -inf at u = 0.\n"
      "No workspace. Queued on `stream`; never synchronises.");
}

void bind_gmm(py::module_& m) {
  m.def(
      "gmm_score",
      [](std::uintptr_t x, int64_t B, int64_t d, std::uintptr_t means, int64_t K, std::uintptr_t log_weights,
         std::uintptr_t eigvals, std::uintptr_t sigma, std::uintptr_t alpha, std::uintptr_t log_prob,
         std::uintptr_t score, std::uintptr_t stream, int device) {
        // x [B, d], means [K, d], log_weights [K], eigvals [K, d], sigma, alpha [B] -> log_prob [B], score [B, d]
        py::gil_scoped_release release;
        gpu::gmm_score(device_ptr<const float>(x), B, d, device_ptr<const float>(means), K,
                       device_ptr<const float>(log_weights), device_ptr<const float>(eigvals),
                       device_ptr<const float>(sigma), device_ptr<const float>(alpha), device_ptr<float>(log_prob),
                       device_ptr<float>(score), as_stream(stream), device);
      },
      py::arg("x_ptr"), py::arg("B"), py::arg("d"), py::arg("means_ptr"), py::arg("K"), py::arg("log_weights_ptr"),
      py::arg("eigvals_ptr"), py::arg("sigma_ptr"), py::arg("alpha_ptr"), py::arg("log_prob_out_ptr"),
      py::arg("score_out_ptr"), py::arg("stream"), py::arg("device"),
      "Score and log-density of a mixture with iso/diagonal covariances smoothed at (sigma, alpha),\n"
      "fp32: x [B, d], means [K, d], log_weights [K], eigvals [K, d] (the variances), sigma, alpha\n"
      "[B] -> log_prob [B], score [B, d]. c = alpha^2 eigvals_k + sigma^2, z = x - alpha mu_k,\n"
      "log N_k = log_w_k - (sum z^2 / c + sum log c + d log 2 pi) / 2, log_prob = logsumexp_k log N_k,\n"
      "score = -sum_k softmax_k(log N) z / c. K >= 1. No workspace. Queued on `stream`; never\n"
      "synchronises.");
  m.def("gmm_score_tile_workspace_bytes", &gmm_score_tile_workspace_bytes, py::arg("B"), py::arg("C"),
        "Bytes of the workspace gmm_score_tile() needs: 4 * B * C.");
  m.def(
      "gmm_score_tile",
      [](std::uintptr_t zx, int64_t B, int64_t C, int64_t d, std::uintptr_t rotated_means,
         std::uintptr_t log_weights, std::uintptr_t eigvals, std::uintptr_t sigma, std::uintptr_t alpha,
         std::uintptr_t running_max, std::uintptr_t total, std::uintptr_t rescale, std::uintptr_t workspace,
         int64_t workspace_bytes, std::uintptr_t stream, int device) {
        // zx [B, C, d] in place, rotated_means [C, d], log_weights [C], eigvals [C, d], sigma, alpha [B]
        //   -> running_max, total, rescale [B]
        py::gil_scoped_release release;
        gpu::gmm_score_tile(device_ptr<float>(zx), B, C, d, device_ptr<const float>(rotated_means),
                            device_ptr<const float>(log_weights), device_ptr<const float>(eigvals),
                            device_ptr<const float>(sigma), device_ptr<const float>(alpha),
                            device_ptr<float>(running_max), device_ptr<float>(total), device_ptr<float>(rescale),
                            device_ptr<void>(workspace), workspace_bytes, as_stream(stream), device);
      },
      py::arg("zx_ptr"), py::arg("B"), py::arg("C"), py::arg("d"), py::arg("rotated_means_ptr"),
      py::arg("log_weights_ptr"), py::arg("eigvals_ptr"), py::arg("sigma_ptr"), py::arg("alpha_ptr"),
      py::arg("running_max_ptr"), py::arg("total_ptr"), py::arg("rescale_ptr"), py::arg("workspace_ptr"),
      py::arg("workspace_bytes"), py::arg("stream"), py::arg("device"),
      "One tile of C full-covariance components of a mixture, fp32, rotations by the caller:\n"
      "zx [B, C, d] holds x U_k on entry and -p_k (z / c)_k on exit, z = zx - alpha rotated_means_k\n"
      "(rotated_means_k = U_k^T mu_k), c = alpha^2 eigvals_k + sigma^2, p_k = exp(log N_k - m'),\n"
      "m = max(running_max, max_k log N_k), m' = m if finite else 0; rescale := exp(running_max - m'),\n"
      "total := total rescale + sum_k p_k, running_max := m. workspace: >=\n"
      "gmm_score_tile_workspace_bytes(B, C) bytes, 16-byte aligned. Queued on `stream`; never\n"
      "synchronises.");
}

void bind_losses(py::module_& m) {
  m.def("dsm_loss_workspace_bytes", &dsm_loss_workspace_bytes, py::arg("B"), py::arg("M"),
        "Bytes of the workspace dsm_loss() needs: S = max(1, ceil(M / 4096)); 8 * B * S if S > 1, else 0.");
  m.def(
      "dsm_loss",
      [](std::uintptr_t raw, std::uintptr_t x, std::uintptr_t target, int64_t B, int64_t M, std::uintptr_t c_skip,
         std::uintptr_t c_out, std::uintptr_t weight, std::uintptr_t loss, std::uintptr_t workspace,
         int64_t workspace_bytes, std::uintptr_t stream, int device) {
        // raw, x, target [B, M], c_skip, c_out, weight [B] -> loss [B]
        py::gil_scoped_release release;
        gpu::dsm_loss(device_ptr<const float>(raw), device_ptr<const float>(x), device_ptr<const float>(target), B,
                      M, device_ptr<const float>(c_skip), device_ptr<const float>(c_out),
                      device_ptr<const float>(weight), device_ptr<float>(loss), device_ptr<void>(workspace),
                      workspace_bytes, as_stream(stream), device);
      },
      py::arg("raw_ptr"), py::arg("x_ptr"), py::arg("target_ptr"), py::arg("B"), py::arg("M"),
      py::arg("c_skip_ptr"), py::arg("c_out_ptr"), py::arg("weight_ptr"), py::arg("loss_out_ptr"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"), py::arg("device"),
      "DSM loss, fp32: raw, x, target [B, M], c_skip, c_out, weight [B] -> loss [B] = weight *\n"
      "mean_j (c_skip x + c_out raw - target)^2 (summed in double; M = 0 gives weight * 0).\n"
      "workspace: >= dsm_loss_workspace_bytes(B, M) bytes, 16-byte aligned. Queued on `stream`;\n"
      "never synchronises.");
  m.def(
      "dsm_loss_and_grad",
      [](std::uintptr_t raw, std::uintptr_t x, std::uintptr_t target, int64_t B, int64_t M, std::uintptr_t c_skip,
         std::uintptr_t c_out, std::uintptr_t weight, float grad_scale, std::uintptr_t loss, std::uintptr_t grad_raw,
         std::uintptr_t workspace, int64_t workspace_bytes, std::uintptr_t stream, int device) {
        // raw, x, target [B, M], c_skip, c_out, weight [B] -> loss [B], grad_raw [B, M]
        py::gil_scoped_release release;
        gpu::dsm_loss_and_grad(device_ptr<const float>(raw), device_ptr<const float>(x),
                               device_ptr<const float>(target), B, M, device_ptr<const float>(c_skip),
                               device_ptr<const float>(c_out), device_ptr<const float>(weight), grad_scale,
                               device_ptr<float>(loss), device_ptr<float>(grad_raw), device_ptr<void>(workspace),
                               workspace_bytes, as_stream(stream), device);
      },
      py::arg("raw_ptr"), py::arg("x_ptr"), py::arg("target_ptr"), py::arg("B"), py::arg("M"),
      py::arg("c_skip_ptr"), py::arg("c_out_ptr"), py::arg("weight_ptr"), py::arg("grad_scale"),
      py::arg("loss_out_ptr"), py::arg("grad_raw_out_ptr"), py::arg("workspace_ptr"), py::arg("workspace_bytes"),
      py::arg("stream"), py::arg("device"),
      "dsm_loss and, in the same pass, grad_raw [B, M] = d (grad_scale sum_b loss_b) / d raw, fp32.\n"
      "workspace: >= dsm_loss_workspace_bytes(B, M) bytes. Queued on `stream`; never synchronises.");
  m.def(
      "dsm_loss_backward",
      [](std::uintptr_t raw, std::uintptr_t x, std::uintptr_t target, int64_t B, int64_t M, std::uintptr_t c_skip,
         std::uintptr_t c_out, std::uintptr_t weight, std::uintptr_t grad_loss, std::uintptr_t grad_raw,
         std::uintptr_t stream, int device) {
        // raw, x, target [B, M], c_skip, c_out, weight, grad_loss [B] -> grad_raw [B, M]
        py::gil_scoped_release release;
        gpu::dsm_loss_backward(device_ptr<const float>(raw), device_ptr<const float>(x),
                               device_ptr<const float>(target), B, M, device_ptr<const float>(c_skip),
                               device_ptr<const float>(c_out), device_ptr<const float>(weight),
                               device_ptr<const float>(grad_loss), device_ptr<float>(grad_raw), as_stream(stream),
                               device);
      },
      py::arg("raw_ptr"), py::arg("x_ptr"), py::arg("target_ptr"), py::arg("B"), py::arg("M"),
      py::arg("c_skip_ptr"), py::arg("c_out_ptr"), py::arg("weight_ptr"), py::arg("grad_loss_ptr"),
      py::arg("grad_raw_out_ptr"), py::arg("stream"), py::arg("device"),
      "Backward of dsm_loss with respect to raw, fp32: grad_raw [B, M] = 2 grad_loss weight c_out\n"
      "(c_skip x + c_out raw - target) / M. No workspace. Queued on `stream`; never synchronises.");
  m.def("dmd_gradient_workspace_bytes", &dmd_gradient_workspace_bytes, py::arg("B"), py::arg("M"),
        "Bytes of the workspace dmd_gradient() needs: S = max(1, ceil(M / 4096)); 8 * B * S if S > 1, else 0.");
  m.def(
      "dmd_gradient",
      [](std::uintptr_t x0, std::uintptr_t real, std::uintptr_t fake, int64_t B, int64_t M, std::uintptr_t out,
         std::uintptr_t workspace, int64_t workspace_bytes, std::uintptr_t stream, int device) {
        // x0, real, fake [B, M] -> out [B, M]
        py::gil_scoped_release release;
        gpu::dmd_gradient(device_ptr<const float>(x0), device_ptr<const float>(real), device_ptr<const float>(fake),
                          B, M, device_ptr<float>(out), device_ptr<void>(workspace), workspace_bytes,
                          as_stream(stream), device);
      },
      py::arg("x0_ptr"), py::arg("real_ptr"), py::arg("fake_ptr"), py::arg("B"), py::arg("M"), py::arg("out_ptr"),
      py::arg("workspace_ptr"), py::arg("workspace_bytes"), py::arg("stream"), py::arg("device"),
      "DMD gradient, fp32: x0, real, fake [B, M] -> out [B, M] = (fake - real) / mean_j |x0 - real|\n"
      "per row, 0 where that mean is not > 0. workspace: >= dmd_gradient_workspace_bytes(B, M)\n"
      "bytes, 16-byte aligned. Queued on `stream`; never synchronises.");
}

}  // namespace

void bind_score(py::module_& m) {
  bind_dataset(m);
  bind_gmm(m);
  bind_losses(m);
}

}  // namespace gencore::gpu::bindings
