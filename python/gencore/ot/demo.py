"""``gencore demo`` for the ot family: Sinkhorn divergences between digit
classes, and an OT-coupled minibatch for flow matching.

Data: the 1797 digits that ship with gencore (64 pixels in [0, 1]).

1. Each class is split in two random halves. The debiased Sinkhorn divergence
   S(a, b) = OT(a, b) - (OT(a, a) + OT(b, b)) / 2 (p = 2, blur 0.5 pixels) is
   computed between the first half of every class and the second half of every
   class: a 10 x 10 table whose diagonal (two samples of one distribution)
   should be its row's smallest entry. The demo prints the table's diagonal,
   each row's nearest other class, and how many rows have their minimum on
   the diagonal.
2. A minibatch of 256 Gaussian noise images x0 and 256 digits x1 (as OT-CFM
   draws them) is paired three ways: as drawn, by the exact OT permutation
   (``ot_coupling(method="exact")``, the network simplex) and by a draw from
   the entropic plan (``method="sinkhorn"``). The mean squared distance of the
   pairs shows how much straighter the OT pairs make the flow's paths.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["run"]

BLUR = 0.5


def run(out: Callable[[str], None] = print, *, seed: int = 0, batch: int = 256) -> dict:
    """Runs both parts; prints a summary; returns the numbers."""
    from ..ood.demo import load_digits
    from . import ot_coupling, sinkhorn_divergence

    start = time.perf_counter()
    pixels, labels = load_digits()
    data, labels = torch.from_numpy(pixels).float(), torch.from_numpy(labels).long()
    gen = torch.Generator().manual_seed(seed)

    halves = []
    for c in range(10):
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(rows.numel(), generator=gen)]
        halves.append((data[rows[: rows.numel() // 2]], data[rows[rows.numel() // 2:]]))
    table = torch.tensor([[float(sinkhorn_divergence(halves[i][0], halves[j][1], blur=BLUR)) for j in range(10)]
                          for i in range(10)])
    diagonal_wins = int((table.argmin(1) == torch.arange(10)).sum())
    off = table + torch.diag(torch.full((10,), float("inf")))
    out(f"ot: Sinkhorn divergence between halves of the digit classes (p = 2, blur {BLUR}), "
        f"{time.perf_counter() - start:.1f} s for 100 divergences")
    out("  class   S(same class)   nearest other class   S(nearest other)")
    for c in range(10):
        out(f"  {c:>5}   {float(table[c, c]):>13.3f}   {int(off[c].argmin()):>19}   {float(off[c].min()):>16.3f}")
    out(f"  rows whose smallest divergence is their own class: {diagonal_wins} / 10")

    picks = torch.randint(0, data.shape[0], (batch,), generator=gen)
    x1 = data[picks]
    x0 = x1.mean() + x1.std() * torch.randn(batch, data.shape[1], generator=gen)

    def mean_sq(perm):
        return float(((x0 - x1[perm]) ** 2).sum(1).mean())
    pairings = {"as drawn": torch.arange(batch)}
    t = time.perf_counter()
    pairings["exact OT"] = ot_coupling(x0, x1, method="exact")
    exact_s = time.perf_counter() - t
    t = time.perf_counter()
    pairings["sinkhorn draw"] = ot_coupling(x0, x1, method="sinkhorn", generator=gen)
    sinkhorn_s = time.perf_counter() - t
    costs = {name: mean_sq(perm) for name, perm in pairings.items()}
    out(f"ot: minibatch coupling of {batch} noise images with {batch} digits (mean squared pair distance)")
    for name, cost in costs.items():
        out(f"  {name:<14} {cost:>9.2f}")
    out(f"  exact coupling {exact_s * 1e3:.0f} ms, sinkhorn draw {sinkhorn_s * 1e3:.0f} ms")
    return {"divergences": table, "diagonal_wins": diagonal_wins, "pair_costs": costs, "batch": batch,
            "seconds": time.perf_counter() - start}
