"""How a torch op hands its tensors to a native kernel.

CPU (``gencore._core``): tensors travel as numpy views of the same memory
(zero copy) with unit column stride, plus the thread count of
``gencore.set_num_threads``. CUDA (``gencore._cuda``): tensors travel as
``data_ptr()`` of contiguous tensors, plus the device index and the caller's
current stream; scratch memory is a torch tensor, so it comes from torch's
caching allocator (visible to ``torch.cuda.memory_*``, reused from its cache,
freed in stream order when the tensor dies) rather than from the driver.

Outputs are allocated here too. Tests set ``POISON = True`` so every output
starts as NaN (floating) or the most negative integer, which makes elements a
kernel forgot to write show up.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _native

#: Fill every output with NaN / the most negative integer before a native call (tests).
POISON = False


def threads() -> int:
    """Threads for one CPU kernel call."""
    return _native.get_num_threads()


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64}


def rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` detached, as ``dtype``, with unit column stride and non-overlapping rows.

    Copies only when it has to: a cast, a transposed or column-strided view,
    broadcast (stride 0) rows. A 1-D tensor becomes contiguous.
    """
    if t.requires_grad:
        t = t.detach()
    if t.dtype != dtype:
        t = t.to(dtype)
    if t.dim() == 1:
        return t.contiguous()
    if t.dim() == 2:
        n, d = t.shape
        if (d > 1 and t.stride(1) != 1) or (n > 1 and t.stride(0) < d):
            t = t.contiguous()
    return t


def cpu_array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A CPU tensor as the numpy view ``_core`` reads (see ``rows``)."""
    if t.dtype is dtype and not t.requires_grad and t.is_contiguous():
        return t.numpy()
    return rows(t, dtype).numpy()


def cpu_output(shape, dtype: torch.dtype, kernel_shape=None) -> tuple[torch.Tensor, np.ndarray]:
    """(tensor of ``shape``, the numpy view ``_core`` writes, of ``kernel_shape``): one buffer.

    Allocated by numpy (cheaper than torch.empty + .numpy() for the small
    outputs where per-call overhead matters); poisoned when ``POISON`` is set.
    """
    array = np.empty(kernel_shape if kernel_shape is not None else shape, _NUMPY_DTYPES[dtype])
    if POISON:
        array.fill(np.nan if dtype.is_floating_point else np.iinfo(array.dtype).min)
    return torch.from_numpy(array if kernel_shape is None else array.reshape(shape)), array


def output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised output tensor (poisoned when ``POISON`` is set)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min)
    return out


def cuda_stream(device: torch.device) -> int:
    """The caller's current stream on ``device`` as the integer the CUDA kernels take."""
    return torch.cuda.current_stream(device).cuda_stream


def device_index(device: torch.device) -> int:
    return device.index if device.index is not None else 0


def cuda_input(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, float32, contiguous: the layout of every CUDA kernel input."""
    return t.detach().to(torch.float32).contiguous()


def cuda_workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    """Scratch for one kernel call from torch's caching allocator (keep it alive until the call returns)."""
    return torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)
