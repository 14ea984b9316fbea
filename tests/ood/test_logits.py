"""gencore.ood logit scores (msp, energy, max_logit, gen, kl_matching) and
residual / ViM: parity with the reference, formulas re-derived from the
papers' code (OpenOOD, pytorch-ood), extreme logits, SIMD levels, threads,
layouts, opcheck / gradcheck / compile / meta, bad input, CUDA.

How results are compared: the oracle is the reference run in float64 on the
same input values (half inputs are cast up exactly). A float32 result must be
within ``ulps * eps(float32) * scale`` of it, where ``scale`` is the size of
what the score sums (1 for MSP, |score| + T for energy, M for GEN, the sum of
|terms| for KL, ||x - u|| (+ |logsumexp|) for residual / ViM); float64
results use eps(float64). Only max_logit is compared exactly (it is the max
of the inputs).

Kernel facts the cases aim at (csrc/ood/logits*.cpp, vim.cpp): rows are
vectorised by 8 (AVX2) / 16 (AVX-512) with tails, and split into two segments
around the argmax k, so C and k are varied; float32 exp flushes below
exp(-87.3); GEN recomputes log(1 - p_max) in log space when the rest of the
softmax sum is below 1e-20; the residual kernel recomputes rows whose
residual is below 1/8 of ||x - u|| explicitly, in blocks of 16..128 rows.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import gencore
from gencore import _native
from gencore.ood import (energy, gen, kl_matching, kl_matching_templates, max_logit, msp, reference, residual, vim,
                         vim_fit)

from tests.conftest import cuda_only, native_cpu_only

LOGIT_SCORES = ("msp", "energy", "max_logit", "gen", "kl_matching")
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
ULPS = 64  # allowed error in eps of the compute dtype, times the score's scale


# ====================================================================== helpers
# (rng, the restored thread count / SIMD level and the skip markers come from tests/conftest.py)

def randn(rng, *shape, dtype=torch.float32, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=rng, dtype=torch.float64) * scale + shift).to(dtype)


def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def random_templates(rng, c, dtype=torch.float64):
    """[C, C] rows that are softmax distributions of random logits (all > 0)."""
    return torch.softmax(randn(rng, c, c, dtype=torch.float64, scale=2.0), dim=1).to(dtype)


def call_score(name, logits, *, temperature=1.0, gamma=0.1, top_m=100, templates=None):
    if name == "msp":
        return msp(logits, temperature)
    if name == "energy":
        return energy(logits, temperature)
    if name == "max_logit":
        return max_logit(logits)
    if name == "gen":
        return gen(logits, gamma, top_m)
    return kl_matching(logits, templates, "predicted")


def reference_score(name, logits64, *, temperature=1.0, gamma=0.1, top_m=100, templates=None):
    if name == "msp":
        return reference.msp(logits64, temperature)
    if name == "energy":
        return reference.energy(logits64, temperature)
    if name == "max_logit":
        return reference.max_logit(logits64)
    if name == "gen":
        return reference.gen(logits64, gamma, top_m)
    return reference.kl_matching(logits64, templates.double())


def score_scale(name, logits64, ref, *, temperature=1.0, gamma=0.1, top_m=100, templates=None):
    """[N] size of what the score sums (see the module docstring).

    GEN and KL also carry the oracle's own rounding: the reference's log_softmax
    is l - logsumexp(l), exact only to eps * |logsumexp| ~ eps * (max |l| + log C).
    """
    n, c = logits64.shape
    if name == "msp":
        return torch.ones(n, dtype=torch.float64)
    if name == "energy":
        return ref.abs() + temperature
    if name == "max_logit":
        return torch.zeros(n, dtype=torch.float64)
    lse = logits64.abs().amax(dim=1) + math.log(c) if c else torch.zeros(n, dtype=torch.float64)
    if name == "gen":
        return min(top_m, c) * (1.0 + gamma * lse)
    log_p = torch.log_softmax(logits64, dim=1)
    log_d = templates.double().log()[logits64.argmax(dim=1)]
    return 1.0 + (log_p.exp() * (log_p - log_d).abs()).sum(dim=1) + lse


def assert_close_scaled(got, want64, scale, dtype, what, ulps=ULPS, extra=0.0):
    """got (native) vs want64 (float64 oracle) within ulps * eps(compute dtype) * scale + extra, row by row."""
    assert got.dtype == compute_dtype(dtype), f"{what}: dtype {got.dtype}, expected {compute_dtype(dtype)}"
    assert got.shape == want64.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want64.shape)}"
    tol = ulps * torch.finfo(compute_dtype(dtype)).eps * scale + extra
    err = (got.double() - want64).abs()
    same_inf = torch.isinf(want64) & (got.double() == want64)
    bad = ~((err <= tol) | same_inf)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} rows off; row {i}: got {got[i].item()!r}, "
                             f"want {want64[i].item()!r}, |err| {err[i].item():.3g} > tol {tol[i].item():.3g}")


def check_score(name, logits, *, temperature=1.0, gamma=0.1, top_m=100, templates=None, what="", ulps=ULPS):
    """Runs ``name`` on logits and compares with the float64 reference on the same values."""
    got = call_score(name, logits, temperature=temperature, gamma=gamma, top_m=top_m, templates=templates)
    x64 = logits.double()
    want = reference_score(name, x64, temperature=temperature, gamma=gamma, top_m=top_m, templates=templates)
    if name == "max_logit":
        assert got.dtype == compute_dtype(logits.dtype)
        assert torch.equal(got.double(), want), f"{what}: max_logit differs from the max of the inputs"
        return got
    scale = score_scale(name, x64, want, temperature=temperature, gamma=gamma, top_m=top_m, templates=templates)
    assert_close_scaled(got, want, scale, logits.dtype, f"{name} {what}", ulps=ulps)
    return got


def orthonormal(rng, d, r, dtype=torch.float64):
    q, _ = torch.linalg.qr(randn(rng, d, max(r, 1), dtype=torch.float64))
    return q[:, :r].contiguous().to(dtype)


def residual_problem(rng, n, d, r, c=10, dtype=torch.float32, inside=1.0, outside=1.0):
    """features with components `inside` / `outside` the span of an orthonormal P around center u."""
    p = orthonormal(rng, d, r)
    u = randn(rng, d, dtype=torch.float64)
    a = randn(rng, n, r, dtype=torch.float64) * inside
    noise = randn(rng, n, d, dtype=torch.float64)
    noise = noise - (noise @ p) @ p.T  # orthogonal to P
    x = u + a @ p.T + outside * noise
    logits = randn(rng, n, c, dtype=torch.float64, scale=3.0)
    return x.to(dtype), logits.to(dtype), p.to(dtype), u.to(dtype)


def residual_scale(x64, p64, u64):
    return torch.linalg.vector_norm(x64 - u64, dim=1) + 1e-300


def orthonormality_defect(p64):
    """||P^T P - I||_2: P rounded to float16 is orthonormal only to ~eps(float16)."""
    if p64.shape[1] == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(p64.T @ p64 - torch.eye(p64.shape[1], dtype=torch.float64), ord=2))


def check_residual(x, p, u, logits=None, alpha=0.0, what="", ulps=ULPS):
    """Native vs the float64 reference (explicit ||xc - (xc P) P^T||) on the same values.

    The kernel's fast form ||xc||^2 - ||xc P||^2 equals it for orthonormal P and is
    used only where r >= ||xc|| / 8; there its deviation for P^T P = I + E is at most
    |y^T E y| / (2 r) <= 4 ||E|| ||xc||, added to the tolerance.
    """
    x64, p64, u64 = x.double(), p.double(), u.double()
    norm_xc = residual_scale(x64, p64, u64)
    extra = 4 * orthonormality_defect(p64) * norm_xc
    if logits is None:
        got, want = residual(x, p, u), reference.residual(x64, p64, u64)
        scale = norm_xc
    else:
        got, want = vim(x, logits, p, u, alpha), reference.vim(x64, logits.double(), p64, u64, alpha)
        scale, extra = abs(alpha) * norm_xc + want.abs() + 1.0, abs(alpha) * extra
    assert_close_scaled(got, want, scale, x.dtype, f"{'vim' if logits is not None else 'residual'} {what}", ulps,
                        extra=extra)
    return got


# ====================================================================== parity with the reference

SHAPES = [(0, 1), (0, 10), (1, 1), (1, 2), (1, 1000), (7, 1), (7, 2), (7, 10), (33, 17), (33, 1000),
          (257, 10), (65, 1025)]


@pytest.mark.parametrize("n,c", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_parity_shapes(rng, n, c, name):
    logits = randn(rng, n, c, scale=3.0)
    templates = random_templates(rng, c, torch.float32) if name == "kl_matching" else None
    out = check_score(name, logits, templates=templates, top_m=5, what=f"[{n}, {c}]")
    assert out.shape == (n,)


@pytest.mark.parametrize("top_m", [1, 2, 9, 10, 11, 100])
def test_gen_top_m_around_c(rng, top_m):
    logits = randn(rng, 40, 10, scale=2.0)
    check_score("gen", logits, top_m=top_m, what=f"top_m={top_m}")
    check_score("gen", logits, top_m=top_m, gamma=0.7, what=f"top_m={top_m} gamma=0.7")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["random", "ascending", "descending", "sampled-high", "sampled-low", "ties"])
def test_gen_selection_paths(rng, kind, dtype):
    # The CPU kernel selects the K = M largest (M <= C/2) or, for larger M, the
    # K = C - M + 1 smallest values, with a heap (K <= 4) or a strided sample of 128
    # values that sets a threshold, then a quickselect on the values past it, falling
    # back to the whole row when too few pass. Rows whose sampled
    # positions (multiples of C // 128 = 7) hold the largest or the smallest values
    # force the fallback on either side.
    c = 1000
    base = randn(rng, 6, c, dtype=torch.float64, scale=3.0)
    sampled = torch.zeros(c, dtype=torch.bool)
    sampled[::c // 128] = True
    if kind == "ascending":
        base = base.sort(dim=1).values
    elif kind == "descending":
        base = base.sort(dim=1, descending=True).values
    elif kind == "sampled-high":
        base[:, sampled] += 20.0
    elif kind == "sampled-low":
        base[:, sampled] -= 20.0
    elif kind == "ties":
        base = torch.randint(-3, 4, (6, c), generator=rng).double()
    logits = base.to(dtype)
    for m in (1, 2, 4, 5, 60, 100, 300, 499, 500, 501, 502, 600, 996, 997, 999):
        check_score("gen", logits, top_m=m, what=f"{kind} M={m}")


def test_gen_top_m_at_least_c_uses_all_classes(rng):
    logits = randn(rng, 20, 30)
    assert torch.equal(gen(logits, 0.1, 30), gen(logits, 0.1, 31))
    assert torch.equal(gen(logits, 0.1, 30), gen(logits, 0.1, 10_000))
    assert not torch.equal(gen(logits, 0.1, 29), gen(logits, 0.1, 30))


@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0, 1000.0])
@pytest.mark.parametrize("name", ["msp", "energy"])
def test_temperature(rng, name, temperature):
    check_score(name, randn(rng, 50, 37, scale=4.0), temperature=temperature, what=f"T={temperature}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tiny_temperature_ties(dtype):
    # T -> 0: softmax(l / T) is uniform over the tied maxima; 1/T overflowing the
    # dtype must not turn the ties' 0 * (1/T) into NaN.
    logits = torch.tensor([[1.0, 1.0, 0.0, 1.0], [2.0, -1.0, 1.0, 1.5]], dtype=dtype)
    for t in (1e-30, 1e-300):
        torch.testing.assert_close(msp(logits, t), torch.tensor([1 / 3, 1.0], dtype=dtype))
        torch.testing.assert_close(energy(logits, t), torch.tensor([1.0, 2.0], dtype=dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_parity_dtypes(rng, dtype, name):
    logits = randn(rng, 45, 101, scale=3.0, dtype=dtype)
    templates = random_templates(rng, 101, dtype) if name == "kl_matching" else None
    check_score(name, logits, templates=templates, top_m=7, what=str(dtype))


def _layouts(base: torch.Tensor) -> dict:
    n, c = base.shape
    return {
        "transposed": base.T.contiguous().T,                           # column-major: copied to rows
        "row-slice": torch.cat([base, base], dim=0)[::2],              # row stride 2C, no copy
        "column-slice": torch.cat([base, base[:, :3]], dim=1)[:, :c],  # row stride C + 3, no copy
        "broadcast-row": base[:1].expand(n, c),                        # row stride 0
    }


@pytest.mark.parametrize("layout", ["transposed", "row-slice", "column-slice", "broadcast-row"])
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_parity_non_contiguous(rng, name, layout):
    base = randn(rng, 31, 19, scale=3.0)
    logits = _layouts(base)[layout]
    templates = random_templates(rng, 19, torch.float32)
    if name == "kl_matching":  # templates may be non-contiguous too
        templates = templates.T.contiguous().T
    check_score(name, logits, templates=templates, top_m=4, what=layout)


@native_cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_threads_give_identical_rows(rng, num_threads, name, threads):
    # Rows are independent and each is computed by one thread: bitwise identical.
    logits = randn(rng, 3001, 64, scale=3.0)
    templates = random_templates(rng, 64, torch.float32)
    num_threads(1)
    one = call_score(name, logits, top_m=10, templates=templates)
    num_threads(threads)
    many = call_score(name, logits, top_m=10, templates=templates)
    assert torch.equal(one, many)
    check_score(name, logits, top_m=10, templates=templates, what=f"threads={threads}")


@native_cpu_only
@pytest.mark.parametrize("c", [1, 3, 8, 15, 16, 17, 33, 1000])
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_simd_levels_match_reference(rng, simd_level, name, c):
    # The max sits at every position of some row, so both segments around k
    # take every tail length; spread +-60 exercises the exp flush below -87.
    n = max(c, 8)
    logits = randn(rng, n, c, scale=30.0)
    logits[torch.arange(n), torch.arange(n) % c] += 40.0
    templates = random_templates(rng, c, torch.float32)
    check_score(name, logits, top_m=max(1, c // 2), templates=templates, what=f"simd={simd_level} C={c}")
    check_score(name, logits, top_m=max(1, c - 3), templates=templates, what=f"simd={simd_level} C={c}")


@native_cpu_only
def test_native_writes_every_output(rng):
    logits = randn(rng, 300, 23, scale=3.0)
    log_t = random_templates(rng, 23, torch.float32).log()
    for code in range(5):
        out = torch.full((300, 1), float("nan"))
        _native.core.logit_scores(logits.numpy(), code, 1.0, 0.1, 5, log_t.numpy(), out.numpy(), 3)
        assert torch.isfinite(out).all(), f"score code {code} left rows unwritten"
    x, lg, p, u = residual_problem(rng, 300, 20, 6)
    for logits_arg in (None, lg.numpy()):
        out = torch.full((300, 1), float("nan"))
        _native.core.residual_scores(x.numpy(), p.numpy(), u[None].numpy(), logits_arg, 0.5, out.numpy(), 3)
        assert torch.isfinite(out).all()


def test_forced_reference_backend_agrees(rng, monkeypatch):
    logits = randn(rng, 64, 50, scale=3.0)
    templates = random_templates(rng, 50, torch.float32)
    x, lg, p, u = residual_problem(rng, 64, 24, 8, c=50)
    native = {name: call_score(name, logits, top_m=7, templates=templates) for name in LOGIT_SCORES}
    native["residual"], native["vim"] = residual(x, p, u), vim(x, lg, p, u, 1.5)
    monkeypatch.setenv("GENCORE_BACKEND", "reference")
    x64 = logits.double()
    for name in LOGIT_SCORES:
        ref = call_score(name, logits, top_m=7, templates=templates)
        assert ref.dtype == native[name].dtype
        want = reference_score(name, x64, top_m=7, templates=templates)
        scale = score_scale(name, x64, want, top_m=7, templates=templates)
        assert_close_scaled(ref, want, scale, logits.dtype, f"reference backend {name}")
        assert_close_scaled(native[name], ref.double(), scale + ref.double().abs(), logits.dtype, f"native vs ref {name}")
    scale = residual_scale(x.double(), p.double(), u.double())
    assert_close_scaled(native["residual"], residual(x, p, u).double(), scale, x.dtype, "native vs ref residual")
    assert_close_scaled(native["vim"], vim(x, lg, p, u, 1.5).double(), 1.5 * scale + 20, x.dtype, "native vs ref vim")


# ====================================================================== formulas of the papers' code, re-derived

def _softmax_np(x):
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_msp_energy_maxlogit_match_papers_formulas(rng):
    from scipy.special import logsumexp

    x = randn(rng, 200, 13, scale=3.0, dtype=torch.float64)
    xn = x.numpy()
    for t in (1.0, 2.5):
        # Hendrycks & Gimpel: max softmax; ODIN-style temperature divides the logits
        np.testing.assert_allclose(msp(x, t).numpy(), _softmax_np(xn / t).max(axis=1), rtol=1e-12)
        # Liu et al. (pytorch-ood EnergyBased.score is -T logsumexp(x / T); ours is its negative)
        np.testing.assert_allclose(energy(x, t).numpy(), t * logsumexp(xn / t, axis=1), rtol=1e-12)
    np.testing.assert_array_equal(max_logit(x).numpy(), xn.max(axis=1))


@pytest.mark.parametrize("gamma,m", [(0.1, 100), (0.1, 5), (0.5, 3), (2.0, 13), (0.01, 1)])
def test_gen_matches_openood_formula(rng, gamma, m):
    # OpenOOD GENPostprocessor.generalized_entropy: sort the softmax ascending,
    # keep the last M, sum p^g (1-p)^g, return the negative.
    x = randn(rng, 300, 13, scale=2.0, dtype=torch.float64)
    probs = np.sort(_softmax_np(x.numpy()), axis=1)[:, -m:]
    want = -np.sum(probs ** gamma * (1 - probs) ** gamma, axis=1)
    np.testing.assert_allclose(gen(x, gamma, m).numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gen(x.float(), gamma, m).double().numpy(), want, rtol=1e-5, atol=1e-5 * min(m, 13))


def test_kl_matching_matches_pytorch_ood_and_scipy(rng):
    from scipy.stats import entropy

    c = 11
    val = randn(rng, 2000, c, scale=2.5, dtype=torch.float64)
    test = randn(rng, 300, c, scale=2.5, dtype=torch.float64)
    # pytorch-ood KLMatching.fit: per predicted label, the mean softmax of its rows
    probs, labels = _softmax_np(val.numpy()), val.numpy().argmax(axis=1)
    want_t = np.stack([probs[labels == k].mean(axis=0) for k in range(c)])
    templates = kl_matching_templates(val, unseen="uniform")
    np.testing.assert_allclose(templates.numpy(), want_t, rtol=1e-12)
    # rule "predicted": KL(p || d_yhat) (scipy.stats.entropy(p, q) is sum p log(p / q)); ours is its negative
    p = _softmax_np(test.numpy())
    yhat = test.numpy().argmax(axis=1)
    want = np.array([-entropy(p[i], want_t[yhat[i]]) for i in range(len(p))])
    np.testing.assert_allclose(kl_matching(test, templates, "predicted").numpy(), want, rtol=1e-10, atol=1e-12)
    got32 = kl_matching(test.float(), templates.float(), "predicted").double().numpy()
    np.testing.assert_allclose(got32, want, rtol=1e-5, atol=1e-5)
    # rule "min" (the default): the minimum over every template
    want_min = np.array([-min(entropy(p[i], want_t[k]) for k in range(c)) for i in range(len(p))])
    np.testing.assert_allclose(kl_matching(test, templates).numpy(), want_min, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kl_matching(test.float(), templates.float()).double().numpy(), want_min, rtol=1e-5,
                               atol=1e-5)
    assert (kl_matching(test, templates) >= kl_matching(test, templates, "predicted") - 1e-12).all()


def test_kl_matching_templates_unseen_class_is_uniform(rng):
    logits = randn(rng, 50, 6, dtype=torch.float64)
    logits[:, 4] -= 100.0  # class 4 never predicted
    t = kl_matching_templates(logits, unseen="uniform")
    assert t.shape == (6, 6) and t.dtype == torch.float64
    torch.testing.assert_close(t[4], torch.full((6,), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(t.sum(dim=1), torch.ones(6, dtype=torch.float64))
    assert kl_matching_templates(logits.half()).dtype == torch.float32
    assert torch.equal(kl_matching_templates(logits[:0], unseen="uniform"),
                       torch.full((6, 6), 1 / 6, dtype=torch.float64))
    # the default drops it: one template per predicted class, in class order
    dropped = kl_matching_templates(logits)
    assert dropped.shape == (5, 6)
    torch.testing.assert_close(dropped, t[[0, 1, 2, 3, 5]])
    with pytest.raises(ValueError, match="no template"):
        kl_matching_templates(logits[:0])


def _openood_vim(features, weight, bias, dim):
    """OpenOOD VIMPostprocessor.setup, re-derived in numpy / scikit-learn."""
    from sklearn.covariance import EmpiricalCovariance

    x, w, b = features.numpy(), weight.numpy(), bias.numpy()
    u = -np.linalg.pinv(w) @ b
    ec = EmpiricalCovariance(assume_centered=True).fit(x - u)
    eig_vals, eig_vecs = np.linalg.eig(ec.covariance_)
    ns = np.ascontiguousarray(eig_vecs.T[np.argsort(-eig_vals)[dim:]].T).real  # the complement of P
    logits = x @ w.T + b
    alpha = logits.max(axis=1).mean() / np.linalg.norm((x - u) @ ns, axis=1).mean()
    return u, ns, alpha


def _openood_vim_score(features, logits, u, ns, alpha):
    from scipy.special import logsumexp

    return logsumexp(logits, axis=1) - alpha * np.linalg.norm((features - u) @ ns, axis=1)


def test_vim_fit_and_score_match_openood(rng):
    n, d, c, dim = 600, 24, 7, 10
    scales = torch.linspace(3.0, 0.2, d, dtype=torch.float64)  # distinct eigenvalues
    train = randn(rng, n, d, dtype=torch.float64) * scales + 0.3
    weight, bias = randn(rng, c, d, dtype=torch.float64), randn(rng, c, dtype=torch.float64)
    u_ref, ns, alpha_ref = _openood_vim(train, weight, bias, dim)

    center, principal, alpha = vim_fit(train, None, weight, bias, dim)
    assert center.shape == (d,) and principal.shape == (d, dim) and isinstance(alpha, float)
    np.testing.assert_allclose(center.numpy(), u_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(alpha, alpha_ref, rtol=1e-9)
    # P spans the complement of OpenOOD's NS: together they are an orthonormal basis
    basis = torch.cat([principal, torch.from_numpy(ns)], dim=1)
    torch.testing.assert_close(basis.T @ basis, torch.eye(d, dtype=torch.float64), atol=1e-9, rtol=0)

    test = randn(rng, 200, d, dtype=torch.float64) * scales.flip(0)
    logits = test @ weight.T + bias
    want = _openood_vim_score(test.numpy(), logits.numpy(), u_ref, ns, alpha_ref)
    np.testing.assert_allclose(vim(test, logits, principal, center, alpha).numpy(), want, rtol=1e-9, atol=1e-9)
    # OpenOOD ResidualPostprocessor: -||(x - u) NS||
    np.testing.assert_allclose(residual(test, principal, center).numpy(),
                               -np.linalg.norm((test.numpy() - u_ref) @ ns, axis=1), rtol=1e-9, atol=1e-9)
    # float32 features: same scores within float32 accuracy
    c32, p32, a32 = vim_fit(train.float(), None, weight.float(), bias.float(), dim)
    assert c32.dtype == p32.dtype == torch.float32
    got32 = vim(test.float(), logits.float(), p32, c32, a32).double().numpy()
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_vim_fit_given_logits_equals_computed(rng):
    x = randn(rng, 100, 8, dtype=torch.float64)
    w, b = randn(rng, 5, 8, dtype=torch.float64), randn(rng, 5, dtype=torch.float64)
    c1, p1, a1 = vim_fit(x, None, w, b, 3)
    c2, p2, a2 = vim_fit(x, x @ w.T + b, w, b, 3)
    assert torch.equal(c1, c2) and torch.equal(p1, p2)
    assert math.isclose(a1, a2, rel_tol=1e-12)
    c3, p3, a3 = vim_fit(x, 2 * (x @ w.T + b), w, b, 3)  # logits are only read for alpha
    assert math.isclose(a3, 2 * a1, rel_tol=1e-12)


def test_vim_fit_no_residual_raises():
    x = torch.zeros(10, 3, dtype=torch.float64)
    x[:, 0] = torch.arange(10.0)
    w, b = torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="lower dim"):
        vim_fit(x, None, w, b, 1)


# ====================================================================== numerically extreme logits

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_extreme_logits_pm_1e4(rng, name, dtype):
    signs = torch.randint(0, 2, (64, 50), generator=rng) * 2 - 1
    logits = (signs * 1e4).to(dtype)
    logits[0] = -1e4  # all equal, negative
    templates = random_templates(rng, 50, dtype)
    out = check_score(name, logits, templates=templates, top_m=10, what="+-1e4")
    assert torch.isfinite(out).all()
    count = (logits == logits.amax(dim=1, keepdim=True)).sum(dim=1).double()
    if name == "msp":  # p_max = 1 / (number of maxima) exactly
        torch.testing.assert_close(out.double(), 1 / count, rtol=4 * torch.finfo(dtype).eps, atol=0)
    if name == "energy":
        torch.testing.assert_close(out.double(), logits.amax(dim=1).double() + count.log(),
                                   rtol=4 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("c", [1, 2, 10, 1000])
@pytest.mark.parametrize("value", [-1e4, 0.0, 3.5, 1e4])
def test_all_equal_logits(c, value):
    logits = torch.full((5, c), value)
    torch.testing.assert_close(msp(logits), torch.full((5,), 1 / c), rtol=1e-6, atol=0)
    torch.testing.assert_close(energy(logits).double(), torch.full((5,), value + math.log(c), dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    assert torch.equal(max_logit(logits), torch.full((5,), value))
    p = 1 / c
    for m in (1, 3, c + 1):
        want = -min(m, c) * (p * (1 - p)) ** 0.1
        torch.testing.assert_close(gen(logits, 0.1, m).double(), torch.full((5,), want, dtype=torch.float64),
                                   rtol=1e-6, atol=1e-7)
    # uniform posterior against a uniform template: KL 0
    torch.testing.assert_close(kl_matching(logits, torch.full((c, c), p)), torch.zeros(5), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("gap", [30.0, 50.0, 100.0, 300.0, 1e4])
def test_gen_confident_rows_keep_the_tail(rng, dtype, gap):
    # One logit `gap` above the rest: 1 - p_max ~ (C-1) e^-gap can underflow in
    # float32 (and double for 1e4); GEN's top term (1 - p)^gamma does not
    # vanish with it (gap 100: e^-10 = 4.5e-5 per term). The float64 reference
    # computes in log space; so must the kernel.
    c = 37
    logits = randn(rng, 40, c, dtype=torch.float64)
    logits[:, 5] += gap
    logits = logits.to(dtype)
    for m in (1, 5, 100):
        got = check_score("gen", logits, top_m=m, what=f"gap={gap}")
        if gap <= 300:  # the tail term of the top class is still visible in float32
            assert (got < 0).all()


def test_gen_tail_probabilities_below_float32_range(rng):
    # p = e^-95 ~ 5e-42 underflows float32 exp, but p^0.1 ~ 7e-5 does not.
    logits = torch.zeros(3, 4)
    logits[:, 1:] = -95.0
    want = reference.gen(logits.double(), 0.1, 4)
    assert want.abs().min() > 1e-4
    assert_close_scaled(gen(logits, 0.1, 4), want, torch.full((3,), 4.0, dtype=torch.float64), torch.float32, "gen")


def test_kl_matching_zero_template_entry_gives_minus_inf(rng):
    logits = randn(rng, 4, 3)
    templates = torch.full((3, 3), 1 / 3)
    templates[:, 2] = 0.0
    templates[:, 0] = 2 / 3
    out = kl_matching(logits, templates, "predicted")
    assert torch.isneginf(out).all()
    huge = kl_matching(logits, templates)  # rule "min": log 0 is the lowest finite float, as in pytorch-ood
    assert torch.isfinite(huge).all() and (huge < -1e30).all()
    logits[:, 2] = -1e4  # p_2 underflows to 0: the zero entry no longer matters
    out = kl_matching(logits, templates, "predicted")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), reference.kl_matching(logits.double(), templates.double()),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_matching(logits, templates).double(), out.double(), rtol=1e-5, atol=1e-6)


def test_score_bounds_hold(rng):
    logits = randn(rng, 500, 20, scale=5.0)
    s_msp, s_energy, s_max = msp(logits), energy(logits), max_logit(logits)
    assert ((s_msp > 0) & (s_msp <= 1)).all() and (s_msp >= 1 / 20 - 1e-7).all()
    assert (s_energy >= s_max).all() and (s_energy <= s_max + math.log(20) + 1e-5).all()
    assert (gen(logits, 0.1, 5) <= 0).all()
    assert (kl_matching(logits, random_templates(rng, 20, torch.float32)) <= 1e-6).all()


try:
    from hypothesis import given, settings, strategies as st
    from hypothesis.extra.numpy import arrays
except ImportError:  # pragma: no cover - hypothesis is a test extra
    given = None

if given is not None:
    @settings(max_examples=150, deadline=None)
    @given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)),
                  elements=st.one_of(st.floats(-1e4, 1e4, width=32), st.sampled_from([0.0, -0.0, 1.0, -1.0]))),
           st.integers(1, 45))
    def test_property_native_matches_reference(values, top_m):
        logits = torch.from_numpy(values.copy())
        c = logits.shape[1]
        templates = torch.softmax(torch.linspace(-1, 1, c * c).reshape(c, c), dim=1)
        for name in LOGIT_SCORES:
            check_score(name, logits, top_m=top_m, templates=templates, what="hypothesis")


# ====================================================================== residual / ViM

@pytest.mark.parametrize("n,d,r", [(0, 5, 2), (1, 1, 1), (1, 1, 0), (7, 5, 0), (7, 5, 5), (33, 17, 4),
                                   (200, 64, 16), (130, 40, 39), (1000, 96, 32)])
@pytest.mark.parametrize("with_logits", [False, True], ids=["residual", "vim"])
def test_residual_vim_parity_shapes(rng, n, d, r, with_logits):
    x, lg, p, u = residual_problem(rng, n, d, r)
    out = check_residual(x, p, u, lg if with_logits else None, alpha=0.7, what=f"[{n}, {d}] R={r}")
    assert out.shape == (n,)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("with_logits", [False, True], ids=["residual", "vim"])
def test_residual_vim_dtypes(rng, dtype, with_logits):
    x, lg, p, u = residual_problem(rng, 90, 32, 12, dtype=dtype)
    check_residual(x, p, u, lg if with_logits else None, alpha=1.3, what=str(dtype))


@pytest.mark.parametrize("outside", [1.0, 0.2, 1e-2, 1e-3, 1e-5, 0.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_residual_small_relative_to_the_feature(rng, outside, dtype):
    # ||x - u||^2 - ||(x - u) P||^2 cancels when the residual is a small part of
    # x - u; the kernel must still be accurate to a few eps of ||x - u||.
    x, _, p, u = residual_problem(rng, 300, 48, 20, dtype=dtype, inside=10.0, outside=outside)
    check_residual(x, p, u, what=f"outside={outside}")


@native_cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_residual_threads_and_blocks(rng, num_threads, threads):
    # Row blocks of 16..128 depend on the thread count; every split must agree with the reference.
    x, lg, p, u = residual_problem(rng, 1001, 40, 10, outside=0.05)
    num_threads(threads)
    check_residual(x, p, u, what=f"threads={threads}")
    check_residual(x, p, u, lg, alpha=2.0, what=f"threads={threads}")


@pytest.mark.parametrize("layout", ["transposed", "row-slice", "column-slice", "broadcast-row"])
def test_residual_vim_non_contiguous(rng, layout):
    x, lg, p, u = residual_problem(rng, 31, 19, 6, c=19)
    xs, ls = _layouts(x)[layout], _layouts(lg)[layout]
    ps = p.T.contiguous().T
    us = torch.cat([u[:, None], u[:, None]], dim=1)[:, 0]  # stride 2
    check_residual(xs, ps, us, what=layout)
    check_residual(xs, ps, us, ls, alpha=0.5, what=layout)


def test_vim_is_energy_minus_alpha_residual(rng):
    x, lg, p, u = residual_problem(rng, 50, 16, 5, dtype=torch.float64)
    for alpha in (0.0, 0.3, -2.0):
        torch.testing.assert_close(vim(x, lg, p, u, alpha), energy(lg) + alpha * residual(x, p, u),
                                   rtol=1e-12, atol=1e-12)


# ====================================================================== torch integration

OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_static",
                 "test_aot_dispatch_dynamic")


def _op_cases(rng, dtype, grad):
    logits = randn(rng, 6, 9, dtype=dtype, scale=2.0).requires_grad_(grad)
    templates = random_templates(rng, 9, dtype)
    x, lg, p, u = residual_problem(rng, 6, 7, 3, c=9, dtype=dtype)
    x.requires_grad_(grad)
    lg.requires_grad_(grad)
    u.requires_grad_(grad)
    return {
        "msp": (torch.ops.gencore.ood_msp.default, (logits, 1.5)),
        "energy": (torch.ops.gencore.ood_energy.default, (logits, 0.5)),
        "max_logit": (torch.ops.gencore.ood_max_logit.default, (logits,)),
        "gen": (torch.ops.gencore.ood_gen.default, (logits.detach(), 0.1, 4)),
        "kl_matching": (torch.ops.gencore.ood_kl_matching.default, (logits.detach(), templates, "min")),
        "residual": (torch.ops.gencore.ood_residual.default, (x, p, u)),
        "vim": (torch.ops.gencore.ood_vim.default, (x, lg, p, u, 0.8)),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(LOGIT_SCORES) + ["residual", "vim"])
def test_opcheck(rng, name, dtype):
    op, args = _op_cases(rng, dtype, True)[name]
    torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("name", ["msp", "energy", "max_logit"])
def test_gradcheck_logit_scores(rng, name):
    logits = randn(rng, 5, 7, dtype=torch.float64, scale=2.0).requires_grad_()
    fn = {"msp": lambda l: msp(l, 1.7), "energy": lambda l: energy(l, 0.6), "max_logit": max_logit}[name]
    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("wrt", ["features", "center", "logits", "all"])
def test_gradcheck_residual_vim(rng, wrt):
    x, lg, p, u = residual_problem(rng, 6, 8, 3, c=5, dtype=torch.float64)
    x.requires_grad_(wrt in ("features", "all"))
    u.requires_grad_(wrt in ("center", "all"))
    lg.requires_grad_(wrt in ("logits", "all"))
    assert torch.autograd.gradcheck(lambda a, b, c: vim(a, b, p, c, 0.9), (x, lg, u), eps=1e-6, atol=1e-7)
    if wrt != "logits":
        assert torch.autograd.gradcheck(lambda a, c: residual(a, p, c), (x, u), eps=1e-6, atol=1e-7)


def test_backward_matches_reference_autograd(rng):
    # The analytic backward formulas against autograd through the reference, float32 inputs.
    logits = randn(rng, 20, 11, scale=2.0)
    x, lg, p, u = residual_problem(rng, 20, 9, 4, c=11)
    ours = [(lambda l: msp(l, 2.0), reference.msp, (2.0,)), (lambda l: energy(l, 0.5), reference.energy, (0.5,)),
            (max_logit, reference.max_logit, ())]
    w = randn(rng, 20, dtype=torch.float64)
    for fn, ref, extra in ours:
        a, b = logits.clone().requires_grad_(), logits.double().requires_grad_()
        (fn(a).double() * w).sum().backward()
        (ref(b, *extra) * w).sum().backward()
        assert a.grad.dtype == torch.float32
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-6)
    xa, la, ua = x.clone().requires_grad_(), lg.clone().requires_grad_(), u.clone().requires_grad_()
    xb, lb, ub = x.double().requires_grad_(), lg.double().requires_grad_(), u.double().requires_grad_()
    (vim(xa, la, p, ua, 1.3).double() * w).sum().backward()
    (reference.vim(xb, lb, p.double(), ub, 1.3) * w).sum().backward()
    for ga, gb in ((xa.grad, xb.grad), (la.grad, lb.grad), (ua.grad, ub.grad)):
        torch.testing.assert_close(ga.double(), gb, rtol=1e-4, atol=1e-5)


def test_residual_zero_has_zero_gradient():
    p = torch.eye(3, dtype=torch.float64)[:, :2]
    x = torch.tensor([[1.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    u = torch.zeros(3, dtype=torch.float64)
    out = residual(x, p, u)
    assert out.item() == 0.0
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_no_gradient_for_principal(rng):
    x, lg, p, u = residual_problem(rng, 4, 5, 2, dtype=torch.float64)
    p.requires_grad_()
    with pytest.raises(NotImplementedError, match="principal"):
        residual(x.requires_grad_(), p, u).sum().backward()


def _compile_unavailable(exc: BaseException):
    """A reason to skip when torch.compile failed for want of a C++ toolchain, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name, text = type(exc).__name__, str(exc)
        if name in ("CppCompileError", "InvalidCxxCompiler") or "C++ compiler" in text or "cc1plus" in text:
            return f"torch.compile cannot build kernels here ({name})"
        exc = exc.__cause__ or exc.__context__
    return None


