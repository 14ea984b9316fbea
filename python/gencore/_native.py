"""Loads the compiled modules once and owns the runtime settings.

``_core`` (CPU kernels) and ``_cuda`` (CUDA kernels) are optional: without
them every op runs through its pure-torch reference. BLAS comes from SciPy:
the Fortran ``sgemm``/``dgemm`` capsules of ``scipy.linalg.cython_blas`` are
handed to ``_core`` here, once.
"""
from __future__ import annotations

import importlib
import numbers
import os
from typing import Any, Optional

__all__ = ["core", "cuda", "runtime_info", "set_num_threads", "get_num_threads", "set_simd_level",
           "cuda_device_count", "cuda_unavailable_reason"]


# The SIMD levels of the CPU kernels, lowest first; each includes the ones before it, except
# that avx512 includes avxvnni only on CPUs with AVX-VNNI (csrc/include/gencore/simd.h).
SIMD_LEVELS = ("scalar", "avx2", "avxvnni", "avx512")


def _quoted(names) -> str:
    return ", ".join(repr(n) for n in names)


_ENV_BYTES = getattr(os.environ, "_data", None)  # CPython's bytes-keyed store behind os.environ (POSIX)


def env(name: str) -> Optional[str]:
    """os.environ.get(name), read on every call (~50 ns instead of ~700 ns where the store is reachable)."""
    if _ENV_BYTES is not None and os.name == "posix":
        value = _ENV_BYTES.get(name.encode())
        return None if value is None else os.fsdecode(value)
    return os.environ.get(name)


def _load(name: str) -> tuple[Optional[Any], Optional[str]]:
    try:
        return importlib.import_module(f"gencore.{name}"), None
    except ImportError as exc:  # not built, or built for another platform
        return None, str(exc)


core, core_error = _load("_core")
cuda, cuda_error = _load("_cuda")

if core is not None:
    from scipy.linalg import cython_blas as _cython_blas

    core.set_blas(_cython_blas.__pyx_capi__["sgemm"], _cython_blas.__pyx_capi__["dgemm"])
    _simd_env = os.environ.get("GENCORE_SIMD")
    if _simd_env is not None and _simd_env not in SIMD_LEVELS:
        raise ValueError(f"GENCORE_SIMD must be one of {_quoted(SIMD_LEVELS)}; got {_simd_env!r}")

_num_threads: Optional[int] = None


def set_num_threads(n: int) -> None:
    """Set the thread count the CPU kernels use (per call; torch's own setting is untouched)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"num_threads must be a positive int, got {n!r}")
    global _num_threads
    _num_threads = int(n)


def get_num_threads() -> int:
    """Threads the CPU kernels use: set_num_threads' value, else torch.get_num_threads()."""
    if _num_threads is not None:
        return _num_threads
    import torch

    return torch.get_num_threads()


def set_simd_level(level: str) -> str:
    """Cap the SIMD level of the CPU kernels ('scalar', 'avx2', 'avxvnni', 'avx512').

    The cap is clamped to what the CPU supports; returns the level now in use.
    'avx2' is plain AVX2 + FMA on every CPU; 'avxvnni' adds the AVX-VNNI
    (VEX) kernels where the CPU has them, and is 'avx2' where it does not.
    Also settable at import through the GENCORE_SIMD environment variable.
    """
    if core is None:
        raise RuntimeError("the native CPU module gencore._core is not available")
    if level not in SIMD_LEVELS:
        raise ValueError(f"level must be one of {_quoted(SIMD_LEVELS)}; got {level!r}")
    core.set_simd_level(level)
    return core.simd_level()


def cuda_device_count() -> int:
    """CUDA devices gencore._cuda sees (0 without the module, a driver or a GPU)."""
    global _cuda_devices
    if _cuda_devices is None:
        _cuda_devices = cuda.device_count() if cuda is not None else 0
    return _cuda_devices


_cuda_devices: Optional[int] = None
_kernel_images: dict[int, bool] = {}


def cuda_archs() -> list[str]:
    """Architectures the CUDA module holds device code for, e.g. ['sm_80', 'sm_90']."""
    if cuda is None:
        return []
    return [f"sm_{a}" for a in cuda.compiled_archs().split(";") if a.strip().isdigit()]


def cuda_unavailable_reason(index: int) -> Optional[str]:
    """None when gencore._cuda can run kernels on cuda:index, else why not."""
    if cuda is None:
        return f"gencore._cuda is not available ({cuda_error})"
    if cuda_device_count() <= index:
        return f"gencore._cuda sees no CUDA device {index}"
    if index not in _kernel_images:
        _kernel_images[index] = bool(cuda.has_kernel_image(index)) if hasattr(cuda, "has_kernel_image") else True
    if not _kernel_images[index]:
        major, minor = cuda.device_capability(index)
        return (f"gencore._cuda has no kernel image for cuda:{index} (compute capability {major}.{minor}; "
                f"built for {', '.join(cuda_archs()) or 'unknown'}: rebuild with GENCORE_CUDA_ARCHS)")
    return None


def _version(v: Optional[int]) -> Optional[str]:
    """CUDA's integer versions (13000) as text ("13.0")."""
    return f"{v // 1000}.{v % 1000 // 10}" if v else None


def runtime_info() -> dict:
    """What the compiled modules report: SIMD, threads, BLAS, CUDA (gencore.info() adds the ops)."""
    return {
        "modules": {"_core": core is not None, "_cuda": cuda is not None},
        "module_errors": {k: v for k, v in (("_core", core_error), ("_cuda", cuda_error)) if v},
        "simd": {
            "detected": core.detected_simd_level() if core else None,
            "in_use": core.simd_level() if core else None,
            "avx512_bf16": bool(core.has_avx512_bf16()) if core else False,
            "avx512_vnni": bool(core.has_avx512_vnni()) if core else False,
            "avx_vnni": bool(core.has_avx_vnni()) if core else False,
            "avx512_full_width": bool(core.has_full_width_avx512()) if core else False,
        },
        "compiler": getattr(core, "compiler", None) if core else None,
        "threads": get_num_threads(),
        "openmp": bool(core.openmp()) if core else False,
        "blas": core.blas_info() if core else None,
        "cuda": {
            "built": cuda is not None,
            "devices": cuda_device_count(),
            "runtime_version": _version(cuda.runtime_version()) if cuda else None,
            "driver_version": _version(cuda.driver_version()) if cuda else None,
            "archs": cuda_archs(),
        },
    }
