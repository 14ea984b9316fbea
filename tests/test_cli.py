"""The command line (gencore.cli): info formatting, argument checks, exit codes,
a closed stdout, the demo without scikit-learn, and the bench runner on small
stand-in suites (the real suites run in CI through ``gencore bench``).

Exit codes and pipes are checked in a subprocess: they are properties of the
process, not of ``main()``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gencore
from gencore import cli


def _env(**overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GENCORE_BACKEND", "GENCORE_SIMD", "GENCORE_BENCH_DIR")}
    env.update(overrides)
    return env


def run_cli(args, cwd, stdout=subprocess.PIPE, timeout=300, **env):
    """``python -m gencore ARGS`` in a fresh process, from ``cwd`` (not the source tree)."""
    return subprocess.run([sys.executable, "-m", "gencore", *args], cwd=cwd, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=timeout, env=_env(**env))


# ---------------------------------------------------------------- info

def test_cuda_versions_read_as_major_minor():
    assert cli.cuda_version(13000) == "13.0"
    assert cli.cuda_version(12040) == "12.4"
    assert cli.cuda_version(11080) == "11.8"
    assert cli.cuda_version(0) == "none"          # cudaDriverGetVersion without a driver
    assert cli.cuda_version(None) == "-"


def test_cuda_archs_are_named_not_spelled_out():
    assert cli.cuda_archs("80;90") == "sm_80, sm_90"   # what _cuda.compiled_archs() returns
    assert cli.cuda_archs([80, 90]) == "sm_80, sm_90"
    assert cli.cuda_archs("90") == "sm_90"
    assert cli.cuda_archs("sm_90") == "sm_90"
    assert cli.cuda_archs("") == "-" and cli.cuda_archs(None) == "-"


def _fake_info(**changes) -> dict:
    info = {
        "version": "9.9.9", "modules": {"_core": True, "_cuda": True}, "module_errors": {},
        "simd": {"detected": "avx2", "in_use": "avx2", "avx512_bf16": False, "avx512_vnni": False, "avx_vnni": False,
                 "avx512_full_width": False}, "threads": 2, "openmp": True,
        "blas": "OpenBLAS", "cuda": {"built": True, "devices": 1, "runtime_version": 13000,
                                     "driver_version": 12080, "archs": "80;90"},
        "forced_backend": None, "backends": {"ood": {"cpu": "native-cpu", "cuda": "native-cuda"}},
    }
    info.update(changes)
    return info


def test_format_info_cuda_lines():
    text = cli.format_info(_fake_info())
    assert "runtime / driver  13.0 / 12.8" in text
    assert "architectures     sm_80, sm_90" in text
    assert "8, 0, ;" not in text and "13000" not in text


def test_format_info_without_ops_key_has_no_ops_section():
    assert "ops" not in cli.format_info(_fake_info())


def test_format_info_prints_one_line_per_op_with_dtypes_grouped_by_backend():
    ops = {
        "ood.knn": {"cpu": {"float32": "native-cpu", "float64": "native-cpu", "float16": "reference"},
                    "cuda": {"torch.float32": "native-cuda", "torch.float64": "reference"}},
        "ood.energy": {"cpu": {"float32": "native-cpu"}},
    }
    lines = cli.format_info(_fake_info(ops=ops)).splitlines()
    knn = [line for line in lines if "ood.knn" in line]
    energy = [line for line in lines if "ood.energy" in line]
    assert len(knn) == 1 and len(energy) == 1
    assert "cpu: float32/float64 native-cpu, float16 reference" in knn[0]
    assert "cuda: float32 native-cuda, float64 reference" in knn[0]
    assert "cpu: float32 native-cpu" in energy[0]


def test_format_info_tolerates_ops_without_a_dtype_level():
    text = cli.format_info(_fake_info(ops={"ood.knn": {"cpu": "native-cpu"}, "ood.msp": "reference"}))
    assert "cpu: native-cpu" in text and "ood.msp" in text


def test_format_info_of_this_install():
    info = gencore.info()
    text = cli.format_info(info)
    assert text.startswith(f"gencore {gencore.__version__}")
    if info["cuda"]["built"]:
        assert "sm_" in text, text
    for op in info.get("ops", {}):
        assert sum(line.split()[:1] == [op] for line in text.splitlines()) == 1, (op, text)


def test_info_command_exit_code_and_json(tmp_path):
    proc = run_cli(["info", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == gencore.__version__


# ---------------------------------------------------------------- a closed stdout

def _into_closed_pipe(args, cwd) -> subprocess.CompletedProcess:
    """Runs the CLI with stdout a pipe whose reader is already gone: every write fails with EPIPE,
    which is what ``gencore info | head -3`` does once head has its lines."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return run_cli(args, cwd, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args,code", [
    (["info"], cli.EXIT_BROKEN_PIPE),
    (["info", "--json"], cli.EXIT_BROKEN_PIPE),
    (["demo", "--family", "ood"], cli.EXIT_BROKEN_PIPE),
    (["--help"], 0),  # argparse itself ignores a failed write of its help and exits 0
], ids=lambda a: " ".join(a) if isinstance(a, list) else str(a))
def test_closed_stdout_exits_quietly(args, code, tmp_path):
    proc = _into_closed_pipe(args, tmp_path)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == code, proc.stderr


