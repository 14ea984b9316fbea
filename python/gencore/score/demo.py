"""``gencore demo`` for the score family: a denoiser trained with the EDM loss
against the exact (memorising) denoiser of the same digits.

The 8x8 digits that ship with gencore (scaled to [-1, 1]) are split into a
training and a held-out set. A small MLP, preconditioned with ``EDMPrecond``,
is trained with ``edm_loss`` for a few hundred steps (seconds on a CPU). Then,
on the same noise draws at a grid of noise levels, three denoisers are
compared by the EDM-weighted loss lambda(sigma) mean (D(y + sigma n) - y)^2:

* the exact denoiser of the training set (``dataset_denoiser``), which is the
  minimiser of the loss on the training data: no network can do better there;
* the trained network, on the training data (how close training got) and on
  held-out digits;
* the exact training-set denoiser on held-out digits: it memorises, so at
  small sigma it is worse on new data than the network that generalises.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["run"]

SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Net(torch.nn.Module):
    """F(c_in x, c_noise): an MLP on the pixels and the noise level."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d + 1, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, d))

    def forward(self, x, c_noise):
        return self.mlp(torch.cat([x, c_noise[:, None].to(x.dtype)], 1))


def run(out: Callable[[str], None] = print, *, seed: int = 0, steps: int = 200, hidden: int = 128,
        batch: int = 256) -> dict:
    """Runs the demo, prints a table through ``out`` and returns the numbers:
    {"sigmas", "exact_train", "net_train", "net_test", "exact_test", "train_seconds", "total_seconds"}."""
    from ..ood.demo import load_digits
    from . import EDMPrecond, dataset_denoiser, edm_loss

    start = time.perf_counter()
    pixels, _ = load_digits()
    data = torch.from_numpy(pixels) * 2 - 1                          # [1797, 64] in [-1, 1]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(data.shape[0], generator=g)
    train, test = data[order[:1400]], data[order[1400:]]
    sigma_data = float(train.std())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EDMPrecond(_Net(data.shape[1], hidden), sigma_data=sigma_data)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        y = train[torch.randint(0, train.shape[0], (batch,), generator=g)]
        loss = edm_loss(model, y, sigma_data=sigma_data, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_seconds = time.perf_counter() - start

    def loss_at(denoiser, y, sigma):
        noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
        with torch.no_grad():
            return float(edm_loss(denoiser, y, sigma=sigma, noise=noise, sigma_data=sigma_data))

    exact = lambda x, s: dataset_denoiser(x, train, s)  # noqa: E731 - the memorising denoiser of the training set
    rows = {"exact_train": [], "net_train": [], "net_test": [], "exact_test": []}
    for sigma in SIGMAS:
        rows["exact_train"].append(loss_at(exact, train, sigma))
        rows["net_train"].append(loss_at(model, train, sigma))
        rows["net_test"].append(loss_at(model, test, sigma))
        rows["exact_test"].append(loss_at(exact, test, sigma))

    out(f"score: an MLP denoiser trained with the EDM loss ({steps} steps, batch {batch}, "
        f"{train_seconds:.1f} s) vs the exact denoiser of its {train.shape[0]} training digits")
    out("EDM-weighted loss lambda(sigma) mean (D(y + sigma n) - y)^2, the same noise for every row:")
    out(f"  {'sigma':>6}  {'exact, train':>13}  {'net, train':>11}  {'net, held-out':>13}  {'exact, held-out':>15}")
    for i, sigma in enumerate(SIGMAS):
        out(f"  {sigma:6.2f}  {rows['exact_train'][i]:13.4f}  {rows['net_train'][i]:11.4f}  "
            f"{rows['net_test'][i]:13.4f}  {rows['exact_test'][i]:15.4f}")
    out("On the training digits the exact denoiser is the minimum: at small sigma it returns the digit it\n"
        "memorised (loss ~ 0), while a network that generalises cannot predict the noise (loss ~ 1). On\n"
        "held-out digits the memorising denoiser breaks down at small sigma; the network does not.")
    return {"sigmas": SIGMAS, **rows, "train_seconds": train_seconds, "total_seconds": time.perf_counter() - start}
