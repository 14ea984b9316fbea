"""Command line: ``gencore info | demo | bench`` (also ``python -m gencore``).

Imports only the standard library at import time; torch and pytest are
imported inside the commands that need them.

Exit status: 0 done; 1 the command ran and something failed (a demo that
could not run, a failing benchmark); 2 bad arguments or a missing
prerequisite; 130 interrupted; 141 (128 + SIGPIPE, what a shell reports for
``yes | head``) when the reader of stdout went away, as in
``gencore info | head -3``: the command stops quietly, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional


__all__ = ["main"]

BENCH_SIZES = ("quick", "mid", "full")
EXIT_BROKEN_PIPE = 141
EXIT_INTERRUPTED = 130
PACKAGE_DIR = Path(__file__).resolve().parent


class UsageError(Exception):
    """A prerequisite or argument the parser cannot check; the message says what to do (exit 2)."""


# --- argument types ------------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def seed_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= n < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32), got {n}")
    return n


def demo_family(text: str) -> str:
    families = [f for f, _ in DEMOS]
    if text not in families:
        raise argparse.ArgumentTypeError(f"no demo for family {text!r}; families with a demo: {', '.join(families)}")
    return text


# --- info --------------------------------------------------------------------

def _yes_no(flag) -> str:
    return "yes" if flag else "no"


def cuda_version(version) -> str:
    """CUDA's integer version (1000 * major + 10 * minor: 13000, 12040) as '13.0', '12.4'."""
    if isinstance(version, bool) or not isinstance(version, int):
        return "-" if version in (None, "") else str(version)
    if version <= 0:
        return "none"
    major, rest = divmod(version, 1000)
    return f"{major}.{rest // 10}"


def cuda_archs(archs) -> str:
    """'80;90' (GENCORE_CUDA_ARCHS spelling) or [80, 90] as 'sm_80, sm_90'."""
    if not archs:
        return "-"
    items = archs.replace(",", ";").split(";") if isinstance(archs, str) else list(archs)
    names = [str(a).strip() for a in items if str(a).strip()]
    return ", ".join(a if a.startswith(("sm_", "compute_")) else f"sm_{a}" for a in names) or "-"


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def format_ops(ops: dict) -> list[str]:
    """One line per op of ``info()["ops"]`` (op -> device -> dtype -> backend): dtypes that
    share a backend are joined, e.g. ``ood.knn  cpu: float32/float64 native-cpu, float16 reference``."""
    width = max(len(str(op)) for op in ops)
    lines = []
    for op, per_device in ops.items():
        if not isinstance(per_device, dict):
            lines.append(f"  {op:<{width}}  {per_device}")
            continue
        parts = []
        for device, per_dtype in per_device.items():
            if not isinstance(per_dtype, dict):
                parts.append(f"{device}: {per_dtype}")
                continue
            by_backend: dict[str, list[str]] = {}
            for dtype, backend in per_dtype.items():
                by_backend.setdefault(str(backend), []).append(_dtype_name(dtype))
            parts.append(f"{device}: " + ", ".join(f"{'/'.join(d)} {b}" for b, d in by_backend.items()))
        lines.append(f"  {op:<{width}}  " + "   ".join(parts))
    return lines


def format_info(info: dict) -> str:
    """Human-readable form of ``gencore.info()``."""
    simd, cuda = info["simd"], info["cuda"]
    lines = [f"gencore {info['version']}", "", "modules:"]
    for name, loaded in info["modules"].items():
        error = info.get("module_errors", {}).get(name)
        lines.append(f"  {name:<8} {'loaded' if loaded else 'missing'}" + (f" ({error})" if error else ""))
    lines += [
        "",
        "CPU:",
        f"  SIMD detected     {simd['detected'] or '-'}",
        f"  SIMD in use       {simd['in_use'] or '-'}"
        + (f"   (GENCORE_SIMD={os.environ['GENCORE_SIMD']})" if os.environ.get("GENCORE_SIMD") else ""),
        f"  AVX512-BF16       {_yes_no(simd['avx512_bf16'])}",
        f"  AVX512-VNNI       {_yes_no(simd['avx512_vnni'])}",
        f"  AVX-VNNI          {_yes_no(simd['avx_vnni'])}",
        f"  512-bit units     {'full width' if simd['avx512_full_width'] else '-'}",
        f"  compiler          {info.get('compiler') or '-'}",
        f"  threads           {info['threads']}",
        f"  OpenMP            {_yes_no(info['openmp'])}",
        f"  BLAS              {info['blas'] or '-'}",
        "",
        "CUDA:",
        f"  module built      {_yes_no(cuda['built'])}",
        f"  devices           {cuda['devices']}",
    ]
    if cuda["built"]:
        lines += [
            f"  runtime / driver  {cuda_version(cuda.get('runtime_version'))} / "
            f"{cuda_version(cuda.get('driver_version'))}",
            f"  architectures     {cuda_archs(cuda.get('archs'))}",
        ]
    lines += ["", "backends:" + (f"   (forced by GENCORE_BACKEND={info['forced_backend']})"
                                 if info.get("forced_backend") else "")]
    for family, per_device in info["backends"].items():
        lines.append(f"  {family:<6} " + "  ".join(f"{dev}: {name}" for dev, name in per_device.items()))
    if info.get("ops"):
        lines += ["", "ops (dtype backend, per device):", *format_ops(info["ops"])]
    return "\n".join(lines)


