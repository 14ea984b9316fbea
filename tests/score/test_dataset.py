"""gencore.score.dataset_denoiser / dataset_score / dataset_log_density.

The oracle is ``reference.dataset_denoise_dense``: float64, direct distances
||x - alpha y||^2 (no expansion, no centring), a dense [B, N] softmax; it
shares no arithmetic with the streamed kernels. Native and reference results
must agree with it within what their precision allows: float64 within
1e-9 of the data's scale; float32 within a tolerance that grows with the
logits' error, eps32 (||x'||^2 + ||y'||^2) / sigma^2 (x', y' centred at the
data mean), since the denoiser is a softmax of those logits.
"""
from __future__ import annotations


import pytest
import torch

import gencore
from gencore.score import dataset_denoiser, dataset_log_density, dataset_score, reference

from tests.conftest import cuda_only, native_cpu_only, on_a_busy_side_stream

SHAPES = [(1, 1, 1), (7, 40, 3), (5, 1, 4), (33, 257, 17), (3, 5000, 6), (64, 1025, 32), (2, 10000, 2)]


def randn(rng, *shape, dtype=torch.float64, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=rng, dtype=torch.float64) * scale + shift).to(dtype)


def uniform(rng, n, low, high, dtype=torch.float64):
    return (low + (high - low) * torch.rand(n, generator=rng, dtype=torch.float64)).to(dtype)


def oracle(x, data, sigma, alpha=None, weights=None):
    b = x.shape[0]
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(b)
    a = torch.ones(b, dtype=torch.float64) if alpha is None else torch.as_tensor(alpha, dtype=torch.float64).expand(b)
    lw = None if weights is None else torch.log(weights.double())
    return reference.dataset_denoise_dense(x, data, s, a, lw)


def tolerance(x, data, sigma, alpha, dtype):
    """Absolute error allowed on D (in units of the data)."""
    spread = (data.double() - data.double().mean(0)).abs().max() + 1e-30
    if dtype == torch.float64:
        return 1e-9 * float(spread + data.double().abs().max())
    a = torch.ones(x.shape[0], dtype=torch.float64) if alpha is None else torch.as_tensor(alpha).double()
    xc = x.double() - a[:, None] * data.double().mean(0)
    yc = data.double() - data.double().mean(0)
    logit_error = 64 * 2.0 ** -24 * float((xc ** 2).sum(1).max() + (yc ** 2).sum(1).max()) \
        / float(torch.as_tensor(sigma).double().min() ** 2)
    return float(spread) * min(1.0, 2e-5 + 4 * logit_error) + 1e-5 * float(data.double().abs().max())


def check_denoiser(got, x, data, sigma, alpha=None, weights=None, what=""):
    want, _ = oracle(x, data, sigma, alpha, weights)
    err = float((got.double() - want).abs().max()) if got.numel() else 0.0
    tol = tolerance(x, data, sigma, alpha, got.dtype)
    assert err <= tol, f"{what}: max |D - D_oracle| = {err:.3g} > {tol:.3g}"


# ---------------------------------------------------------------- parity with the dense oracle

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("b,n,d", SHAPES, ids=str)
def test_denoiser_matches_dense_oracle(rng, b, n, d, dtype):
    x, data = randn(rng, b, d, scale=1.5), randn(rng, n, d)
    sigma = uniform(rng, b, 0.2, 3.0)
    got = dataset_denoiser(x.to(dtype), data.to(dtype), sigma.to(dtype))
    assert got.dtype == dtype and got.shape == (b, d)
    check_denoiser(got, x, data, sigma, what=f"{dtype} {b}x{n}x{d}")


