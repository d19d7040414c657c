"""Trivial detectors and the rank / K / gradient-overlap control against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ifim_reference import TinyConvNet, brute_force_fisher
from scripts.controls import (
    BeyondGradient,
    BeyondGradientResult,
    DetectorResult,
    RhoSweep,
    RhoSweepResult,
    TrivialDetectors,
)
from scripts.detectors import weighted_aurocs
from scripts.metrics import GaussianFill, contrastive_perturbation
from scripts.study import AttributionStudy


def _pairwise_auroc(scores, positive, weights):
    """The chance that a positive outranks a negative, ties one half, each pair weighted by its images' weights."""
    num = den = 0.0
    for i in np.flatnonzero(positive):
        for j in np.flatnonzero(~positive):
            w = weights[i] * weights[j]
            num += w * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
            den += w
    return num / den if den else math.nan


def test_weighted_auroc_is_the_weighted_pairwise_ranking_chance():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=40), 1)  # rounded: ties occur
    positive = rng.random(40) < 0.4
    weights = rng.integers(0, 3, size=(5, 40)).astype(float)
    expected = [_pairwise_auroc(scores, positive, w) for w in weights]
    np.testing.assert_allclose(weighted_aurocs(scores, positive, weights), expected, rtol=1e-12)
    assert weighted_aurocs(scores, positive)[0] == pytest.approx(_pairwise_auroc(scores, positive, np.ones(40)))
    only_negatives = np.where(positive, 0.0, 1.0)[None]
    assert math.isnan(weighted_aurocs(scores, positive, only_negatives)[0])
    with pytest.raises(ValueError, match="differ"):
        weighted_aurocs(scores[:3], positive, weights)


SWEEP_FILL = GaussianFill(0.5, 0.25)


@pytest.fixture(scope="module")
def three_class_study():
    torch.manual_seed(0)
    model = TinyConvNet(1, 3)
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    units = ["a", "a", "b", "b", "c", "c", "d", "d"]
    study = AttributionStudy([TrivialDetectors(), BeyondGradient(rhos=(0.5, 0.9, 0.999)),
                              RhoSweep(rhos=(0.3, 0.999), fill=SWEEP_FILL, alphas=(0.25,))],
                             ["ifim", "vanilla_gradient"], alphas=(0.05, 0.25), seed=1, n_bootstrap=200)
    study.update(model, x, y, units=units)
    return model, x, y, study.compute()


def test_rank_and_k_match_the_brute_force_fisher(three_class_study):
    model, x, _, results = three_class_study
    section = results.sections.find(BeyondGradientResult)
    ranks, ks = [], {0.5: [], 0.9: [], 0.999: []}
    for image in x:
        evals = torch.linalg.eigvalsh(brute_force_fisher(model, image[None])).flip(0).clamp_min(0)
        rank = int((evals > 3 * torch.finfo(torch.float64).eps * evals[0]).sum())
        ranks.append(rank)
        energy = torch.cumsum(evals[:rank], 0) / evals[:rank].sum()
        for rho in ks:
            ks[rho].append(int((energy < rho - 1e-12).sum()) + 1)
    assert section.rank_counts == {str(r): ranks.count(r) for r in set(ranks)}
    assert set(ranks) == {2}  # C - 1 for a softmax head of 3 classes
    for rho, values in ks.items():
        assert section.k_counts[f"{rho:g}"] == {str(k): values.count(k) for k in set(values)}
    assert section.rank_at_least_2["mean"] == 1.0
    assert section.k_at_least_2["0.999"]["mean"] == pytest.approx(np.mean(np.asarray(ks[0.999]) >= 2))


