"""Perturbation metrics on hand-made cases with known answers (the metric code, never a comparison of methods)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scripts.ifim import ifim_decompose
from scripts.metrics import (
    contrastive_perturbation,
    f1,
    fgsm,
    mean_std,
    num_perturbed,
    pearson_per_image,
    perturbation_masks,
    precision_recall,
    random_pixel_mask,
    randomized_copy,
    replace_pixels,
    signal_localization,
    spearman_per_image,
)


class PixelModel(nn.Module):
    """Binary classifier that looks at one pixel only: logit difference = 10 * (x[0, 0, row, col] - 0.5)."""

    def __init__(self, row: int = 2, col: int = 3):
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 10.0 * (x[:, 0, self.row, self.col] - 0.5)
        return torch.stack([-s / 2, s / 2], dim=1)


def test_k_is_the_ceiling_of_alpha_hw():
    # 0.07 * 100 is 7.000000000000001 in floating point: k must still be 7
    assert [num_perturbed(a, 100) for a in (0.01, 0.015, 0.02, 0.03, 0.07, 1.0)] == [1, 2, 2, 3, 7, 100]
    assert num_perturbed(0.01, 256 * 256) == 656  # ceil(655.36)
    with pytest.raises(ValueError, match="alpha"):
        num_perturbed(0.0, 10)


def test_masks_pick_top_of_high_and_bottom_of_low():
    high = torch.zeros(1, 1, 4, 4)
    high[0, 0, 1, 2], high[0, 0, 3, 3] = 5.0, -7.0  # magnitudes rank the negative one first
    low = torch.arange(16.0).view(1, 1, 4, 4) + 1
    mask_high, mask_low = perturbation_masks(high, low, alpha=2 / 16)
    assert mask_high.sum() == 2 and mask_high[0, 0, 3, 3] and mask_high[0, 0, 1, 2]
    assert mask_low.sum() == 2 and mask_low[0, 0, 0, 0] and mask_low[0, 0, 0, 1]
    with pytest.raises(ValueError, match="map"):
        perturbation_masks(torch.zeros(1, 2, 4, 4), low, 0.1)


def test_replace_pixels_touches_only_the_mask_in_every_channel():
    x = torch.zeros(2, 3, 4, 4)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    mask[1, 0, 2, 2] = True
    out = replace_pixels(x, mask, torch.ones_like(x))
    assert out.sum() == 3 and torch.all(out[1, :, 2, 2] == 1)


def test_random_mask_has_k_pixels_and_is_seeded():
    like = torch.zeros(3, 1, 10, 10)
    a, b = random_pixel_mask(like, 0.05, seed=4), random_pixel_mask(like, 0.05, seed=4)
    assert torch.equal(a, b) and a.flatten(1).sum(1).tolist() == [5, 5, 5]
    assert not torch.equal(a, random_pixel_mask(like, 0.05, seed=5))


def test_f1_binary_and_macro():
    assert f1([1, 1, 0, 0], [1, 0, 0, 0], 2) == pytest.approx(2 / 3)  # precision 1, recall 1/2
    # classes 0, 1, 2: per-class F1 = 1, 2/3, 0 -> macro 5/9
    assert f1([0, 1, 1, 2], [0, 1, 2, 1], 3) == pytest.approx((1 + 0.5 + 0) / 3)
    assert f1([0, 1, 2], [0, 1, 2], 3) == 1.0


def test_contrastive_perturbation_with_a_map_on_the_decisive_pixel():
    """A map pointing exactly at the one pixel the model reads: perturbing its top pixel destroys F1, its bottom
    pixels change nothing, and the random control at 1 pixel of 36 almost never hits it."""
    torch.manual_seed(0)
    model = PixelModel()
    x = torch.rand(40, 1, 6, 6)
    y = (x[:, 0, 2, 3] > 0.5).long()
    saliency = torch.zeros(40, 1, 6, 6)
    saliency[:, 0, 2, 3] = 1.0
    saliency += 1e-3 * torch.rand(40, 1, 6, 6)  # below the decisive pixel, everywhere
    result = contrastive_perturbation(model, x, y, saliency, alphas=(1 / 36,), noise_mean=0.5, noise_std=0.0)
    r = result[1 / 36]
    assert r["f1_clean"] == 1.0 and r["f1_low"] == 1.0 and r["drop_low"] == 0.0
    # noise 0.5 exactly at the decisive pixel gives logit difference 0 -> class 0 everywhere -> F1 of class 1 is 0
    assert r["f1_high"] == 0.0 and r["ratio"] == math.inf and r["drop_high"] == 1.0
    assert r["f1_random"] > 0.8
    # the noise distribution is the one asked for: 0.9 at the decisive pixel makes every prediction class 1
    bright = contrastive_perturbation(model, x, y, saliency, alphas=(1 / 36,), noise_mean=0.9, noise_std=0.0)
    positives = int(y.sum())
    assert bright[1 / 36]["f1_high"] == pytest.approx(2 * positives / (positives + len(y)))  # precision p/n, recall 1


def test_ratio_is_nan_when_no_set_finds_the_positive_class():
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([1, 0] * 3)
    never_positive = lambda z: torch.tensor([[1.0, 0.0]]).expand(z.shape[0], 2)  # noqa: E731
    result = contrastive_perturbation(never_positive, x, y, torch.rand(6, 1, 4, 4), alphas=(0.1,))[0.1]
    assert result["f1_high"] == result["f1_low"] == 0.0 and math.isnan(result["ratio"])


def test_contrastive_perturbation_on_a_constant_model_moves_nothing():
    x = torch.rand(10, 1, 5, 5)
    y = torch.tensor([1, 0] * 5)
    model = lambda z: torch.tensor([[0.0, 1.0]]).expand(z.shape[0], 2)  # noqa: E731  always class 1
    result = contrastive_perturbation(model, x, y, torch.rand(10, 1, 5, 5), alphas=(0.04, 0.2))
    for r in result.values():
        assert r["f1_high"] == r["f1_low"] == r["f1_clean"] == r["f1_random"] == pytest.approx(2 / 3)
        assert r["ratio"] == 1.0 and r["drop_high"] == r["drop_low"] == r["drop_random"] == 0.0


def test_fgsm_on_a_linear_model_has_its_closed_form():
    """f(x) = W x + b: grad_x CE = W^T (softmax(f) - e_y), so x_adv = x + eps * sign(W^T (p - e_y))."""
    torch.manual_seed(1)
    linear = nn.Linear(12, 3)
    model = nn.Sequential(nn.Flatten(), linear).train()
    x, y = torch.randn(4, 1, 3, 4), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        adv = fgsm(model, x, y, epsilon=0.1)
    p = torch.softmax(linear(x.flatten(1)), 1).detach()
    grad = (p - nn.functional.one_hot(y, 3)) @ linear.weight.detach()
    torch.testing.assert_close(adv, x + 0.1 * grad.sign().view_as(x))
    assert model.training


def test_metrics_restore_mixed_training_modes():
    """A frozen eval-mode submodule inside a training model must stay in eval mode after fgsm / predict."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    model[2].eval()
    x, y = torch.randn(3, 1, 2, 2), torch.tensor([0, 1, 0])
    fgsm(model, x, y, 0.1)
    contrastive_perturbation(model, x, y, torch.rand(3, 1, 2, 2), alphas=(0.25,))
    assert model.training and model[1].training and not model[2].training


