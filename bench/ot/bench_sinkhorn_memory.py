"""Peak extra memory of gencore.ot.sinkhorn: O(N + M), never N x M.

Each size (n points against n, uniform in the unit cube, D = 3, float32) runs
in a fresh process (conftest's ``rss_probe``); the extra memory of one call is
the rise of ``ru_maxrss`` across it, after a warm-up call has loaded libraries,
thread pools and BLAS buffers. The call is a warm start from zero potentials
with max_iter=1 (one alternating iteration and the final extrapolation: four
streamed softmins over the full n x n cost, the work of every iteration), so
the large size runs in seconds. A dense float32 cost matrix would need 4 n^2
bytes (13 GiB at 60k); the control, a dense [n, 500] product in the same
process, shows that the probe sees an allocation when there is one.
"""
from __future__ import annotations

SIZES = (10_000, 60_000)
MIB = 1 << 20
PER_POINT_BYTES = 64   # O(N + M) allowance: points, weights, log-weights, potentials and their temporaries

PROBE = r"""
import warnings
n, threads = ARGS
rng = np.random.default_rng(0)
x = torch.from_numpy(rng.random((n, 3), dtype=np.float32))
y = torch.from_numpy(rng.random((n, 3), dtype=np.float32))
zeros = torch.zeros(n)
warnings.simplefilter("ignore", RuntimeWarning)    # max_iter=1 is reached by design
gencore.ot.sinkhorn(x[:2000], y[:2000], blur=0.05, max_iter=1, f0=zeros[:2000], g0=zeros[:2000])   # warm-up
before = maxrss()
result = gencore.ot.sinkhorn(x, y, blur=0.05, max_iter=1, f0=zeros, g0=zeros)
extra = maxrss() - before
before = maxrss()
dense = x @ y[:500].T                                                  # the control: [n, 500]
control_extra = maxrss() - before
report(n=n, extra=extra, control_extra=control_extra, control_bytes=dense.numel() * 4,
       finite=bool(torch.isfinite(result.f).all()))
"""


def test_sinkhorn_peak_memory_is_linear_in_the_points(bench_threads, record_property, rss_probe):
    small, large = rss_probe(PROBE, [(n, bench_threads) for n in SIZES])
    assert small["finite"] and large["finite"]
    growth = large["extra"] - small["extra"]
    record_property("sinkhorn_extra_bytes", {s["n"]: s["extra"] for s in (small, large)})
    dense_growth = 4 * (SIZES[1] ** 2 - SIZES[0] ** 2)
    allowance = 4 * MIB + 2 * PER_POINT_BYTES * (SIZES[1] - SIZES[0])
    assert growth < allowance, (
        f"extra memory grew by {growth / MIB:.1f} MiB from n={SIZES[0]} to n={SIZES[1]} "
        f"({small['extra'] / MIB:.1f} -> {large['extra'] / MIB:.1f} MiB), above the O(N + M) allowance "
        f"{allowance / MIB:.1f} MiB; a dense cost matrix would grow by {dense_growth / 2**30:.1f} GiB")
