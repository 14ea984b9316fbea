"""tests/cuda_fake.FakeCuda against the torch reference (CPU only), and against
the real ``gencore._cuda`` where it is built: same API, same workspace sizes.

The fake stands in for the CUDA kernels when the suite runs the CUDA Python
glue on CPU tensors, so it must compute their contract: kNN (squared L2 and
inner product, ties to the lower index, NaN last), Mahalanobis (both reduces,
lowest class on ties, NaN wins the min), logit scores 0-4 and residual / ViM;
for the score family the data-set denoiser's tile step, the mixture score
(iso/diagonal, and the full-covariance tile step), the DSM loss and its
backward, the DMD gradient; the ode family's fused step and error norm (NaN propagates).
Exact equality is asked where the arithmetic is exact (integer-valued data);
elsewhere float32 tolerances against the float64 reference.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from gencore import _native
from gencore.ode.ops._error_norm import _reference as error_norm_reference
from gencore.ode.ops._step import _reference as step_reference
from gencore.ood import reference
from gencore.score import reference as score_reference

from tests.cuda_fake import KNN_MAX_K, SCORE_SEGMENT, FakeCuda

NAN_I64 = -7  # poison for index outputs


def poisoned(*shape, dtype=torch.float32):
    if dtype == torch.int64:
        return torch.full(shape, NAN_I64, dtype=dtype)
    return torch.full(shape, float("nan"), dtype=dtype)


def workspace(nbytes):
    return torch.empty(nbytes, dtype=torch.uint8)


def fake_knn(fake, x, y, k, code):
    q, n, d = x.shape[0], y.shape[0], x.shape[1]
    values, indices = poisoned(q, k), poisoned(q, k, dtype=torch.int64)
    nbytes = fake.knn_workspace_bytes(q, n, d, k)
    ws = workspace(nbytes)
    fake.knn(x.data_ptr(), y.data_ptr(), q, n, d, k, code, values.data_ptr(), indices.data_ptr(), ws.data_ptr(),
             nbytes, 0, 0)
    return values, indices


def fake_mahalanobis(fake, z, mt, reduce):
    q, c, r = z.shape[0], mt.shape[0], z.shape[1]
    out = poisoned(*((q, c) if reduce == 0 else (q,)))
    nearest = poisoned(q, dtype=torch.int64)
    nbytes = fake.mahalanobis_workspace_bytes(q, c, r, reduce)
    ws = workspace(nbytes)
    fake.mahalanobis(z.data_ptr(), mt.data_ptr(), q, c, r, reduce, out.data_ptr(), nearest.data_ptr(),
                     ws.data_ptr(), nbytes, 0, 0)
    return out, nearest


def whiten(features, means, factor):
    """The CUDA glue's inputs: z = (x - mu_bar) L, mt = (mu - mu_bar) L, float32."""
    center = means.mean(0)
    return ((features - center) @ factor).contiguous(), ((means - center) @ factor).contiguous()


def fake_logit_scores(fake, logits, score, temperature=1.0, gamma=0.1, top_m=1, templates=None):
    n, c = logits.shape
    x = logits.float().contiguous()
    log_t = None if templates is None else templates.float().log().contiguous()
    out = poisoned(n)
    fake.logit_scores(x.data_ptr(), n, c, score, temperature, gamma, top_m, 0 if log_t is None else log_t.data_ptr(),
                      out.data_ptr(), 0, 0)
    return out


# ====================================================================== kNN

METRICS = {0: "sqeuclidean", 1: "ip"}


@pytest.mark.parametrize("code", [0, 1])
@pytest.mark.parametrize("k", [1, 7, 70])
def test_knn_integer_data_exact_with_ties(rng, code, k):
    # values in {-2..2}, D = 3: many rows at equal distance, and exact arithmetic,
    # so order and values must equal the reference's (ties to the lower index).
    x = torch.randint(-2, 3, (13, 3), generator=rng).float()
    y = torch.randint(-2, 3, (70, 3), generator=rng).float()
    values, indices = fake_knn(FakeCuda(), x, y, k, code)
    ref_values, ref_indices = reference.knn(x.double(), y.double(), k, METRICS[code])
    assert torch.equal(indices, ref_indices)
    assert torch.equal(values, ref_values.float())


@pytest.mark.parametrize("code", [0, 1])
def test_knn_random_data_duplicated_rows(rng, code):
    x = torch.randn(50, 16, generator=rng)
    y = torch.randn(300, 16, generator=rng)
    y[200:210] = y[20:30]  # exact duplicates: the lower index must come first
    values, indices = fake_knn(FakeCuda(), x, y, 12, code)
    ref_values, ref_indices = reference.knn(x.double(), y.double(), 12, METRICS[code])
    torch.testing.assert_close(values, ref_values.float(), rtol=1e-5, atol=1e-4)
    # the float64 value of each returned index equals the reference's at that rank
    xd, yd = x.double(), y.double()[indices]
    exact = ((xd[:, None] - yd) ** 2).sum(-1) if code == 0 else (xd[:, None] * yd).sum(-1)
    torch.testing.assert_close(exact, ref_values, rtol=1e-5, atol=1e-4)
    for q, row in enumerate(indices.tolist()):  # a duplicate pair is returned lower index first
        for j in range(200, 210):
            if j in row:
                assert j - 180 in row and row.index(j - 180) < row.index(j), (q, row)


def test_knn_nan_from_overflow_ranks_last():
    # ||x||^2 overflows float32: keys are inf (ranked by index) and inf - inf = NaN, last.
    x = torch.tensor([[1e20, 0.0]])
    y = torch.tensor([[1e20, 0.0], [0.0, 0.0], [1.0, 0.0]])
    values, indices = fake_knn(FakeCuda(), x, y, 3, 0)
    assert indices.tolist() == [[1, 2, 0]]
    assert torch.isinf(values[0, :2]).all() and torch.isnan(values[0, 2])


def test_knn_inner_product_zero_is_positive_zero():
    x = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    values, indices = fake_knn(FakeCuda(), x, y, 2, 1)
    assert indices.tolist() == [[0, 1]]
    assert values[0, 0].item() == 0.0 and not values[0, 0].signbit()


