"""``gencore demo`` for the ood family: OOD detection on handwritten digits.

A small MLP is trained (CPU, seeded, a couple of seconds) on digits 0-4.
Its penultimate features and logits on held-out digits 0-4 are the
in-distribution (ID) test set, those on digits 5-9 the out-of-distribution
(OOD) set. Every detector is fitted on the training split only and
evaluated by AUROC (ID as the positive class, detector scores higher for
ID) and FPR@95 (fraction of OOD accepted at the threshold that keeps 95% of
ID test samples, ``positive="id"``).

The digits (the UCI optdigits test set, the rows of scikit-learn's
``load_digits``) ship inside the package as ``gencore/data/digits.npz``
(~45 KB, CC BY 4.0; see ``gencore/data/README.md``), so the demo needs only
numpy and torch.
"""
from __future__ import annotations

import time
from importlib import resources
from typing import Callable

import numpy as np
import torch

__all__ = ["run", "load_digits", "DemoDataMissing"]

ID_DIGITS = (0, 1, 2, 3, 4)
DIGITS_FILE = "data/digits.npz"  # relative to the gencore package


class DemoDataMissing(FileNotFoundError):
    """The data file that ships with gencore is not in this installation."""


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 shipped digits: (pixels float32 [1797, 64] in [0, 1], labels int64 [1797] in 0..9).

    Pixels are the 8x8 block counts 0..16 divided by 16, row-major, in the
    order of scikit-learn's ``load_digits()``.
    """
    source = resources.files("gencore").joinpath(DIGITS_FILE)
    try:
        with source.open("rb") as f, np.load(f) as z:
            pixels, labels = z["pixels"], z["labels"]
    except FileNotFoundError as exc:
        raise DemoDataMissing(
            f"the demo data gencore/{DIGITS_FILE} is missing from this installation ({exc}); "
            "reinstall gencore from a complete source tree or wheel") from None
    return pixels.astype(np.float32) / np.float32(16.0), labels.astype(np.int64)


def _split(seed: int):
    """(x_train, y_train, x_id_test, y_id_test, x_ood): float32 [.., 64] in [0, 1], labels 0..4."""
    x, y = load_digits()
    is_id = np.isin(y, ID_DIGITS)
    id_rows = np.flatnonzero(is_id)
    rng = np.random.RandomState(seed)
    rng.shuffle(id_rows)
    n_train = int(0.6 * len(id_rows))
    train, test = id_rows[:n_train], id_rows[n_train:]
    t = torch.from_numpy
    return t(x[train]), t(y[train]), t(x[test]), t(y[test]), t(x[~is_id])


class _MLP(torch.nn.Module):
    def __init__(self, d_in: int, d_hidden: int, n_classes: int):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(d_in, d_hidden), torch.nn.ReLU(),
            torch.nn.Linear(d_hidden, d_hidden), torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(d_hidden, n_classes)

    def forward(self, x):
        features = self.body(x)
        return features, self.head(features)


def _train(x, y, *, seed: int, steps: int, hidden: int) -> _MLP:
    # fork_rng: seeding must not change the caller's global torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MLP(x.shape[1], hidden, len(ID_DIGITS))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
        # Full-batch steps: the whole training split is ~540 rows, and one
        # step on all of it costs about what a step on 64 rows does here.
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x)[1], y).backward()
            opt.step()
    return model.eval()


def _detectors(model: _MLP):
    from . import detectors as det

    weight, bias = model.head.weight.detach(), model.head.bias.detach()
    return {
        "kNN (k=10)": det.KNNDetector(k=10),
        "Mahalanobis": det.MahalanobisDetector(estimator="ledoit_wolf"),
        "relative Mahalanobis": det.RelativeMahalanobisDetector(estimator="ledoit_wolf"),
        "energy": det.EnergyDetector(),
        "MSP": det.MSPDetector(),
        "ViM": det.ViMDetector(weight, bias),
    }


def run(out: Callable[[str], None] = print, *, seed: int = 0, steps: int = 100, hidden: int = 64) -> dict:
    """Runs the demo, prints a table through ``out`` and returns the numbers.

    Args:
        out: line printer (default ``print``).
        seed: seeds the split and the training.
        steps: full-batch Adam steps training the MLP.
        hidden: width of the MLP's hidden layers (= feature dimension D).

    Returns:
        {"detectors": {name: {"auroc", "fpr95", "seconds"}}, "test_accuracy",
        "train_seconds", "total_seconds", "n_train", "n_id", "n_ood", "feature_dim"}.
        ``seconds`` is the fit + scoring time of that detector (after one
        untimed warm-up run, which absorbs the ops' one-time setup).
    """
    from . import metrics

    start = time.perf_counter()
    x_train, y_train, x_id, y_id, x_ood = _split(seed)
    model = _train(x_train, y_train, seed=seed, steps=steps, hidden=hidden)
    train_seconds = time.perf_counter() - start
    with torch.no_grad():
        f_train, l_train = model(x_train)
        f_id, l_id = model(x_id)
        f_ood, l_ood = model(x_ood)
    # Accuracy on the held-out ID digits: a check that the features mean something.
    accuracy = float((l_id.argmax(1) == y_id).float().mean())

    def fit_and_score(detector):
        detector.fit(f_train, labels=y_train, logits=l_train)
        return detector.score(f_id, logits=l_id), detector.score(f_ood, logits=l_ood)

    results = {}
    for name, detector in _detectors(model).items():
        # The first call of a torch custom op in a process costs up to seconds
        # of one-time setup; an untimed run keeps that out of the table.
        fit_and_score(detector)
        t0 = time.perf_counter()
        s_id, s_ood = fit_and_score(detector)
        seconds = time.perf_counter() - t0
        results[name] = {
            "auroc": float(metrics.auroc(s_id, s_ood)),
            "fpr95": float(metrics.fpr_at_tpr(s_id, s_ood, tpr=0.95, positive="id")),
            "seconds": seconds,
        }

    total = time.perf_counter() - start
    out(f"OOD detection on digits: ID = held-out digits 0-4 (n={x_id.shape[0]}), OOD = digits 5-9 "
        f"(n={x_ood.shape[0]}); MLP features D={hidden}, trained on n={x_train.shape[0]} in {train_seconds:.1f} s "
        f"(ID test accuracy {accuracy:.3f})")
    out(f"{'detector':<22} {'AUROC':>7} {'FPR@95':>7} {'time':>9}")
    for name, r in results.items():
        out(f"{name:<22} {r['auroc']:>7.4f} {r['fpr95']:>7.4f} {r['seconds'] * 1e3:>7.1f}ms")
    out(f"total {total:.1f} s (higher AUROC, lower FPR@95 is better; FPR@95 = OOD accepted at 95% ID recall)")
    return {
        "detectors": results, "test_accuracy": accuracy, "train_seconds": train_seconds, "total_seconds": total,
        "n_train": int(x_train.shape[0]), "n_id": int(x_id.shape[0]), "n_ood": int(x_ood.shape[0]),
        "feature_dim": hidden,
    }
