"""Every gencore detector against pytorch-ood's, fit and score, same data and threads.

Groups ``detectors-<detector>-<phase>-<size>`` hold two contenders each
(``extra_info["contender"]``: "gencore" or "pytorch-ood"), so ``gencore
bench`` prints peer/gencore ratios (> 1: gencore is faster):

    detector            gencore                               pytorch-ood 0.4.0 (its defaults)
    mahalanobis         MahalanobisDetector()                 Mahalanobis(None)
    relative-mahalanobis RelativeMahalanobisDetector()        RMD(None)
    knn                 KNNDetector(k=50)                     KNN(None, k=50) (scikit-learn brute force)
    vim                 ViMDetector(W, b, dim=D // 2)         ViM(None, d=D // 2, w=W, b=b)
    energy              EnergyDetector()                      EnergyBased(None)
    msp                 MSPDetector()                         MaxSoftmax(None)
    max-logit           MaxLogitDetector()                    MaxLogit(None)

``fit`` is fit_features for the peer and includes everything the first score
needs (precision factors, subspaces); the logit scores have nothing to fit
(both libraries' fit is a no-op), so they only have a ``score`` group.

Sizes (``--bench-size`` of bench/conftest.py): features N x D with C classes,
logits N x L, kNN queries Q against the N-row bank:

    quick   N 20k,  D 64,  C 10,  L 100,  Q 1000
    mid     N 100k, D 256, C 100, L 1000, Q 2000
    full    N 200k, D 512, C 100, L 1000, Q 10000

Features are float32 Gaussian classes with per-feature scales; ViM's head is
the nearest-mean classifier of those classes; logits are float32 normals
with one raised class per row. The Mahalanobis-family and ViM scores score
all N training rows. Threads: ``--bench-threads`` for gencore, torch (which
runs pytorch-ood), the BLAS pools, and the peer's scikit-learn kNN
(``n_jobs``). Before anything is timed, ``test_agreement_before_timing``
checks at quick size that each pair ranks inputs alike (Pearson >= 0.9999 of
the outlier scores); the peer is skipped, with the reason, where pytorch-ood
is not installed. At mid and full size the peer's Mahalanobis and relative
Mahalanobis scores (a loop over the C classes with one [N, D] x [D, D] GEMM
each) and its kNN score take about a minute per call at full size, so they
run one round; every other contender runs bench/conftest.py's rounds.

The SIMD level is gencore's detected one unless GENCORE_SIMD caps it (read
at import; recorded in ``extra_info["simd"]``):

    python -m pytest bench/ood/bench_detectors.py --bench-size full --bench-threads 2
    GENCORE_SIMD=avx2 python -m pytest bench/ood/bench_detectors.py --bench-size full --bench-threads 2
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from gencore import _native
from gencore.ood import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                         RelativeMahalanobisDetector, ViMDetector)

SIZES = {
    "quick": {"n": 20_000, "d": 64, "classes": 10, "logit_classes": 100, "queries": 1_000},
    "mid": {"n": 100_000, "d": 256, "classes": 100, "logit_classes": 1000, "queries": 2_000},
    "full": {"n": 200_000, "d": 512, "classes": 100, "logit_classes": 1000, "queries": 10_000},
}
DATA_SEED = 20261201
K = 50
MIN_PEARSON = 0.9999
PEER = "pytorch-ood"
FEATURE_DETECTORS = ("mahalanobis", "relative-mahalanobis", "knn", "vim")
LOGIT_DETECTORS = ("energy", "msp", "max-logit")
# About a minute per call at full size: C GEMMs of [N, D] x [D, D] (Mahalanobis), brute-force kNN
SLOW_PEER_SCORES = ("mahalanobis", "relative-mahalanobis", "knn")


def _load_peer_helper():
    """bench/ood/_pytorch_ood.py, beside this file both in the source tree and in an
    install (gencore/bench/ood), loaded by path: the suites are not a package."""
    path = Path(__file__).resolve().parent / "_pytorch_ood.py"
    spec = importlib.util.spec_from_file_location("_gencore_bench_pytorch_ood", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_peer_helper = _load_peer_helper()


@pytest.fixture(scope="session")
def peer():
    """pytorch_ood.detector, or a skip with the reason."""
    return _peer_helper.detectors_or_skip()


# ----------------------------------------------------------------------------- data

class Data:
    """Fixed-seed float32 features, labels, a linear head, kNN queries and logits of one size."""

    def __init__(self, name: str, n: int, d: int, classes: int, logit_classes: int, queries: int):
        g = torch.Generator().manual_seed(DATA_SEED)
        self.name, self.sizes = name, {"N": n, "D": d, "C": classes, "L": logit_classes, "Q": queries}
        means = 2.0 * torch.randn(classes, d, generator=g)
        scales = torch.linspace(0.5, 2.0, d)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.features = torch.randn(n, d, generator=g) * scales + means[self.labels]
        self.queries = torch.randn(queries, d, generator=g) * scales + means[torch.randint(0, classes, (queries,),
                                                                                           generator=g)]
        self.weight = means.clone()                                  # nearest-mean head: W x + b
        self.bias = -0.5 * (means * means).sum(1)
        self.logits = torch.randn(n, logit_classes, generator=g) * 3.0
        self.logits[torch.arange(n), torch.randint(0, logit_classes, (n,), generator=g)] += 6.0
        self.dim = d // 2                                            # ViM's principal dimension


_data: dict = {}


def data_for(size: str) -> Data:
    if size not in _data:
        _data[size] = Data(size, **SIZES[size])
    return _data[size]


@pytest.fixture(scope="module")
def data(bench_size) -> Data:
    return data_for(bench_size)


# ----------------------------------------------------------------------------- contenders
# Each contender: fit(data) -> fitted object; score(obj, data) -> OUTLIER scores (higher = more OOD),
# the peer's convention, so the agreement check compares like with like.

def _gencore_factory(name: str, data: Data):
    return {
        "mahalanobis": MahalanobisDetector,
        "relative-mahalanobis": RelativeMahalanobisDetector,
        "knn": lambda: KNNDetector(k=K),
        "vim": lambda: ViMDetector(data.weight, data.bias, dim=data.dim),
        "energy": EnergyDetector,
        "msp": MSPDetector,
        "max-logit": MaxLogitDetector,
    }[name]()


def gencore_fit(name: str, data: Data):
    detector = _gencore_factory(name, data)
    if name in ("mahalanobis", "relative-mahalanobis"):
        return detector.fit(data.features, data.labels)
    if name in ("knn", "vim"):
        return detector.fit(data.features)
    return detector


def gencore_score(name: str, detector, data: Data) -> torch.Tensor:
    if name == "knn":
        return detector.ood_score(data.queries)
    if name in LOGIT_DETECTORS:
        return detector.ood_score(logits=data.logits)
    return detector.ood_score(data.features)


def peer_fit(peer, name: str, data: Data, threads: int):
    if name == "mahalanobis":
        return peer.Mahalanobis(None).fit_features(data.features, data.labels)
    if name == "relative-mahalanobis":
        return peer.RMD(None).fit_features(data.features, data.labels)
    if name == "knn":
        detector = peer.KNN(None, k=K)
        detector.knn.n_jobs = threads          # its default n_jobs=-1 would take every core
        return detector.fit_features(data.features, data.labels)
    if name == "vim":
        return peer.ViM(None, d=data.dim, w=data.weight, b=data.bias).fit_features(data.features, data.labels)
    return {"energy": peer.EnergyBased, "msp": peer.MaxSoftmax, "max-logit": peer.MaxLogit}[name](None)


def peer_score(name: str, detector, data: Data) -> torch.Tensor:
    if name == "knn":
        return detector.predict_features(data.queries)
    if name in LOGIT_DETECTORS:
        return detector.predict_logits(data.logits)
    return detector.predict_features(data.features)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def extra(benchmark, data: Data, threads: int, name: str, phase: str, contender: str, rounds=None) -> None:
    benchmark.extra_info.update({
        "contender": contender, "detector": name, "phase": phase, "size": data.name, **data.sizes, "k": K,
        "threads": threads, "simd": _native.core.simd_level() if _native.core is not None else "none",
        **({"peer_version": _peer_helper.version()} if contender == PEER else {}),
        **({"rounds": rounds} if rounds else {}),
    })


def timed(benchmark, run_timed, bench_size, fn, *, slow: bool):
    if slow and bench_size != "quick":
        return benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    return run_timed(fn)


# ----------------------------------------------------------------------------- correctness first

@pytest.mark.parametrize("name", FEATURE_DETECTORS + LOGIT_DETECTORS)
def test_agreement_before_timing(name, peer, bench_threads):
    """Same data, same ranking: Pearson >= 0.9999 of the outlier scores (quick size)."""
    data = data_for("quick")
    ours = gencore_score(name, gencore_fit(name, data), data)
    theirs = peer_score(name, peer_fit(peer, name, data, bench_threads), data)
    assert ours.shape == theirs.shape
    assert pearson(ours, theirs) >= MIN_PEARSON


# ----------------------------------------------------------------------------- timings

@pytest.mark.parametrize("contender", ["gencore", PEER])
@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_fit(benchmark, run_timed, bench_size, bench_threads, data, request, name, contender):
    benchmark.group = f"detectors-{name}-fit-{bench_size}"
    if contender == PEER:
        peer_module = request.getfixturevalue("peer")
        fn = lambda: peer_fit(peer_module, name, data, bench_threads)  # noqa: E731
    else:
        fn = lambda: gencore_fit(name, data)  # noqa: E731
    extra(benchmark, data, bench_threads, name, "fit", contender)
    assert timed(benchmark, run_timed, bench_size, fn, slow=False) is not None


_fitted: dict = {}


def fitted(name: str, contender: str, data: Data, threads: int, peer_module=None):
    key = (name, contender, data.name)
    if key not in _fitted:
        _fitted[key] = (gencore_fit(name, data) if contender == "gencore"
                        else peer_fit(peer_module, name, data, threads))
    return _fitted[key]


@pytest.mark.parametrize("contender", ["gencore", PEER])
@pytest.mark.parametrize("name", FEATURE_DETECTORS + LOGIT_DETECTORS)
def test_score(benchmark, run_timed, bench_size, bench_threads, data, request, name, contender):
    benchmark.group = f"detectors-{name}-score-{bench_size}"
    peer_module = request.getfixturevalue("peer") if contender == PEER else None
    detector = fitted(name, contender, data, bench_threads, peer_module)
    score = peer_score if contender == PEER else gencore_score
    slow = contender == PEER and name in SLOW_PEER_SCORES
    extra(benchmark, data, bench_threads, name, "score", contender,
          rounds=1 if slow and bench_size != "quick" else None)
    with torch.no_grad():
        scores = timed(benchmark, run_timed, bench_size, lambda: score(name, detector, data), slow=slow)
    rows = data.sizes["Q"] if name == "knn" else data.sizes["N"]
    assert scores.shape == (rows,) and bool(torch.isfinite(scores).all())
