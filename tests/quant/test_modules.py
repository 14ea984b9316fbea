"""QuantLinear and quantize_model."""
from __future__ import annotations

import gc
import io
import weakref

import pytest
import torch
from torch import nn

from gencore import quant


def test_from_linear_matches_group_matmul_and_keeps_the_bias(rng):
    torch.manual_seed(0)
    linear = nn.Linear(100, 12)
    q = quant.QuantLinear.from_linear(linear, bits=4, group_size=32)
    x = torch.randn(3, 5, 100, generator=rng)
    want = quant.group_matmul(x, quant.quantize(linear.weight, 4, 32), linear.bias.detach())
    torch.testing.assert_close(q(x), want, rtol=0, atol=0)
    with torch.no_grad():
        rel = float((q(x) - linear(x)).norm() / linear(x).norm())
    assert 0 < rel < 0.2  # int4 changes the output, but not beyond recognition


def test_state_dict_round_trip_as_plain_tensors(rng):
    torch.manual_seed(1)
    q = quant.QuantLinear.from_linear(nn.Linear(70, 9), bits=8, group_size=64)
    state = q.state_dict()
    assert set(state) == {"data", "scales", "zeros", "bias"}
    assert all(type(t) is torch.Tensor for t in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = quant.QuantLinear(70, 9, bits=8, group_size=64)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, 70, generator=rng)
    assert torch.equal(fresh(x), q(x))
    with pytest.raises(RuntimeError, match="size mismatch"):
        quant.QuantLinear(70, 9, bits=4, group_size=64).load_state_dict(state)


def test_the_weight_is_built_once_per_set_of_buffers_and_follows_every_change(rng):
    # QuantLinear keeps one QuantizedWeight over its buffers; every way of changing them is seen.
    torch.manual_seed(3)
    q = quant.QuantLinear.from_linear(nn.Linear(96, 7), bits=4, group_size=32)
    x = torch.randn(2, 96, generator=rng)
    assert q.weight is q.weight
    other = quant.quantize(torch.randn(7, 96, generator=rng), 4, 32)
    with torch.no_grad():
        q.load_state_dict({**q.state_dict(), "data": other.data, "scales": other.scales, "zeros": other.zeros})
    torch.testing.assert_close(q(x), quant.group_matmul(x, other, q.bias.detach()), rtol=0, atol=0)  # copied in place
    old = weakref.ref(q.data)
    third = quant.quantize(torch.randn(7, 96, generator=rng), 4, 32)
    q.set_weight(third)
    gc.collect()
    assert old() is None  # the replaced buffer is not kept alive by a cached weight
    torch.testing.assert_close(q(x), quant.group_matmul(x, third, q.bias.detach()), rtol=0, atol=0)
    q.scales = q.scales * 2  # assignment
    torch.testing.assert_close(q(x) - q.bias.detach(), 2 * (quant.group_matmul(x, third)), rtol=1e-6, atol=1e-5)
    before = q.weight
    q.to(torch.bfloat16)  # _apply replaces the float buffers
    assert q.weight is not before and q.weight.scales.dtype == torch.bfloat16


def test_quantize_model_replaces_linears_except_skipped(rng):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 64)), nn.Linear(64, 10))
    x = torch.randn(8, 32, generator=rng)
    model.requires_grad_(False)
    before = model(x)
    quant.quantize_model(model, bits=4, group_size=32, skip=["3"])
    assert isinstance(model[0], quant.QuantLinear) and isinstance(model[2][0], quant.QuantLinear)
    assert type(model[3]) is nn.Linear
    after = model(x)
    assert float((after - before).norm() / before.norm()) < 0.25
    model2 = nn.Sequential(nn.Linear(32, 8), nn.Linear(8, 4))
    quant.quantize_model(model2, bits=8, group_size=-1, skip=lambda name, m: m.out_features == 4)
    assert isinstance(model2[0], quant.QuantLinear) and type(model2[1]) is nn.Linear


def test_gradients_reach_input_and_bias_and_compile_works(rng):
    q = quant.QuantLinear.from_linear(nn.Linear(64, 6), bits=4, group_size=32)
    x = torch.randn(2, 64, generator=rng, requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None and q.bias.grad is not None
    torch.testing.assert_close(x.grad, quant.dequantize(q.weight).sum(0).expand(2, 64), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x.detach()), q(x.detach()))


def test_bad_arguments():
    with pytest.raises(TypeError, match="linear"):
        quant.QuantLinear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="bits"):
        quant.QuantLinear(8, 8, bits=3)
    with pytest.raises(ValueError, match="group_size"):
        quant.QuantLinear(8, 8, group_size=16)
