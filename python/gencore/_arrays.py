"""numpy, CuPy and other DLPack arrays in, the same kind out: one adapter for every family.

Public functions and detector methods are wrapped with ``accepts_arrays``;
everything below them (the ops, the kernels) sees torch tensors only.

* numpy arrays become tensors with ``torch.from_numpy`` (zero copy; a
  read-only array is shared too, and never written: no gencore op writes its
  inputs; arrays with negative strides are copied), and tensor results come
  back as numpy arrays (``Tensor.numpy()``, zero copy).
* Objects with ``__dlpack__`` (CuPy arrays, and any array library with DLPack)
  become tensors with ``torch.from_dlpack`` (zero copy, same device), and
  results come back through the ``from_dlpack`` of the input's own module
  (``cupy.from_dlpack`` for CuPy). CuPy inputs run on CuPy's current stream:
  it is made torch's current stream for the call.
* Python numbers, numpy scalars (``np.int64(3)``), strings and torch tensors
  pass unchanged; the argument checks accept numpy scalars as numbers.
* Arrays of different kinds in one call (numpy with torch, numpy with CuPy)
  are refused with a TypeError naming the arguments: there is no single
  right kind to return.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import warnings
from typing import Any, Callable, Optional

import numpy as np
import torch

__all__ = ["accepts_arrays", "to_torch"]


def _kind(value: Any) -> Optional[str]:
    """'torch', 'numpy', 'dlpack' or None (not an array)."""
    if isinstance(value, torch.Tensor):
        return "torch"
    if isinstance(value, np.ndarray):
        return "numpy"
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        return "dlpack"
    return None


def _from_numpy(a: np.ndarray, name: str) -> torch.Tensor:
    if any(s < 0 for s in a.strides):
        a = np.ascontiguousarray(a)  # torch cannot view negative strides
    try:
        if a.flags.writeable:
            return torch.from_numpy(a)
        with warnings.catch_warnings():  # shared read-only: no gencore op writes its inputs
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(a)
    except TypeError as exc:
        raise TypeError(f"{name}: numpy dtype {a.dtype} has no torch equivalent ({exc})") from None


def _back_module(value: Any, name: str):
    """The module whose from_dlpack turns results back into ``value``'s type."""
    module_name = type(value).__module__
    for candidate in (module_name, module_name.split(".")[0]):
        module = sys.modules.get(candidate)
        if module is not None and callable(getattr(module, "from_dlpack", None)):
            return module
    raise TypeError(f"{name}: {type(value).__module__}.{type(value).__name__} supports DLPack but its module "
                    "has no from_dlpack to return results in the same type; pass a torch tensor")


def to_torch(value: Any, name: str) -> Any:
    """One argument as torch (zero copy where possible); non-arrays unchanged."""
    kind = _kind(value)
    if kind == "numpy":
        return _from_numpy(value, name)
    if kind == "dlpack":
        return torch.from_dlpack(value)
    return value


def _cupy_stream(value: Any):
    """torch stream context for CuPy's current stream, or a null context."""
    if type(value).__module__.split(".")[0] != "cupy":
        return contextlib.nullcontext()
    import cupy  # present: the value is one of its arrays

    stream = cupy.cuda.get_current_stream()
    device = torch.device("cuda", value.device.id)
    return torch.cuda.stream(torch.cuda.ExternalStream(stream.ptr, device=device))


def _convert_back(result: Any, kind: str, module) -> Any:
    if isinstance(result, torch.Tensor):
        result = result.detach()
        return result.cpu().numpy() if kind == "numpy" else module.from_dlpack(result)
    if isinstance(result, tuple):
        return tuple(_convert_back(r, kind, module) for r in result)
    if isinstance(result, list):
        return [_convert_back(r, kind, module) for r in result]
    return result


# Argument types that are never foreign arrays (the common case, checked first).
_NOT_ARRAYS = frozenset({torch.Tensor, torch.nn.Parameter, int, float, str, bool, type(None)})


def _foreign(value: Any) -> bool:
    """An array that is not a torch tensor."""
    return not isinstance(value, torch.Tensor) and (isinstance(value, np.ndarray) or hasattr(value, "__dlpack__"))


def _single_kind(named: list[tuple[str, Any]]) -> tuple[str, Any]:
    """(name, value) of the first non-torch array; TypeError when kinds are mixed."""
    first = torch_name = None
    for name, value in named:
        kind = _kind(value)
        if kind == "torch":
            torch_name = torch_name or name
        elif kind is not None and first is None:
            first = (name, value)
        elif kind is not None and type(value) is not type(first[1]):
            raise TypeError(f"{first[0]} is a {type(first[1]).__name__} but {name} is a "
                            f"{type(value).__name__}: pass arrays of one kind")
    if torch_name is not None:
        raise TypeError(f"{first[0]} is a {type(first[1]).__module__}.{type(first[1]).__name__} but "
                        f"{torch_name} is a torch.Tensor: pass all arrays as one kind")
    return first


def accepts_arrays(fn: Callable) -> Callable:
    """Decorator: numpy / DLPack array arguments in, results of the same kind out (module docstring)."""
    params = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for v in args:  # a plain loop: this runs on every call of every public function
            if type(v) not in _NOT_ARRAYS and _foreign(v):  # tensors and plain scalars: one set lookup
                break
        else:
            if not kwargs or not any(_foreign(v) for v in kwargs.values()):
                return fn(*args, **kwargs)
        names = [params[i] if i < len(params) else f"argument {i}" for i in range(len(args))]
        first_name, first = _single_kind(list(zip(names, args)) + list(kwargs.items()))
        kind = _kind(first)
        module = _back_module(first, first_name) if kind == "dlpack" else None
        with _cupy_stream(first):
            args = tuple(to_torch(v, n) for n, v in zip(names, args))
            kwargs = {n: to_torch(v, n) for n, v in kwargs.items()}
            return _convert_back(fn(*args, **kwargs), kind, module)

    return wrapper
