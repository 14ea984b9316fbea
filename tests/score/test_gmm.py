"""gencore.score.gmm_log_prob / gmm_score / gmm_denoiser.

Oracles: torch.distributions.MultivariateNormal log-densities of each
component N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) in float64 (a Cholesky
path that shares nothing with the op's eigen form), their logsumexp, the
score as autograd of that log-density, and the denoiser as the posterior mean
sum_k r_k (mu_k + alpha Sigma_k C_k^-1 (x - alpha mu_k)) computed directly.
"""
from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

import gencore
from gencore.score import gmm_denoiser, gmm_log_prob, gmm_score

from tests.conftest import cuda_only, native_cpu_only, on_a_busy_side_stream

KINDS = ("iso", "diag", "full")


def randn(rng, *shape, scale=1.0):
    return torch.randn(*shape, generator=rng, dtype=torch.float64) * scale


def uniform(rng, *shape, low=0.2, high=2.0):
    return low + (high - low) * torch.rand(*shape, generator=rng, dtype=torch.float64)


def mixture(rng, k, d, kind):
    means = randn(rng, k, d, scale=2.0)
    weights = uniform(rng, k, low=0.1, high=1.0)
    if kind == "iso":
        variances = uniform(rng, k)
    elif kind == "diag":
        variances = uniform(rng, k, d)
    else:
        a = randn(rng, k, d, d)
        variances = a @ a.transpose(1, 2) / d + 0.1 * torch.eye(d, dtype=torch.float64)
    return means, weights, variances


def covariances(variances, k, d):
    if variances.dim() == 1:
        return variances[:, None, None] * torch.eye(d, dtype=torch.float64)
    if variances.dim() == 2:
        return torch.diag_embed(variances)
    return variances


def oracle(x, means, weights, variances, sigma, alpha):
    """(log p [B], score [B, d], denoiser [B, d]) in float64."""
    x = x.double().clone().requires_grad_()
    b, d = x.shape
    k = means.shape[0]
    cov = covariances(variances.double(), k, d)
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(b)
    a = torch.as_tensor(alpha, dtype=torch.float64).expand(b)
    comp = []
    posts = []
    for j in range(k):
        c = (a * a)[:, None, None] * cov[j] + (s * s)[:, None, None] * torch.eye(d, dtype=torch.float64)
        mvn = MultivariateNormal(a[:, None] * means[j], covariance_matrix=c)
        comp.append(mvn.log_prob(x) + torch.log(weights[j] / weights.sum()))
        posts.append(means[j] + a[:, None] * torch.linalg.solve(c, (x - a[:, None] * means[j])[..., None])[..., 0]
                     @ cov[j].T)
    comp = torch.stack(comp, 1)
    log_p = torch.logsumexp(comp, 1)
    (score,) = torch.autograd.grad(log_p.sum(), x)
    r = torch.softmax(comp, 1).detach()
    denoised = (r[:, :, None] * torch.stack(posts, 1)).sum(1).detach()
    return log_p.detach(), score, denoised


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,k,d", [(1, 1, 1), (9, 3, 2), (40, 5, 7), (17, 1, 16), (5, 12, 3)], ids=str)
def test_matches_oracle(rng, b, k, d, kind, dtype):
    means, weights, variances = mixture(rng, k, d, kind)
    x = randn(rng, b, d, scale=3.0)
    sigma, alpha = uniform(rng, b, low=0.05, high=2.0), uniform(rng, b, low=0.3, high=1.0)
    want_lp, want_score, want_d = oracle(x, means, weights, variances, sigma, alpha)
    args = [t.to(dtype) for t in (x, means, weights, variances)]
    lp = gmm_log_prob(*args, sigma.to(dtype), alpha=alpha.to(dtype))
    sc = gmm_score(*args, sigma.to(dtype), alpha=alpha.to(dtype))
    dn = gmm_denoiser(*args, sigma.to(dtype), alpha=alpha.to(dtype))
    assert lp.dtype == dtype and sc.shape == (b, d) and dn.shape == (b, d)
    rtol = 1e-9 if dtype == torch.float64 else 2e-4
    scale = 1 + want_score.abs().max()
    torch.testing.assert_close(lp.double(), want_lp, rtol=rtol, atol=rtol * (1 + want_lp.abs().max()))
    torch.testing.assert_close(sc.double(), want_score, rtol=rtol, atol=rtol * scale * 10)
    torch.testing.assert_close(dn.double(), want_d, rtol=rtol, atol=rtol * (1 + want_d.abs().max()) * 10)


