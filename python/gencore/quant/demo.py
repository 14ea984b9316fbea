"""``gencore demo`` for the quant family: an MLP on the shipped digits, quantized to int4.

A small MLP (64 -> 256 -> 256 -> 10, CPU, seeded, about a second) is trained on
60% of the 1797 digits that ship with gencore (``gencore.ood.demo.load_digits``);
then ``quantize_model`` turns every ``nn.Linear`` into a ``QuantLinear`` (int4,
group sizes 32 and 128, and int8 per channel). The demo prints the test
accuracy of each, the relative change of the logits, the weight bytes, and
the time of one batch-1 forward pass (float vs quantized, gencore's thread count).
"""
from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import torch

from . import modules

__all__ = ["run"]

VARIANTS = (("int4 g32", 4, 32), ("int4 g128", 4, 128), ("int8 per channel", 8, -1))


def _data(seed: int):
    from ..ood.demo import load_digits  # the digits loader of the first family that shipped them

    x, y = load_digits()
    rows = np.random.RandomState(seed).permutation(len(y))
    n_train = int(0.6 * len(rows))
    t = torch.from_numpy
    return t(x[rows[:n_train]]), t(y[rows[:n_train]]), t(x[rows[n_train:]]), t(y[rows[n_train:]])


def _train(x, y, seed: int, steps: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # seeding must not change the caller's RNG
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                    torch.nn.ReLU(), torch.nn.Linear(256, 10))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval().requires_grad_(False)


def _forward_us(model: torch.nn.Module, x: torch.Tensor, reps: int = 200) -> float:
    model(x)
    start = time.perf_counter()
    for _ in range(reps):
        model(x)
    return (time.perf_counter() - start) / reps * 1e6


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for name, t in model.state_dict().items() if not name.endswith("bias"))


def run(out: Callable[[str], None] = print, *, seed: int = 0, steps: int = 150) -> dict:
    """Trains, quantizes, compares; returns {"float": {...}, "<variant>": {...}} with accuracy,
    logit_change (relative L2), weight_bytes and forward_us for each."""
    x_train, y_train, x_test, y_test = _data(seed)
    model = _train(x_train, y_train, seed, steps)
    with torch.no_grad():
        logits = model(x_test)
    results = {"float": {"accuracy": float((logits.argmax(1) == y_test).float().mean()), "logit_change": 0.0,
                         "weight_bytes": _weight_bytes(model), "forward_us": _forward_us(model, x_test[:1])}}
    for name, bits, group in VARIANTS:
        quantized = modules.quantize_model(copy.deepcopy(model), bits=bits, group_size=group)
        with torch.no_grad():
            q_logits = quantized(x_test)
        results[name] = {"accuracy": float((q_logits.argmax(1) == y_test).float().mean()),
                         "logit_change": float((q_logits - logits).norm() / logits.norm()),
                         "weight_bytes": _weight_bytes(quantized), "forward_us": _forward_us(quantized, x_test[:1])}
    out(f"digits MLP (64-256-256-10), {len(y_test)} test digits:")
    for name, r in results.items():
        out(f"  {name:17s} accuracy {r['accuracy']:.3f}  logits changed {r['logit_change']:.2%}  "
            f"weights {r['weight_bytes'] / 1024:6.1f} KiB  batch-1 forward {r['forward_us']:6.1f} us")
    return results
