"""Logit scores and residual / ViM: gencore against the straightforward torch code.

One group per score and size, ``logits-<score>-<size>``, holds gencore and the
torch expression a user would write (OpenOOD's formulas in torch), on the same
float32 data and thread count:

    msp        torch.softmax(x / T, 1).amax(1)
    energy     T * torch.logsumexp(x / T, 1)
    max_logit  x.amax(1)
    gen        softmax, topk(M) (sort in OpenOOD), -(p^g (1 - p)^g).sum(1)
    kl         log_softmax, templates.log()[argmax], -(p (log p - log d)).sum(1)
    residual   -||xc - (xc P) P^T||, xc = x - u          (torch: two GEMMs)
               -||xc NS||, NS the [D, D - R] complement  (torch-ns: OpenOOD's one GEMM)
    vim        logsumexp(l) - alpha * residual, both torch variants

Sizes: logits N x C (quick 20k x 100, mid 100k x 1000, full 200k x 1000);
features N x D with principal dimension R (quick 20k x 256, R 128; mid 100k x
512, R 256; full 200k x 512, R 256). Every contender is checked against the
float64 reference on the first 2000 rows before it is timed.

Run (size and threads are bench/conftest.py's options):

    python -m pytest bench/ood/bench_logits.py --bench-size quick|mid|full --bench-threads 2
"""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore import ood
from gencore.ood import reference

SIZES = {
    "quick": {"n": 20_000, "c": 100, "d": 256, "r": 128},
    "mid": {"n": 100_000, "c": 1000, "d": 512, "r": 256},
    "full": {"n": 200_000, "c": 1000, "d": 512, "r": 256},
}
DATA_SEED = 20240611
CHECK_ROWS = 2000
TEMPERATURE, GAMMA, TOP_M, ALPHA = 1.5, 0.1, 100, 0.8


# --- data (size, threads and timing come from bench/conftest.py: bench_size,
# bench_threads, run_timed)

class Data:
    """Fixed-seed float32 logits, templates and ViM problem of one size."""

    def __init__(self, name: str, n: int, c: int, d: int, r: int):
        g = torch.Generator().manual_seed(DATA_SEED)
        self.name, self.n, self.c, self.d, self.r = name, n, c, d, r
        self.logits = torch.randn(n, c, generator=g) * 3.0
        self.logits[torch.arange(n), torch.randint(0, c, (n,), generator=g)] += 6.0  # a predicted class
        self.templates = ood.kl_matching_templates(self.logits[: min(n, 20_000)])
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.principal = q[:, :r].float().contiguous()
        self.complement = q[:, r:].float().contiguous()  # OpenOOD's NS
        self.center = torch.randn(d, generator=g)
        scales = torch.linspace(2.0, 0.2, d)
        self.features = torch.randn(n, d, generator=g) * scales + self.center
        self.vim_logits = self.logits

    def sizes(self) -> dict:
        return {"size": self.name, "N": self.n, "C": self.c, "D": self.d, "R": self.r, "top_m": TOP_M}


_data: dict = {}


@pytest.fixture(scope="module")
def data(bench_size) -> Data:
    if bench_size not in _data:
        _data[bench_size] = Data(bench_size, **SIZES[bench_size])
    return _data[bench_size]


# --- contenders: name -> fn(data) -> [N] scores

def _torch_gen(x):
    p = torch.softmax(x, dim=1)
    if TOP_M < p.shape[1]:
        p = torch.topk(p, TOP_M, dim=1, sorted=False).values
    return -(p.pow(GAMMA) * (1 - p).pow(GAMMA)).sum(dim=1)


def _torch_kl(x, templates):
    """-min_k KL(p || d_k) = max_k sum_c p_c log d_kc - sum_c p_c log p_c (one GEMM)."""
    log_p = torch.log_softmax(x, dim=1)
    p = log_p.exp()
    log_d = templates.log().clamp_min(torch.finfo(x.dtype).min)
    return (p @ log_d.T).amax(dim=1) - (p * log_p).sum(dim=1)


