"""Worker of test_distributed.py, in its own module so spawned children import
only torch and gencore (not pytest and the test module): start-up dominates
that test's time."""
from __future__ import annotations

import torch

from gencore.ot import distributed

from tests._distributed import WORLD, gloo_group, save  # noqa: F401 - WORLD is part of this module's interface

# name -> (points of x on rank 0, on rank 1, points of y on rank 0, on rank 1, dtype, options)
# options: "weights" (non-uniform a, b), "reach", "blur", "tol", "p", "divergence", "whitened",
# "massless_y1" (rank 1's weights of y all zero)
CASES = {
    "even-float32": (40, 40, 30, 30, torch.float32, {}),
    "even-float64-tol1e-7": (40, 40, 30, 30, torch.float64, {"tol": 1e-7}),
    "uneven-float32": (7, 61, 45, 3, torch.float32, {}),
    "uneven-weights-float64": (23, 9, 5, 40, torch.float64, {"weights": True}),
    "weights-float32": (25, 35, 50, 20, torch.float32, {"weights": True, "blur": 0.1}),
    "rank1-no-x-float64": (50, 0, 20, 25, torch.float64, {}),
    "rank0-no-y-float32": (30, 30, 0, 44, torch.float32, {"weights": True}),
    "unbalanced-float64": (30, 20, 10, 35, torch.float64, {"reach": 1.0, "weights": True}),
    "whitened-float64": (20, 25, 30, 15, torch.float64, {"whitened": True, "blur": 0.5}),
    "divergence-float64": (30, 14, 22, 31, torch.float64, {"divergence": True, "weights": True}),
    "divergence-float32": (26, 30, 40, 10, torch.float32, {"divergence": True}),
    "divergence-unbalanced-float64": (16, 20, 22, 9, torch.float64, {"divergence": True, "reach": 0.7}),
    "euclidean-uneven-float32": (9, 40, 33, 4, torch.float32, {"p": 1}),
    "euclidean-unbalanced-float64": (21, 17, 12, 30, torch.float64, {"p": 1, "reach": 1.0, "weights": True}),
    "euclidean-divergence-float64": (18, 22, 27, 11, torch.float64, {"p": 1, "divergence": True}),
    # rank 1's points of y carry no mass: its shard adds no term to any softmin
    "massless-shard-float64": (20, 15, 25, 12, torch.float64, {"weights": True, "massless_y1": True}),
}


def case_data(name):
    """(x shards, y shards, a shards or None, b shards or None, keyword arguments), the same in every process."""
    nx0, nx1, ny0, ny1, dtype, options = CASES[name]
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    centres = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.0, 0.5], [0.0, 1.5, -0.5]], dtype=dtype)
    x = centres[torch.randint(0, 3, (nx0 + nx1,), generator=g)] + 0.3 * torch.randn(nx0 + nx1, 3, generator=g,
                                                                                    dtype=dtype)
    y = centres[torch.randint(0, 2, (ny0 + ny1,), generator=g)] + 0.3 * torch.randn(ny0 + ny1, 3, generator=g,
                                                                                    dtype=dtype) + 0.2
    a = b = None
    if options.get("weights"):
        a = torch.rand(nx0 + nx1, generator=g, dtype=dtype) + 0.1
        b = torch.rand(ny0 + ny1, generator=g, dtype=dtype) + 0.1
        if options.get("massless_y1"):
            b[ny0:] = 0.0
        a, b = a / a.sum(), b / b.sum()
    kwargs = {"blur": options.get("blur", 0.2)}
    kwargs.update({k: options[k] for k in ("reach", "tol", "p") if k in options})
    if options.get("whitened"):
        m = torch.randn(3, 3, generator=g, dtype=dtype)
        kwargs.update(cost="whitened", whitening=m @ m.T + 0.5 * torch.eye(3, dtype=dtype))

    def split(t, n0):
        return None if t is None else (t[:n0], t[n0:])

    return split(x, nx0), split(y, ny0), split(a, nx0), split(b, ny0), kwargs