def test_torch_compile_fullgraph_matches_eager(rng):
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (dynamo) is not supported on this Python/platform")
    torch._dynamo.reset()
    logits = randn(rng, 33, 12, scale=2.0)
    templates = random_templates(rng, 12, torch.float32)
    x, lg, p, u = residual_problem(rng, 33, 10, 4, c=12)

    def fn(l, t, f, pr, ce):
        return torch.stack([msp(l, 2.0), energy(l), max_logit(l), gen(l, 0.1, 5), kl_matching(l, t),
                            residual(f, pr, ce), vim(f, l, pr, ce, 0.5)])

    compiled = torch.compile(fn, fullgraph=True)
    try:
        out = compiled(logits, templates, x, p, u)
    except Exception as exc:  # noqa: BLE001 - re-raised unless the toolchain is missing
        reason = _compile_unavailable(exc)
        if reason is None:
            raise
        pytest.skip(reason)
    assert torch.equal(out, fn(logits, templates, x, p, u))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_meta_tensors(dtype):
    logits = torch.empty(5, 9, device="meta", dtype=dtype)
    templates = torch.empty(9, 9, device="meta", dtype=dtype)
    x, p, u = (torch.empty(5, 8, device="meta", dtype=dtype), torch.empty(8, 3, device="meta", dtype=dtype),
               torch.empty(8, device="meta", dtype=dtype))
    outs = [msp(logits), energy(logits, 2.0), max_logit(logits), gen(logits, 0.1, 3), kl_matching(logits, templates),
            residual(x, p, u), vim(x, logits, p, u, 1.0)]
    for out in outs:
        assert out.device.type == "meta" and out.shape == (5,) and out.dtype == compute_dtype(dtype)
    with pytest.raises(ValueError, match="principal"):
        residual(x, torch.empty(7, 3, device="meta", dtype=dtype), u)


