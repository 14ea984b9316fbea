"""gencore's detectors against pytorch-ood's on the same data (a second oracle).

For every formula-identical pair the two outlier scores must rank inputs alike:
Pearson >= 0.9999 over fresh random problems of several shapes.

    gencore                              pytorch-ood 0.4.0
    MahalanobisDetector()                Mahalanobis      0.5 min_c d_c with Σ = W + 1e-6 I (W unnormalised)
    RelativeMahalanobisDetector()        RMD              min_c d_c - d_0, both Σ = scatter + 1e-6 I
    KNNDetector(k)                       KNN(k)           distance to the k-th normalised neighbour
    ViMDetector(W, b, dim)               ViM(d=dim)       alpha ||x^P-perp|| - logsumexp(logits), float32
    EnergyDetector(T)                    EnergyBased(t=T)
    MSPDetector(T)                       MaxSoftmax(t=T)
    MaxLogitDetector()                   MaxLogit

The Mahalanobis pairs differ only by the scale of Σ and pytorch-ood's ridge of
1e-6 on the unnormalised scatter, i.e. 1e-6 / N on the covariance, which
changes no ranking at these sizes. Also pinned down here, for the op layer's
``kl_matching``: what pytorch-ood's ``KLMatching`` computes (its templates and
the minimum over them), from its own outputs.

Skipped, with the reason, when pytorch-ood is not installed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gencore.ood import (EnergyDetector, KNNDetector, MahalanobisDetector, MaxLogitDetector, MSPDetector,
                         RelativeMahalanobisDetector, ViMDetector)

from bench.ood import _pytorch_ood

MIN_PEARSON = 0.9999


@pytest.fixture(scope="module")
def peer():
    return _pytorch_ood.detectors_or_skip()


def pearson(a, b) -> float:
    a, b = torch.as_tensor(a).double().flatten(), torch.as_tensor(b).double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def problem(rng, n, d, c):
    """Gaussian classes with anisotropic spread, queries from the classes and shifted off them."""
    means = 3.0 * torch.randn(c, d, generator=rng)
    scales = 0.5 + 1.5 * torch.rand(d, generator=rng)
    labels = torch.randint(0, c, (n,), generator=rng)
    x = torch.randn(n, d, generator=rng) * scales + means[labels]
    q_labels = torch.randint(0, c, (400,), generator=rng)
    shift = torch.where(torch.arange(400) < 200, 0.0, 2.5)[:, None] * torch.randn(400, d, generator=rng)
    queries = torch.randn(400, d, generator=rng) * scales + means[q_labels] + shift
    return x, labels, queries, means


SHAPES = [(600, 5, 3), (2000, 32, 10), (3000, 64, 7)]


@pytest.mark.parametrize("n,d,c", SHAPES)
@pytest.mark.parametrize("relative", [False, True])
def test_mahalanobis_agrees(peer, rng, n, d, c, relative):
    x, labels, queries, _ = problem(rng, n, d, c)
    ours = (RelativeMahalanobisDetector() if relative else MahalanobisDetector()).fit(x, labels)
    theirs = (peer.RMD(None) if relative else peer.Mahalanobis(None)).fit_features(x, labels)
    assert pearson(ours.ood_score(queries), theirs.predict_features(queries)) >= MIN_PEARSON


@pytest.mark.parametrize("n,d,c", SHAPES)
@pytest.mark.parametrize("k", [1, 7, 50])
def test_knn_agrees(peer, rng, n, d, c, k):
    x, labels, queries, _ = problem(rng, n, d, c)
    theirs = peer.KNN(None, k=k)
    theirs.knn.n_jobs = 1
    theirs.fit_features(x, labels)
    expected = theirs.predict_features(queries)
    got = KNNDetector(k=k).fit(x).ood_score(queries)
    assert pearson(got, expected) >= MIN_PEARSON
    # The same distance, not only the same ranking (float32 GEMM distances vs scikit-learn's).
    torch.testing.assert_close(got.double(), expected.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,d,c", SHAPES)
def test_vim_agrees(peer, rng, n, d, c):
    x, labels, queries, means = problem(rng, n, d, c)
    weight, bias = means, -0.5 * (means * means).sum(1)
    dim = max(1, d // 2)
    theirs = peer.ViM(None, d=dim, w=weight, b=bias).fit_features(x, labels)
    ours = ViMDetector(weight, bias, dim=dim).fit(x)
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-3)           # theirs is float32 throughout
    assert pearson(ours.ood_score(queries), theirs.predict_features(queries)) >= MIN_PEARSON


@pytest.mark.parametrize("n,c", [(1000, 3), (4000, 100), (500, 1000)])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_logit_scores_agree(peer, rng, n, c, temperature):
    logits = 3.0 * torch.randn(n, c, generator=rng)
    logits[torch.arange(n), torch.randint(0, c, (n,), generator=rng)] += 4.0 * torch.rand(n, generator=rng)
    pairs = [(EnergyDetector(temperature=temperature), peer.EnergyBased(None, t=temperature)),
             (MSPDetector(temperature=temperature), peer.MaxSoftmax(None, t=temperature)),
             (MaxLogitDetector(), peer.MaxLogit(None))]
    for ours, theirs in pairs:
        got, expected = ours.ood_score(logits=logits), theirs.predict_logits(logits)
        assert pearson(got, expected) >= MIN_PEARSON
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- what pytorch-ood's KLMatching computes

def kl(p, q):
    """KL(p || q) = Σ p log(p / q) in float64 numpy, 0 log 0 = 0."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0).sum(-1)