def _call(name, rank):
    """The divergence, or the SinkhornResult as a dict (what torch.load(weights_only=True) reads back)."""
    xs, ys, a_s, b_s, kwargs = case_data(name)
    fn = distributed.sinkhorn_divergence if CASES[name][5].get("divergence") else distributed.sinkhorn
    out = fn(xs[rank], ys[rank], None if a_s is None else a_s[rank], None if b_s is None else b_s[rank], **kwargs)
    return out if isinstance(out, torch.Tensor) else dict(vars(out))


#: Cases whose gradients are checked: every local input that can have one requires grad.
GRADIENT_CASES = ("uneven-weights-float64", "whitened-float64", "divergence-float64", "massless-shard-float64",
                  "divergence-unbalanced-float64", "euclidean-divergence-float64", "divergence-float32")


def gradient_inputs(name, rank=None):
    """(x, y, a, b, kwargs) requiring grad: rank's shards, or (rank None) the concatenated clouds."""
    xs, ys, a_s, b_s, kwargs = case_data(name)
    pick = (lambda parts: torch.cat(parts)) if rank is None else (lambda parts: parts[rank])
    x, y = pick(xs).clone().requires_grad_(), pick(ys).clone().requires_grad_()
    balanced = "reach" not in kwargs
    a = None if a_s is None else pick(a_s).clone().requires_grad_(balanced)
    b = None if b_s is None else pick(b_s).clone().requires_grad_(balanced)
    if "whitening" in kwargs:
        kwargs["whitening"] = kwargs["whitening"].clone().requires_grad_()
    return x, y, a, b, kwargs


def _gradients(name, rank):
    x, y, a, b, kwargs = gradient_inputs(name, rank)
    fn = distributed.sinkhorn_divergence if CASES[name][5].get("divergence") else distributed.sinkhorn
    out = fn(x, y, a, b, **kwargs)
    (out if isinstance(out, torch.Tensor) else out.cost).backward()
    w = kwargs.get("whitening")
    return {"x": x.grad, "y": y.grad, "a": None if a is None else a.grad, "b": None if b is None else b.grad,
            "whitening": None if w is None else w.grad}


def _error(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def run(rank, init_file, out_dir):
    with gloo_group(rank, init_file):
        results = {name: _call(name, rank) for name in CASES}
        results["gradients"] = {name: _gradients(name, rank) for name in GRADIENT_CASES}
        xs, ys, _, _, kwargs = case_data("even-float32")
        x, y = xs[rank], ys[rank]
        errors = {
            # rank 1 passes 2-D points, rank 0 3-D ones
            "dims": _error(lambda: distributed.sinkhorn(x if rank == 0 else x[:, :2], y if rank == 0 else y[:, :2])),
            # NaN on rank 1 only: both ranks raise
            "nan": _error(lambda: distributed.sinkhorn(x, y if rank == 0 else torch.full_like(y, float("nan")))),
            # a_local given on rank 0 only
            "weights-on-one-rank": _error(lambda: distributed.sinkhorn(
                x, y, torch.full((x.shape[0],), 1.0 / 80) if rank == 0 else None)),
            # no point of x anywhere
            "empty": _error(lambda: distributed.sinkhorn(x[:0], y)),
            # masses differ: a sums to 2
            "unbalanced-mass": _error(lambda: distributed.sinkhorn(x, y, torch.full((x.shape[0],), 1.0 / 40),
                                                                   torch.full((y.shape[0],), 1.0 / 60))),
            # a gradient to the weights of unbalanced OT (rank 0 asks for it)
            "unbalanced-weight-grad": _error(lambda: distributed.sinkhorn(
                x, y, torch.full((x.shape[0],), 1.0 / 80).requires_grad_(rank == 0), reach=1.0)),
        }
        # streaming: every softmin the rank runs sees one visiting shard, never a whole cloud
        seen = []
        inner = distributed._softmin

        def recording(points, other, *rest):
            seen.append(other.shape[0])
            return inner(points, other, *rest)

        distributed._softmin = recording
        try:
            _call("uneven-float32", rank)
        finally:
            distributed._softmin = inner
        results["visiting-sizes"] = sorted(set(seen))
        # the group still works after every error (no rank was left waiting)
        results["after-errors"] = distributed.sinkhorn(x, y, **kwargs).cost
        results["errors"] = errors
        save(results, rank, out_dir)