# ====================================================================== bad input

_L = torch.randn(4, 6)
_T = torch.full((6, 6), 1 / 6)
_X, _P, _U = torch.randn(4, 5), torch.linalg.qr(torch.randn(5, 2))[0], torch.randn(5)


def _with(t, index, value):
    t = t.clone()
    t[index] = value
    return t


BAD_INPUT = [
    # logits
    pytest.param(lambda: msp(_L.long()), TypeError, "logits", id="logits-int"),
    pytest.param(lambda: kl_matching(_L.numpy(), _T), TypeError, "logits", id="logits-numpy-templates-torch"),
    pytest.param(lambda: max_logit(_L[0]), ValueError, "logits", id="logits-1d"),
    pytest.param(lambda: gen(_L[:, None]), ValueError, "logits", id="logits-3d"),
    pytest.param(lambda: msp(_L[:, :0]), ValueError, "logits", id="logits-no-classes"),
    pytest.param(lambda: msp(_with(_L, (2, 3), float("nan"))), ValueError, "logits", id="logits-nan"),
    pytest.param(lambda: energy(_with(_L, (0, 0), float("inf"))), ValueError, "logits", id="logits-inf"),
    pytest.param(lambda: max_logit(_with(_L, (3, 5), float("-inf"))), ValueError, "logits", id="logits-neginf"),
    pytest.param(lambda: gen(_with(_L, (1, 1), float("nan"))), ValueError, "logits", id="gen-nan"),
    pytest.param(lambda: kl_matching(_with(_L, (1, 1), float("nan")), _T), ValueError, "logits", id="kl-nan"),
    # scalars
    pytest.param(lambda: msp(_L, 0.0), ValueError, "temperature", id="temperature-zero"),
    pytest.param(lambda: energy(_L, -1.0), ValueError, "temperature", id="temperature-negative"),
    pytest.param(lambda: energy(_L, float("nan")), ValueError, "temperature", id="temperature-nan"),
    pytest.param(lambda: msp(_L, float("inf")), ValueError, "temperature", id="temperature-inf"),
    pytest.param(lambda: msp(_L, "2"), TypeError, "temperature", id="temperature-str"),
    pytest.param(lambda: msp(_L, True), TypeError, "temperature", id="temperature-bool"),
    pytest.param(lambda: gen(_L, 0.1, 0), ValueError, "top_m", id="top_m-zero"),
    pytest.param(lambda: gen(_L, 0.1, 2.0), TypeError, "top_m", id="top_m-float"),
    pytest.param(lambda: gen(_L, 0.1, True), TypeError, "top_m", id="top_m-bool"),
    pytest.param(lambda: gen(_L, 0.0, 3), ValueError, "gamma", id="gamma-zero"),
    pytest.param(lambda: gen(_L, float("nan"), 3), ValueError, "gamma", id="gamma-nan"),
    # templates
    pytest.param(lambda: kl_matching(_L, _T[:5], "predicted"), ValueError, "templates", id="templates-rows"),
    pytest.param(lambda: kl_matching(_L, _T[:0]), ValueError, "templates", id="templates-no-rows"),
    pytest.param(lambda: kl_matching(_L, _T, "max"), ValueError, "rule", id="rule-unknown"),
    pytest.param(lambda: kl_matching(_L, _T[:, :5]), ValueError, "templates", id="templates-cols"),
    pytest.param(lambda: kl_matching(_L, _T[0]), ValueError, "templates", id="templates-1d"),
    pytest.param(lambda: kl_matching(_L, _T.long()), TypeError, "templates", id="templates-int"),
    pytest.param(lambda: kl_matching(_L, -_T), ValueError, "templates", id="templates-negative"),
    pytest.param(lambda: kl_matching(_L, _with(_T, (0, 0), float("nan"))), ValueError, "templates",
                 id="templates-nan"),
    pytest.param(lambda: kl_matching(_L, _T.to("meta")), ValueError, "device", id="templates-device"),
    pytest.param(lambda: kl_matching_templates(_L[:, :0]), ValueError, "logits", id="fit-templates-no-classes"),
    pytest.param(lambda: kl_matching_templates(_with(_L, (0, 0), float("nan"))), ValueError, "logits",
                 id="fit-templates-nan"),
    # residual / vim
    pytest.param(lambda: residual(_X.long(), _P, _U), TypeError, "features", id="features-int"),
    pytest.param(lambda: residual(_X[0], _P, _U), ValueError, "features", id="features-1d"),
    pytest.param(lambda: residual(_X[:, :0], _P[:0], _U[:0]), ValueError, "feature dimension", id="features-d0"),
    pytest.param(lambda: residual(_X, _P[:4], _U), ValueError, "principal", id="principal-rows"),
    pytest.param(lambda: residual(_X[:, :1], _P[:1], _U[:1]), ValueError, "principal", id="principal-r-gt-d"),
    pytest.param(lambda: residual(_X, _P[0], _U), ValueError, "principal", id="principal-1d"),
    pytest.param(lambda: residual(_X, _P, _U[:4]), ValueError, "center", id="center-size"),
    pytest.param(lambda: residual(_X, _P, _U[None]), ValueError, "center", id="center-2d"),
    pytest.param(lambda: residual(_X, _P.double(), _U), TypeError, "principal", id="principal-dtype"),
    pytest.param(lambda: residual(_X, _P, _U.double()), TypeError, "center", id="center-dtype"),
    pytest.param(lambda: residual(_X, _P.to("meta"), _U), ValueError, "device", id="principal-device"),
    pytest.param(lambda: residual(_with(_X, (1, 2), float("nan")), _P, _U), ValueError, "features",
                 id="features-nan"),
    pytest.param(lambda: residual(_X, _with(_P, (1, 1), float("inf")), _U), ValueError, "principal",
                 id="principal-inf"),
    pytest.param(lambda: residual(_X, _P, _with(_U, 0, float("nan"))), ValueError, "center", id="center-nan"),
    pytest.param(lambda: vim(_X, _L[:3], _P, _U, 1.0), ValueError, "logits", id="vim-logits-rows"),
    pytest.param(lambda: vim(_X, _L.double(), _P, _U, 1.0), TypeError, "logits", id="vim-logits-dtype"),
    pytest.param(lambda: vim(_X, _L[:, :0], _P, _U, 1.0), ValueError, "logits", id="vim-logits-no-classes"),
    pytest.param(lambda: vim(_X, _with(_L, (0, 0), float("nan")), _P, _U, 1.0), ValueError, "logits",
                 id="vim-logits-nan"),
    pytest.param(lambda: vim(_X, _L, _P, _U, float("nan")), ValueError, "alpha", id="alpha-nan"),
    pytest.param(lambda: vim(_X, _L, _P, _U, "1"), TypeError, "alpha", id="alpha-str"),
    pytest.param(lambda: vim(_X, _L.to("meta"), _P, _U, 1.0), ValueError, "device", id="vim-device"),
    # vim_fit
    pytest.param(lambda: vim_fit(_X, None, torch.randn(3, 5), torch.randn(3), 5), ValueError, "dim",
                 id="fit-dim-too-big"),
    pytest.param(lambda: vim_fit(_X, None, torch.randn(3, 5), torch.randn(3), 0), ValueError, "dim",
                 id="fit-dim-zero"),
    pytest.param(lambda: vim_fit(_X, None, torch.randn(3, 4), torch.randn(3), 2), ValueError, "weight",
                 id="fit-weight-shape"),
    pytest.param(lambda: vim_fit(_X, None, torch.randn(3, 5), torch.randn(4), 2), ValueError, "bias",
                 id="fit-bias-shape"),
    pytest.param(lambda: vim_fit(_X, torch.randn(4, 2), torch.randn(3, 5), torch.randn(3), 2), ValueError,
                 "logits", id="fit-logits-shape"),
    pytest.param(lambda: vim_fit(_X[:0], None, torch.randn(3, 5), torch.randn(3), 2), ValueError, "features",
                 id="fit-empty"),
    pytest.param(lambda: vim_fit(_with(_X, (0, 0), float("nan")), None, torch.randn(3, 5), torch.randn(3), 2),
                 ValueError, "features", id="fit-nan"),
]


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("call,exc,match", BAD_INPUT)
def test_bad_input(monkeypatch, backend, call, exc, match):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    with pytest.raises(exc, match=match):
        call()