def softmax(x):
    z = np.exp(x - x.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def test_pytorch_ood_kl_matching_is_min_over_templates_of_predicted_classes(peer, rng):
    """KLMatching(0.4.0): d_k = mean softmax of the fit rows predicted (argmax) as k, only for
    classes predicted at least once; score = min_k KL(p || d_k) over those templates."""
    c = 9
    val = 2.5 * torch.randn(3000, c, generator=rng, dtype=torch.float64)
    val[:, 4] -= 50.0                                     # class 4 is never predicted: no template
    test = 2.5 * torch.randn(500, c, generator=rng, dtype=torch.float64)
    detector = peer.KLMatching(None).fit_logits(val)
    assert sorted(int(k) for k in detector.dists.keys()) == [k for k in range(c) if k != 4]

    probs, predicted = softmax(val.numpy()), val.numpy().argmax(1)
    seen = sorted(set(predicted.tolist()))
    templates = np.stack([probs[predicted == k].mean(0) for k in seen])
    for k, template in zip(seen, templates):
        np.testing.assert_allclose(detector.dists[str(k)].numpy(), template, rtol=1e-12)
    p = softmax(test.numpy())
    every = kl(p[:, None, :], templates[None, :, :])            # [N, K]
    np.testing.assert_allclose(detector.predict_logits(test).numpy(), every.min(1), rtol=1e-10, atol=1e-12)


def test_pytorch_ood_kl_matching_does_not_use_the_predicted_class_template(peer):
    # Templates: rows predicted as 0 are soft, rows predicted as 1 are sharp.
    soft = np.log(np.array([[0.40, 0.35, 0.25]] * 10))
    sharp = np.log(np.array([[0.01, 0.98, 0.01]] * 10))
    detector = peer.KLMatching(None).fit_logits(torch.from_numpy(np.concatenate([soft, sharp])))
    # Predicted class 1 (0.40 > 0.34), but far closer to the class-0 template.
    p = np.array([[0.34, 0.40, 0.26]])
    d0, d1 = softmax(soft[:1])[0], softmax(sharp[:1])[0]
    assert kl(p, d0)[0] < kl(p, d1)[0] / 10
    score = float(detector.predict_logits(torch.from_numpy(np.log(p)))[0])
    assert score == pytest.approx(kl(p, d0)[0], rel=1e-9)            # min over templates ...
    assert score != pytest.approx(kl(p, d1)[0], rel=1e-3)            # ... not the predicted class's
    # Labels only drop rows with label < 0 from the fit; they do not assign templates.
    labelled = peer.KLMatching(None).fit_logits(torch.from_numpy(np.concatenate([soft, sharp])),
                                                torch.tensor([1] * 10 + [-1] * 10))
    assert list(labelled.dists.keys()) == ["0"]


def test_kl_matching_min_rule_equals_pytorch_ood(peer, rng):
    """gencore.ood.kl_matching(logits, kl_matching_templates(val)) (rule "min", templates of
    predicted classes only) is minus pytorch-ood 0.4.0's KLMatching outlier score."""
    from gencore.ood import kl_matching, kl_matching_templates

    c = 12
    val = 2.5 * torch.randn(4000, c, generator=rng, dtype=torch.float64)
    val[:, 7] -= 50.0                                     # never predicted: pytorch-ood fits no template
    test = 2.5 * torch.randn(600, c, generator=rng, dtype=torch.float64)
    theirs = peer.KLMatching(None).fit_logits(val).predict_logits(test)
    ours = kl_matching(test, kl_matching_templates(val))
    torch.testing.assert_close(-ours, theirs.double(), rtol=1e-10, atol=1e-12)
    ours32 = kl_matching(test.float(), kl_matching_templates(val.float()))
    assert pearson(-ours32, theirs) >= MIN_PEARSON
