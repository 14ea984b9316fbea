"""The native runtime's own guarantees, through _core's test hooks.

An exception thrown inside an OpenMP region (a per-thread buffer that cannot
be allocated, a failed contract check) must come back to Python as an
exception on the calling thread, from any thread and at any point of the
loop, and the process must survive it: std::bad_alloc -> MemoryError,
std::invalid_argument -> ValueError.

The bindings' shared helpers (csrc/bindings/arrays.h) are checked here too:
vectors arrive as [n] or [1, n] / [n, 1], and a dtype other than float32 or
float64 is refused by name.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from gencore import _native

pytestmark = pytest.mark.skipif(_native.core is None, reason="needs the native CPU module gencore._core")

THREADS = 4
ITEMS = 64  # fixed schedule: thread t runs items [16 t, 16 t + 16)
ERRORS = {"invalid_argument": ValueError, "bad_alloc": MemoryError}

# Every case at once in a fresh interpreter: if an exception escaped a region
# there, std::terminate kills that process (reported below with its stderr),
# not the test session.
_SURVIVAL_SCRIPT = textwrap.dedent(f"""
    from gencore import _native
    core = _native.core
    errors = {{"invalid_argument": ValueError, "bad_alloc": MemoryError}}
    team = core._test_parallel_throw({ITEMS}, {THREADS}, -1, "invalid_argument")  # 1 without OpenMP
    for kind, error in errors.items():
        for where in ("", "state:"):
            for at in (0, 1, {THREADS} - 1, {ITEMS} - 1):
                if where and at >= team:
                    continue
                try:
                    core._test_parallel_throw({ITEMS}, {THREADS}, at, where + kind)
                except error:
                    pass
                else:
                    raise SystemExit(f"no {{error.__name__}} for {{where + kind}} at {{at}}")
    print("survived", core._test_parallel_throw({ITEMS}, {THREADS}, -1, "invalid_argument"))
""")


@pytest.fixture(scope="module")
def survives_in_subprocess():
    env = dict(os.environ)
    env.pop("GENCORE_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", _SURVIVAL_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300)
    if proc.returncode != 0 or "survived" not in proc.stdout:
        pytest.fail(f"the process did not survive exceptions in parallel regions (rc {proc.returncode}):\n"
                    f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def test_parallel_for_uses_every_thread():
    # The hook's fixed schedule gives every thread items, so the throwing cases
    # below really throw on threads other than the caller's.
    ran = _native.core._test_parallel_throw(ITEMS, THREADS, -1, "invalid_argument")
    expected = THREADS if _native.core.openmp() else 1
    assert ran == expected


def test_subprocess_survives_every_case(survives_in_subprocess):
    assert "survived" in survives_in_subprocess


@pytest.mark.parametrize("kind", sorted(ERRORS))
@pytest.mark.parametrize("item", [0, ITEMS // THREADS, ITEMS - 1])  # first, second and last thread's range
def test_exception_in_body_reaches_python(survives_in_subprocess, kind, item):
    with pytest.raises(ERRORS[kind]) as info:
        _native.core._test_parallel_throw(ITEMS, THREADS, item, kind)
    if kind == "invalid_argument":
        assert f"at {item}" in str(info.value)
    # the runtime is intact afterwards: a clean loop runs on every thread
    assert _native.core._test_parallel_throw(ITEMS, THREADS, -1, kind) >= 1


@pytest.mark.parametrize("kind", sorted(ERRORS))
@pytest.mark.parametrize("thread", [0, THREADS - 1])
def test_exception_making_thread_state_reaches_python(survives_in_subprocess, kind, thread):
    if thread > 0 and not _native.core.openmp():
        pytest.skip("built without OpenMP: one thread")
    with pytest.raises(ERRORS[kind]):
        _native.core._test_parallel_throw(ITEMS, THREADS, thread, "state:" + kind)
    assert _native.core._test_parallel_throw(ITEMS, THREADS, -1, kind) >= 1


def test_unknown_kind_is_a_value_error(survives_in_subprocess):
    with pytest.raises(ValueError, match="unknown kind"):
        _native.core._test_parallel_throw(ITEMS, THREADS, 3, "segfault")


# ---------------------------------------------------------------- binding helpers


def test_bindings_take_vectors_as_1d_or_one_column():
    # vector_in / vector_out: center [D] or [1, D]; out and nearest [N] or [N, 1].
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 5)).astype(np.float32)
    p = np.linalg.qr(rng.standard_normal((5, 2)))[0].astype(np.float32)
    u = rng.standard_normal(5).astype(np.float32)
    flat, column = np.empty(9, np.float32), np.empty((9, 1), np.float32)
    _native.core.residual_scores(x, p, u, None, 0.0, flat, 1)
    _native.core.residual_scores(x, p, u[None, :], None, 0.0, column, 1)
    np.testing.assert_array_equal(flat, column[:, 0])

    means, factor = x[:3].copy(), np.eye(5, dtype=np.float32)
    out, nearest = np.empty(9, np.float32), np.empty(9, np.int64)
    _native.core.mahalanobis(x, means, factor, 1, out, nearest, 1)
    out2, nearest2 = np.empty((9, 1), np.float32), np.empty((9, 1), np.int64)
    _native.core.mahalanobis(x, means, factor, 1, out2, nearest2, 1)
    np.testing.assert_array_equal(out, out2[:, 0])
    np.testing.assert_array_equal(nearest, nearest2[:, 0])
    assert list(nearest[:3]) == [0, 1, 2]

    with pytest.raises(ValueError, match=r"center: expected shape \[5\]"):
        _native.core.residual_scores(x, p, u[:4], None, 0.0, flat, 1)


@pytest.mark.parametrize("dtype", ["float16", "int32"])
def test_bindings_refuse_other_dtypes_by_name(dtype):
    import numpy as np

    x = np.zeros((4, 3), dtype)
    with pytest.raises(ValueError, match=rf"logits: expected dtype float32 or float64, got {dtype}"):
        _native.core.logit_scores(x, 0, 1.0, 0.1, 1, None, np.empty(4, np.float32), 1)
    with pytest.raises(ValueError, match=rf"queries: expected dtype float32 or float64, got {dtype}"):
        _native.core.knn(x, x, 1, 0, np.empty((4, 1), np.float32), np.empty((4, 1), np.int64), 1)