@pytest.mark.parametrize("sigma", [1e-4, 1e-2, 0.3, 10.0, 1e6])
def test_sigma_extremes(rng, sigma):
    # tiny sigma: a naive softmax underflows to 0/0, the answer is the nearest
    # point; huge sigma: all weights equal, the answer is the (weighted) mean.
    x, data = randn(rng, 20, 5), randn(rng, 300, 5)
    for dtype in (torch.float32, torch.float64):
        got = dataset_denoiser(x.to(dtype), data.to(dtype), sigma)
        assert torch.isfinite(got).all()
        check_denoiser(got, x, data, sigma, what=f"sigma={sigma} {dtype}")
    if sigma <= 1e-4:
        nearest = torch.cdist(x, data).argmin(1)
        torch.testing.assert_close(dataset_denoiser(x, data, sigma), data[nearest], rtol=0, atol=1e-12)
    if sigma >= 1e6:
        torch.testing.assert_close(dataset_denoiser(x, data, sigma), data.mean(0).expand(20, 5), rtol=0, atol=1e-6)


def test_data_far_from_the_origin(rng):
    # pixel-like data: offset 50, spread 1; the centred expansion keeps float32 accurate
    x, data = randn(rng, 16, 12, shift=50.0), randn(rng, 500, 12, shift=50.0)
    got = dataset_denoiser(x.float(), data.float(), 0.7)
    check_denoiser(got, x, data, 0.7, what="offset data")


def test_one_point_data_set_is_that_point(rng):
    point = randn(rng, 1, 9)
    x = randn(rng, 6, 9, scale=5.0)
    for sigma in (1e-3, 1.0, 1e3):
        got = dataset_denoiser(x, point, sigma)
        assert torch.equal(got, point.expand(6, 9)) or torch.allclose(got, point.expand(6, 9), rtol=0, atol=1e-12)


def test_weights_match_repetition(rng):
    # integer weights are repeated points
    x, data = randn(rng, 8, 3), randn(rng, 6, 3)
    counts = torch.tensor([1, 3, 0, 2, 5, 1])
    repeated = data.repeat_interleave(counts, 0)
    for sigma in (0.3, 2.0):
        got = dataset_denoiser(x, data, sigma, weights=counts.double())
        torch.testing.assert_close(got, dataset_denoiser(x, repeated, sigma), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dataset_log_density(x, data, sigma, weights=counts.double()),
                                   dataset_log_density(x, repeated, sigma), rtol=1e-12, atol=1e-12)


def test_per_query_sigma_and_vp_alpha(rng):
    x, data = randn(rng, 10, 4), randn(rng, 200, 4)
    sigma, alpha = uniform(rng, 10, 0.1, 2.0), uniform(rng, 10, 0.2, 1.0)
    got = dataset_denoiser(x, data, sigma, alpha=alpha)
    check_denoiser(got, x, data, sigma, alpha, what="vp")
    for i in range(10):  # one query at a time with scalar sigma / alpha gives the same
        one = dataset_denoiser(x[i:i + 1], data, float(sigma[i]), alpha=float(alpha[i]))
        torch.testing.assert_close(one[0], got[i], rtol=1e-12, atol=1e-12)


def test_score_is_tweedie_and_the_gradient_of_the_log_density(rng):
    x, data = randn(rng, 6, 3), randn(rng, 50, 3)
    sigma, alpha = uniform(rng, 6, 0.3, 1.5), uniform(rng, 6, 0.5, 1.0)
    xr = x.clone().requires_grad_()
    logp = reference.dataset_denoise_dense(xr, data, sigma, alpha, None)[1]  # autograd of the oracle
    (grad,) = torch.autograd.grad(logp.sum(), xr)
    torch.testing.assert_close(dataset_score(x, data, sigma, alpha=alpha), grad, rtol=1e-9, atol=1e-9)


def test_log_density_is_a_normalised_density():
    # 1-D data set: integrate exp(log p) over a fine grid
    data = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64)
    grid = torch.linspace(-12, 14, 20001, dtype=torch.float64)[:, None]
    density = torch.exp(dataset_log_density(grid, data, 0.8, weights=torch.tensor([1.0, 2.0, 0.5],
                                                                                   dtype=torch.float64)))
    integral = torch.trapezoid(density, grid[:, 0])
    assert abs(float(integral) - 1.0) < 1e-6