@native_cpu_only
def test_nan_in_one_row_of_many_names_the_row(rng, num_threads):
    logits = randn(rng, 5000, 40)
    logits[3777, 13] = float("nan")
    num_threads(3)
    for fn in (msp, energy, max_logit, gen):
        with pytest.raises(ValueError, match="row 3777"):
            fn(logits)
    x, lg, p, u = residual_problem(rng, 500, 12, 4)
    x[321, 0] = float("inf")
    with pytest.raises(ValueError, match="row 321"):
        residual(x, p, u)


@native_cpu_only
@pytest.mark.parametrize("case", ["bad-code", "bad-out-shape", "kl-without-templates", "bad-temperature",
                                  "principal-rows", "center-shape"])
def test_native_errors_become_python_exceptions(case):
    core, logits, out = _native.core, np.zeros((3, 4), np.float32), np.zeros((3, 1), np.float32)
    x, p, u = np.zeros((3, 5), np.float32), np.zeros((5, 2), np.float32), np.zeros((1, 5), np.float32)
    calls = {
        "bad-code": lambda: core.logit_scores(logits, 7, 1.0, 0.1, 1, None, out, 1),
        "bad-out-shape": lambda: core.logit_scores(logits, 0, 1.0, 0.1, 1, None, np.zeros((2, 1), np.float32), 1),
        "kl-without-templates": lambda: core.logit_scores(logits, 4, 1.0, 0.1, 1, None, out, 1),
        "bad-temperature": lambda: core.logit_scores(logits, 1, -1.0, 0.1, 1, None, out, 1),
        "principal-rows": lambda: core.residual_scores(x, p[:4], u, None, 0.0, out, 1),
        "center-shape": lambda: core.residual_scores(x, p, u[:, :4], None, 0.0, out, 1),
    }
    with pytest.raises(ValueError):
        calls[case]()


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_inputs_untouched_and_outputs_fresh(rng, monkeypatch, backend, dtype):
    if backend == "reference":
        monkeypatch.setenv("GENCORE_BACKEND", "reference")
    logits = randn(rng, 30, 12, dtype=dtype, scale=3.0)
    templates = random_templates(rng, 12, torch.float32)
    x, lg, p, u = residual_problem(rng, 30, 9, 3, c=12, dtype=dtype)
    inputs = [logits, templates, x, lg, p, u]
    before = [t.clone() for t in inputs]
    outs = [call_score(name, logits, top_m=4, templates=templates) for name in LOGIT_SCORES]
    outs += [residual(x, p, u), vim(x, lg, p, u, 0.5), kl_matching_templates(logits)]
    outs += list(vim_fit(x, lg, torch.randn(12, 9, dtype=dtype), torch.randn(12, dtype=dtype), 2)[:2])
    for t, b in zip(inputs, before):
        assert torch.equal(t, b), "an input was modified"
    for out in outs:
        for t in inputs:
            assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr(), "output aliases an input"