def cmd_info(args) -> int:
    import gencore

    info = gencore.info()
    print(json.dumps(info, indent=2, sort_keys=False) if args.json else format_info(info))
    return 0


# --- demo --------------------------------------------------------------------

class DemoUnavailable(Exception):
    """A demo cannot run here; the message says why and what to do."""


def _family_demo(module: str, args, describe: Callable[[dict], str]) -> str:
    """Runs gencore.<module>.run(seed=...) and describes what ran; missing demo data -> DemoUnavailable."""
    import importlib

    from gencore.ood.demo import DemoDataMissing

    try:
        result = importlib.import_module(module).run(seed=args.seed)
    except DemoDataMissing as exc:
        raise DemoUnavailable(str(exc)) from None
    return describe(result)


def demo_ood(args) -> str:
    """OOD detectors on the digits that ship with gencore; returns what ran."""
    return _family_demo("gencore.ood.demo", args,
                        lambda r: f"{len(r['detectors'])} OOD detectors on {r['n_id'] + r['n_ood']} test digits")


def demo_score(args) -> str:
    """An EDM-trained denoiser against the exact denoiser of the same digits; returns what ran."""
    return _family_demo("gencore.score.demo", args,
                        lambda r: f"EDM-trained denoiser vs the exact one at {len(r['sigmas'])} noise levels")


def demo_ode(args) -> str:
    """Digits sampled at NFE 10 from the exact denoiser of the shipped digits; returns what ran."""
    return _family_demo("gencore.ode.demo", args,
                        lambda r: f"digits sampled with {' and '.join(r['solvers'])} at NFE 10, "
                                  f"grid written to {r['png']}")


def demo_ot(args) -> str:
    """Sinkhorn divergences between digit classes and an OT-coupled minibatch; returns what ran."""
    return _family_demo("gencore.ot.demo", args,
                        lambda r: f"Sinkhorn divergences between 10 digit classes ({r['diagonal_wins']}/10 nearest "
                                  f"to their own class), OT coupling of a {r['batch']}-sample minibatch")


def demo_quant(args) -> str:
    """An MLP on the digits quantized to int4 / int8: accuracy, logit change, speed; returns what ran."""
    return _family_demo("gencore.quant.demo", args,
                        lambda r: f"digits MLP quantized {len(r) - 1} ways, test accuracy "
                                  f"{r['float']['accuracy']:.3f} float vs "
                                  + ", ".join(f"{v['accuracy']:.3f} {k}" for k, v in r.items() if k != "float"))


# One entry per family that has a demo: (family, function). Each prints its own
# section and returns a one-line account of what it ran.
DEMOS: list[tuple[str, Callable]] = [
    ("ood", demo_ood),
    ("score", demo_score),
    ("ode", demo_ode),
    ("ot", demo_ot),
    ("quant", demo_quant),
]


def cmd_demo(args) -> int:
    import gencore

    if args.threads is not None:
        gencore.set_num_threads(args.threads)
    chosen = [(fam, fn) for fam, fn in DEMOS if args.family in (None, fam)]
    ran, failed = [], []
    total = time.perf_counter()
    for i, (family, fn) in enumerate(chosen):
        if i:
            print()
        start = time.perf_counter()
        try:
            what = fn(args)
        except DemoUnavailable as exc:
            print(f"{family}: cannot run: {exc}", file=sys.stderr)
            failed.append(family)
        else:
            ran.append(f"{family} ({what}, {time.perf_counter() - start:.1f} s)")
    print()
    if ran:
        print(f"demo ran: {'; '.join(ran)}")
    if failed:
        print(f"demo could not run: {', '.join(failed)} (reasons above)", file=sys.stderr)
    print(f"demo finished in {time.perf_counter() - total:.1f} s")
    return 1 if failed or not ran else 0


