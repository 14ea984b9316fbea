"""Offline calibration for activation quantization: the DGQ-style input-channel
permutation that gathers outlier channels into the same groups.

With int8 activations (``group_matmul(..., activations="int8")``) every row of x
is quantized per weight group with one scale, max |x| over the group / 127. A few
outlier channels (common in transformer and diffusion activations) then set the
scale of every group they fall in, and the other channels of those groups lose
most of their bits. Sorting the channels by their calibration magnitude puts the
outliers together in a few groups: the remaining groups get scales that fit their
own range. The weight is quantized in the same permuted order
(``quantize(weight, perm=...)``), so weight and activation groups stay aligned;
``group_matmul`` gathers x's columns by ``qw.perm`` (one [..., K] copy a call).
"""
from __future__ import annotations

import torch

from .. import _checks


def outlier_permutation(activations: torch.Tensor) -> torch.Tensor:
    """Input channels ordered by decreasing calibration magnitude.

    Args:
        activations: [..., K] calibration activations of the layer's input (any
            leading shape; at least one row), or [K] per-channel magnitudes
            (e.g. running max |x|). Must be finite.

    Returns:
        perm int64 [K] on the same device: channel perm[j] goes to position j,
        sorted by max |x| descending (ties: the lower channel first). Pass it to
        ``quantize(weight, ..., perm=perm)`` / ``QuantLinear.from_linear(..., perm=perm)``.
    """
    _checks.tensor(activations, "activations")
    if activations.dim() == 0 or activations.shape[-1] == 0 or activations.numel() == 0:
        raise ValueError(f"activations must be [..., K] with K >= 1 and at least one row, got shape "
                         f"{tuple(activations.shape)}")
    _checks.finite(activations, "activations")
    magnitude = activations.detach().abs().reshape(-1, activations.shape[-1]).amax(dim=0)
    return torch.sort(magnitude, descending=True, stable=True).indices
