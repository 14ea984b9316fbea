"""Memorisation diagnostics for generated samples, through the exact kNN.

A generated sample that copies a training point sits much closer to it than to
any other: the ratio of the distances to the nearest and the second-nearest
training point is small. Carlini et al. 2023 ("Extracting Training Data from
Diffusion Models") and Yoon et al. 2023 flag a sample as memorised when that
ratio is below 1/3.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _arrays, _checks
from ..ood import knn

__all__ = ["NearestTraining", "nearest_training", "memorized"]


class NearestTraining(NamedTuple):
    """distance [B]: to the nearest training point; second [B]: to the second
    nearest; ratio [B] = distance / second (0 for an exact copy, 1 when the two
    nearest are equally far; nan where both are 0); index [B]: the nearest point."""

    distance: torch.Tensor
    second: torch.Tensor
    ratio: torch.Tensor
    index: torch.Tensor


@_arrays.accepts_arrays
def nearest_training(samples: torch.Tensor, data: torch.Tensor) -> NearestTraining:
    """Euclidean distances of each sample [B, d] to its two nearest rows of the
    training data [N, d] (N >= 2), exact, streamed through ``gencore.ood.knn``
    (memory O(B + N), never B x N). Samples of any shape [B, ...] are flattened."""
    _checks.tensor(samples, "samples")
    _checks.tensor(data, "data")
    b, n = samples.shape[0], data.shape[0]
    if n < 2:
        raise ValueError(f"data needs at least 2 training points for the second-nearest distance, got {n}")
    values, indices = knn(samples.reshape(b, -1), data.reshape(n, -1), 2, "l2")
    return NearestTraining(values[:, 0], values[:, 1], values[:, 0] / values[:, 1], indices[:, 0])


@_arrays.accepts_arrays
def memorized(samples: torch.Tensor, data: torch.Tensor, threshold: float = 1 / 3) -> torch.Tensor:
    """[B] bool: nearest / second-nearest distance below ``threshold`` (default 1/3)."""
    threshold = _checks.real(threshold, "threshold", positive=True)
    return nearest_training(samples, data).ratio < threshold