def _torch_residual(dt):
    xc = dt.features - dt.center
    return -torch.linalg.vector_norm(xc - (xc @ dt.principal) @ dt.principal.T, dim=1)


def _torch_ns_residual(dt):
    return -torch.linalg.vector_norm((dt.features - dt.center) @ dt.complement, dim=1)


CONTENDERS = {
    "msp": {
        "gencore": lambda dt: ood.msp(dt.logits, TEMPERATURE),
        "torch": lambda dt: torch.softmax(dt.logits / TEMPERATURE, dim=1).amax(dim=1),
    },
    "energy": {
        "gencore": lambda dt: ood.energy(dt.logits, TEMPERATURE),
        "torch": lambda dt: TEMPERATURE * torch.logsumexp(dt.logits / TEMPERATURE, dim=1),
    },
    "max_logit": {
        "gencore": lambda dt: ood.max_logit(dt.logits),
        "torch": lambda dt: dt.logits.amax(dim=1),
    },
    "gen": {
        "gencore": lambda dt: ood.gen(dt.logits, GAMMA, TOP_M),
        "torch": lambda dt: _torch_gen(dt.logits),
    },
    "kl_matching": {
        "gencore": lambda dt: ood.kl_matching(dt.logits, dt.templates),
        "torch": lambda dt: _torch_kl(dt.logits, dt.templates),
    },
    "residual": {
        "gencore": lambda dt: ood.residual(dt.features, dt.principal, dt.center),
        "torch": _torch_residual,
        "torch-ns": _torch_ns_residual,
    },
    "vim": {
        "gencore": lambda dt: ood.vim(dt.features, dt.vim_logits, dt.principal, dt.center, ALPHA),
        "torch": lambda dt: torch.logsumexp(dt.vim_logits, dim=1) + ALPHA * _torch_residual(dt),
        "torch-ns": lambda dt: torch.logsumexp(dt.vim_logits, dim=1) + ALPHA * _torch_ns_residual(dt),
    },
}


def _oracle(score, dt, rows):
    x = dt.logits[:rows].double()
    if score == "msp":
        return reference.msp(x, TEMPERATURE)
    if score == "energy":
        return reference.energy(x, TEMPERATURE)
    if score == "max_logit":
        return reference.max_logit(x)
    if score == "gen":
        return reference.gen(x, GAMMA, TOP_M)
    if score == "kl_matching":
        return reference.kl_matching_min(x, dt.templates.double())
    f, p, u = dt.features[:rows].double(), dt.principal.double(), dt.center.double()
    if score == "residual":
        return reference.residual(f, p, u)
    return reference.vim(f, dt.vim_logits[:rows].double(), p, u, ALPHA)


_checked: set = set()


def check(score, contender, dt):
    """The contender's first CHECK_ROWS scores against the float64 reference (1e-4 relative to the scale)."""
    key = (score, contender, dt.name)
    if key in _checked:
        return
    got = CONTENDERS[score][contender](dt)[:CHECK_ROWS].double()
    want = _oracle(score, dt, CHECK_ROWS)
    scale = float(want.abs().max()) + 1.0
    err = float((got - want).abs().max())
    assert err <= 1e-4 * scale, f"{contender} {score}: max |error| {err:.3g} vs the float64 reference (scale {scale:.3g})"
    _checked.add(key)


@pytest.mark.parametrize("score,contender", [(s, c) for s, cs in CONTENDERS.items() for c in cs])
def test_logits(benchmark, run_timed, bench_size, bench_threads, data, score, contender):
    check(score, contender, data)
    fn = CONTENDERS[score][contender]
    benchmark.group = f"logits-{score}-{bench_size}"
    benchmark.extra_info.update(data.sizes())
    benchmark.extra_info.update({
        "contender": contender,
        "threads": bench_threads,
        "backend": gencore.info()["backends"]["ood"]["cpu"],
        "simd": gencore.info()["simd"]["in_use"],
        "temperature": TEMPERATURE if score in ("msp", "energy") else None,
    })
    run_timed(lambda: fn(data))