def test_top_k_truncation(rng):
    x, data = randn(rng, 12, 4), randn(rng, 400, 4)
    # with k = N it is the full denoiser; with small k and small sigma it is too (the rest have ~0 weight)
    torch.testing.assert_close(dataset_denoiser(x, data, 0.5, k=400), dataset_denoiser(x, data, 0.5),
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dataset_denoiser(x, data, 0.05, k=5), dataset_denoiser(x, data, 0.05),
                               rtol=1e-8, atol=1e-8)
    # with k smaller, the denoiser is that of the k nearest points exactly
    near = torch.cdist(x, data).topk(7, largest=False).indices
    for i in range(12):
        want = dataset_denoiser(x[i:i + 1], data[near[i]], 0.5)
        torch.testing.assert_close(dataset_denoiser(x[i:i + 1], data, 0.5, k=7), want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- backends, threads, layout

@native_cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_and_reference_backend_agree(rng, monkeypatch, num_threads, threads):
    num_threads(threads)
    x, data, sigma = randn(rng, 37, 9), randn(rng, 3001, 9), uniform(rng, 37, 0.1, 2.0)
    weights = uniform(rng, 3001, 0.0, 2.0)
    native = dataset_denoiser(x, data, sigma, weights)
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    ref = dataset_denoiser(x, data, sigma, weights)
    torch.testing.assert_close(native, ref, rtol=1e-10, atol=1e-10)
    check_denoiser(native, x, data, sigma, weights=weights, what="native")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_are_computed_in_float32(rng, dtype):
    x, data = randn(rng, 5, 6).to(dtype), randn(rng, 80, 6).to(dtype)
    got = dataset_denoiser(x, data, 0.8)
    assert got.dtype == torch.float32
    check_denoiser(got, x.double(), data.double(), 0.8, what=str(dtype))


def test_caller_tensors_untouched(rng):
    x, data, sigma, w = randn(rng, 4, 3), randn(rng, 20, 3), uniform(rng, 4, 0.5, 1.0), uniform(rng, 20, 0.1, 1.0)
    copies = [t.clone() for t in (x, data, sigma, w)]
    dataset_denoiser(x, data, sigma, w)
    dataset_log_density(x, data, sigma, w, k=3)
    assert all(torch.equal(a, b) for a, b in zip((x, data, sigma, w), copies))


# ---------------------------------------------------------------- gradients

def test_gradcheck_x_and_sigma(rng):
    x = randn(rng, 4, 3).requires_grad_()
    data = randn(rng, 30, 3)
    sigma = uniform(rng, 4, 0.5, 1.5).requires_grad_()
    alpha = uniform(rng, 4, 0.5, 1.0)

    def f(x, sigma):
        return gencore.score.ops._dataset.DATASET_DENOISE(x, data, sigma, alpha, None)
    torch.autograd.gradcheck(f, (x, sigma))


def test_no_gradient_for_data():
    data = torch.randn(10, 2, dtype=torch.float64, requires_grad=True)
    with pytest.raises(NotImplementedError, match="data"):
        dataset_denoiser(torch.randn(3, 2, dtype=torch.float64), data, 1.0).sum().backward()


# ---------------------------------------------------------------- bad input

BAD = [
    (lambda x, y: dataset_denoiser(x, y, 0.0), ValueError, "sigma"),
    (lambda x, y: dataset_denoiser(x, y, -1.0), ValueError, "sigma"),
    (lambda x, y: dataset_denoiser(x, y, float("nan")), ValueError, "sigma"),
    (lambda x, y: dataset_denoiser(x, y, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)), ValueError, "sigma"),
    (lambda x, y: dataset_denoiser(x, y, torch.ones(2, dtype=torch.float64)), ValueError, "sigma"),
    (lambda x, y: dataset_denoiser(x, y[:0], 1.0), ValueError, "data is empty"),
    (lambda x, y: dataset_denoiser(x, y[:, :2], 1.0), ValueError, "feature dimension"),
    (lambda x, y: dataset_denoiser(x, y.float(), 1.0), TypeError, "data"),
    (lambda x, y: dataset_denoiser(x, y, 1.0, weights=-torch.ones(10, dtype=torch.float64)), ValueError, "weights"),
    (lambda x, y: dataset_denoiser(x, y, 1.0, weights=torch.zeros(10, dtype=torch.float64)), ValueError,
     "all zero"),
    (lambda x, y: dataset_denoiser(x, y, 1.0, weights=torch.ones(9, dtype=torch.float64)), ValueError, "weights"),
    (lambda x, y: dataset_denoiser(x, y, 1.0, k=0), ValueError, r"\bk\b"),
    (lambda x, y: dataset_denoiser(x, y, 1.0, k=11), ValueError, r"\bk\b"),
    (lambda x, y: dataset_denoiser(x, y, 1.0, alpha=0.0), ValueError, "alpha"),
    (lambda x, y: dataset_denoiser(x[0], y, 1.0), ValueError, "x"),
    (lambda x, y: dataset_denoiser(x.tolist(), y, 1.0), TypeError, "x"),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(monkeypatch, rng, backend, call, exc, match):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    x, y = randn(rng, 3, 4), randn(rng, 10, 4)
    with pytest.raises(exc, match=match):
        call(x, y)


@pytest.mark.parametrize("which", ["x", "data"])
def test_nan_is_refused_naming_the_argument(rng, which):
    x, y = randn(rng, 3, 4), randn(rng, 10, 4)
    (x if which == "x" else y)[1, 2] = float("nan")
    with pytest.raises(ValueError, match=which):
        dataset_denoiser(x, y, 1.0)


# ---------------------------------------------------------------- CUDA

@cuda_only
@pytest.mark.parametrize("b,n,d", [(1, 1, 1), (33, 5000, 17), (300, 9000, 64)], ids=str)
def test_cuda_matches_dense_oracle(rng, b, n, d):
    x, data, sigma = randn(rng, b, d), randn(rng, n, d), uniform(rng, b, 0.1, 2.0)
    got = dataset_denoiser(x.float().cuda(), data.float().cuda(), sigma.float().cuda())
    assert got.device.type == "cuda"
    check_denoiser(got.cpu(), x, data, sigma, what="cuda")


@cuda_only
def test_cuda_tiles_without_mass_and_half_inputs(rng):
    # 10000 points = 3 data tiles of 4096 on CUDA; the first tile has weight 0 everywhere,
    # so its step must keep every running max at -inf and produce no NaN.
    x, data, sigma = randn(rng, 40, 8), randn(rng, 10000, 8), uniform(rng, 40, 0.2, 2.0)
    weights = uniform(rng, 10000, 0.1, 1.0)
    weights[:5000] = 0.0
    got = dataset_denoiser(x.float().cuda(), data.float().cuda(), sigma.float().cuda(), weights.float().cuda())
    check_denoiser(got.cpu(), x, data, sigma, weights=weights, what="cuda, empty first tile")
    half = dataset_denoiser(x.half().cuda(), data.half().cuda(), 0.7)
    assert half.dtype == torch.float32
    check_denoiser(half.cpu(), x.half().double(), data.half().double(), 0.7, what="cuda fp16")


@cuda_only
def test_cuda_runs_on_the_callers_stream(rng):
    # Both the torch GEMMs and the gencore tile kernel must queue on the caller's stream.
    x, data = randn(rng, 200, 16).float().cuda(), randn(rng, 9000, 16).float().cuda()
    sigma = uniform(rng, 200, 0.2, 1.0).float().cuda()
    expected = dataset_denoiser(x, data, sigma)
    got = on_a_busy_side_stream(x, lambda queries: dataset_denoiser(queries, data, sigma))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the CUDA glue over tests/cuda_fake.py

def test_cuda_glue_streams_tiles_over_the_fake(rng, monkeypatch):
    from gencore import _native, _native_call, _softmin
    from gencore.score.ops import _dataset as ops

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_native_call, "POISON", True)
    monkeypatch.setattr(_softmin, "_CUDA_TILE", 7)
    x, data, sigma = randn(rng, 9, 4), randn(rng, 45, 4), uniform(rng, 9, 0.3, 2.0)
    alpha, weights = uniform(rng, 9, 0.5, 1.0), uniform(rng, 45, 0.1, 2.0)
    weights[:14] = 0.0  # the first two tiles have no mass
    args = [t.float() for t in (x, data, sigma, alpha, weights)]
    denoised, log_z = ops.DATASET_DENOISE.implementation("native-cuda")(*args)
    assert fake.calls["dataset_denoise_tile"] == 7  # ceil(45 / 7)
    check_denoiser(denoised, x, data, sigma, alpha, weights, what="cuda glue")
    want = oracle(x, data, sigma, alpha, weights)[1]
    torch.testing.assert_close(log_z.double(), want, rtol=1e-5, atol=1e-4)


