"""gencore._checks.finite: the numpy route for small plain CPU tensors and torch's for the rest
must refuse the same values with the same message."""
from __future__ import annotations

import pytest
import torch

from gencore import _checks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("size", [1, 257, _checks._NUMPY_FINITE_MAX + 1], ids=["one", "small", "large"])
@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "inf")])
def test_refuses_nan_and_inf_on_both_routes(dtype, size, bad, word):
    x = torch.zeros(size, dtype=dtype)
    _checks.finite(x, "x")
    x[size // 2] = bad
    with pytest.raises(ValueError, match=f"x contains {word}"):
        _checks.finite(x, "x")


@pytest.mark.parametrize("make", [
    lambda t: torch.nn.Parameter(t),
    lambda t: t.clone().requires_grad_(),
    lambda t: t[::2],                          # a strided view
    lambda t: t.reshape(4, 8).t(),             # a transposed one
], ids=["parameter", "requires-grad", "strided", "transposed"])
def test_views_and_parameters(make):
    t = torch.zeros(32)
    t[6] = float("nan")
    with pytest.raises(ValueError, match="w contains NaN"):
        _checks.finite(make(t), "w")
    _checks.finite(make(torch.zeros(32)), "w")


def test_meta_and_empty_are_skipped():
    _checks.finite(torch.empty(5, device="meta"), "x")
    _checks.finite(torch.empty(0), "x")