def test_topk_overlap_with_each_logit_gradient_by_hand(three_class_study):
    model, x, _, results = three_class_study
    section = results.sections.find(BeyondGradientResult)
    from scripts.attribution import attribute

    sensitive = attribute("ifim_sensitive", model, x).flatten(1)
    jacobian = torch.func.vmap(torch.func.jacrev(lambda z: model(z[None])[0]))(x)  # (B, C, 1, H, W)
    for alpha, k in ((0.05, 4), (0.25, 16)):  # k = ceil(alpha * 64)
        top_s = sensitive.topk(k, dim=1).indices
        for c in range(3):
            top_g = jacobian[:, c].abs().flatten(1).topk(k, dim=1).indices
            shared = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(top_s, top_g)]
            assert section.overlap[f"gradient of logit {c}"][f"{alpha:g}"]["mean"] == pytest.approx(np.mean(shared))
        low, high = section.overlap["gradient of logit 0"]["0.25"]["interval"]
        assert low <= section.overlap["gradient of logit 0"]["0.25"]["mean"] <= high
    assert set(section.overlap) == {"vanilla gradient of the predicted class", "gradient of logit 0",
                                    "gradient of logit 1", "gradient of logit 2"}


def test_trivial_detectors_auroc_against_sklearn(three_class_study):
    from sklearn.metrics import roc_auc_score

    model, x, y, results = three_class_study
    section = results.sections.find(DetectorResult)
    present = (y != 0).numpy()
    assert section.auroc["max intensity"] == pytest.approx(roc_auc_score(present, x.flatten(1).max(1).values))
    assert section.auroc["mean intensity"] == pytest.approx(roc_auc_score(present, x.flatten(1).mean(1)))
    with torch.no_grad():
        p_absent = torch.softmax(model(x), 1)[:, 0]
    assert section.auroc["classifier"] == pytest.approx(roc_auc_score(present, 1 - p_absent))
    assert set(section.classifier_minus) == {"max intensity", "mean intensity"}
    low, high = section.auroc_intervals["max intensity"]
    assert 0 <= low <= high <= 1
    text = " ".join(section.findings(results.sections))
    assert "max intensity detector's AUROC is" in text and "classifier's AUROC is" in text


def test_rho_sweep_splits_s_and_i_like_the_brute_force_fisher(three_class_study):
    """At each rho, S and I are |P_K x| and |x - P_K x| with P_K the projector onto the leading K eigenvectors of the
    brute-force F(x) (eq. 13-17); their perturbation ratio is the plain metric function's on those maps, and the
    gradient's is that function's on the vanilla gradient."""
    from scripts.attribution import attribute

    model, x, y, results = three_class_study
    section = results.sections.find(RhoSweepResult)
    for rho in (0.3, 0.999):
        sens, comp, ks = [], [], []
        for image in x:
            evals, evecs = torch.linalg.eigh(brute_force_fisher(model, image[None]))
            evals, evecs = evals.flip(0)[:2], evecs.flip(1)[:, :2]  # rank C - 1 = 2
            energy = torch.cumsum(evals, 0) / evals.sum()
            k = int((energy < rho - 1e-12).sum()) + 1
            ks.append(k)
            projected = (evecs[:, :k] @ (evecs[:, :k].T @ image.reshape(-1))).reshape(image.shape)
            sens.append(projected.abs())
            comp.append((image - projected).abs())
        expected = contrastive_perturbation(model, x, y, torch.stack(sens), torch.stack(comp), (0.25,), seed=1,
                                            fill=SWEEP_FILL)
        assert section.ratios[f"{rho:g}"]["0.25"] == pytest.approx(expected[0.25]["ratio"], nan_ok=True)
        assert section.k_at_least_2[f"{rho:g}"] == pytest.approx(np.mean(np.asarray(ks) >= 2))
    assert section.k_at_least_2["0.3"] < section.k_at_least_2["0.999"]
    gradient = attribute("vanilla_gradient", model, x)
    expected = contrastive_perturbation(model, x, y, gradient, None, (0.25,), seed=1, fill=SWEEP_FILL)
    assert section.ratios["vanilla_gradient"]["0.25"] == pytest.approx(expected[0.25]["ratio"], nan_ok=True)
    assert set(section.minus_gradient) == {"0.3", "0.999"}
    assert "Rho sweep at 25 %" in " ".join(section.findings(results.sections))