# ---------------------------------------------------------------- native kernel paths

def native_plan(b, n, d, threads):
    """(plan, query_block, data_chunks, tile_rows, threads) of the CPU kernel for this call."""
    return gencore._native.core.dataset_denoise_plan(b, n, d, threads)


def denoise_op(x, data, sigma, alpha=None, weights=None):
    b = x.shape[0]
    a = torch.ones(b, dtype=x.dtype) if alpha is None else alpha.to(x.dtype)
    return gencore.score.ops._dataset.DATASET_DENOISE(x, data, sigma.to(x.dtype), a, weights)


def direct_oracle(x, data, sigma, weights=None):
    """(D, log_z) in float64 from direct differences (torch.cdist without the
    expanded form), with only [B, N] in memory: the oracle of the larger cases."""
    x, data = x.double(), data.double()
    dist = torch.cdist(x, data, compute_mode="donot_use_mm_for_euclid_dist")
    logits = -dist ** 2 / (2 * sigma.double() ** 2)[:, None]
    if weights is not None:
        logits = logits + torch.log(weights.double())
    return torch.softmax(logits, 1) @ data, torch.logsumexp(logits, 1)


def check_against_direct(got, log_z, x, data, sigma, weights=None, what=""):
    want, want_log_z = direct_oracle(x, data, sigma, weights)
    err = float((got.double() - want).abs().max())
    tol = tolerance(x, data, sigma, None, got.dtype)
    assert err <= tol, f"{what}: max |D - D_oracle| = {err:.3g} > {tol:.3g}"
    scale = 1 + float(want_log_z.abs().max())
    if got.dtype == torch.float64:
        tol = 1e-9 * scale
    else:  # the logits' float32 error (see tolerance), and the rounding of log_z itself
        xc, yc = x.double() - data.double().mean(0), data.double() - data.double().mean(0)
        tol = 256 * 2.0 ** -24 * float((xc ** 2).sum(1).max() + (yc ** 2).sum(1).max()) / float(
            sigma.double().min() ** 2) + 1e-5 * scale
    err = float((log_z.double() - want_log_z).abs().max())
    assert err <= tol, f"{what}: max |log_z - oracle| = {err:.3g} > {tol:.3g}"


