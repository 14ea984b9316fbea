"""gencore demo's ot part: what it prints is what it measured, and the measurements
say what the demo claims (two halves of one digit class are nearer than any two
classes; exact OT pairs are nearer than the batch as drawn)."""
import pytest
import torch

from gencore import _native
from gencore.ot import demo

pytestmark = pytest.mark.skipif(_native.core is None, reason="the demo's 100 divergences need the native kernels")


def test_demo_numbers_are_consistent():
    lines = []
    result = demo.run(lines.append, seed=3, batch=64)
    table = result["divergences"]
    assert table.shape == (10, 10) and torch.isfinite(table).all()
    assert result["diagonal_wins"] == int((table.argmin(1) == torch.arange(10)).sum())
    assert result["diagonal_wins"] >= 8  # digits classes are well separated at blur 0.5
    costs = result["pair_costs"]
    assert costs["exact OT"] <= costs["sinkhorn draw"] + 1e-9
    assert costs["exact OT"] < costs["as drawn"]
    assert any(f"{result['diagonal_wins']} / 10" in line for line in lines)