def test_far_queries_keep_finite_responsibilities(rng):
    # every component's density underflows (log N ~ -1e5): the log-domain
    # responsibilities still pick the nearest component
    means, weights, variances = mixture(rng, 4, 3, "diag")
    x = randn(rng, 6, 3) * 1e3
    got = gmm_score(x, means, weights, variances, 0.1)
    want = oracle(x, means, weights, variances, 0.1, 1.0)[1]
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-6)


def test_one_component_tiny_sigma_denoises_to_the_posterior(rng):
    mean = randn(rng, 1, 4)
    x = randn(rng, 3, 4)
    got = gmm_denoiser(x, mean, torch.ones(1, dtype=torch.float64), torch.full((1,), 0.5, dtype=torch.float64),
                       1e-6)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-9)  # sigma -> 0: the observation itself


def test_singular_covariance_is_allowed(rng):
    # a rank-1 covariance (PSD, not PD) is fine at sigma > 0
    u = randn(rng, 1, 3)
    cov = (u.T @ u)[None]
    x = randn(rng, 5, 3)
    got = gmm_score(x, torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, dtype=torch.float64), cov, 0.5)
    want = oracle(x, torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, dtype=torch.float64), cov, 0.5, 1.0)[1]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_gradients_through_the_op(rng):
    means, weights, variances = mixture(rng, 3, 4, "full")
    x = randn(rng, 5, 4).requires_grad_()
    sigma = uniform(rng, 5, low=0.3, high=1.0)
    torch.autograd.gradcheck(lambda x: gmm_score(x, means, weights, variances, sigma), (x,))
    torch.autograd.gradcheck(lambda x: gmm_log_prob(x, means, weights, variances, sigma), (x,))
    # d log p / dx is the score
    (g,) = torch.autograd.grad(gmm_log_prob(x, means, weights, variances, sigma).sum(), x)
    torch.testing.assert_close(g, gmm_score(x.detach(), means, weights, variances, sigma), rtol=1e-10, atol=1e-10)


BAD = [
    (lambda m, w, v, x: gmm_score(x, m, w, v, 0.0), ValueError, "sigma"),
    (lambda m, w, v, x: gmm_score(x, m, -w, v, 1.0), ValueError, "weights"),
    (lambda m, w, v, x: gmm_score(x, m, w * 0, v, 1.0), ValueError, "all zero"),
    (lambda m, w, v, x: gmm_score(x, m, w, -v, 1.0), ValueError, "semi-definite"),
    (lambda m, w, v, x: gmm_score(x, m, w, v[:, :2, :2], 1.0), ValueError, "variances"),
    (lambda m, w, v, x: gmm_score(x, m, w, v + torch.triu(torch.ones_like(v), 1), 1.0), ValueError, "symmetric"),
    (lambda m, w, v, x: gmm_score(x, m, w[:2], v, 1.0), ValueError, "components"),
    (lambda m, w, v, x: gmm_score(x[:, :2], m, w, v, 1.0), ValueError, "dimension"),
    (lambda m, w, v, x: gmm_score(x, m[:0], w[:0], v[:0], 1.0), ValueError, "means is empty"),
    (lambda m, w, v, x: gmm_score(x, m, w, v[None], 1.0), ValueError, "variances"),
    (lambda m, w, v, x: gmm_score(x.float(), m, w, v, 1.0), TypeError, "means must have the dtype of x"),
]


@pytest.mark.parametrize("call,exc,match", BAD)
def test_bad_input(rng, call, exc, match):
    means, weights, variances = mixture(rng, 3, 3, "full")
    x = randn(rng, 4, 3)
    with pytest.raises((ValueError, TypeError), match=match):
        call(means, weights, variances, x)


def test_nan_in_x_is_refused(rng):
    means, weights, variances = mixture(rng, 2, 3, "diag")
    x = randn(rng, 4, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="x"):
        gmm_score(x, means, weights, variances, 1.0)


@cuda_only
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_oracle(rng, kind):
    means, weights, variances = mixture(rng, 6, 8, kind)
    x = randn(rng, 300, 8, scale=2.0)
    sigma = uniform(rng, 300, low=0.05, high=2.0)
    want = oracle(x, means, weights, variances, sigma, 1.0)[1]
    got = gmm_score(*(t.float().cuda() for t in (x, means, weights, variances)), sigma.float().cuda())
    torch.testing.assert_close(got.cpu().double(), want, rtol=2e-4, atol=2e-3 * (1 + float(want.abs().max())))


def cuda_tile_floats(monkeypatch, floats):
    """Full covariances on CUDA stream the components in tiles of this many floats of [B, C, d]."""
    from gencore.score.ops import _gmm as ops
    monkeypatch.setattr(ops, "_CUDA_TILE_FLOATS", floats)


