"""Group-quantized matmul: gencore against torch float32 F.linear, torch's own
CPU int4 / int8 weight-only kernels, and naive dequantize + F.linear.

Groups ``quant-<shape>-w<bits>g<group>-<activations>-<size>`` hold every
contender on the same weights and activations:

* ``gencore``: ``gencore.quant.group_matmul`` (packed int4 / int8, float32 scales and zeros);
* ``gencore-int8``: the same with ``activations="int8"`` (W4A8 / W8A8; ~1e-3
  relative output error from the activation rounding, checked at 2e-2);
* ``torch-fp32``: ``F.linear`` on the float32 weight (the activations cast to float32);
* ``torch-int4``: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (tinygemm layout, from
  ``_convert_weight_to_int4pack_for_cpu``; bfloat16 activations only, its fast path;
  same codes and group size, its zero is a float: (8 - z) * s);
* ``torch-int8``: ``torch.ops.aten._weight_int8pack_mm`` (bfloat16, per-channel scales only:
  run in the int8 groups on gencore's symmetric int8 codes minus 128, which is its format);
* ``naive``: ``gencore.quant.dequantize`` + ``F.linear`` per call.

Weights are rotated through copies that together exceed the last-level cache
(LLC_BYTES), so every call streams its weight from memory, as a model's
layers do. ``extra_info["GB/s"]`` is the contender's weight bytes over its
median time. Every contender is checked against the float64 product of the
dequantized weight before it is timed.

    python -m pytest bench/quant --bench-size full --bench-threads 1
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gencore import quant

LLC_BYTES = 64 << 20  # twice this machine's 32 MiB L3
SHAPES = {  # (M, N, K) per size
    "quick": {"gemv": (1, 1024, 1024), "batch32": (32, 1024, 1024)},
    "mid": {"gemv": (1, 4096, 4096), "batch32": (32, 4096, 4096)},
    "full": {"gemv": (1, 4096, 4096), "batch32": (32, 11008, 4096)},
}
CONTENDERS = ("gencore", "gencore-int8", "torch-fp32", "torch-int4", "torch-int8", "naive")
ACTIVATIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Weights:
    """Copies of one layer's weight in every contender's layout, enough to exceed the LLC."""

    def __init__(self, n, k, bits, group, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.float = torch.randn(n, k, generator=gen) * 0.02
        self.qw = quant.quantize(self.float, bits, group, symmetric=bits == 8)
        self.n, self.k, self.bits, self.group = n, k, bits, group
        self._copies = {}

    def copies(self, contender, make):
        if contender not in self._copies:
            first = make(self)
            count = max(1, -(-LLC_BYTES // max(nbytes(first), 1)))
            self._copies[contender] = [first] + [clone(first) for _ in range(count - 1)]
        return self._copies[contender]


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, quant.QuantizedWeight):
        return obj.nbytes()
    return sum(nbytes(o) for o in obj)


def clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, quant.QuantizedWeight):
        return quant.QuantizedWeight(obj.data.clone(), obj.scales.clone(), obj.zeros.clone(), obj.bits,
                                     obj.group_size, obj.shape)
    return tuple(clone(o) for o in obj)


def torch_int4(w: Weights):
    codes = quant.unpack(w.qw.data, 4, w.k).to(torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    scales = w.qw.scales.T  # [G, N]
    zeros = (8.0 - w.qw.zeros.T) * scales  # tinygemm: w = (q - 8) * s + zero
    return packed, torch.stack([scales, zeros], dim=2).to(torch.bfloat16).contiguous()


def torch_int8(w: Weights):
    codes = (quant.unpack(w.qw.data, 8, w.k).to(torch.int16) - 128).to(torch.int8)
    # per channel: one scale per row (gencore's group scales, averaged: the peer has no groups)
    return codes, w.qw.scales.mean(1).to(torch.bfloat16)


MAKERS = {  # contender -> (layout maker, call(x, layout) -> y)
    "gencore": (lambda w: w.qw, lambda x, qw: quant.group_matmul(x, qw)),
    "gencore-int8": (lambda w: w.qw, lambda x, qw: quant.group_matmul(x, qw, activations="int8")),
    "torch-fp32": (lambda w: w.float, lambda x, wf: F.linear(x.float(), wf)),
    "torch-int4": (torch_int4, lambda x, p: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p[0], GROUP[0], p[1])),
    "torch-int8": (torch_int8, lambda x, p: torch.ops.aten._weight_int8pack_mm(x, p[0], p[1])),
    "naive": (lambda w: w.qw, lambda x, qw: F.linear(x.float(), quant.dequantize(qw))),
}
GROUP = [128]  # the group size torch-int4's call needs (set per test)

_weights: dict = {}


def weights(n, k, bits, group) -> Weights:
    key = (n, k, bits, group)
    if key not in _weights:
        _weights.clear()  # one layer at a time: full-size copies are hundreds of MB
        _weights[key] = Weights(n, k, bits, group)
    return _weights[key]


def check(contender, y, x, w: Weights, dtype):
    if contender == "torch-int8":  # its own per-channel weight
        codes, scales = torch_int8(w)
        ref = x.double() @ (codes.double() * scales.double()[:, None]).T
    elif contender == "torch-fp32":
        ref = x.double() @ w.float.double().T
    else:
        ref = x.double() @ quant.dequantize(w.qw).double().T
    scale = float((x.double().abs() @ quant.dequantize(w.qw).double().abs().T).max())
    tol = 1e-5 if dtype == torch.float32 and contender not in ("torch-int4", "gencore-int8") else 2e-2
    err = float((y.double() - ref).abs().max()) / scale
    assert err < tol, f"{contender}: relative error {err:.2e} above {tol:.0e}"


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("activations", tuple(ACTIVATIONS))
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 128), (8, 128)])
@pytest.mark.parametrize("shape", ("gemv", "batch32"))
def test_group_matmul(benchmark, bench_size, bench_threads, shape, bits, group, activations, contender):
    dtype = ACTIVATIONS[activations]
    if contender in ("torch-int4", "torch-int8") and dtype != torch.bfloat16:
        pytest.skip(f"{contender} runs bfloat16 activations only (its fast path)")
    if (contender == "torch-int4") != (bits == 4) and contender in ("torch-int4", "torch-int8"):
        pytest.skip(f"{contender} is not a {bits}-bit kernel")
    if contender == "torch-int8" and group != 128:
        pytest.skip("torch-int8 is per channel: run once, in the g128 group")
    m, n, k = SHAPES[bench_size][shape]
    w = weights(n, k, bits, group)
    make, call = MAKERS[contender]
    GROUP[0] = group
    layouts = w.copies(contender, make)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype)
    check(contender, call(x, layouts[0]), x, w, dtype)
    turn = [0]

    def run():
        turn[0] = (turn[0] + 1) % len(layouts)
        return call(x, layouts[turn[0]])

    benchmark.group = f"quant-{shape}-w{bits}g{group}-{activations}-{bench_size}"
    benchmark.extra_info.update({"contender": contender, "M": m, "N": n, "K": k, "bits": bits, "group": group,
                                 "activations": activations, "threads": bench_threads,
                                 "weight_bytes": nbytes(layouts[0]), "copies": len(layouts)})
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        benchmark.extra_info["GB/s"] = round(nbytes(layouts[0]) / stats.stats.median / 1e9, 2)
