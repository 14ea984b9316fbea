"""The streaming log-sum-exp kernel two families call: glue to the native data-set softmin.

    l_bi    = log w_i - ||x_b - alpha_b y_i||^2 / (2 sigma_b^2)
    log_z_b = logsumexp_i l_bi                          [B]
    D_b     = sum_i softmax_i(l_b.) y_i                 [B, d]  (optional)

x [B, d], data [N, d], sigma, alpha [B], log_w [N] or None (all w_i = 1; may
hold -inf). ``gencore.score``'s data-set denoiser is this with its noise
level; ``gencore.ot``'s Sinkhorn softmin is this with sigma^2 = epsilon and
log w = log b + g / epsilon. The kernels stream the data in tiles (one GEMM for
x.y, a fused exp epilogue, one GEMM for D when asked), never B x N.

``with_denoised=False`` returns (None, log_z) and skips the second GEMM (on
the CPU inside the kernel, on CUDA in this glue): what a Sinkhorn iteration
needs. ``cost`` replaces the squared distance inside the logits, with
r_bi = ||x_b - alpha_b y_i|| (score::CostMode, csrc/score/dataset_denoise.h):

    SQUARED            l_bi = log w_i - r_bi^2 / (2 sigma_b^2)     (the above)
    EUCLIDEAN          l_bi = log w_i - r_bi / sigma_b             (Sinkhorn, p = 1)
    EUCLIDEAN_INVERSE  l_bi = log w_i - r_bi / sigma_b - log(r_bi / sigma_b), -inf at r = 0

Arguments are checked by the callers (the ops); dtypes are the compute
dtype (float32, or float64 on the CPU).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import _native, _native_call

_CUDA_TILE = 4096  # data rows per CUDA step: two GEMMs by torch (cuBLAS) and one fused epilogue kernel
SQUARED, EUCLIDEAN, EUCLIDEAN_INVERSE = 0, 1, 2   # the kernels' cost codes (see above)


def cpu(x: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor, alpha: torch.Tensor,
        log_w: Optional[torch.Tensor], dtype: torch.dtype, with_denoised: bool = True, cost: int = SQUARED):
    """(D [B, d] or None, log_z [B]) from ``gencore._core.dataset_denoise``, in ``dtype``."""
    b = x.shape[0]
    denoised = denoised_array = None
    if with_denoised:
        denoised, denoised_array = _native_call.cpu_output(x.shape, dtype)
    log_z, log_z_array = _native_call.cpu_output((b,), dtype)
    _native.core.dataset_denoise(
        _native_call.cpu_array(x, dtype), _native_call.cpu_array(data, dtype), _native_call.cpu_array(sigma, dtype),
        _native_call.cpu_array(alpha, dtype), None if log_w is None else _native_call.cpu_array(log_w, dtype),
        denoised_array, log_z_array, _native_call.threads(), cost)
    return denoised, log_z


def cuda(x: torch.Tensor, data: torch.Tensor, sigma: torch.Tensor, alpha: torch.Tensor,
         log_w: Optional[torch.Tensor], with_denoised: bool = True, cost: int = SQUARED):
    """(D [B, d] or None, log_z [B]), float32, on the caller's stream."""
    # Per tile of the data: the distance GEMM and the weighted-sum GEMM by torch
    # (cuBLAS on the caller's stream); in between, one gencore kernel turns the
    # GEMM tile into softmax numerators in place and advances each query's
    # running (max, sum), returning the factor that rescales the accumulator.
    xs, y = _native_call.cuda_input(x), _native_call.cuda_input(data)
    s, a = _native_call.cuda_input(sigma), _native_call.cuda_input(alpha)
    lw = None if log_w is None else _native_call.cuda_input(log_w)
    b = xs.shape[0]
    center = y.mean(0)
    xc = (xs - a[:, None] * center).contiguous()
    x_sq = (xc * xc).sum(1)
    running_max = torch.full((b,), -math.inf, device=xs.device)
    total = torch.zeros(b, device=xs.device)
    rescale = torch.empty(b, device=xs.device)
    acc = torch.zeros_like(xs) if with_denoised else None
    stream, device = _native_call.cuda_stream(xs.device), _native_call.device_index(xs.device)
    for start in range(0, y.shape[0], _CUDA_TILE):
        tile = (y[start:start + _CUDA_TILE] - center).contiguous()     # [T, d]
        tile_sq = (tile * tile).sum(1)
        scores = xc @ tile.T                                            # [B, T]
        tile_lw = None if lw is None else lw[start:start + _CUDA_TILE].contiguous()
        _native.cuda.dataset_denoise_tile(scores.data_ptr(), b, tile.shape[0], tile_sq.data_ptr(),
                                          0 if tile_lw is None else tile_lw.data_ptr(), s.data_ptr(), a.data_ptr(),
                                          running_max.data_ptr(), total.data_ptr(), rescale.data_ptr(),
                                          stream, device, cost, x_sq.data_ptr())
        if acc is not None:
            acc.mul_(rescale[:, None]).addmm_(scores, tile)
    denoised = None if acc is None else acc / total[:, None] + center
    log_z = running_max + torch.log(total)
    if cost == SQUARED:   # the euclidean logits hold ||x'||^2 already
        log_z = log_z - 0.5 * x_sq / (s * s)
    return denoised, log_z
