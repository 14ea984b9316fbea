"""gencore.ood.demo.run: the ``gencore demo`` OOD table on scikit-learn's digits."""
from __future__ import annotations

import math

import pytest

pytest.importorskip("sklearn")

from gencore.ood import demo  # noqa: E402

DETECTORS = ("kNN (k=10)", "Mahalanobis", "relative Mahalanobis", "energy", "MSP", "ViM")


@pytest.fixture(scope="module")
def demo_run():
    import torch

    lines = []
    state = torch.random.get_rng_state()
    result = demo.run(out=lines.append)
    # Seeding the training must not touch the caller's global RNG.
    assert torch.equal(torch.random.get_rng_state(), state)
    return result, lines


def test_demo_separates_digits(demo_run):
    result, _ = demo_run
    assert set(result["detectors"]) == set(DETECTORS)
    assert result["detectors"]["kNN (k=10)"]["auroc"] > 0.8
    assert result["detectors"]["Mahalanobis"]["auroc"] > 0.8
    for name, r in result["detectors"].items():
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["fpr95"] <= 1.0, name
        assert math.isfinite(r["seconds"]) and r["seconds"] >= 0, name
    assert result["n_train"] > 0 and result["n_id"] > 0 and result["n_ood"] > 0


def test_demo_prints_a_row_per_detector(demo_run):
    result, lines = demo_run
    text = "\n".join(lines)
    assert "AUROC" in text and "FPR@95" in text
    for name, r in result["detectors"].items():
        row = next(line for line in lines if line.startswith(name))
        assert f"{r['auroc']:.4f}" in row and f"{r['fpr95']:.4f}" in row