# --- bench: where the suites are -----------------------------------------------

def bench_dir_candidates() -> list[Path]:
    """Where the suites may be, in order: shipped inside the installed package
    (``gencore/bench``, mapped from the source tree's ``bench/`` by pyproject's
    ``wheel.packages``), then the source tree of an editable install
    (``<repo>/python/gencore`` next to ``<repo>/bench``)."""
    candidates = [PACKAGE_DIR / "bench"]
    repo = PACKAGE_DIR.parents[1]
    if (repo / "pyproject.toml").is_file():
        candidates.append(repo / "bench")
    return candidates


def find_bench_dir(explicit: Optional[str] = None) -> Path:
    """The benchmark suites: --bench-dir, $GENCORE_BENCH_DIR, else :func:`bench_dir_candidates`.

    Raises UsageError saying what was looked for when there are none.
    """
    explicit = explicit or os.environ.get("GENCORE_BENCH_DIR")
    if explicit:  # a named directory is used or refused, never second-guessed
        path = Path(explicit).expanduser().resolve()
        if not (path / "conftest.py").is_file():
            raise UsageError(f"{explicit} is not a gencore bench directory (it has no conftest.py)")
        return path
    candidates = bench_dir_candidates()
    for path in candidates:
        if (path / "conftest.py").is_file():
            return path
    raise UsageError(
        "the benchmark suites were not found; looked in " + ", ".join(str(p) for p in candidates)
        + ".\nThey ship inside the package (gencore/bench): this installation lacks them, so reinstall\n"
        "gencore from its source tree, or pass --bench-dir <source>/bench (or set GENCORE_BENCH_DIR).")


def bench_suites(bench_dir: Path) -> list[str]:
    return sorted(p.name for p in bench_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".")) and any(p.glob("bench_*.py")))


# --- bench: progress, skips and failures while pytest runs ----------------------

def _fmt_elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds:02d} s"


class BenchObserver:
    """pytest plugin: a progress line per benchmark group, and the skips and failures.

    A group's size is known before it runs by the suites' convention: peers
    in one group are one test function parametrized over ``contender``, so
    the items of a group share the function and every other parameter (or
    name the group in ``@pytest.mark.benchmark(group=...)``). A line is
    printed when a group completes, and within a long group at most every
    ``every_s`` seconds.
    """

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.perf_counter):
        self.every_s, self.clock = every_s, clock
        self.start = self.last_line = clock()
        self.skipped: list[tuple[str, str]] = []
        self.failed: list[str] = []
        self.key_of: dict[str, tuple] = {}
        self.total: dict[tuple, int] = {}
        self.done: dict[tuple, int] = {}
        self.name: dict[tuple, str] = {}
        self.lines: list[str] = []
        self._reporter = None

    @staticmethod
    def group_key(item) -> tuple:
        marker = item.get_closest_marker("benchmark")
        if marker is not None and marker.kwargs.get("group"):
            return ("group", marker.kwargs["group"])
        callspec = getattr(item, "callspec", None)
        params = tuple(sorted((k, repr(v)) for k, v in callspec.params.items() if k != "contender")) \
            if callspec is not None else ()
        return (item.nodeid.split("[", 1)[0], params)

    def pytest_collection_finish(self, session):
        self._reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        self.start = self.last_line = self.clock()
        for item in session.items:
            key = self.group_key(item)
            self.key_of[item.nodeid] = key
            self.total[key] = self.total.get(key, 0) + 1
            timed = "benchmark" in getattr(item, "fixturenames", ())
            self.name.setdefault(key, key[1] if key[0] == "group" else
                                 item.name.split("[", 1)[0] + ("" if timed else " (check, not timed)"))

    def pytest_runtest_makereport(self, item, call):
        if call.when == "call":  # the group a benchmark set for itself (benchmark.group = ...)
            group = getattr(item.funcargs.get("benchmark"), "group", None)
            key = self.key_of.get(item.nodeid)
            if group and key is not None:
                self.name[key] = group

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))
        elif report.failed:
            self.failed.append(report.nodeid)

    def pytest_runtest_logfinish(self, nodeid, location):
        key = self.key_of.get(nodeid)
        if key is None:
            return
        self.done[key] = self.done.get(key, 0) + 1
        now = self.clock()
        if self.done[key] == self.total[key] or now - self.last_line >= self.every_s:
            self.last_line = now
            self._write(f"group {self.name[key]}: {self.done[key]}/{self.total[key]} done, "
                        f"elapsed {_fmt_elapsed(now - self.start)}")

    def _write(self, line: str) -> None:
        self.lines.append(line)
        if self._reporter is not None:
            # In -q mode pytest's dots leave the line open and write_line does not close it.
            writer = getattr(self._reporter, "_tw", None)
            if getattr(writer, "width_of_current_line", 0):
                writer.line()
            self._reporter.write_line(line)
        else:
            print(line, flush=True)