def test_knn_no_queries_writes_nothing_and_needs_no_workspace():
    fake = FakeCuda()
    assert fake.knn_workspace_bytes(0, 10, 4, 3) == 0
    fake.knn(0, 0, 0, 10, 4, 3, 0, 0, 0, 0, 0, 0, 0)  # every pointer null: nothing is read or written


# ====================================================================== Mahalanobis

@pytest.mark.parametrize("reduce", [0, 1])
def test_mahalanobis_matches_reference(rng, reduce):
    features = torch.randn(40, 6, generator=rng) + 3.0
    means = torch.randn(5, 6, generator=rng) + 3.0
    means[3] = means[1]  # equal distances: nearest is the lower class
    factor = torch.linalg.cholesky(torch.linalg.inv(torch.cov(torch.randn(6, 60, generator=rng))))[:, :4].contiguous()
    z, mt = whiten(features, means, factor)
    out, nearest = fake_mahalanobis(FakeCuda(), z, mt, reduce)
    ref_out, ref_nearest = reference.mahalanobis_nearest(features.double(), means.double(), factor.double(),
                                                         "none" if reduce == 0 else "min")
    torch.testing.assert_close(out, ref_out.float(), rtol=1e-4, atol=1e-3)
    assert torch.equal(nearest, ref_nearest)
    assert not (nearest == 3).any()


def test_mahalanobis_nan_wins_the_min():
    # ||z||^2 overflows: class 0 gives inf, class 1 (whose dot overflows too) inf - inf = NaN,
    # which wins the min over the inf before it.
    z = torch.tensor([[0.0, 1e20]])
    mt = torch.tensor([[1.0, 0.0], [0.0, 1e20]])
    out, nearest = fake_mahalanobis(FakeCuda(), z, mt, 0)
    assert torch.isinf(out[0, 0]) and torch.isnan(out[0, 1]) and nearest.tolist() == [1]
    # row 0 is NaN for every class: the first wins; row 1 is ordinary (class 1 at distance 0).
    z = torch.tensor([[float("nan"), 0.0], [1.0, 0.0]])
    mt = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    out, nearest = fake_mahalanobis(FakeCuda(), z, mt, 1)
    assert torch.isnan(out[0]) and out[1].item() == 0.0
    assert nearest.tolist() == [0, 1]


def test_mahalanobis_writes_rows_at_the_pointer_it_gets(rng):
    # The glue passes out[q0:].data_ptr() per slab: the fake must write exactly [Q, C] there.
    z, mt = torch.randn(6, 3, generator=rng), torch.randn(4, 3, generator=rng)
    fake = FakeCuda()
    out, nearest = poisoned(10, 4), poisoned(10, dtype=torch.int64)
    nbytes = fake.mahalanobis_workspace_bytes(6, 4, 3, 0)
    ws = workspace(nbytes)
    fake.mahalanobis(z.data_ptr(), mt.data_ptr(), 6, 4, 3, 0, out[2:].data_ptr(), nearest[2:].data_ptr(),
                     ws.data_ptr(), nbytes, 0, 0)
    assert torch.isnan(out[:2]).all() and torch.isnan(out[8:]).all() and not torch.isnan(out[2:8]).any()
    assert (nearest[:2] == NAN_I64).all() and (nearest[8:] == NAN_I64).all() and (nearest[2:8] >= 0).all()


# ====================================================================== logit scores

def logit_cases(rng):
    """Named [N, C] float32 logit matrices covering the kernels' branches."""
    base = torch.randn(37, 11, generator=rng) * 3
    ties = base.clone()
    ties[:, 4] = ties.max(1).values  # the max twice: not unique, k is the first
    confident = base * 60             # rest < 1e-20: GEN recomputes log(1 - p) around the second logit
    integers = torch.randint(-3, 4, (37, 11), generator=rng).float()  # ties at GEN's threshold
    single = torch.randn(9, 1, generator=rng)
    return {"random": base, "ties": ties, "confident": confident, "integers": integers, "one_class": single}


REFERENCE_SCORES = {
    0: lambda x, **kw: reference.max_logit(x),
    1: lambda x, temperature, **kw: reference.msp(x, temperature),
    2: lambda x, temperature, **kw: reference.energy(x, temperature),
    3: lambda x, gamma, top_m, **kw: reference.gen(x, gamma, top_m),
    4: lambda x, templates, **kw: reference.kl_matching(x, templates),
}


