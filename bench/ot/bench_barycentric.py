"""The barycentric map T(x) of an entropic plan: gencore's streamed form against the dense one.

Group ``barycentric-projection-<size>-N<n>-D<d>``: n query points against n
target points uniform in [0, 1]^D, float32, blur 0.05 (eps = 0.0025, cost
|x - y|^2 / 2), the target's potential g and weights b given (random here: the
map's cost does not depend on them). Each contender computes

    T(x_i) = sum_j softmax_j(log b_j + (g_j - C_ij) / eps) y_j

* ``gencore``: ``gencore.ot.barycentric_projection(x, y, g, b, blur=0.05)``:
  the Sinkhorn softmin's kernel with its weighted-mean output, never n x n;
* ``torch-dense``: what a POT or GeomLoss (tensorized) user writes from the
  potentials: the dense cost (``torch.cdist``), a softmax over it and a matmul
  (``plan @ y / plan.sum(1)`` in POT's domain-adaptation mappings): n x n floats.

Sizes: quick 500, mid 5000, full 5000 and 20000 (the dense form holds two
20000 x 20000 float32 matrices there, 3.2 GB; gencore holds its tiles).
Every run's first 500 rows are compared with the dense form in float64 (``max_error``, next to
the dense float32 form's own, ``dense_max_error``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import gencore

BLUR = 0.05
SIZES = {"quick": (500,), "mid": (5000,), "full": (5000, 20_000)}
DIMS = (3, 64)
CONTENDERS = ("gencore", "torch-dense")
ROWS_CHECKED = 500   # rows compared with float64 after the timing


def inputs(n: int, d: int, seed: int = 20240611):
    rng = np.random.default_rng(seed + 13 * d + n)
    x = torch.from_numpy(rng.random((n, d), dtype=np.float32))
    y = torch.from_numpy(rng.random((n, d), dtype=np.float32))
    g = torch.from_numpy(rng.standard_normal(n, dtype=np.float32)) * 0.01
    b = torch.from_numpy(rng.random(n, dtype=np.float32) + 0.5)
    return x, y, g, b / b.sum()


def torch_dense(x, y, g, b):
    eps = BLUR ** 2
    cost = 0.5 * torch.cdist(x, y).square_()
    return torch.softmax(torch.log(b) + (g - cost) / eps, dim=1) @ y


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("d", DIMS, ids=lambda d: f"D{d}")
@pytest.mark.parametrize("n", sorted({n for sizes in SIZES.values() for n in sizes}), ids=lambda n: f"N{n}")
def test_barycentric_projection(benchmark, run_timed, bench_size, bench_threads, n, d, contender):
    if n not in SIZES[bench_size]:
        pytest.skip(f"N={n} is not a size of --bench-size {bench_size}")
    x, y, g, b = inputs(n, d)
    fn = {"gencore": lambda: gencore.ot.barycentric_projection(x, y, g, b, blur=BLUR),
          "torch-dense": lambda: torch_dense(x, y, g, b)}[contender]
    benchmark.group = f"barycentric-projection-{bench_size}-N{n}-D{d}"
    benchmark.extra_info.update(N=n, M=n, D=d, blur=BLUR, dtype="float32", contender=contender,
                                threads=bench_threads, simd=gencore.info()["simd"]["in_use"])
    outputs = []
    run_timed(lambda: outputs.append(fn()))
    # Against float64 on the first rows: both float32 forms carry the rounding of C / eps (at
    # D = 64 costs reach ~8000 eps, so ~1e-3 of the logits); gencore's must be no larger.
    want = torch_dense(x[:ROWS_CHECKED].double(), y.double(), g.double(), b.double())
    error = float((outputs[-1][:ROWS_CHECKED].double() - want).abs().max())
    dense_error = float((torch_dense(x[:ROWS_CHECKED], y, g, b).double() - want).abs().max())
    benchmark.extra_info.update(max_error=error, dense_max_error=dense_error)
    assert error <= 2 * dense_error + 1e-5, f"{contender}: T off by {error:.3g} (dense float32: {dense_error:.3g})"