def test_fgsm_and_ifim_agree_on_a_binary_linear_model():
    """Binary linear model: the iFIM's u_1 is +-(w_1 - w_2)/|w_1 - w_2| (eq. 12), and FGSM moves every pixel by
    eps * sign(w_1 - w_2) up to a global sign, so both point along the same weights."""
    torch.manual_seed(2)
    linear = nn.Linear(16, 2)
    model = nn.Sequential(nn.Flatten(), linear)
    x, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 0])
    diff = (linear.weight[0] - linear.weight[1]).detach()
    u1 = ifim_decompose(model, x).eigenvectors[:, 0].flatten(1)
    torch.testing.assert_close(u1.abs(), (diff / diff.norm()).abs().expand(3, -1), rtol=1e-5, atol=1e-6)
    step = (fgsm(model, x, y, 1.0) - x).flatten(1)  # +-1 up to float32 rounding of (x + 1) - x
    torch.testing.assert_close(step.abs(), torch.ones_like(step), rtol=0, atol=1e-6)
    for b in range(3):
        assert torch.equal(step[b].sign(), diff.sign()) or torch.equal(step[b].sign(), -diff.sign())


def test_pearson_and_spearman_known_values():
    a = torch.arange(16.0).view(1, 1, 4, 4)
    pairs = torch.cat([a, a]), torch.cat([2 * a + 1, -a])
    torch.testing.assert_close(pearson_per_image(*pairs), torch.tensor([1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(spearman_per_image(*pairs), torch.tensor([1.0, -1.0], dtype=torch.float64))
    monotone = torch.cat([a, a.pow(3)])
    assert spearman_per_image(monotone[:1], monotone[1:])[0] == pytest.approx(1.0)
    assert pearson_per_image(monotone[:1], monotone[1:])[0] < 0.95  # Pearson sees the non-linearity
    assert math.isnan(pearson_per_image(torch.ones(1, 1, 4, 4), a)[0])
    assert math.isnan(spearman_per_image(torch.ones(1, 1, 4, 4), a)[0])


def test_signal_localization_known_disk():
    maps = torch.zeros(3, 1, 11, 11)
    centers = torch.tensor([[5.0, 5.0]] * 3)
    sigmas = torch.tensor([1.0, 1.0, 1.0])
    maps[0, 0, 5, 5] = 1.0  # all energy at the centre
    maps[1, 0, 0, 0] = 1.0  # all energy far away
    maps[2] = 1.0  # spread evenly
    result = signal_localization(maps, centers, sigmas)
    disk_area = 13 / 121  # lattice points with r^2 <= 4
    torch.testing.assert_close(result["area_fraction"], torch.full((3,), disk_area, dtype=torch.float64))
    torch.testing.assert_close(result["energy_fraction"], torch.tensor([1.0, 0.0, disk_area], dtype=torch.float64))
    assert result["pointing_hit"].tolist() == [1.0, 0.0, 0.0]  # the even map peaks at (0, 0), outside
    ball = signal_localization(torch.ones(1, 1, 7, 7, 7), torch.tensor([[3.0, 3.0, 3.0]]), torch.tensor([0.5]))
    assert ball["area_fraction"][0] == pytest.approx(7 / 343)  # the centre and its 6 face neighbours


def test_randomized_copy_changes_every_parameter_and_leaves_the_original():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 1, 5, 5))
    model[1].running_mean += 3.0
    before = [p.clone() for p in model.parameters()]
    clone = randomized_copy(model, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), clone.parameters()) if p.numel() > 2)
    assert torch.all(clone[1].running_mean == 0)
    again = randomized_copy(model, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(clone.parameters(), again.parameters()))


def test_precision_recall_and_mean_std():
    assert precision_recall([1, 1, 0, 0], [1, 0, 1, 0], 2) == {"precision": 0.5, "recall": 0.5}
    macro = precision_recall([0, 1, 2, 2], [0, 1, 2, 1], 3)
    assert macro["recall"] == pytest.approx((1 + 1 + 0.5) / 3) and macro["precision"] == pytest.approx(
        (1 + 0.5 + 1) / 3)
    assert mean_std([0.9, 1.0]) == {"mean": pytest.approx(0.95), "std": pytest.approx(0.0707107, rel=1e-5), "n": 2}
    assert mean_std([0.5])["std"] == 0.0
    with pytest.raises(ValueError):
        mean_std([])
