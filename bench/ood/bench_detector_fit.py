"""Fitting MahalanobisDetector by streaming partial_fit vs scikit-learn in memory.

Group ``detector-fit``:

* ``generate-only``: producing the chunks, nothing else (the stream's data
  cost, to subtract from the next line);
* ``gencore-partial_fit``: ``MahalanobisDetector().partial_fit`` over chunks
  generated on the fly (the full data set never exists in memory), then the
  tied covariance and its precision factor;
* ``sklearn-EmpiricalCovariance``: the same estimate with the whole data set
  in memory: class means by numpy, then ``EmpiricalCovariance`` on the class
  residuals, the scikit-learn way to get Lee et al.'s tied covariance. Skipped
  with a reason when the data set would not fit comfortably in memory.

Sizes (``--bench-size`` of bench/conftest.py, default quick): quick 20k x 64
(CI), mid 100k x 256, full 200k x 512; 10 classes, chunks of 10k rows,
float32 features. Threads: ``--bench-threads`` (default 2) for gencore,
torch and the BLAS pools. Correctness is checked against the peer before
anything is timed.

    python -m pytest bench/ood/bench_detector_fit.py --bench-size full
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import gencore
from gencore.ood import MahalanobisDetector

sk_covariance = pytest.importorskip("sklearn.covariance")

SIZES = {"quick": (20_000, 64), "mid": (100_000, 256), "full": (200_000, 512)}
CLASSES = 10
CHUNK = 10_000
SEED = 20240611


def chunks(n: int, d: int):
    """Yields (features [<=CHUNK, d] float32, labels) chunk by chunk, each from its own seed.

    Class c is N(μ_c, A Aᵀ) with one shared random A, so the tied covariance is the model.
    """
    g = torch.Generator().manual_seed(SEED)
    means = 3.0 * torch.randn(CLASSES, d, generator=g)
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)
    for i, start in enumerate(range(0, n, CHUNK)):
        rows = min(CHUNK, n - start)
        g = torch.Generator().manual_seed(SEED + 1 + i)
        labels = torch.randint(0, CLASSES, (rows,), generator=g)
        yield torch.randn(rows, d, generator=g) @ mix + means[labels], labels


def fit_stream(n: int, d: int) -> MahalanobisDetector:
    detector = MahalanobisDetector(num_classes=CLASSES)
    for x, labels in chunks(n, d):
        detector.partial_fit(x, labels)
    detector._ready()            # the tied covariance and its precision factor, as score() would
    return detector


def generate_only(n: int, d: int) -> int:
    return sum(x.shape[0] for x, _ in chunks(n, d))


def in_memory(n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    parts = list(chunks(n, d))
    return torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy()


def sklearn_tied(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels, minlength=CLASSES).astype(np.float64)
    sums = np.zeros((CLASSES, x.shape[1]))
    np.add.at(sums, labels, x)
    residuals = x - (sums / counts[:, None])[labels]
    return sk_covariance.EmpiricalCovariance(store_precision=False).fit(residuals).covariance_


def peer_memory_bytes(n: int, d: int) -> int:
    # float32 data + float64 residuals + scikit-learn's float64 centred copy.
    return n * d * (4 + 8 + 8)


def available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


@pytest.fixture(scope="module")
def size(request):
    name = request.config.getoption("--bench-size", default="quick")
    return name, SIZES[name]


@pytest.fixture(scope="module")
def threads(request):
    """One thread count for gencore, torch and the numpy/scikit-learn BLAS pools."""
    n = request.config.getoption("--bench-threads", default=2)
    old_torch, old_gencore = torch.get_num_threads(), gencore._native._num_threads
    gencore.set_num_threads(n)
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(n)
    except ImportError:
        limiter = None
    yield n
    if limiter is not None:
        limiter.restore_original_limits()
    torch.set_num_threads(old_torch)
    gencore._native._num_threads = old_gencore


def timed(benchmark, size_name, fn):
    if size_name == "quick":
        return benchmark(fn)
    return benchmark.pedantic(fn, rounds=2, iterations=1, warmup_rounds=0)


def extra(benchmark, size, threads, **more):
    name, (n, d) = size
    benchmark.extra_info.update({"size": name, "N": n, "D": d, "classes": CLASSES, "chunk": CHUNK,
                                 "threads": threads, **more})


def assert_same_covariance(ours: np.ndarray, expected: np.ndarray) -> None:
    """Within the float32 fast path's stated accuracy (ClassStatistics.update): each entry
    within 2e-5 of sqrt(S_aa S_bb) (scikit-learn computes in float64)."""
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert float(np.max(np.abs(ours - expected) / scale)) <= 2e-5


def test_correctness_before_timing(threads):
    """gencore's streamed tied covariance equals scikit-learn's in-memory one (quick size)."""
    n, d = SIZES["quick"]
    detector = fit_stream(n, d)
    expected = sklearn_tied(*in_memory(n, d))
    assert_same_covariance(detector.statistics.tied_covariance().numpy(), expected)


@pytest.mark.benchmark(group="detector-fit")
def test_generate_only(benchmark, size, threads):
    name, (n, d) = size
    extra(benchmark, size, threads, contender="generate-only", what="chunk generation alone")
    assert timed(benchmark, name, lambda: generate_only(n, d)) == n


@pytest.mark.benchmark(group="detector-fit")
def test_gencore_partial_fit(benchmark, size, threads):
    name, (n, d) = size
    extra(benchmark, size, threads, contender="gencore", what="partial_fit over generated chunks + precision factor",
          peak_data_bytes=CHUNK * d * 4)
    detector = timed(benchmark, name, lambda: fit_stream(n, d))
    assert detector.statistics.n == n
    assert detector.precision_factor.shape == (d, d)


@pytest.mark.benchmark(group="detector-fit")
def test_sklearn_empirical_covariance(benchmark, size, threads):
    name, (n, d) = size
    need, have = peer_memory_bytes(n, d), available_memory_bytes()
    if have and need > have // 2:
        pytest.skip(f"scikit-learn needs the data in memory (~{need / 2**30:.1f} GiB), "
                    f"only {have / 2**30:.1f} GiB available")
    x, labels = in_memory(n, d)
    extra(benchmark, size, threads, contender="scikit-learn",
          what="class means + EmpiricalCovariance on residuals, data in memory",
          peak_data_bytes=need)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covariance = timed(benchmark, name, lambda: sklearn_tied(x, labels))
    # Same answer as the stream (checked at this size, not only at quick).
    ours = fit_stream(n, d).statistics.tied_covariance().numpy()
    assert_same_covariance(ours, covariance)
