"""Shared setup of the benchmark suites: sizes, threads, data, collection.

Run explicitly (pyproject's testpaths only name tests/):

    python -m pytest bench --bench-size quick|mid|full --bench-threads N
    python -m pytest bench --benchmark-disable      # correctness only, seconds

Files named ``bench_*.py`` are collected here, so the suites need no
``__init__.py`` and no change to the project's pytest settings.

Convention for every benchmark (``gencore bench`` builds its table from it):
peers share a ``benchmark.group``, and each test names itself in
``benchmark.extra_info["contender"]`` ("gencore" for ours; the ratio column is
relative to it). A benchmark that passes without a contender fails here, so
the convention cannot drift. The suites also ship inside the package as
``gencore/bench`` (pyproject's ``wheel.packages``).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

# Q queries, N bank rows, D features, k neighbours. "full" is the goal size of
# the kNN issue; "mid" is the same bank with 1000 queries, practical on a laptop.
SIZES = {
    "quick": {"q": 500, "n": 20_000, "d": 128, "k": 10},
    "mid": {"q": 1_000, "n": 100_000, "d": 512, "k": 50},
    "full": {"q": 10_000, "n": 100_000, "d": 512, "k": 50},
}
# Rounds for the slow sizes (one call takes seconds there); quick uses
# pytest-benchmark's own calibration.
PEDANTIC_ROUNDS = {"mid": 3, "full": 3}
DATA_SEED = 20240611


def pytest_addoption(parser):
    group = parser.getgroup("gencore-bench", "gencore benchmark suites")
    group.addoption("--bench-size", choices=tuple(SIZES), default="quick",
                    help="problem size of the benchmark suites (default: quick)")
    group.addoption("--bench-threads", type=int, default=2,
                    help="threads for gencore and every peer (default: 2)")


def pytest_collect_file(file_path, parent):
    # Explicitly named files are already collected by the python plugin.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    bench = item.funcargs.get("benchmark") if call.when == "call" else None
    if bench is not None and report.passed and not bench.extra_info.get("contender"):
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: set benchmark.extra_info['contender'] (e.g. 'gencore' or the "
                           "peer's name): gencore bench labels and compares rows by it (see bench/conftest.py)")


def pytest_report_header(config):
    size = config.getoption("--bench-size")
    return f"gencore bench: size={size} {SIZES[size]} threads={config.getoption('--bench-threads')}"


@pytest.fixture(scope="session")
def bench_size(request) -> str:
    return request.config.getoption("--bench-size")


@pytest.fixture(scope="session")
def bench_threads(request):
    """Sets one thread count for gencore, torch, faiss and the BLAS pools."""
    import gencore
    import torch

    n = request.config.getoption("--bench-threads")
    if n < 1:
        raise pytest.UsageError(f"--bench-threads must be >= 1, got {n}")
    gencore.set_num_threads(n)
    old_torch = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limiter = None
    else:
        limiter = threadpool_limits(n)  # numpy's and scikit-learn's BLAS / OpenMP pools
    yield n
    if limiter is not None:
        limiter.restore_original_limits()
    torch.set_num_threads(old_torch)


class Problem:
    """One data set: float32 C-contiguous numpy arrays and torch views of the same memory."""

    def __init__(self, name: str, q: int, n: int, d: int, k: int, seed: int = DATA_SEED):
        import torch

        rng = np.random.default_rng(seed)
        self.name, self.q, self.n, self.d, self.k = name, q, n, d, k
        self.bank_np = rng.standard_normal((n, d), dtype=np.float32)
        self.queries_np = rng.standard_normal((q, d), dtype=np.float32)
        self.bank = torch.from_numpy(self.bank_np)
        self.queries = torch.from_numpy(self.queries_np)
        assert self.bank.data_ptr() == self.bank_np.ctypes.data

    def sizes(self) -> dict:
        return {"size": self.name, "Q": self.q, "N": self.n, "D": self.d, "k": self.k}


_problems: dict = {}


def problem(name: str) -> Problem:
    """The session's data for size ``name``, generated once with a fixed seed."""
    if name not in _problems:
        _problems[name] = Problem(name, **SIZES[name])
    return _problems[name]


@pytest.fixture(scope="session")
def bench_data(bench_size) -> Problem:
    return problem(bench_size)


@pytest.fixture(scope="session")
def quick_data() -> Problem:
    """The quick data set, on which every contender is checked before it is timed."""
    return problem("quick")


@pytest.fixture
def run_timed(benchmark, bench_size):
    """Times ``fn`` with calibration at quick size, a few fixed rounds at the slow sizes."""

    def run(fn):
        if bench_size in PEDANTIC_ROUNDS:
            return benchmark.pedantic(fn, rounds=PEDANTIC_ROUNDS[bench_size], iterations=1, warmup_rounds=0)
        return benchmark(fn)

    return run


# A small python that starts a memory probe: the probe inherits this process's
# RSS high-water mark, not pytest's (on Linux a child starts with its parent's
# mark: fork copies it, exec folds it into ru_maxrss).
_PROBE_LAUNCHER = ("import subprocess, sys; "
                   "sys.exit(subprocess.run([sys.executable, *sys.argv[1:]], timeout=100).returncode)")


# What every probe starts with: its integer arguments ARGS (the last one the
# thread count, set for gencore and torch), maxrss() in bytes, report(**fields).
_PROBE_PRELUDE = r"""
import json, resource, sys
import numpy as np, torch, gencore

ARGS = [int(a) for a in sys.argv[1:]]
gencore.set_num_threads(ARGS[-1])
torch.set_num_threads(ARGS[-1])

def maxrss():  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def report(**fields):
    print(json.dumps(fields))
"""


@pytest.fixture(scope="session")
def rss_probe():
    """Runs a probe script once per argument list (integers, the thread count
    last), each in a fresh process started through a small launcher (all at
    once), and returns the JSON object each printed on its last line. The
    script runs after _PROBE_PRELUDE (ARGS, maxrss(), report()) and measures the
    rise of ``maxrss()`` across the call it studies, then across a control
    allocation it reports as control_extra (the rise) and control_bytes (its
    size): a probe that cannot see the control is not trustworthy here."""

    def run(script: str, arg_lists, timeout: float = 120) -> list:
        code = _PROBE_PRELUDE + script
        procs = [subprocess.Popen([sys.executable, "-c", _PROBE_LAUNCHER, "-c", code, *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in arg_lists]
        reports = []
        for args, proc in zip(arg_lists, procs):
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
            if proc.returncode != 0:
                pytest.fail(f"memory probe {list(args)} failed (exit {proc.returncode}):\n{stderr[-4000:]}")
            r = json.loads(stdout.strip().splitlines()[-1])
            # The probe sees a large allocation when there is one (the pages it touched).
            assert r["control_extra"] >= 0.5 * r["control_bytes"], (
                f"memory probe {list(args)}: the rss probe missed a {r['control_bytes'] / 2**20:.0f} MiB control "
                f"allocation (saw {r['control_extra'] / 2**20:.1f} MiB); the measurement is not trustworthy here")
            reports.append(r)
        return reports

    return run