@pytest.mark.parametrize("score", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("case", ["random", "ties", "confident", "integers", "one_class"])
def test_logit_scores_match_reference(rng, score, case):
    logits = logit_cases(rng)[case]
    c = logits.shape[1]
    templates = torch.softmax(torch.randn(c, c, generator=rng, dtype=torch.float64), 1)
    if c > 2 and case != "confident":
        # d = 0 where p > 0: -inf for both. (Not for confident rows: there p underflows
        # in the kernels' float32 expf but not in the float64 reference.)
        templates[:, 2] = 0.0
    for temperature, top_m in ((1.0, 3), (0.5, 100), (2.5, 1)):
        kw = dict(temperature=temperature, gamma=0.1 if top_m != 1 else 0.5, top_m=top_m, templates=templates)
        got = fake_logit_scores(FakeCuda(), logits, score, **kw)
        want = REFERENCE_SCORES[score](logits.double(), **kw)
        if score == 0:
            assert torch.equal(got, want.float())
        else:
            scale = want.abs().nan_to_num(posinf=0.0) + (kw["top_m"] if score == 3 else 1.0)
            finite = torch.isfinite(want)
            assert torch.equal(torch.isfinite(got), finite), (got, want)
            assert torch.equal(got[~finite], want[~finite].float())
            err = (got.double() - want)[finite].abs()
            assert (err <= 1e-5 * scale[finite]).all(), (err.max(), case, kw)


def test_logit_scores_non_finite_row_is_nan():
    logits = torch.tensor([[1.0, float("nan"), 0.0], [1.0, float("inf"), 0.0], [1.0, 2.0, 3.0]])
    for score in range(5):
        got = fake_logit_scores(FakeCuda(), logits, score, top_m=2, templates=torch.full((3, 3), 1 / 3))
        assert torch.isnan(got[:2]).all() and torch.isfinite(got[2]), (score, got)


# ====================================================================== residual / ViM

def residual_problem(rng, n=20, d=8, r=3, c=5):
    features = torch.randn(n, d, generator=rng) * 2 + 1
    principal = torch.linalg.qr(torch.randn(d, r, generator=rng, dtype=torch.float64))[0].float()
    center = torch.randn(d, generator=rng)
    logits = torch.randn(n, c, generator=rng) * 4
    return features, principal, center, logits


def fake_residual(fake, e, logits=None, alpha=0.0):
    n, d = e.shape
    out = poisoned(n)
    fake.residual_scores(e.data_ptr(), n, d, 0 if logits is None else logits.data_ptr(),
                         0 if logits is None else logits.shape[1], alpha, out.data_ptr(), 0, 0)
    return out


def test_residual_matches_reference(rng):
    features, principal, center, _ = residual_problem(rng)
    e = reference.residual_vectors(features, principal, center).contiguous()  # the glue's float32 residual
    got = fake_residual(FakeCuda(), e)
    want = reference.residual(features.double(), principal.double(), center.double())
    scale = (features.double() - center.double()).norm(dim=1)
    assert ((got.double() - want).abs() <= 1e-5 * scale).all()


@pytest.mark.parametrize("alpha", [0.0, 0.7, -3.0])
def test_vim_matches_reference(rng, alpha):
    features, principal, center, logits = residual_problem(rng)
    e = reference.residual_vectors(features, principal, center).contiguous()
    got = fake_residual(FakeCuda(), e, logits.contiguous(), alpha)
    want = reference.vim(features.double(), logits.double(), principal.double(), center.double(), alpha)
    scale = abs(alpha) * (features.double() - center.double()).norm(dim=1) + want.abs() + 1
    assert ((got.double() - want).abs() <= 1e-5 * scale).all()




# ====================================================================== score: data-set denoiser tile

def score_rand(rng, *shape, scale=1.0, low=None, high=None):
    if low is not None:
        return low + (high - low) * torch.rand(*shape, generator=rng)
    return torch.randn(*shape, generator=rng) * scale


def fake_tile_step(fake, scores, tile_sq, log_w, sigma, alpha, running_max, total):
    """One dataset_denoise_tile call on copies; returns (scores, running_max, total, rescale)."""
    b, t = scores.shape
    scores, running_max, total = scores.clone(), running_max.clone(), total.clone()
    rescale = poisoned(b)
    fake.dataset_denoise_tile(scores.data_ptr(), b, t, tile_sq.data_ptr(), 0 if log_w is None else log_w.data_ptr(),
                              sigma.data_ptr(), alpha.data_ptr(), running_max.data_ptr(), total.data_ptr(),
                              rescale.data_ptr(), 0, 0)
    return scores, running_max, total, rescale


@pytest.mark.parametrize("weighted", [False, True])
def test_dataset_tile_step_is_the_online_logsumexp_step(rng, weighted):
    b, t = 9, 13
    scores, tile_sq = score_rand(rng, b, t, scale=3.0), score_rand(rng, t, low=0.0, high=4.0)
    sigma, alpha = score_rand(rng, b, low=0.3, high=2.0), score_rand(rng, b, low=0.5, high=1.0)
    log_w = torch.log(score_rand(rng, t, low=0.0, high=2.0)) if weighted else None
    if weighted:
        log_w[3] = -math.inf  # a zero weight: exp(-inf - m) = 0
    running_max = score_rand(rng, b, scale=2.0)
    running_max[:3] = -math.inf  # first tile for these rows
    total = torch.where(torch.isfinite(running_max), score_rand(rng, b, low=0.5, high=3.0), torch.zeros(b))
    got, new_max, new_total, rescale = fake_tile_step(FakeCuda(), scores, tile_sq, log_w, sigma, alpha,
                                                      running_max, total)
    s, a = sigma.double(), alpha.double()
    logits = (a[:, None] * scores.double() - 0.5 * (a * a)[:, None] * tile_sq.double()) / (s * s)[:, None]
    if weighted:
        logits = logits + log_w.double()
    want_max = torch.maximum(running_max.double(), logits.amax(1))
    want = torch.exp(logits - want_max[:, None])
    want_rescale = torch.exp(running_max.double() - want_max)
    torch.testing.assert_close(new_max.double(), want_max, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rescale.double(), want_rescale, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(new_total.double(), total.double() * want_rescale + want.sum(1), rtol=1e-5, atol=1e-6)
    assert (rescale[:3] == 0).all() and (got[:3].amax(1) == 1).all()  # first tile: its max is the max


def test_dataset_tile_of_zero_weights_changes_nothing_and_gives_no_nan(rng):
    b, t = 4, 6
    scores, tile_sq = score_rand(rng, b, t), score_rand(rng, t, low=0.0, high=1.0)
    sigma, alpha = torch.ones(b), torch.ones(b)
    log_w = torch.full((t,), -math.inf)
    running_max = torch.tensor([-math.inf, -math.inf, 0.5, -2.0])
    total = torch.tensor([0.0, 0.0, 1.5, 2.0])
    got, new_max, new_total, rescale = fake_tile_step(FakeCuda(), scores, tile_sq, log_w, sigma, alpha,
                                                      running_max, total)
    assert torch.equal(got, torch.zeros(b, t))
    assert torch.equal(new_max, running_max) and torch.equal(new_total, total)
    assert rescale.tolist() == [0.0, 0.0, 1.0, 1.0]


def fake_dataset_denoise(fake, x, data, sigma, alpha, weights, tile):
    """The CUDA glue's loop (score/ops/_dataset.py) written out over the fake, float32."""
    b = x.shape[0]
    center = data.mean(0)
    xc = x - alpha[:, None] * center
    log_w = None if weights is None else torch.log(weights)
    running_max, total = torch.full((b,), -math.inf), torch.zeros(b)
    acc = torch.zeros_like(x)
    for start in range(0, data.shape[0], tile):
        y = (data[start:start + tile] - center).contiguous()
        lw = None if log_w is None else log_w[start:start + tile].contiguous()
        scores, running_max, total, rescale = fake_tile_step(fake, (xc @ y.T).contiguous(), (y * y).sum(1), lw,
                                                             sigma, alpha, running_max, total)
        acc = acc * rescale[:, None] + scores @ y
    safe = torch.where(torch.isfinite(running_max), running_max, torch.zeros_like(running_max))
    return acc / total[:, None] + center, safe + torch.log(total) - 0.5 * (xc * xc).sum(1) / (sigma * sigma)


@pytest.mark.parametrize("tile", [1, 7, 64])
def test_dataset_tiles_stream_to_the_dense_oracle(rng, tile):
    b, n, d = 11, 45, 5
    x, data = score_rand(rng, b, d, scale=1.5), score_rand(rng, n, d)
    sigma, alpha = score_rand(rng, b, low=0.4, high=2.0), score_rand(rng, b, low=0.5, high=1.0)
    weights = score_rand(rng, n, low=0.1, high=2.0)
    weights[:10] = 0.0  # the first tiles (tile <= 7) have no mass at all
    fake = FakeCuda()
    denoised, log_z = fake_dataset_denoise(fake, x, data, sigma, alpha, weights, tile)
    want_d, want_z = score_reference.dataset_denoise_dense(x, data, sigma, alpha, torch.log(weights.double()))
    torch.testing.assert_close(denoised.double(), want_d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(log_z.double(), want_z, rtol=1e-5, atol=1e-4)
    assert fake.calls["dataset_denoise_tile"] == -(-n // tile)


def test_dataset_tile_argument_checks():
    fake = FakeCuda()
    with pytest.raises(ValueError, match=r"dataset_denoise_tile: need B >= 0 and T >= 1, got B=2, T=0"):
        fake.dataset_denoise_tile(16, 2, 0, 16, 0, 16, 16, 16, 16, 16, 0, 0)
    with pytest.raises(ValueError, match="a data pointer is null"):
        fake.dataset_denoise_tile(16, 2, 3, 0, 0, 16, 16, 16, 16, 16, 0, 0)
    fake.dataset_denoise_tile(0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # no rows: nothing is read


# ====================================================================== score: Gaussian mixture

def fake_gmm_score(fake, x, means, log_weights, eigvals, sigma, alpha):
    b, d = x.shape
    log_prob, score = poisoned(b), poisoned(b, d)
    fake.gmm_score(x.data_ptr(), b, d, means.data_ptr(), means.shape[0], log_weights.data_ptr(), eigvals.data_ptr(),
                   sigma.data_ptr(), alpha.data_ptr(), log_prob.data_ptr(), score.data_ptr(), 0, 0)
    return log_prob, score


def score_mixture(rng, k, d, kind):
    means = score_rand(rng, k, d, scale=2.0)
    log_weights = torch.log_softmax(score_rand(rng, k), 0)
    if kind == "iso":
        eigvals = score_rand(rng, k, 1, low=0.2, high=2.0).expand(k, d).contiguous()
    else:
        eigvals = score_rand(rng, k, d, low=0.0, high=2.0)  # eigenvalue 0 allowed (sigma > 0)
    return means, log_weights, eigvals


@pytest.mark.parametrize("kind", ["iso", "diag"])
@pytest.mark.parametrize("b,k,d", [(1, 1, 1), (13, 3, 2), (7, 6, 33), (20, 9, 5)], ids=str)
def test_gmm_score_matches_reference(rng, b, k, d, kind):
    means, log_weights, eigvals = score_mixture(rng, k, d, kind)
    if k > 2:
        log_weights[1] = -math.inf  # a component of weight 0
    x = score_rand(rng, b, d, scale=3.0)
    sigma, alpha = score_rand(rng, b, low=0.05, high=2.0), score_rand(rng, b, low=0.3, high=1.0)
    log_prob, score = fake_gmm_score(FakeCuda(), x, means, log_weights, eigvals, sigma, alpha)
    keep = torch.isfinite(log_weights)
    want_lp, want_score = score_reference.gmm(x.double(), means[keep].double(), log_weights[keep].double(),
                                              eigvals[keep].double(), None, sigma.double(), alpha.double())
    torch.testing.assert_close(log_prob.double(), want_lp, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(score.double(), want_score, rtol=1e-4, atol=1e-4 * (1 + float(want_score.abs().max())))


def fake_gmm_full(fake, x, means, log_weights, eigvals, eigvecs, sigma, alpha, tile):
    """The CUDA glue's full-covariance loop (score/ops/_gmm.py) written out over the fake."""
    b, d = x.shape
    k = means.shape[0]
    center = means.mean(0)
    xc = x - alpha[:, None] * center
    u_cat = eigvecs.permute(1, 0, 2).reshape(d, k * d)
    mu_rot = torch.bmm((means - center)[:, None, :], eigvecs)[:, 0, :].contiguous()
    running_max, total, acc = torch.full((b,), -math.inf), torch.zeros(b), torch.zeros(b, d)
    nbytes = fake.gmm_score_tile_workspace_bytes(b, tile)
    ws = workspace(nbytes)
    for start in range(0, k, tile):
        n = min(tile, k - start)
        u_tile = u_cat[:, start * d:(start + n) * d]
        zx = (xc @ u_tile).contiguous()
        rescale = poisoned(b)
        fake.gmm_score_tile(zx.data_ptr(), b, n, d, mu_rot[start].data_ptr(), log_weights[start].data_ptr(),
                            eigvals[start].data_ptr(), sigma.data_ptr(), alpha.data_ptr(), running_max.data_ptr(),
                            total.data_ptr(), rescale.data_ptr(), ws.data_ptr(), nbytes, 0, 0)
        acc = acc * rescale[:, None] + zx @ u_tile.T
    return running_max + torch.log(total), acc / total[:, None]


@pytest.mark.parametrize("tile", [1, 2, 5])
@pytest.mark.parametrize("b,k,d", [(1, 1, 1), (9, 5, 3), (6, 4, 12)], ids=str)
def test_gmm_full_covariance_tiles_match_reference(rng, b, k, d, tile):
    means, log_weights, eigvals = score_mixture(rng, k, d, "diag")
    eigvecs = torch.linalg.qr(torch.randn(k, d, d, generator=rng, dtype=torch.float64))[0].float()
    if k > 3:
        log_weights[:2] = -math.inf  # the first tile (tile <= 2) has no mass
    x = score_rand(rng, b, d, scale=3.0) + 10.0  # far from the origin: centring keeps float32 accurate
    means = means + 10.0
    sigma, alpha = score_rand(rng, b, low=0.1, high=2.0), score_rand(rng, b, low=0.5, high=1.0)
    fake = FakeCuda()
    log_prob, score = fake_gmm_full(fake, x, means, log_weights, eigvals, eigvecs, sigma, alpha, tile)
    keep = torch.isfinite(log_weights)  # the oracle without the weight-0 components (the reference needs finite ones)
    want_lp, want_score = score_reference.gmm(x.double(), means[keep].double(), log_weights[keep].double(),
                                              eigvals[keep].double(), eigvecs[keep].double(), sigma.double(),
                                              alpha.double())
    assert not torch.isnan(log_prob).any() and not torch.isnan(score).any()
    torch.testing.assert_close(log_prob.double(), want_lp, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(score.double(), want_score, rtol=1e-4, atol=1e-3 * (1 + float(want_score.abs().max())))
    assert fake.calls["gmm_score_tile"] == -(-k // tile)
    assert all(nbytes == 4 * b * tile for op, nbytes in fake.workspaces if op == "gmm_score_tile")


def test_gmm_argument_checks():
    fake = FakeCuda()
    with pytest.raises(ValueError, match=r"gmm_score: K must be in \[1, 2\^31 - 1\], got 0"):
        fake.gmm_score(16, 1, 2, 16, 0, 16, 16, 16, 16, 16, 16, 0, 0)
    with pytest.raises(ValueError, match=r"gmm_score: d must be in \[1, 2\^31 - 1\], got 0"):
        fake.gmm_score(16, 1, 0, 16, 2, 16, 16, 16, 16, 16, 16, 0, 0)
    with pytest.raises(ValueError, match=r"gmm_score_tile: workspace too small: 8 bytes, need 24"):
        fake.gmm_score_tile(16, 2, 3, 4, 16, 16, 16, 16, 16, 16, 16, 16, 16, 8, 0, 0)
    with pytest.raises(ValueError, match="a data pointer is null"):
        fake.gmm_score(16, 1, 2, 16, 1, 16, 0, 16, 16, 16, 16, 0, 0)


# ====================================================================== score: DSM loss, DMD gradient

ROW_LENGTHS = [0, 1, 37, SCORE_SEGMENT, SCORE_SEGMENT + 1, 3 * SCORE_SEGMENT - 5]


def loss_inputs(rng, b, m, n):
    return [score_rand(rng, b, m) for _ in range(n)]


def coefficients(rng, b, n=3):
    return [score_rand(rng, b, low=0.1, high=1.5) for _ in range(n)]


def fake_dsm_loss(fake, raw, x, target, c_skip, c_out, weight):
    b, m = raw.shape
    loss = poisoned(b)
    nbytes = fake.dsm_loss_workspace_bytes(b, m)
    ws = workspace(nbytes)
    fake.dsm_loss(raw.data_ptr(), x.data_ptr(), target.data_ptr(), b, m, c_skip.data_ptr(), c_out.data_ptr(),
                  weight.data_ptr(), loss.data_ptr(), ws.data_ptr(), nbytes, 0, 0)
    return loss


@pytest.mark.parametrize("m", ROW_LENGTHS)
def test_dsm_loss_matches_reference(rng, m):
    b = 5
    raw, x, target = loss_inputs(rng, b, m, 3)
    c = coefficients(rng, b)
    got = fake_dsm_loss(FakeCuda(), raw, x, target, *c)
    want = score_reference.dsm_loss(raw.double(), x.double(), target.double(), *(t.double() for t in c))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    if m == 0:
        assert torch.equal(got, torch.zeros(b))


@pytest.mark.parametrize("m", ROW_LENGTHS)
def test_dsm_loss_backward_matches_autograd_of_the_reference(rng, m):
    b = 4
    raw, x, target = loss_inputs(rng, b, m, 3)
    c_skip, c_out, weight = coefficients(rng, b)
    grad_loss = score_rand(rng, b)
    grad = poisoned(b, m)
    FakeCuda().dsm_loss_backward(raw.data_ptr(), x.data_ptr(), target.data_ptr(), b, m, c_skip.data_ptr(),
                                 c_out.data_ptr(), weight.data_ptr(), grad_loss.data_ptr(), grad.data_ptr(), 0, 0)
    if m == 0:
        return  # nothing to write (and nothing for autograd to differentiate)
    r = raw.double().requires_grad_()
    loss = score_reference.dsm_loss(r, x.double(), target.double(), c_skip.double(), c_out.double(), weight.double())
    (want,) = torch.autograd.grad(loss, r, grad_loss.double())
    torch.testing.assert_close(grad.double(), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("m", ROW_LENGTHS)
def test_dmd_gradient_matches_reference(rng, m):
    b = 4
    x0, real, fake_d = loss_inputs(rng, b, m, 3)
    if m:
        real[2] = x0[2]  # zero normaliser: the row is 0
    out = poisoned(b, m)
    fake = FakeCuda()
    nbytes = fake.dmd_gradient_workspace_bytes(b, m)
    ws = workspace(nbytes)
    fake.dmd_gradient(x0.data_ptr(), real.data_ptr(), fake_d.data_ptr(), b, m, out.data_ptr(), ws.data_ptr(), nbytes,
                      0, 0)
    want = score_reference.dmd_gradient(x0.double(), real.double(), fake_d.double())
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    if m:
        assert torch.equal(out[2], torch.zeros(m))


@pytest.mark.parametrize("m", ROW_LENGTHS)
def test_loss_workspace_is_the_partials_of_long_rows(m):
    fake = FakeCuda()
    segments = max(1, -(-m // SCORE_SEGMENT))
    want = 8 * 6 * segments if segments > 1 else 0
    assert fake.dsm_loss_workspace_bytes(6, m) == want == fake.dmd_gradient_workspace_bytes(6, m)


def test_loss_argument_checks(rng):
    fake = FakeCuda()
    raw, x, target = loss_inputs(rng, 2, SCORE_SEGMENT + 3, 3)
    c_skip, c_out, weight = coefficients(rng, 2)
    loss = poisoned(2)
    need = fake.dsm_loss_workspace_bytes(2, SCORE_SEGMENT + 3)
    assert need == 32
    ws = workspace(need)
    args = (raw.data_ptr(), x.data_ptr(), target.data_ptr(), 2, SCORE_SEGMENT + 3, c_skip.data_ptr(), c_out.data_ptr(),
            weight.data_ptr(), loss.data_ptr())
    with pytest.raises(ValueError, match=r"dsm_loss: workspace too small: 16 bytes, need 32 \(see dsm_loss_workspace"):
        fake.dsm_loss(*args, ws.data_ptr(), 16, 0, 0)
    with pytest.raises(ValueError, match=r"dsm_loss: need B >= 0 and M >= 0, got B=-1, M=3"):
        fake.dsm_loss(1, 1, 1, -1, 3, 1, 1, 1, 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"dmd_gradient_workspace_bytes: need B >= 0 and M >= 0"):
        fake.dmd_gradient_workspace_bytes(2, -1)
    with pytest.raises(ValueError, match="a data pointer is null"):
        fake.dsm_loss_backward(0, 16, 16, 2, 3, 16, 16, 16, 16, 16, 0, 0)
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        fake.dsm_loss(*args, ws.data_ptr(), need, 0, 3)
    fake.dsm_loss(*args, ws.data_ptr(), need, 0, 0)
    assert not torch.isnan(loss).any() and (ws == 0xFF).all()
    # M = 0: only the per-sample pointers are read; the sample pointers may be null
    fake.dsm_loss(0, 0, 0, 2, 0, c_skip.data_ptr(), c_out.data_ptr(), weight.data_ptr(), loss.data_ptr(), 0, 0, 0, 0)
    assert torch.equal(loss, torch.zeros(2))

# ====================================================================== ode: fused step, error norm

def fake_step(fake, x, d_cond, d_uncond=None, h=(None, None, None, None), coeffs=None, guidance=None, rescale=0.0,
              threshold=0.0, threshold_max=float("inf")):
    b, m = x.shape
    held = [None if t is None else t.contiguous() for t in (x, d_cond, d_uncond, *h)]   # alive until the call
    ptrs = [0 if t is None else t.data_ptr() for t in held]
    c = coeffs.double().contiguous()
    g = None if guidance is None else guidance.double().contiguous()
    x_next, d = poisoned(b, m), poisoned(b, m)
    fake.ode_step(*ptrs, b, m, c.data_ptr(), 0 if g is None else g.data_ptr(), rescale, threshold, threshold_max,
                  x_next.data_ptr(), d.data_ptr(), 0, 0)
    return x_next, d


def step_case(rng, b, m, present=(True, True, False, True), guided=True):
    x, c, u = (torch.randn(b, m, generator=rng) * 2 for _ in range(3))
    h = tuple(torch.randn(b, m, generator=rng) if p else None for p in present)
    coeffs = torch.randn(b, 6, generator=rng, dtype=torch.float64)
    for k, t in enumerate(h):
        if t is None:
            coeffs[:, 2 + k] = 0.0
    guidance = 1 + 3 * torch.rand(b, generator=rng, dtype=torch.float64) if guided else None
    return x, c, u if guided else None, h, coeffs, guidance


def assert_close_to_step_reference(got, want, scale):
    for g, w in zip(got, want):
        assert ((g - w).abs() <= 1e-5 * (scale + w.abs())).all(), (g - w).abs().max()


@pytest.mark.parametrize("shape", [(1, 1), (3, 33), (2, 1000), (5, 4096)])
@pytest.mark.parametrize("mode", ["plain", "guided", "rescale", "threshold", "both"])
def test_ode_step_matches_reference(rng, shape, mode):
    x, c, u, h, coeffs, guidance = step_case(rng, *shape, guided=mode != "plain")
    rescale = 0.7 if mode in ("rescale", "both") else 0.0
    threshold = 0.9 if mode in ("threshold", "both") else 0.0
    got = fake_step(FakeCuda(), x, c, u, h, coeffs, guidance, rescale, threshold, 3.0)
    want = step_reference(x, c, u, *h, coeffs, guidance, rescale, threshold, 3.0)
    scale = 1 + x.abs() * coeffs[:, :1].abs().float() + sum(t.abs() for t in h if t is not None) * coeffs.abs().max()
    assert_close_to_step_reference(got, want, scale)


def test_ode_step_quantile_ties_and_values_below_one():
    x = torch.tensor([[5.0] * 6 + [2.0] * 3 + [9.0], [1.5, -4.0, 4.0, 4.0, -7.0, 2.5, 3.0, 8.0, 4.0, -6.0],
                      [0.1, -0.2, 0.3, 0.05, -0.4, 0.2, 0.1, 0.0, 0.3, -0.1]])
    coeffs = torch.tensor([[0.0, 1.0, 0, 0, 0, 0]] * 3, dtype=torch.float64)
    for q in (0.3, 0.45, 0.5, 0.85, 0.95):
        _, d = fake_step(FakeCuda(), x, x, coeffs=coeffs, threshold=q)
        _, want = step_reference(x, x, None, None, None, None, None, coeffs, None, 0.0, q, float("inf"))
        torch.testing.assert_close(d, want, rtol=1e-6, atol=0)
        assert torch.equal(d[2], x[2])  # quantile < 1: t = 1


def test_ode_step_nan_propagates_to_its_row_only():
    x = torch.randn(3, 20, generator=torch.Generator().manual_seed(3))
    bad = x.clone()
    bad[1, 7] = float("nan")
    coeffs = torch.tensor([[0.5, 1.0, 0, 0, 0, 0]] * 3, dtype=torch.float64)
    x_next, d = fake_step(FakeCuda(), x, bad, coeffs=coeffs, threshold=0.8)
    assert torch.isnan(d[1]).all() and torch.isnan(x_next[1]).all()  # t is NaN for the whole row
    assert not torch.isnan(d[[0, 2]]).any() and not torch.isnan(x_next[[0, 2]]).any()
    x_next, d = fake_step(FakeCuda(), x, bad, coeffs=coeffs)  # plain: only the element
    assert torch.isnan(d).sum() == 1 and torch.isnan(x_next).sum() == 1


def test_ode_step_argument_checks_and_empty_calls():
    fake = FakeCuda()
    with pytest.raises(ValueError, match=r"gencore\._cuda\.ode_step: guidance needs d_uncond"):
        fake.ode_step(1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 8, 0.0, 0.0, 1.0, 1, 1, 0, 0)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        fake.ode_step(1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0.0, 1.0, 1.0, 1, 1, 0, 0)
    with pytest.raises(ValueError, match=r"rescale must be in \[0, 1\]"):
        fake.ode_step(1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 1.5, 0.0, 1.0, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="threshold_max must be > 0"):
        fake.ode_step(1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0.0, 0.0, 0.0, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="a data pointer is null"):
        fake.ode_step(0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0.0, 0.0, 1.0, 1, 1, 0, 0)
    fake.ode_step(0, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0.0, 0.0, 1.0, 0, 0, 0, 0)  # B = 0: nothing read or written
    fake.ode_step(0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0.0, 0.0, 1.0, 0, 0, 0, 0)  # M = 0
    assert fake.calls["ode_step"] == 7


@pytest.mark.parametrize("shape", [(1, 1), (4, 0), (3, 37), (2, 5000)])
@pytest.mark.parametrize("tols", [(1e-3, 1e-3), (0.0, 1e-6)])
def test_ode_error_norm_matches_reference(rng, shape, tols):
    err = torch.randn(*shape, generator=rng) * 1e-3
    y, y_new = torch.randn(*shape, generator=rng), torch.randn(*shape, generator=rng)
    out = poisoned(shape[0])
    FakeCuda().ode_error_norm(err.data_ptr(), y.data_ptr(), y_new.data_ptr(), *shape, *tols, out.data_ptr(), 0, 0)
    torch.testing.assert_close(out, error_norm_reference(err, y, y_new, *tols), rtol=1e-5, atol=0)


def test_ode_error_norm_nan_and_checks():
    y = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    err = torch.ones(2, 2)
    y_new = torch.zeros(2, 2)   # held: a temporary's pointer would dangle before the fake reads it
    out = poisoned(2)
    fake = FakeCuda()
    fake.ode_error_norm(err.data_ptr(), y.data_ptr(), y_new.data_ptr(), 2, 2, 1e-3, 1e-3, out.data_ptr(), 0, 0)
    assert torch.isnan(out[0]) and torch.isfinite(out[1])  # a NaN y is not hidden by the max
    with pytest.raises(ValueError, match="atol and rtol must be >= 0 and not both 0"):
        fake.ode_error_norm(1, 1, 1, 1, 1, 0.0, 0.0, 1, 0, 0)
    with pytest.raises(ValueError, match="a data pointer is null"):
        fake.ode_error_norm(0, 1, 1, 1, 1, 1e-3, 0.0, 1, 0, 0)


# ====================================================================== the fake's own checks

def test_workspace_checks_and_poison(rng):
    fake = FakeCuda()
    x, y = torch.randn(5, 4, generator=rng), torch.randn(9, 4, generator=rng)
    values, indices = poisoned(5, 3), poisoned(5, 3, dtype=torch.int64)
    need = fake.knn_workspace_bytes(5, 9, 4, 3)
    assert need == 4 * 5 * 128

    def call(ws_ptr, ws_bytes, k=3, metric=0, device=0):
        fake.knn(x.data_ptr(), y.data_ptr(), 5, 9, 4, k, metric, values.data_ptr(), indices.data_ptr(), ws_ptr,
                 ws_bytes, 0, device)

    ws = workspace(need + 64)
    with pytest.raises(ValueError, match=r"gencore\._cuda\.knn: workspace too small: 10 bytes, need 2560"):
        call(ws.data_ptr(), 10)
    with pytest.raises(ValueError, match="workspace pointer is null"):
        call(0, need)
    with pytest.raises(ValueError, match="16-byte aligned"):
        call(ws.data_ptr() + 8, need)
    with pytest.raises(ValueError, match="metric must be"):
        call(ws.data_ptr(), need, metric=2)
    with pytest.raises(ValueError, match=r"k must be in \[1, N=9\]"):
        call(ws.data_ptr(), need, k=10)
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        call(ws.data_ptr(), need, device=1)
    ws.zero_()
    call(ws.data_ptr(), need + 64)
    assert (ws[:need] == 0xFF).all() and (ws[need:] == 0).all()  # exactly the bytes a kernel may use
    assert fake.calls["knn"] == 7 and fake.workspaces[-1] == ("knn", need + 64)


def test_knn_k_above_limit_is_refused():
    fake = FakeCuda()
    assert fake.knn_max_k() == KNN_MAX_K == 4096
    with pytest.raises(ValueError, match=r"k must be <= 4096 \(knn_max_k\)"):
        fake.knn(1, 1, 1, 5000, 2, 4097, 0, 1, 1, 16, 1 << 20, 0, 0)


def test_logit_and_residual_argument_checks():
    fake = FakeCuda()
    with pytest.raises(ValueError, match="unknown score code 5"):
        fake.logit_scores(1, 1, 1, 5, 1.0, 0.1, 1, 0, 1, 0, 0)
    with pytest.raises(ValueError, match="KL matching needs log_templates"):
        fake.logit_scores(1, 1, 1, 4, 1.0, 0.1, 1, 0, 1, 0, 0)
    with pytest.raises(ValueError, match="temperature must be finite"):
        fake.logit_scores(1, 1, 1, 1, 0.0, 0.1, 1, 0, 1, 0, 0)
    with pytest.raises(ValueError, match="alpha must be finite"):
        fake.residual_scores(1, 1, 1, 0, 0, float("inf"), 1, 0, 0)
    with pytest.raises(ValueError, match="a data pointer is null"):
        fake.residual_scores(0, 2, 1, 0, 0, 0.0, 0, 0, 0)


def test_runtime_queries():
    fake = FakeCuda()
    assert fake.device_count() == 1 and fake.has_kernel_image(0) and not fake.has_kernel_image(1)
    assert fake.device_capability(0) == (9, 0) and fake.device_capability(3) == (0, 0)
    assert fake.compiled_archs() == "80;90"


# ====================================================================== the fake against the real module

real_cuda = pytest.mark.skipif(_native.cuda is None, reason="needs the built gencore._cuda (no GPU needed)")

SIZES = [0, 1, 3, 127, 128, 129, 4095, 4096, 4097, 20000, 1 << 20]


def public_api(module) -> set[str]:
    return {n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))}


@real_cuda
def test_fake_has_the_real_api():
    fake_names = public_api(FakeCuda()) - {"calls", "workspaces"}
    assert fake_names == public_api(_native.cuda)
    for name in fake_names:  # same argument names, in order (the fake's are Python's; the real ones pybind11's)
        real_doc = getattr(_native.cuda, name).__doc__.splitlines()[0]
        params = list(inspect.signature(getattr(FakeCuda(), name)).parameters)
        assert real_doc.startswith(f"{name}(")
        real_params = [p.split(":")[0].strip() for p in real_doc[len(name) + 1:real_doc.index(")")].split(",") if p]
        assert params == real_params, name


@real_cuda
def test_fake_workspace_sizes_are_the_real_ones():
    fake, real = FakeCuda(), _native.cuda
    assert fake.knn_max_k() == real.knn_max_k()
    for q in SIZES:
        for n in SIZES:
            assert fake.knn_workspace_bytes(q, n, 8, 1) == real.knn_workspace_bytes(q, n, 8, 1), (q, n)
            for reduce in (0, 1):
                assert (fake.mahalanobis_workspace_bytes(q, n, 4, reduce)
                        == real.mahalanobis_workspace_bytes(q, n, 4, reduce)), (q, n, reduce)
    assert real.knn_workspace_bytes(1 << 20, 1 << 30, 8, 1) <= 256 << 20
    assert real.mahalanobis_workspace_bytes(1 << 20, 1 << 30, 8, 0) <= (256 << 20) + (16 << 10)


@real_cuda
def test_fake_group_matmul_tile_rows_is_the_real_one():
    # the row count where the glue tests over the fake put their boundary cases
    assert FakeCuda().group_matmul_tile_rows() == _native.cuda.group_matmul_tile_rows()


@real_cuda
def test_real_module_without_gpu_says_so():
    if _native.cuda.device_count() > 0:
        pytest.skip("a GPU is present")
    assert _native.cuda.has_kernel_image(0) is False
    assert _native.cuda.device_capability(0) == (0, 0)


@real_cuda
def test_fake_score_workspace_sizes_are_the_real_ones():
    fake, real = FakeCuda(), _native.cuda
    for b in SIZES:
        for m in SIZES:
            assert fake.dsm_loss_workspace_bytes(b, m) == real.dsm_loss_workspace_bytes(b, m), (b, m)
            assert fake.dmd_gradient_workspace_bytes(b, m) == real.dmd_gradient_workspace_bytes(b, m), (b, m)
        for c in (0, 1, 7, 300):
            assert fake.gmm_score_tile_workspace_bytes(b, c) == real.gmm_score_tile_workspace_bytes(b, c), (b, c)


# Calls the real module refuses (or accepts as no work) before it touches a device: the fake must
# answer each the same way, with the same message.
SCORE_ARGUMENT_CASES = {
    "dsm rows": lambda m: m.dsm_loss(16, 16, 16, -1, 3, 16, 16, 16, 16, 0, 0, 0, 0),
    "dsm workspace": lambda m: m.dsm_loss(16, 16, 16, 2, 5000, 16, 16, 16, 16, 16, 8, 0, 0),
    "dsm null": lambda m: m.dsm_loss(16, 16, 16, 2, 3, 0, 16, 16, 16, 0, 0, 0, 0),
    "dsm no samples": lambda m: m.dsm_loss(0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0),
    "dsm backward null": lambda m: m.dsm_loss_backward(16, 16, 0, 2, 3, 16, 16, 16, 16, 16, 0, 0),
    "dsm backward empty rows": lambda m: m.dsm_loss_backward(0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0),
    "dmd rows": lambda m: m.dmd_gradient(16, 16, 16, 2, -4, 16, 0, 0, 0, 0),
    "dmd workspace": lambda m: m.dmd_gradient(16, 16, 16, 3, 9000, 16, 0, 0, 0, 0),
    "dmd null": lambda m: m.dmd_gradient(16, 0, 16, 3, 9, 16, 0, 0, 0, 0),
    "tile rows": lambda m: m.dataset_denoise_tile(16, 2, 0, 16, 0, 16, 16, 16, 16, 16, 0, 0),
    "tile null": lambda m: m.dataset_denoise_tile(16, 2, 5, 16, 0, 16, 0, 16, 16, 16, 0, 0),
    "tile no rows": lambda m: m.dataset_denoise_tile(0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    "tile cost": lambda m: m.dataset_denoise_tile(16, 2, 5, 16, 0, 16, 16, 16, 16, 16, 0, 0, 3, 16),
    "tile euclidean without x_sq": lambda m: m.dataset_denoise_tile(16, 2, 5, 16, 0, 16, 16, 16, 16, 16, 0, 0, 1, 0),
    "gmm K": lambda m: m.gmm_score(16, 2, 3, 16, 0, 16, 16, 16, 16, 16, 16, 0, 0),
    "gmm d": lambda m: m.gmm_score(16, 2, 0, 16, 1, 16, 16, 16, 16, 16, 16, 0, 0),
    "gmm B": lambda m: m.gmm_score(16, -2, 3, 16, 1, 16, 16, 16, 16, 16, 16, 0, 0),
    "gmm null": lambda m: m.gmm_score(16, 2, 3, 16, 1, 16, 16, 0, 16, 16, 16, 0, 0),
    "gmm tile C": lambda m: m.gmm_score_tile(16, 2, 0, 3, 16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0),
    "gmm tile workspace": lambda m: m.gmm_score_tile(16, 2, 3, 4, 16, 16, 16, 16, 16, 16, 16, 16, 16, 8, 0, 0),
    "gmm tile workspace bytes": lambda m: m.gmm_score_tile_workspace_bytes(-1, 2),
}

SCORE_NO_WORK_CASES = {"dsm no samples", "dsm backward empty rows", "tile no rows"}  # accepted: nothing to do


@real_cuda
@pytest.mark.parametrize("case", SCORE_ARGUMENT_CASES)
def test_fake_answers_score_arguments_as_the_real_module(case):
    call = SCORE_ARGUMENT_CASES[case]
    answers = []
    for module in (_native.cuda, FakeCuda()):
        try:
            answers.append(("returned", call(module)))
        except ValueError as e:
            answers.append(("ValueError", str(e)))
    assert answers[0] == answers[1]
    assert (answers[0][0] == "returned") == (case in SCORE_NO_WORK_CASES), answers[0]
