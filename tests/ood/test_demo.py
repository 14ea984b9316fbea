"""gencore.ood.demo: the ``gencore demo`` OOD table on the digits shipped in the package."""
from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gencore.ood import demo

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


# ---------------------------------------------------------------- shipped data

def test_shipped_digits_shape_range_and_classes():
    x, y = demo.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    # pixels are block counts 0..16 scaled by 1/16: exactly k/16
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.array_equal(x * 16, np.round(x * 16))
    # the optdigits test set: 174..183 images of each digit
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10 and counts.min() >= 170 and counts.sum() == 1797, counts


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None,
                    reason="scikit-learn (the source of the shipped digits) is not installed")
def test_shipped_digits_equal_scikit_learns():
    from sklearn.datasets import load_digits

    x, y = demo.load_digits()
    d = load_digits()
    np.testing.assert_array_equal(x, (d.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, d.target)


def test_demo_does_not_import_scikit_learn(tmp_path):
    """The demo runs where scikit-learn is not installed: a stand-in that raises on import proves it."""
    (tmp_path / "sklearn").mkdir()
    (tmp_path / "sklearn" / "__init__.py").write_text("raise ImportError('scikit-learn is hidden in this test')\n")
    code = "from gencore.ood import demo; r = demo.run(out=lambda s: None, steps=5); print(len(r['detectors']))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(len(DETECTORS))


def test_missing_data_says_what_is_missing(monkeypatch):
    monkeypatch.setattr(demo, "DIGITS_FILE", "data/no-such-file.npz")
    with pytest.raises(demo.DemoDataMissing, match="no-such-file.npz"):
        demo.load_digits()