@cuda_only
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 2, 3, 5, 16, 17, 32, 33, 100])  # every group size of gmm.cu, and d > 32
def test_cuda_every_dimension(rng, monkeypatch, kind, d):
    means, weights, variances = mixture(rng, 7, d, kind)
    weights[0] = 0.0  # a component of weight 0 first (log weight -inf: no NaN)
    x = randn(rng, 301, d, scale=2.0) + 5.0
    means = means + 5.0  # off the origin
    sigma, alpha = uniform(rng, 301, low=0.05, high=2.0), uniform(rng, 301, low=0.4, high=1.0)
    cuda_tile_floats(monkeypatch, 301 * d * 3)  # full: tiles of 3 components
    want_lp, want_score, _ = oracle(x, means[1:], weights[1:], variances[1:], sigma, alpha)
    args = [t.float().cuda() for t in (x, means, weights, variances)]
    lp = gmm_log_prob(*args, sigma.float().cuda(), alpha=alpha.float().cuda())
    sc = gmm_score(*args, sigma.float().cuda(), alpha=alpha.float().cuda())
    torch.testing.assert_close(lp.cpu().double(), want_lp, rtol=2e-4, atol=2e-3 * (1 + float(want_lp.abs().max())))
    torch.testing.assert_close(sc.cpu().double(), want_score, rtol=2e-4,
                               atol=2e-3 * (1 + float(want_score.abs().max())))


@cuda_only
@pytest.mark.parametrize("kind", ["diag", "full"])
def test_cuda_runs_on_the_callers_stream(rng, kind):
    # The kernels (and, for full covariances, the GEMMs) must queue on the caller's stream.
    means, weights, variances = mixture(rng, 20, 24, kind)
    x = randn(rng, 5000, 24, scale=2.0).float().cuda()
    args = [t.float().cuda() for t in (means, weights, variances)]
    expected = gmm_score(x, *args, 0.5)
    got = on_a_busy_side_stream(x, lambda queries: gmm_score(queries, *args, 0.5))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- the CUDA glue over tests/cuda_fake.py

