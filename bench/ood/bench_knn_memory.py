"""Peak extra memory of gencore.ood.knn: the bank streams, no Q x N matrix.

Each size runs in a fresh subprocess; the extra memory of one knn call is the
rise of ``ru_maxrss`` (a high-water mark) across it, after the data exist and
a warm-up call has loaded libraries and thread pools. A dense distance matrix
would grow by Q * dN * 4 bytes from the small to the large bank; the kernel's
own growth is O(N) norms. The same probe, run on a dense ``queries @ bank.T``,
shows that the method does see a Q x N allocation.

On Linux a process starts with its parent's RSS high-water mark (fork copies
the address space's mark, exec folds it into ru_maxrss), so a probe started
straight from a big pytest process would see no rise at all. The probe is
therefore started through a small launcher process (conftest's ``rss_probe``).
"""
from __future__ import annotations

Q, D, K = 100, 64, 10
BANKS = (50_000, 200_000)
MIB = 1 << 20

PROBE = r"""
n, q, d, k, threads = ARGS
rng = np.random.default_rng(0)
bank = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
queries = torch.from_numpy(rng.standard_normal((q, d), dtype=np.float32))
gencore.ood.knn(queries, bank[:4096], k, "sqeuclidean")  # load BLAS buffers, OpenMP pool
before = maxrss()
values, indices = gencore.ood.knn(queries, bank, k, "sqeuclidean")
knn_extra = maxrss() - before
before = maxrss()
dense = queries @ bank.T                                 # the control: a Q x N matrix
dense_extra = maxrss() - before
report(n=n, knn_extra=knn_extra, control_extra=dense_extra, control_bytes=dense.numel() * 4,
       bank_bytes=bank.numel() * 4)
"""

def test_knn_peak_memory_does_not_scale_with_q_times_n(bench_threads, record_property, rss_probe):
    small, large = rss_probe(PROBE, [(n, Q, D, K, bench_threads) for n in BANKS])
    growth = large["knn_extra"] - small["knn_extra"]
    dense_growth = Q * (BANKS[1] - BANKS[0]) * 4
    record_property("knn_extra_bytes", {s["n"]: s["knn_extra"] for s in (small, large)})
    # A dense Q x N buffer would grow by dense_growth (57 MiB); allow 16 MiB of noise.
    assert growth < min(dense_growth / 4, 16 * MIB), (
        f"knn extra memory grew by {growth / MIB:.1f} MiB from N={BANKS[0]} to N={BANKS[1]} "
        f"(extra {small['knn_extra'] / MIB:.1f} -> {large['knn_extra'] / MIB:.1f} MiB); "
        f"a dense Q x N matrix would grow by {dense_growth / MIB:.1f} MiB")
    assert large["knn_extra"] < large["control_bytes"] / 2 + 8 * MIB, (
        f"knn extra memory at N={BANKS[1]} is {large['knn_extra'] / MIB:.1f} MiB, close to a "
        f"dense Q x N matrix ({large['control_bytes'] / MIB:.1f} MiB)")
