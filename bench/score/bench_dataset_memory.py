"""Peak extra memory of gencore.score.dataset_denoiser: the data streams in
tiles, so the extra memory is bounded by the tile buffers, whatever N.

Each size runs in a fresh process (conftest's ``rss_probe``); the extra memory
of one call is the rise of ``ru_maxrss`` across it, after a warm-up call has
loaded libraries, thread pools and BLAS buffers. A dense [B, N] logit matrix
would grow by B * dN * 4 bytes from the small to the large data set; the
control, a dense ``x @ data.T`` in the same process, shows that the probe sees
such an allocation when there is one. The kernel's own bound, from its plan
(csrc/score/dataset_denoise.cpp): per thread tile_rows * (d + 1) +
query_block * (tile_rows + d + 2) elements, plus the data split's partials
data_chunks * B * (d + 2), plus O(B + d).
"""
from __future__ import annotations

B, D = 100, 64
SIZES = (50_000, 200_000)
MIB = 1 << 20

PROBE = r"""
n, b, d, threads = ARGS
rng = np.random.default_rng(0)
data = torch.from_numpy(rng.standard_normal((n, d), dtype=np.float32))
x = torch.from_numpy(rng.standard_normal((b, d), dtype=np.float32))
gencore.score.dataset_denoiser(x, data[:8192], 1.0)  # libraries, OpenMP pool, BLAS buffers
before = maxrss()
denoised = gencore.score.dataset_denoiser(x, data, 1.0)
extra = maxrss() - before
before = maxrss()
dense = x @ data.T                                    # the control: a [B, N] matrix
dense_extra = maxrss() - before
plan = gencore._native.core.dataset_denoise_plan(b, n, d, threads)
report(n=n, extra=extra, control_extra=dense_extra, control_bytes=dense.numel() * 4, plan=plan)
"""


def kernel_bound_bytes(plan, b, d) -> int:
    """The kernel's documented scratch for this plan, in float32 bytes."""
    _, query_block, chunks, tile_rows, threads = plan
    per_thread = tile_rows * (d + 1) + query_block * (tile_rows + d + 2)
    partials = chunks * b * (d + 2) if chunks > 1 else 0
    return 4 * (threads * per_thread + partials + 4 * b + 4 * d)


def test_dataset_denoise_peak_memory_is_bounded_by_the_tiles(bench_threads, record_property, rss_probe):
    small, large = rss_probe(PROBE, [(n, B, D, bench_threads) for n in SIZES])
    growth = large["extra"] - small["extra"]
    dense_growth = B * (SIZES[1] - SIZES[0]) * 4
    bound = kernel_bound_bytes(large["plan"], B, D)
    record_property("dataset_denoise_extra_bytes", {s["n"]: s["extra"] for s in (small, large)})
    record_property("dataset_denoise_kernel_bound_bytes", bound)
    # A dense [B, N] buffer would grow by dense_growth (57 MiB); allow 4 MiB of noise.
    assert growth < min(dense_growth / 8, 4 * MIB), (
        f"extra memory grew by {growth / MIB:.1f} MiB from N={SIZES[0]} to N={SIZES[1]} "
        f"({small['extra'] / MIB:.1f} -> {large['extra'] / MIB:.1f} MiB); a dense [B, N] matrix "
        f"would grow by {dense_growth / MIB:.1f} MiB")
    # The kernel's own scratch (plus the outputs [B, d + 1] and allocator slack).
    assert large["extra"] <= bound + 4 * B * (D + 1) + 4 * MIB, (
        f"extra memory at N={SIZES[1]} is {large['extra'] / MIB:.1f} MiB, above the kernel's bound "
        f"{bound / MIB:.2f} MiB (plan {large['plan']}) + 4 MiB")