# --- bench: the table ----------------------------------------------------------

# A row's spread says the machine was busy when, with >= SPREAD_MIN_ROUNDS
# rounds, the interquartile range exceeds SPREAD_IQR_LIMIT of the median
# (robust to the odd preempted round in a long calibrated run), or, with
# fewer rounds (the slow sizes take 2-3), when max/min exceeds SPREAD_RANGE_LIMIT.
SPREAD_MIN_ROUNDS = 5
SPREAD_IQR_LIMIT = 0.20
SPREAD_RANGE_LIMIT = 1.5


def _fmt_seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def spread(stats: dict) -> tuple[str, bool]:
    """(text, busy) for one benchmark's stats: IQR/median with many rounds, max/min with few."""
    if stats["rounds"] >= SPREAD_MIN_ROUNDS:
        r = stats["iqr"] / stats["median"] if stats["median"] > 0 else 0.0
        return f"IQR {r * 100:.0f}%", r > SPREAD_IQR_LIMIT
    r = stats["max"] / stats["min"] if stats["min"] > 0 else math.inf
    return f"max/min {r:.2f}", r > SPREAD_RANGE_LIMIT


def contender_of(bench: dict) -> str:
    """extra_info["contender"] (the suites' convention), else the test's name without ``test_``."""
    contender = (bench.get("extra_info") or {}).get("contender")
    if contender:
        return str(contender)
    name = str(bench.get("name") or bench.get("fullname") or "?")
    return name.removeprefix("test_")


def baseline_of(contenders: list[str], medians: list[float]) -> tuple[str, str]:
    """(baseline contender, how it was chosen): 'gencore', else the one gencore-named row, else the fastest."""
    if "gencore" in contenders:
        return "gencore", "gencore"
    named = [c for c in contenders if c.startswith("gencore")]
    if len(named) == 1:
        return named[0], "gencore"
    return contenders[medians.index(min(medians))], "fastest"