# (expected plan, B, d, threads); N is set around multiples of the plan's tile below.
PLAN_CASES = [
    ("query-split", 7, 5, 1),      # one thread: one block
    ("query-split", 300, 40, 2),   # two blocks of 150, one per thread
    ("data-split", 40, 64, 2),     # one block, the data in two chunks
    ("data-split", 300, 40, 3),    # two blocks x two or three chunks
    ("query-split", 9, 8, 1),      # d = kFusedDotsMaxDim: the last dimension of SIMD dot rows
    ("query-split", 7, 9, 1),      # and the first one of the GEMM
]


@native_cpu_only
@pytest.mark.parametrize("tiles,offset", [(1, -1), (1, 0), (1, 1), (2, 1), (3, 1)], ids=str)
@pytest.mark.parametrize("plan,b,d,threads", PLAN_CASES, ids=str)
def test_native_plans_and_tile_boundaries(rng, num_threads, plan, b, d, threads, tiles, offset):
    tile = native_plan(b, 4096, d, threads)[3]
    n = tiles * tile + offset
    if plan == "data-split" and tiles == 1:
        n = 2 * tile + offset  # a data split needs two tiles at least
    got_plan = native_plan(b, n, d, threads)
    assert got_plan[0] == plan and got_plan[4] == threads, got_plan
    num_threads(threads)
    x, data = randn(rng, b, d, scale=1.5), randn(rng, n, d)
    sigma = uniform(rng, b, 0.3, 2.0)
    for dtype in (torch.float32, torch.float64):
        got, log_z = denoise_op(x.to(dtype), data.to(dtype), sigma)
        check_against_direct(got, log_z, x, data, sigma, what=f"{got_plan} N={n} {dtype}")


