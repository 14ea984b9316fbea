"""Command line: ``gencore info | demo | bench`` (also ``python -m gencore``).

Imports only the standard library at import time; torch, pytest and
scikit-learn are imported inside the commands that need them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional


__all__ = ["main"]

BENCH_SIZES = ("quick", "mid", "full")


# --- info --------------------------------------------------------------------

def _yes_no(flag) -> str:
    return "yes" if flag else "no"


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
            f"  runtime / driver  {cuda.get('runtime_version') or '-'} / {cuda.get('driver_version') or '-'}",
            f"  archs             {', '.join(map(str, cuda.get('archs') or [])) or '-'}",
        ]
    lines += ["", "backends:" + (f"   (forced by GENCORE_BACKEND={info['forced_backend']})"
                                 if info.get("forced_backend") else "")]
    for family, per_device in info["backends"].items():
        lines.append(f"  {family:<6} " + "  ".join(f"{dev}: {name}" for dev, name in per_device.items()))
    return "\n".join(lines)


def cmd_info(args) -> int:
    import gencore

    info = gencore.info()
    print(json.dumps(info, indent=2, sort_keys=False) if args.json else format_info(info))
    return 0


# --- demo --------------------------------------------------------------------

class DemoUnavailable(Exception):
    """A demo's optional dependency is missing; the message says what to install."""


def demo_ood(args) -> None:
    """OOD detectors (kNN, Mahalanobis, relative Mahalanobis, energy, MSP, ViM) on
    scikit-learn's digits: a small MLP trained on digits 0-4, digits 5-9 as OOD."""
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:
        raise DemoUnavailable("the ood demo uses scikit-learn's digits data set: pip install scikit-learn")
    from gencore.ood import demo

    demo.run(seed=args.seed)


# One entry per family that has a demo: (family, function). Each prints its own section.
DEMOS: list[tuple[str, Callable]] = [
    ("ood", demo_ood),
]


def cmd_demo(args) -> int:
    import gencore

    if args.threads is not None:
        gencore.set_num_threads(args.threads)
    chosen = [(fam, fn) for fam, fn in DEMOS if args.family in (None, fam)]
    if not chosen:
        print(f"no demo for family {args.family!r}; demos exist for: {', '.join(f for f, _ in DEMOS)}",
              file=sys.stderr)
        return 2
    status = 0
    total = time.perf_counter()
    for i, (family, fn) in enumerate(chosen):
        if i:
            print()
        try:
            fn(args)
        except DemoUnavailable as exc:
            print(f"{family}: cannot run: {exc}", file=sys.stderr)
            status = 1
    print(f"\ndemo finished in {time.perf_counter() - total:.2f} s")
    return status


# --- bench -------------------------------------------------------------------

def find_bench_dir(explicit: Optional[str] = None) -> Optional[Path]:
    """bench/ of the source tree: --bench-dir, $GENCORE_BENCH_DIR, or next to the package's sources."""
    explicit = explicit or os.environ.get("GENCORE_BENCH_DIR")
    if explicit:  # a named directory is used or refused, never second-guessed
        return Path(explicit).resolve() if (Path(explicit) / "conftest.py").is_file() else None
    # A source checkout (editable install) has <repo>/python/gencore and <repo>/bench.
    repo = Path(__file__).resolve().parents[2]
    bench = repo / "bench"
    if (bench / "conftest.py").is_file() and (repo / "pyproject.toml").is_file():
        return bench
    return None


class _SkipCollector:
    """pytest plugin: remembers skipped tests and their reasons, and failures."""

    def __init__(self):
        self.skipped: list[tuple[str, str]] = []
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))
        elif report.failed:
            self.failed.append(report.nodeid)


def _fmt_seconds(t: float) -> str:
    if t >= 1:
        return f"{t:.3f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.2f} ms"
    return f"{t * 1e6:.1f} us"