def format_bench_table(report: dict) -> str:
    """One row per benchmark, grouped: rounds, min / median / max, spread, and the ratio
    median / median of the group's gencore row (> 1: gencore is faster)."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for b in report.get("benchmarks", []):
        groups.setdefault(b.get("group") or "-", []).append((contender_of(b), b["stats"]))
    header = ("group", "contender", "rounds", "min", "median", "max", "spread", "ratio")
    rows, notes, busy, fastest_based = [header], [], [], []
    for group in sorted(groups):
        entries = sorted(groups[group], key=lambda e: (not e[0].startswith("gencore"), e[1]["median"]))
        names = [c for c, _ in entries]
        base_name, how = baseline_of(names, [s["median"] for _, s in entries])
        base = dict(entries)[base_name]["median"]
        if how == "fastest" and len(entries) > 1:
            fastest_based.append(group)
        for i, (contender, stats) in enumerate(entries):
            text, is_busy = spread(stats)
            if is_busy:
                busy.append(f"{group}/{contender}")
            ratio = "base" if contender == base_name else (f"{stats['median'] / base:.2f}x" if base > 0 else "-")
            rows.append((group if i == 0 else "", contender, str(stats["rounds"]), _fmt_seconds(stats["min"]),
                         _fmt_seconds(stats["median"]), _fmt_seconds(stats["max"]),
                         text + (" !" if is_busy else ""), ratio))
        gemm = dict(entries).get("bare-gemm")
        if how == "gencore" and gemm is not None and gemm["median"] > 0:
            notes.append(f"{group}: {base_name} / bare-gemm = {base / gemm['median']:.2f} (goal: <= 1.2)")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(r, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "ratio: median / median of the group's gencore row (> 1: gencore is faster)"
              + (f"; no gencore row, so against the fastest: {', '.join(fastest_based)}" if fastest_based else "")]
    lines += notes
    if busy:
        lines += ["", f"warning: {len(busy)} of {len(rows) - 1} rows (marked !) have a spread that says the machine "
                  f"was busy: IQR above {SPREAD_IQR_LIMIT:.0%} of the median (>= {SPREAD_MIN_ROUNDS} rounds) or "
                  f"max/min above {SPREAD_RANGE_LIMIT} (fewer rounds).",
                  "Their medians and ratios may be off: rerun on an idle machine, and compare the min column "
                  "(the least disturbed round)."]
    return "\n".join(lines)


# --- bench: the command ----------------------------------------------------------

def cmd_bench(args) -> int:
    bench_dir = find_bench_dir(args.bench_dir)
    suites = bench_suites(bench_dir)
    if args.family is not None and args.family not in suites:
        raise UsageError(f"no benchmark suite for family {args.family!r} in {bench_dir}; "
                         f"suites: {', '.join(suites) or 'none'}")
    json_path = Path(args.json).expanduser().resolve() if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise UsageError(f"--json {args.json}: the directory {json_path.parent} does not exist")
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError:
        raise UsageError("gencore bench needs pytest and pytest-benchmark: pip install pytest pytest-benchmark "
                         "(the peers too: scikit-learn faiss-cpu pot; from the source tree: pip install '.[bench]')")

    targets = [bench_dir / (args.family or ".")]
    observer = BenchObserver()
    with tempfile.TemporaryDirectory(prefix="gencore-bench-") as tmp:
        json_path = json_path or Path(tmp) / "bench.json"
        # An empty ini of our own, and rootdir/confcutdir at the suites: an installed
        # copy must not pick up the configuration or conftest.py of whatever
        # directory the environment happens to sit in.
        ini = Path(tmp) / "pytest.ini"
        ini.write_text("[pytest]\n")
        pytest_args = [
            *(str(t) for t in targets),
            f"--bench-size={args.size}",
            f"--bench-threads={args.threads}",
            f"--benchmark-json={json_path}",
            "-c", str(ini), f"--rootdir={bench_dir}", f"--confcutdir={bench_dir}",
            "-p", "no:cacheprovider",
            "-q", "-rfEs",
            *args.pytest_args,
        ]
        print(f"suites: {bench_dir}\nrunning: pytest {' '.join(pytest_args)}\n", flush=True)
        code = pytest.main(pytest_args, plugins=[observer])
        report = json.loads(json_path.read_text()) if json_path.is_file() else {}

    print()
    if report.get("benchmarks"):
        machine = report.get("machine_info", {})
        print(f"gencore bench: size={args.size}, threads={args.threads}, "
              f"cpu={machine.get('cpu', {}).get('brand_raw', '?')}, "
              f"total {_fmt_elapsed(observer.clock() - observer.start)}")
        print(format_bench_table(report))
    else:
        print("gencore bench: no timings were recorded"
              + (" (timing disabled by --benchmark-disable)" if "--benchmark-disable" in args.pytest_args else ""))
    if observer.skipped:
        print("\nskipped:")
        for nodeid, reason in observer.skipped:
            print(f"  {nodeid.rsplit('::', 1)[-1]}: {reason}")
    if observer.failed:
        print("\nfailed:")
        for nodeid in observer.failed:
            print(f"  {nodeid}")
    if int(code) == 5:
        print("gencore bench: pytest collected no benchmarks (check -k and --family)", file=sys.stderr)
    return int(code)


# --- entry point -------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gencore", description="gencore: compute core for generative "
                                     "models and distribution shift")
    sub = parser.add_subparsers(dest="command", metavar="{info,demo,bench}")
    sub.required = True

    p = sub.add_parser("info", help="what this installation can do: modules, SIMD, threads, BLAS, CUDA, backends")
    p.add_argument("--json", action="store_true", help="print gencore.info() as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="small end-to-end demos of each family, on data shipped with gencore")
    p.add_argument("--family", type=demo_family, default=None,
                   help=f"only this family's demo ({', '.join(f for f, _ in DEMOS)})")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the split and the training (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="gencore threads (default: torch's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run the pytest-benchmark suites and print a table of ratios to the peers")
    p.add_argument("--size", choices=BENCH_SIZES, default="quick", help="problem size (default quick)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="threads for gencore and every peer (default 2)")
    p.add_argument("--family", default=None, help="only this family's suite (e.g. ood); default all")
    p.add_argument("--bench-dir", default=None,
                   help="run the suites in this directory (default: the ones installed with gencore)")
    p.add_argument("--json", default=None, metavar="PATH", help="keep pytest-benchmark's JSON report at PATH")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after -- (e.g. -- -k knn)")
    p.set_defaults(func=cmd_bench)
    return parser


def _stdout_to_devnull() -> None:
    """After EPIPE: point fd 1 at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[list] = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args))
        except UsageError as exc:
            print(f"gencore {getattr(args, 'command', '')}: {exc}", file=sys.stderr)
            return 2
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("gencore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
