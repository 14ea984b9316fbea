"""Fixtures and helpers shared by every family's tests.

* ``rng``: a ``torch.Generator`` seeded from the test's node id, so every test
  draws its own inputs yet a failure reproduces exactly. The seed is printed
  in the failure report; set ``GENCORE_TEST_SEED`` to draw a different (but
  again reproducible) set of inputs for the whole session.
* ``cuda_only``: skip marker for tests that need a GPU and ``gencore._cuda``.
* ``supported_simd_levels()`` / ``simd_level``: every SIMD level this CPU
  supports, and a fixture parametrized over them that restores the previous
  level afterwards.
* ``reference_backend``: forces the pure-torch reference (GENCORE_BACKEND).
* ``on_a_busy_side_stream(source, call)``: the stream-order check of CUDA ops.
* Every test runs with gencore's thread count and SIMD level restored
  afterwards, so one test's settings never leak into the next.
"""
from __future__ import annotations

import os
import zlib

# torch and gencore._core each bring an OpenMP runtime; with the default
# (active) wait policy the idle threads of one spin while the other works,
# which on a small shared machine makes the suite several times slower. Set
# before torch is imported so both runtimes read it; results are unaffected.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import gencore  # noqa: E402
from gencore import _native  # noqa: E402

SIMD_LEVELS = _native.SIMD_LEVELS  # lowest first (avxvnni only where the CPU has AVX-VNNI)

cuda_only = pytest.mark.skipif(
    not torch.cuda.is_available() or _native.cuda is None,
    reason="needs a CUDA device and the gencore._cuda module",
)

native_cpu_only = pytest.mark.skipif(
    _native.core is None, reason="needs the compiled CPU module gencore._core"
)


def supported_simd_levels() -> list[str]:
    """SIMD levels this CPU can run, lowest first ([] without gencore._core)."""
    if _native.core is None:
        return []
    detected = _native.core.detected_simd_level()
    levels = SIMD_LEVELS[: SIMD_LEVELS.index(detected) + 1]
    # avxvnni is a level of its own only where the CPU has AVX-VNNI (elsewhere a cap there gives avx2)
    return [level for level in levels if level != "avxvnni" or _native.core.has_avx_vnni()]


def seed_for(nodeid: str) -> int:
    base = os.environ.get("GENCORE_TEST_SEED", "0")
    return zlib.crc32(f"{base}:{nodeid}".encode())


@pytest.fixture
def rng(request) -> torch.Generator:
    """A CPU generator seeded from the node id (see the module docstring)."""
    seed = seed_for(request.node.nodeid)
    request.node.gencore_seed = seed
    return torch.Generator().manual_seed(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "gencore_seed", None)
    if seed is not None and report.failed:
        report.sections.append((
            "gencore random inputs",
            f"rng seed {seed} = crc32('<GENCORE_TEST_SEED>:<node id>') with "
            f"GENCORE_TEST_SEED={os.environ.get('GENCORE_TEST_SEED', '0')!r}; "
            "rerunning the same node id draws the same inputs",
        ))


@pytest.fixture(autouse=True)
def _restore_runtime_settings():
    """Undo set_num_threads / set_simd_level made by a test."""
    threads = _native._num_threads
    level = _native.core.simd_level() if _native.core is not None else None
    yield
    _native._num_threads = threads
    if level is not None:
        _native.core.set_simd_level(level)


@pytest.fixture
def num_threads():
    """Call num_threads(n) to set gencore's thread count for this test only."""
    def set_(n: int) -> int:
        gencore.set_num_threads(n)
        return n
    return set_


@pytest.fixture(params=supported_simd_levels() or [pytest.param(None, marks=pytest.mark.skip(
    reason="no gencore._core: SIMD levels only exist in the native CPU module"))])
def simd_level(request):
    """Parametrized over the SIMD levels this CPU supports; sets the level for the
    test and restores the level in use before it (the detected one unless
    GENCORE_SIMD capped it) afterwards."""
    before = _native.core.simd_level()
    level = request.param
    assert gencore.set_simd_level(level) == level
    yield level
    gencore.set_simd_level(before)


@pytest.fixture
def reference_backend(monkeypatch):
    """Forces every op onto the pure-torch reference."""
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    yield "reference"


def on_a_busy_side_stream(source: torch.Tensor, call):
    """call(filled) on a side stream that is kept busy first (torch.cuda._sleep) and then
    writes `filled`, a copy of the CUDA tensor `source`; returns call's result once the stream
    is done. Work that call queues on any stream but the caller's current one reads `filled`
    before it is written, i.e. zeros, so comparing with call(source) shows it."""
    torch.cuda.synchronize()
    filled = torch.zeros_like(source)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles queued ahead on this stream
        filled.copy_(source)
        out = call(filled)
    stream.synchronize()
    return out