@pytest.mark.parametrize("kind", KINDS)
def test_cuda_glue_over_the_fake(rng, monkeypatch, kind):
    from gencore import _native, _native_call
    from gencore.score.ops import _gmm as ops

    from tests.cuda_fake import FakeCuda

    fake = FakeCuda()
    monkeypatch.setattr(_native, "cuda", fake)
    monkeypatch.setattr(_native_call, "cuda_stream", lambda device: 0)
    monkeypatch.setattr(_native_call, "POISON", True)
    cuda_tile_floats(monkeypatch, 11 * 4 * 2)  # tiles of 2 components of [11, 2, 4]
    means, weights, variances = mixture(rng, 5, 4, kind)
    x = randn(rng, 11, 4, scale=2.0) + 20.0
    means = means + 20.0
    sigma, alpha = uniform(rng, 11, low=0.1, high=2.0), uniform(rng, 11, low=0.5, high=1.0)
    log_weights, eigvals, eigvecs = ops._mixture(x, means, weights, variances)
    args = [None if t is None else t.float() for t in (x, means, log_weights, eigvals, eigvecs, sigma, alpha)]
    log_prob, score = ops.GMM.implementation("native-cuda")(*args)
    if kind == "full":
        assert fake.calls["gmm_score_tile"] == 3 and fake.calls["gmm_score"] == 0  # ceil(5 / 2) tiles
        assert {nbytes for op, nbytes in fake.workspaces} == {4 * 11 * 2}
    else:
        assert fake.calls["gmm_score"] == 1 and fake.calls["gmm_score_tile"] == 0
    want_lp, want_score, _ = oracle(x, means, weights, variances, sigma, alpha)
    torch.testing.assert_close(log_prob.double(), want_lp, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(score.double(), want_score, rtol=1e-4, atol=1e-3 * (1 + float(want_score.abs().max())))


# ---------------------------------------------------------------- native kernel paths

def gmm_op(x, means, weights, variances, sigma, alpha):
    """(log p, score) through the op, native CPU (or the reference under GENCORE_BACKEND)."""
    from gencore.score.ops._gmm import GMM, _mixture
    log_weights, eigvals, eigvecs = _mixture(x, means, weights, variances)
    return GMM(x, means, log_weights, eigvals, eigvecs, sigma.to(x.dtype), alpha.to(x.dtype))


@native_cpu_only
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("b,k,d", [(1, 1, 1), (65, 3, 5), (200, 4, 17), (130, 2, 33)], ids=str)
def test_native_blocks_and_threads_match_the_reference(rng, monkeypatch, num_threads, b, k, d, kind, threads):
    # several query blocks (64 rows), per-query sigma and alpha, both dtypes
    num_threads(threads)
    means, weights, variances = mixture(rng, k, d, kind)
    x = randn(rng, b, d, scale=3.0)
    sigma, alpha = uniform(rng, b, low=0.05, high=2.0), uniform(rng, b, low=0.3, high=1.0)
    for dtype in (torch.float32, torch.float64):
        args = [t.to(dtype) for t in (x, means, weights, variances)]
        native = gmm_op(*args, sigma, alpha)
        with monkeypatch.context() as m:
            m.setenv("GENCORE_BACKEND", "reference")
            ref = gmm_op(*args, sigma, alpha)
        rtol = 1e-10 if dtype == torch.float64 else 2e-4
        for a, r in zip(native, ref):
            torch.testing.assert_close(a, r, rtol=rtol, atol=rtol * (1 + float(r.abs().max())) * 10)


@native_cpu_only
def test_native_full_path_equals_the_axis_aligned_path(rng, num_threads):
    # a diagonal covariance passed as [K, d, d] runs the GEMM path (eigenvectors
    # from eigh, permuted and signed), as [K, d] the fused loop: same answer
    num_threads(2)
    means, weights, diag = mixture(rng, 5, 9, "diag")
    x = randn(rng, 150, 9, scale=2.0)
    sigma, alpha = uniform(rng, 150, low=0.1, high=1.5), uniform(rng, 150, low=0.5, high=1.0)
    full = gmm_op(x, means, weights, torch.diag_embed(diag), sigma, alpha)
    axis = gmm_op(x, means, weights, diag, sigma, alpha)
    for a, b in zip(full, axis):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@native_cpu_only
def test_native_shared_and_per_query_noise_levels_agree(rng):
    # consecutive queries with the same (sigma, alpha) reuse one log-determinant;
    # interleaving two levels must give what each level gives alone
    means, weights, variances = mixture(rng, 3, 6, "diag")
    x = randn(rng, 40, 6)
    s1, s2 = 0.3, 1.7
    sigma = torch.tensor([s1, s1, s2, s1, s2, s2] * 6 + [s1] * 4, dtype=torch.float64)
    alpha = torch.ones(40, dtype=torch.float64)
    mixed = gmm_op(x, means, weights, variances, sigma, alpha)
    for level in (s1, s2):
        rows = sigma == level
        alone = gmm_op(x[rows], means, weights, variances, sigma[rows], alpha[rows])
        for a, b in zip(mixed, alone):
            torch.testing.assert_close(a[rows], b, rtol=1e-13, atol=1e-13)


@native_cpu_only
@pytest.mark.parametrize("kind", ["diag", "full"])
def test_native_nan_message_names_x_and_the_row(rng, kind):
    means, weights, variances = mixture(rng, 2, 3, kind)
    x = randn(rng, 70, 3)
    x[66, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(row 66\)"):
        gmm_score(x, means, weights, variances, 1.0)


@native_cpu_only
def test_native_log_determinant_over_long_rows_and_extreme_variances(rng):
    # sum_j log(alpha^2 lambda_j + sigma^2) is taken in groups of 256 terms
    # (exponents summed, mantissas multiplied): d = 700 with variances over 60
    # decades, per-query noise levels, against the torch reference in float64
    from gencore.score import reference
    k, d, b = 2, 700, 9
    lam = 10.0 ** (60 * torch.rand(k, d, generator=rng, dtype=torch.float64) - 30)
    means = randn(rng, k, d)
    x = means[0] + 1e-3 * randn(rng, b, d)
    sigma, alpha = uniform(rng, b, low=1e-3, high=2.0), uniform(rng, b, low=0.3, high=1.0)
    lw = torch.log(torch.tensor([0.3, 0.7], dtype=torch.float64))
    args = (x, means, lw, lam, None, sigma, alpha)
    for got, want in zip(gencore.score.ops._gmm.GMM(*args), reference.gmm(*args)):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11 * float(want.abs().max()))


@native_cpu_only
def test_native_subnormal_variances_take_their_own_log():
    # sigma^2 = 1e-320 is subnormal: where lambda = 0 the variance is too, and
    # its log is taken directly; x sits on the mean in those coordinates
    from gencore.score import reference
    means = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    lam = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.3, 1.0], [0.5, -2.0, 2.5]], dtype=torch.float64)
    sigma, alpha = torch.full((2,), 1e-160, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    args = (x, means, torch.zeros(1, dtype=torch.float64), lam, None, sigma, alpha)
    for got, want in zip(gencore.score.ops._gmm.GMM(*args), reference.gmm(*args)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