# ====================================================================== CUDA

@cuda_only
@pytest.mark.parametrize("n,c", [(1, 1), (7, 2), (33, 10), (500, 1000), (64, 1025)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("name", LOGIT_SCORES)
def test_cuda_matches_reference(rng, name, n, c, dtype):
    logits = randn(rng, n, c, scale=3.0, dtype=dtype)
    templates = random_templates(rng, c, dtype)
    for top_m in (1, 7, c, c + 3):
        got = call_score(name, logits.cuda(), top_m=top_m, templates=templates.cuda())
        assert got.device.type == "cuda"
        x64 = logits.double()
        want = reference_score(name, x64, top_m=top_m, templates=templates)
        scale = score_scale(name, x64, want, top_m=top_m, templates=templates)
        if name == "max_logit":
            assert torch.equal(got.cpu().double(), want)
        else:
            assert_close_scaled(got.cpu(), want, scale, dtype, f"cuda {name} top_m={top_m}")


@cuda_only
@pytest.mark.parametrize("gap", [50.0, 100.0, 1e4])
def test_cuda_extreme_and_ties(rng, gap):
    logits = randn(rng, 64, 40)
    logits[:, 3] += gap
    logits[0] = 2.0  # all equal
    logits[1, :5] = 7.0  # ties at the max and inside the top-M
    for name in LOGIT_SCORES:
        templates = random_templates(rng, 40, torch.float32)
        got = call_score(name, logits.cuda(), top_m=6, templates=templates.cuda()).cpu()
        cpu = call_score(name, logits, top_m=6, templates=templates)
        want = reference_score(name, logits.double(), top_m=6, templates=templates)
        scale = score_scale(name, logits.double(), want, top_m=6, templates=templates) + 1.0
        assert_close_scaled(got, want, scale, torch.float32, f"cuda {name} gap={gap}")
        assert_close_scaled(got, cpu.double(), scale, torch.float32, f"cuda vs cpu {name} gap={gap}")


@cuda_only
@pytest.mark.parametrize("with_logits", [False, True], ids=["residual", "vim"])
def test_cuda_residual_vim(rng, with_logits):
    x, lg, p, u = residual_problem(rng, 300, 64, 16, outside=0.05)
    args = (x.cuda(), lg.cuda(), p.cuda(), u.cuda())
    got = (vim(*args, 0.7) if with_logits else residual(args[0], args[2], args[3])).cpu()
    want = reference.vim(x.double(), lg.double(), p.double(), u.double(), 0.7) if with_logits \
        else reference.residual(x.double(), p.double(), u.double())
    scale = 0.7 * residual_scale(x.double(), p.double(), u.double()) + want.abs() + 1.0
    assert_close_scaled(got, want, scale, torch.float32, "cuda residual/vim")


@cuda_only
def test_cuda_non_default_stream_and_grad(rng):
    logits = randn(rng, 100, 30).cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = energy(logits, 2.0)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out.cpu(), energy(logits.cpu(), 2.0))
    a = logits.clone().requires_grad_()
    msp(a).sum().backward()
    b = logits.cpu().requires_grad_()
    msp(b).sum().backward()
    torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-5, atol=1e-6)


@cuda_only
def test_cuda_bad_input(rng):
    logits = randn(rng, 4, 6).cuda()
    with pytest.raises(ValueError, match="device"):
        kl_matching(logits, torch.full((6, 6), 1 / 6))
    bad = _with(logits, (0, 0), float("nan"))
    assert torch.isnan(msp(bad)[0]) and torch.isfinite(msp(bad)[1:]).all()  # unchecked on CUDA: propagates
    gencore.set_check_finite("always")
    try:
        with pytest.raises(ValueError, match="logits"):
            msp(bad)
    finally:
        gencore.set_check_finite("auto")
    with pytest.raises(ValueError, match="device"):
        residual(_X.cuda(), _P, _U.cuda())
