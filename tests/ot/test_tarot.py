"""gencore.ot.tarot.select on synthetic multimodal data: candidates from five
clusters, a target drawn from two of them. The selection must come (almost)
only from the target's clusters, serve both of them, and beat random
selection by far; a dominant high-variance nuisance direction defeats the
unwhitened cosine cost and not the whitened one (TAROT's point)."""
from __future__ import annotations

import pytest
import torch

import gencore
from gencore.ot import tarot

K = 150


def _data(seed, nuisance=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    d = 16
    centres = 3 * torch.randn(5, d, generator=g, dtype=dtype)

    def draw(counts):
        labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        points = centres[labels] + torch.randn(len(labels), d, generator=g, dtype=dtype)
        points[:, :2] += nuisance * torch.randn(len(labels), 2, generator=g, dtype=dtype)
        return points, labels

    candidates, labels = draw([100] * 5)
    target, _ = draw([60, 40, 0, 0, 0])
    random_pick = torch.randperm(len(labels), generator=g)[:K]
    return candidates, labels, target, random_pick


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nuisance", [0.0, 100.0])
def test_selects_the_target_clusters(seed, nuisance):
    candidates, labels, target, random_pick = _data(seed, nuisance)
    s = tarot.select(candidates, target, K)
    assert s.converged
    assert s.indices.shape == (K,) and len(set(s.indices.tolist())) == K
    picked = labels[s.indices]
    in_target = float((picked < 2).float().mean())
    chance = float((labels[random_pick] < 2).float().mean())
    assert in_target >= 0.95, in_target
    assert in_target > chance + 0.4, (in_target, chance)
    # both modes of the target are served, not only the nearer one
    assert int((picked == 0).sum()) >= 0.3 * K and int((picked == 1).sum()) >= 0.25 * K
    # the best-ranked are the lowest potentials; the weights put their mass on the target clusters
    assert torch.equal(s.indices, torch.argsort(s.scores, stable=True)[:K])
    assert float(s.weights.sum()) == pytest.approx(1.0, abs=1e-5) and bool((s.weights >= 0).all())
    assert float(s.weights[labels < 2].sum()) > 0.9


@pytest.mark.parametrize("seed", [0, 1])
def test_whitening_removes_the_dominant_direction_bias(seed):
    candidates, labels, target, random_pick = _data(seed, nuisance=100.0)
    plain = labels[tarot.select(candidates, target, K, whitening=None).indices]
    whitened = labels[tarot.select(candidates, target, K).indices]
    assert float((whitened < 2).float().mean()) >= 0.95
    assert float((plain < 2).float().mean()) < 0.6   # the nuisance direction decides the cosine


def test_given_whitening_equals_estimated():
    candidates, _, target, _ = _data(3, dtype=torch.float64)
    mean, w = tarot.estimate_whitening(candidates)
    estimated = tarot.select(candidates, target, 40)
    given = tarot.select(candidates, target, 40, whitening=w, mean=mean)
    assert torch.equal(estimated.indices, given.indices)
    torch.testing.assert_close(estimated.scores, given.scores)
    assert estimated.scores.dtype == torch.float64


def test_whitening_and_cosine_cost():
    candidates, _, _, _ = _data(4, nuisance=10.0, dtype=torch.float64)
    mean, w = tarot.estimate_whitening(candidates, ridge=0.0)
    z = (candidates - mean) @ w
    torch.testing.assert_close(torch.cov(z.T), torch.eye(16, dtype=torch.float64), atol=1e-8, rtol=0)
    u = tarot.whiten(candidates, mean, w)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(len(u), dtype=torch.float64))
    # |u - v|^2 / 2 = 1 - cos on unit vectors: the cost sinkhorn sees
    torch.testing.assert_close(torch.cdist(u[:5], u[5:9]) ** 2 / 2, 1 - u[:5] @ u[5:9].T)


def test_candidate_weights_steer_the_selection():
    candidates, labels, target, _ = _data(5)
    # a candidate with zero mass supplies nothing: its weight is 0
    a = torch.ones(len(labels))
    a[labels == 0] = 0.0
    s = tarot.select(candidates, target, K, candidate_weights=a)
    assert float(s.weights[labels == 0].sum()) == 0.0


def test_bad_input():
    candidates, _, target, _ = _data(0)
    with pytest.raises(ValueError, match="k"):
        tarot.select(candidates, target, len(candidates) + 1)
    with pytest.raises(ValueError, match="feature dimension"):
        tarot.select(candidates, target[:, :5], 10)
    with pytest.raises(ValueError, match="whitening"):
        tarot.select(candidates, target, 10, whitening="pca")
    with pytest.raises(ValueError, match="whitening must have 16 rows"):
        tarot.select(candidates, target, 10, whitening=torch.eye(5))
    with pytest.raises(ValueError, match="candidate_weights"):
        tarot.select(candidates, target, 10, candidate_weights=torch.ones(3))


def test_lazy_import():
    assert gencore.ot.tarot is tarot
