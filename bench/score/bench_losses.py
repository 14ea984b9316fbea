"""The fused EDM loss, forward + backward: gencore against torch eager and torch.compile.

Group ``edm-loss-<size>``: raw, x, target [B, 3, 32, 32] float32 (B = 256 at
every size: the training-step shape of CIFAR-10 EDM), per-sample EDM
coefficients (c_skip, c_out, weight) of log-normal noise levels. One timed
step is the loss (mean over the batch) and ``loss.backward()`` to raw:

* ``gencore``: ``gencore.score.dsm_loss`` (one native pass forward that also
  writes raw's gradient; ``backward()`` hands it over without another pass).
* ``torch``: the same formula in eager torch,
  ``(weight * ((c_skip x + c_out raw - target) ** 2).mean(1)).mean()``.
* ``torch-compile``: that function through ``torch.compile`` (inductor,
  forward and backward fused), compiled and warmed up before timing.

Before timing, each contender's loss and raw.grad must match a float64
evaluation of the formula.
"""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore.score import edm_precond

SHAPE = (256, 3, 32, 32)
CONTENDERS = ("gencore", "torch", "torch-compile")


def make_inputs(seed=20240611):
    g = torch.Generator().manual_seed(seed)
    raw, x, target = (torch.randn(*SHAPE, generator=g) for _ in range(3))
    sigma = torch.exp(-1.2 + 1.2 * torch.randn(SHAPE[0], generator=g, dtype=torch.float64))
    c_skip, c_out, _, _, weight = edm_precond(sigma)
    return raw, x, target, c_skip.float(), c_out.float(), weight.float()


def torch_loss(raw, x, target, c_skip, c_out, weight):
    b = raw.shape[0]
    pred = c_skip.view(b, 1, 1, 1) * x + c_out.view(b, 1, 1, 1) * raw
    return (weight * ((pred - target) ** 2).reshape(b, -1).mean(1)).mean()


def make_step(contender, inputs):
    raw, rest = inputs[0].clone().requires_grad_(), inputs[1:]
    if contender == "gencore":
        fn = lambda r: gencore.score.dsm_loss(r, *rest)  # noqa: E731
    elif contender == "torch":
        fn = lambda r: torch_loss(r, *rest)  # noqa: E731
    else:
        compiled = torch.compile(torch_loss)
        fn = lambda r: compiled(r, *rest)  # noqa: E731

    def step():
        raw.grad = None
        loss = fn(raw)
        loss.backward()
        return loss.detach(), raw.grad

    for _ in range(3):  # compile / warm up outside the timed region
        step()
    return step


_verified: dict = {}


def verify(contender, inputs, step):
    if contender not in _verified:
        loss, grad = step()
        raw64 = inputs[0].double().requires_grad_()
        want = torch_loss(raw64, *(t.double() for t in inputs[1:]))
        want.backward()
        torch.testing.assert_close(loss.double(), want.detach(), rtol=1e-5, atol=0)
        scale = float(raw64.grad.abs().max())
        torch.testing.assert_close(grad.double(), raw64.grad, rtol=1e-4, atol=1e-5 * scale)
        _verified[contender] = True


@pytest.mark.parametrize("contender", CONTENDERS)
def test_edm_loss_forward_backward(benchmark, bench_size, bench_threads, contender):
    inputs = make_inputs()
    step = make_step(contender, inputs)
    verify(contender, inputs, step)
    benchmark.group = f"edm-loss-{bench_size}"
    benchmark.extra_info.update({
        "contender": contender,
        "shape": list(SHAPE),
        "threads": bench_threads,
        "simd": gencore.info()["simd"]["in_use"],
    })
    benchmark(step)
