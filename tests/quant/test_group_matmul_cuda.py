"""group_matmul on a GPU (skipped without one): the CUDA kernel against the
reference, on the caller's stream, and the fallback above its row limit."""
from __future__ import annotations

import pytest
import torch

from gencore import _native, quant
from gencore.quant import reference

from tests.conftest import cuda_only, on_a_busy_side_stream


@cuda_only
@pytest.mark.parametrize("bits,group_size", [(4, 32), (4, 128), (8, 64), (4, -1)])
@pytest.mark.parametrize("m,n,k", [(1, 1, 31), (3, 17, 129), (8, 33, 256), (64, 40, 300)])
def test_cuda_kernel_matches_the_reference(rng, bits, group_size, m, n, k):
    qw = quant.quantize(torch.randn(n, k, generator=rng), bits, group_size).to("cuda")
    x = torch.randn(m, k, generator=rng).cuda()
    bias = torch.randn(n, generator=rng).cuda()
    y = quant.group_matmul(x, qw, bias)
    want = reference.group_matmul(x.double(), qw.data, qw.scales, qw.zeros, bias.double(), *qw.layout())
    scale = float((x.double().abs() @ quant.dequantize(qw).double().abs().T).max())
    assert float((y.double() - want).abs().max()) / scale < 1e-5


@cuda_only
def test_cuda_kernel_runs_on_the_callers_stream(rng):
    qw = quant.quantize(torch.randn(64, 256, generator=rng), 4, 128).to("cuda")
    x = torch.randn(4, 256, generator=rng).cuda()
    direct = quant.group_matmul(x, qw)
    torch.testing.assert_close(on_a_busy_side_stream(x, lambda t: quant.group_matmul(t, qw)), direct)


@cuda_only
def test_more_rows_than_the_kernel_takes_fall_back_with_a_warning(rng):
    qw = quant.quantize(torch.randn(16, 128, generator=rng), 4, 32).to("cuda")
    x = torch.randn(_native.cuda.group_matmul_max_rows() + 1, 128, generator=rng).cuda()
    with pytest.warns(RuntimeWarning, match="rows"):
        y = quant.group_matmul(x, qw)
    torch.testing.assert_close(y, x @ quant.dequantize(qw).T, rtol=1e-4, atol=1e-4)