# ---------------------------------------------------------------- argument checks

@pytest.mark.parametrize("argv,message", [
    (["demo", "--family", "nope"], "no demo for family 'nope'; families with a demo: ood"),
    (["demo", "--threads", "0"], "--threads: must be >= 1, got 0"),
    (["demo", "--threads", "two"], "--threads: expected a whole number >= 1, got 'two'"),
    (["demo", "--seed", "-1"], "--seed: must be in [0, 2**32), got -1"),
    (["bench", "--threads", "-3"], "--threads: must be >= 1, got -3"),
    (["bench", "--size", "huge"], "invalid choice: 'huge'"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_reports_bad_family(tmp_path):
    script = Path(sys.executable).with_name("gencore")
    if not script.is_file():
        pytest.skip(f"no gencore console script next to {sys.executable} (package not pip-installed here)")
    proc = subprocess.run([str(script), "demo", "--family", "nope"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=_env())
    assert proc.returncode == 2
    assert "families with a demo: ood" in proc.stderr


# ---------------------------------------------------------------- demo

def test_demo_runs_without_scikit_learn(tmp_path):
    """What `pip install . && gencore demo` gives: scikit-learn replaced by a package that refuses to import."""
    hidden = tmp_path / "hide"
    (hidden / "sklearn").mkdir(parents=True)
    (hidden / "sklearn" / "__init__.py").write_text("raise ImportError('scikit-learn is hidden by this test')\n")
    pythonpath = os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")]))
    proc = run_cli(["demo", "--threads", "2"], tmp_path, PYTHONPATH=pythonpath)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot run" not in proc.stderr
    for detector in ("kNN (k=10)", "Mahalanobis", "energy", "MSP", "ViM"):
        assert detector in proc.stdout
    assert "demo ran: ood (6 OOD detectors on 1257 test digits" in proc.stdout, proc.stdout


def test_demo_that_cannot_run_says_so_and_fails(monkeypatch, capsys):
    from gencore.ood import demo

    monkeypatch.setattr(demo, "DIGITS_FILE", "data/no-such-file.npz")
    assert cli.main(["demo"]) == 1
    captured = capsys.readouterr()
    assert "ood: cannot run: the demo data gencore/data/no-such-file.npz is missing" in captured.err
    assert "demo could not run: ood" in captured.err
    assert "demo ran" not in captured.out


# ---------------------------------------------------------------- where the suites are

def test_bench_suites_are_found_for_this_install():
    bench_dir = cli.find_bench_dir()
    assert (bench_dir / "conftest.py").is_file()
    assert "ood" in cli.bench_suites(bench_dir) and (bench_dir / "ood" / "bench_knn.py").is_file()
    source_tree = (cli.PACKAGE_DIR.parents[1] / "pyproject.toml").is_file()
    if not source_tree:  # a wheel install: the suites must have shipped inside the package
        assert bench_dir == cli.PACKAGE_DIR / "bench", bench_dir


def test_bench_dir_from_the_environment(monkeypatch, tmp_path):
    (tmp_path / "conftest.py").write_text("")
    monkeypatch.setenv("GENCORE_BENCH_DIR", str(tmp_path))
    assert cli.find_bench_dir() == tmp_path.resolve()
    monkeypatch.setenv("GENCORE_BENCH_DIR", str(tmp_path / "missing"))
    with pytest.raises(cli.UsageError, match="has no conftest.py"):
        cli.find_bench_dir()


def test_bench_reports_missing_suites_and_bad_paths(tmp_path, capsys):
    assert cli.main(["bench", "--bench-dir", str(tmp_path)]) == 2
    assert "is not a gencore bench directory" in capsys.readouterr().err
    assert cli.main(["bench", "--family", "nope"]) == 2
    assert "no benchmark suite for family 'nope'" in capsys.readouterr().err
    assert cli.main(["bench", "--json", str(tmp_path / "no-dir" / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- the table

def _bench(name, group, median, rounds=10, iqr=None, lo=None, hi=None, contender=None):
    extra = {"contender": contender} if contender else {}
    return {"name": name, "group": group, "extra_info": extra,
            "stats": {"rounds": rounds, "median": median, "min": lo or median * 0.95, "max": hi or median * 1.05,
                      "iqr": median * 0.02 if iqr is None else iqr}}


def _row(table: str, contender: str) -> list[str]:
    return next(line.split() for line in table.splitlines() if contender in line.split())


def test_table_ratios_rounds_and_spread():
    report = {"benchmarks": [
        _bench("test_knn[l2-gencore]", "knn-l2", 0.010, contender="gencore"),
        _bench("test_knn[l2-faiss]", "knn-l2", 0.030, contender="faiss"),
    ]}
    table = cli.format_bench_table(report)
    header = table.splitlines()[0].split()
    assert header == ["group", "contender", "rounds", "min", "median", "max", "spread", "ratio"]
    assert _row(table, "gencore")[-1] == "base"
    assert _row(table, "faiss")[-1] == "3.00x"
    assert _row(table, "faiss")[1] == "10"
    assert "IQR 2%" in table and "warning" not in table


def test_table_without_contender_falls_back_to_test_names():
    report = {"benchmarks": [
        _bench("test_generate_only", "detector-fit", 0.02),
        _bench("test_gencore_partial_fit", "detector-fit", 0.10),
        _bench("test_sklearn_empirical_covariance", "detector-fit", 0.20),
    ]}
    table = cli.format_bench_table(report)
    assert _row(table, "gencore_partial_fit")[-1] == "base"
    assert _row(table, "sklearn_empirical_covariance")[-1] == "2.00x"
    assert _row(table, "generate_only")[-1] == "0.20x"


def test_table_group_without_gencore_compares_with_the_fastest():
    report = {"benchmarks": [_bench("test_a", "peers-only", 0.04, contender="torch"),
                             _bench("test_b", "peers-only", 0.01, contender="numpy")]}
    table = cli.format_bench_table(report)
    assert _row(table, "numpy")[-1] == "base" and _row(table, "torch")[-1] == "4.00x"
    assert "against the fastest: peers-only" in table


@pytest.mark.parametrize("stats,busy", [
    ({"rounds": 100, "median": 1.0, "iqr": 0.5, "min": 0.9, "max": 9.0}, True),    # IQR 50% of the median
    ({"rounds": 100, "median": 1.0, "iqr": 0.05, "min": 0.9, "max": 9.0}, False),  # one slow round out of 100
    ({"rounds": 3, "median": 1.0, "iqr": 0.0, "min": 1.0, "max": 1.6}, True),      # max/min 1.6
    ({"rounds": 3, "median": 1.0, "iqr": 0.0, "min": 1.0, "max": 1.2}, False),
])
def test_spread_flags_a_busy_machine(stats, busy):
    text, flagged = cli.spread(stats)
    assert flagged is busy, text
    report = {"benchmarks": [{"name": "test_x", "group": "g", "extra_info": {"contender": "gencore"},
                              "stats": stats}]}
    table = cli.format_bench_table(report)
    assert ("warning: 1 of 1 rows (marked !)" in table) is busy, table


# ---------------------------------------------------------------- gencore bench on stand-in suites

FAKE_SUITE = '''
import pytest

WORK = {"gencore": lambda: sum(range(2000)), "peer": lambda: sum(range(8000))}


@pytest.mark.parametrize("contender", WORK)
@pytest.mark.parametrize("n", [1, 2])
def test_sum(benchmark, n, contender):
    benchmark.group = f"fake-sum-{n}"
    benchmark.extra_info["contender"] = contender
    benchmark.pedantic(WORK[contender], rounds=3, iterations=1)


@pytest.mark.benchmark(group="fake-marked")
def test_marked(benchmark):
    benchmark.extra_info["contender"] = "gencore"
    benchmark.pedantic(lambda: None, rounds=3, iterations=1)
'''

BROKEN_SUITE = '''
def test_broken(benchmark):
    benchmark.extra_info["contender"] = "gencore"
    benchmark.pedantic(lambda: 1, rounds=1, iterations=1)
    assert False, "this benchmark fails on purpose"


def test_unnamed(benchmark):
    benchmark.group = "unnamed"
    benchmark.pedantic(lambda: 1, rounds=1, iterations=1)
'''


@pytest.fixture(scope="module")
def fake_bench_dir(tmp_path_factory):
    """The real bench/conftest.py (sizes, threads, collection, the contender rule) with stand-in suites."""
    pytest.importorskip("pytest_benchmark", reason="gencore bench runs pytest-benchmark suites")
    root = tmp_path_factory.mktemp("fake-bench")
    shutil.copy(cli.find_bench_dir() / "conftest.py", root / "conftest.py")
    (root / "fake").mkdir()
    (root / "fake" / "bench_fake.py").write_text(textwrap.dedent(FAKE_SUITE))
    (root / "broken").mkdir()
    (root / "broken" / "bench_broken.py").write_text(textwrap.dedent(BROKEN_SUITE))
    return root


def test_bench_prints_progress_per_group_and_a_table(fake_bench_dir, tmp_path):
    proc = run_cli(["bench", "--bench-dir", str(fake_bench_dir), "--family", "fake",
                    "--json", str(tmp_path / "report.json")], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for group, total in (("fake-sum-1", 2), ("fake-sum-2", 2), ("fake-marked", 1)):
        assert f"group {group}: {total}/{total} done, elapsed" in out, out
    table = out[out.index("gencore bench: size=quick"):]
    rows = [line.split() for line in table.splitlines() if line.split()[:1] in (["fake-sum-1"], ["fake-sum-2"])]
    assert len(rows) == 2 and all(r[1] == "gencore" and r[2] == "3" and r[-1] == "base" for r in rows), table
    peers = [line.split() for line in table.splitlines() if line.split()[:1] == ["peer"]]
    assert len(peers) == 2 and all(p[-1].endswith("x") and p[1] == "3" for p in peers), table
    assert len(json.loads((tmp_path / "report.json").read_text())["benchmarks"]) == 5


def test_bench_fails_on_a_failing_benchmark_and_on_a_missing_contender(fake_bench_dir, tmp_path):
    proc = run_cli(["bench", "--bench-dir", str(fake_bench_dir), "--family", "broken"], tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    failed = proc.stdout[proc.stdout.index("\nfailed:"):]
    assert "test_broken" in failed and "test_unnamed" in failed
    assert "set benchmark.extra_info['contender']" in proc.stdout
    # the unnamed row still gets a name in the table: its test's
    assert any(line.split()[:2] == ["unnamed", "unnamed"] for line in proc.stdout.splitlines()), proc.stdout


def test_bench_with_timing_disabled(fake_bench_dir, tmp_path):
    proc = run_cli(["bench", "--bench-dir", str(fake_bench_dir), "--family", "fake", "--",
                    "--benchmark-disable"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "no timings were recorded (timing disabled by --benchmark-disable)" in proc.stdout


def test_bench_closed_stdout_exits_quietly(fake_bench_dir, tmp_path):
    proc = _into_closed_pipe(["bench", "--bench-dir", str(fake_bench_dir), "--family", "fake"], tmp_path)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.returncode == cli.EXIT_BROKEN_PIPE, proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("pytest_benchmark") is not None,
                    reason="pytest-benchmark is installed; this checks the message without it")
def test_bench_without_pytest_benchmark_says_what_to_install(capsys):
    assert cli.main(["bench"]) == 2
    assert "pip install pytest pytest-benchmark" in capsys.readouterr().err