def format_bench_table(report: dict) -> str:
    """Group, contender, median, ratio to gencore (peer / gencore: > 1 means gencore is faster)."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for b in report.get("benchmarks", []):
        contender = b.get("extra_info", {}).get("contender") or b["name"]
        groups.setdefault(b.get("group") or "-", []).append((contender, b["stats"]["median"]))
    rows = [("group", "contender", "median", "peer/gencore")]
    notes = []
    for group in sorted(groups):
        entries = sorted(groups[group], key=lambda e: (e[0] != "gencore", e[1]))
        base = dict(entries).get("gencore")
        for contender, median in entries:
            ratio = "-" if base is None or contender == "gencore" else f"{median / base:.2f}x"
            rows.append((group, contender, _fmt_seconds(median), ratio))
        gemm = dict(entries).get("bare-gemm")
        if base is not None and gemm is not None:
            notes.append(f"{group}: gencore / bare-gemm = {base / gemm:.2f} (goal: <= 1.2)")
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines + ([""] + notes if notes else []))


def cmd_bench(args) -> int:
    bench_dir = find_bench_dir(args.bench_dir)
    if bench_dir is None:
        print("gencore bench: the benchmark suites (bench/) were not found next to the installed package.\n"
              "They ship with the source tree, not the wheel: get the gencore source (repository or sdist),\n"
              "then run `gencore bench --bench-dir <source>/bench` (or set GENCORE_BENCH_DIR),\n"
              "with the extras installed: pip install 'gencore[bench]'.", file=sys.stderr)
        return 2
    targets = [bench_dir / fam for fam in ([args.family] if args.family else ["."])]
    missing = [t for t in targets if not t.is_dir()]
    if missing:
        known = sorted(p.name for p in bench_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
        print(f"gencore bench: no suite {missing[0].name!r} in {bench_dir}; suites: {', '.join(known)}",
              file=sys.stderr)
        return 2
    try:
        import pytest
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("gencore bench needs pytest and pytest-benchmark: pip install 'gencore[bench]'", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="gencore-bench-") as tmp:
        json_path = Path(args.json).resolve() if args.json else Path(tmp) / "bench.json"
        pytest_args = [
            *(str(t) for t in targets),
            f"--bench-size={args.size}",
            f"--bench-threads={args.threads}",
            f"--benchmark-json={json_path}",
            f"--rootdir={bench_dir.parent}",
            "-p", "no:cacheprovider",
            "-q", "-rfEs",
            *args.pytest_args,
        ]
        print(f"running: pytest {' '.join(pytest_args)}\n", flush=True)
        collector = _SkipCollector()
        code = pytest.main(pytest_args, plugins=[collector])
        report = json.loads(json_path.read_text()) if json_path.is_file() else {}

    print()
    if report.get("benchmarks"):
        machine = report.get("machine_info", {})
        print(f"gencore bench: size={args.size}, threads={args.threads}, "
              f"cpu={machine.get('cpu', {}).get('brand_raw', '?')}")
        print(format_bench_table(report))
    else:
        print("gencore bench: no timings were recorded")
    if collector.skipped:
        print("\nskipped:")
        for nodeid, reason in collector.skipped:
            print(f"  {nodeid.rsplit('::', 1)[-1]}: {reason}")
    if collector.failed:
        print("\nfailed:")
        for nodeid in collector.failed:
            print(f"  {nodeid}")
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

    p = sub.add_parser("demo", help="small end-to-end demos of each family")
    p.add_argument("--family", choices=[f for f, _ in DEMOS], default=None, help="only this family's demo")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    p.add_argument("--threads", type=int, default=None, help="gencore threads (default: torch's)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run the pytest-benchmark suites under bench/ and print a table")
    p.add_argument("--size", choices=BENCH_SIZES, default="quick", help="problem size (default quick)")
    p.add_argument("--threads", type=int, default=2, help="threads for gencore and every peer (default 2)")
    p.add_argument("--family", default=None, help="only this family's suite (e.g. ood); default all")
    p.add_argument("--bench-dir", default=None, help="the bench/ directory of a gencore source tree")
    p.add_argument("--json", default=None, metavar="PATH", help="keep pytest-benchmark's JSON report at PATH")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print(f"gencore {args.command}: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    return int(args.func(args))