@native_cpu_only
@pytest.mark.parametrize("plan,b,d,threads", PLAN_CASES, ids=str)
def test_native_zero_weights_give_minus_inf_log_weights(rng, num_threads, plan, b, d, threads):
    # Whole tiles (the first one included, so a query's running max starts at
    # -inf) and, under the data split, a whole chunk have weight 0.
    tile = native_plan(b, 4096, d, threads)[3]
    n = 3 * tile + 5
    num_threads(threads)
    assert native_plan(b, n, d, threads)[0] == plan
    x, data = randn(rng, b, d), randn(rng, n, d)
    sigma = uniform(rng, b, 0.3, 2.0)
    weights = uniform(rng, n, 0.5, 2.0)
    weights[: tile + 3] = 0.0                     # tile 0 and the start of tile 1
    weights[2 * tile: 2 * tile + 7] = 0.0
    if plan == "data-split":
        chunks = native_plan(b, n, d, threads)[2]
        chunk_rows = -(-(-(-n // tile)) // chunks) * tile   # whole tiles per chunk, as the kernel cuts them
        weights[:chunk_rows] = 0.0                # the first chunk has no mass
    for dtype in (torch.float32, torch.float64):
        got, log_z = denoise_op(x.to(dtype), data.to(dtype), sigma, weights=weights.to(dtype))
        check_against_direct(got, log_z, x, data, sigma, weights, what=f"{plan} {dtype}")


@native_cpu_only
@pytest.mark.parametrize("plan,b,d,threads", PLAN_CASES[1:3], ids=str)
def test_native_every_simd_level(rng, simd_level, num_threads, plan, b, d, threads):
    # The float32 epilogue (logits, exp, sums) has one implementation per level;
    # N is not a multiple of any vector width, nor of the tile.
    tile = native_plan(b, 4096, d, threads)[3]
    n = 2 * tile + 13
    num_threads(threads)
    x, data = randn(rng, b, d, scale=1.5), randn(rng, n, d)
    sigma = uniform(rng, b, 0.1, 3.0)
    weights = uniform(rng, n, 0.0, 2.0)
    weights[::5] = 0.0
    got, log_z = denoise_op(x.float(), data.float(), sigma, weights=weights.float())
    check_against_direct(got, log_z, x, data, sigma, weights, what=f"simd={simd_level}")


@native_cpu_only
def test_native_thread_counts_agree(rng, num_threads):
    # Every plan gives the same numbers up to rounding, and the data mean is
    # computed the same way whatever the thread count.
    x, data = randn(rng, 40, 64), randn(rng, 3000, 64, shift=3.0)
    sigma = uniform(rng, 40, 0.5, 2.0)
    results = []
    for threads in (1, 2, 3):
        num_threads(threads)
        results.append(denoise_op(x, data, sigma))
    for d_, lz in results[1:]:
        torch.testing.assert_close(d_, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lz, results[0][1], rtol=1e-12, atol=1e-12)


@native_cpu_only
@pytest.mark.parametrize("which,row", [("x", 0), ("x", 6), ("data", 0), ("data", 2999)])
def test_native_nan_message_names_argument_and_row(rng, num_threads, which, row):
    num_threads(2)
    x, data = randn(rng, 7, 5), randn(rng, 3000, 5)
    (x if which == "x" else data)[row, 4] = float("inf")
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(ValueError, match=rf"{which} contains NaN or inf \(row {row}\)"):
            denoise_op(x.to(dtype), data.to(dtype), torch.ones(7, dtype=dtype))
