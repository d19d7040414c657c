"""Perturbation metrics on hand-made cases with known answers (the metric code, never a comparison of methods)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from torch import nn

from scripts.ifim import ifim_decompose
from scripts.metrics import (
    GaussianFill,
    NoisyLinearImputation,
    annotation_agreement,
    cascade_layers,
    classification_metric,
    confusion_matrix,
    contrastive_perturbation,
    curve_auc,
    f1,
    fgsm,
    mean_std,
    num_perturbed,
    pearson_per_image,
    perturbation_masks,
    perturbed_predictions,
    random_pixel_mask,
    randomized_copy,
    replace_pixels,
    scores_from_confusion,
    signal_localization,
    spearman_per_image,
)
from scripts.seeding import image_seeds


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
    # the even map peaks everywhere: its hit is the share of its maxima inside, not a pick by position
    torch.testing.assert_close(result["pointing_hit"], torch.tensor([1.0, 0.0, disk_area], dtype=torch.float64))
    # AUROC, ties counting one half: 13 pixels inside, 108 outside
    torch.testing.assert_close(result["auroc"], torch.tensor([1 / 13 + 0.5 * 12 / 13, 0.5 * 107 / 108, 0.5],
                                                             dtype=torch.float64))
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
    assert {k: v for k, v in scores_from_confusion(confusion_matrix([1, 1, 0, 0], [1, 0, 1, 0], 2)).items()
            if k != "f1"} == {"precision": 0.5, "recall": 0.5}
    macro = scores_from_confusion(confusion_matrix([0, 1, 2, 2], [0, 1, 2, 1], 3))
    assert macro["recall"] == pytest.approx((1 + 1 + 0.5) / 3) and macro["precision"] == pytest.approx(
        (1 + 0.5 + 1) / 3)
    assert mean_std([0.9, 1.0]) == {"mean": pytest.approx(0.95), "std": pytest.approx(0.0707107, rel=1e-5), "n": 2,
                                    "n_undefined": 0}
    assert math.isnan(mean_std([0.5])["std"])  # one seed has no spread to report: n/a, not 0
    # NaN values (the correlation of a constant map) are counted, not averaged
    assert mean_std([1.0, float("nan"), 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2,
                                                  "n_undefined": 1}
    assert math.isnan(mean_std([float("nan")])["mean"])
    with pytest.raises(ValueError):
        mean_std([])


def test_ties_are_broken_at_random_not_by_position():
    """A map that is zero on most of the image (a CAM after its ReLU): its bottom set must spread over the zeros,
    not take the first pixels in memory order (the top rows), and the draw follows the seed."""
    cam = torch.zeros(2, 1, 64, 64)
    cam[:, :, 40:48, 40:48] = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    _, bottom = perturbation_masks(cam, cam, alpha=0.02, seeds=torch.tensor([1, 2]))
    rows = [mask[0].nonzero()[:, 0].double() for mask in bottom]
    assert all(len(r) == 82 for r in rows)
    assert all(r.mean() > 15 for r in rows)  # by position: every pixel in row 0 or 1, mean row < 1
    assert not torch.equal(bottom[0], bottom[1])  # each image its own draw
    again = perturbation_masks(cam, cam, alpha=0.02, seeds=torch.tensor([1, 2]))[1]
    assert torch.equal(again, bottom)
    assert not cam[bottom].any()  # still the lowest values
    # ties at the top: a flat map's top set is a random one, spread over the image
    top, _ = perturbation_masks(torch.ones(1, 1, 64, 64), torch.ones(1, 1, 64, 64), alpha=0.02, seeds=7)
    assert top[0, 0].nonzero()[:, 0].double().mean() > 15
    # without ties the seed changes nothing
    distinct = torch.randperm(64 * 64, generator=torch.Generator().manual_seed(3)).view(1, 1, 64, 64).double()
    assert torch.equal(perturbation_masks(distinct, distinct, 0.02, seeds=1)[0],
                       perturbation_masks(distinct, distinct, 0.02, seeds=2)[0])


def test_an_images_draws_do_not_depend_on_its_batch():
    model = PixelModel()
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    saliency = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    seeds = image_seeds(x, 3)
    assert torch.equal(image_seeds(x[2:4], 3), seeds[2:4]) and len(set(seeds.tolist())) == 5
    assert not torch.equal(image_seeds(x, 4), seeds)
    whole = perturbed_predictions(model, x, saliency, alphas=(0.1, 0.3), noise_mean=0.5, noise_std=0.25, seed=3)
    for part in (slice(0, 2), slice(2, 5), slice(4, 5)):
        alone = perturbed_predictions(model, x[part], saliency[part], alphas=(0.1, 0.3), noise_mean=0.5,
                                      noise_std=0.25, seed=3)
        assert all(torch.equal(alone[key], whole[key][part]) for key in whole)
    assert torch.equal(random_pixel_mask(x, 0.2, seed=seeds)[1:3], random_pixel_mask(x[1:3], 0.2, seed=seeds[1:3]))


@pytest.mark.parametrize("num_classes", [2, 3, 4])
def test_scores_from_confusion_equal_scikit_learn(num_classes):
    """Brute force: scikit-learn's precision / recall / F1 (class 1 for C = 2, macro otherwise, zero_division=0),
    on random labels and on sets that leave a class never predicted or never present."""
    rng = np.random.default_rng(num_classes)
    average = "binary" if num_classes == 2 else "macro"
    labels = None if num_classes == 2 else list(range(num_classes))
    cases = [(rng.integers(0, num_classes, 50), rng.integers(0, num_classes, 50)),
             (np.zeros(6, int), np.zeros(6, int)), (np.ones(6, int), np.zeros(6, int)),
             (rng.integers(0, 2, 20), np.ones(20, int))]
    for y_true, y_pred in cases:
        scores = scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))
        for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
            expected = fn(y_true, y_pred, average=average, labels=labels, zero_division=0)
            assert scores[name] == pytest.approx(expected), (name, y_true, y_pred)
    with pytest.raises(ValueError, match="class 3"):
        confusion_matrix([0, 3], [0, 1], 3)


def test_classification_metric_over_batches_equals_scikit_learn():
    rng = np.random.default_rng(0)
    logits, labels = torch.tensor(rng.normal(size=(37, 3))), torch.tensor(rng.integers(0, 3, 37))
    batches = [{"pred": logits[i:i + 8], "label": labels[i:i + 8, None]} for i in range(0, 37, 8)]
    engine = Engine(lambda engine, batch: batch)
    for name in ("precision", "recall", "f1"):
        classification_metric(name, 3).attach(engine, name)
    metrics = engine.run(batches).metrics
    predicted = logits.argmax(1).numpy()
    assert metrics["f1"] == pytest.approx(f1_score(labels.numpy(), predicted, average="macro"))
    assert metrics["precision"] == pytest.approx(precision_score(labels.numpy(), predicted, average="macro"))
    assert metrics["recall"] == pytest.approx(recall_score(labels.numpy(), predicted, average="macro"))


def test_annotation_agreement_equals_brute_force():
    """Brute force on random maps with ties: energy by a loop, AUROC by scikit-learn, pointing by counting maxima."""
    generator = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 6, (4, 1, 9, 7), generator=generator).double()  # many ties
    masks = torch.rand(4, 1, 9, 7, generator=generator) < 0.3
    result = annotation_agreement(maps, masks)
    for i in range(4):
        values, region = maps[i].flatten().numpy(), masks[i].flatten().numpy()
        assert result["energy_fraction"][i].item() == pytest.approx(values[region].sum() / values.sum())
        assert result["area_fraction"][i].item() == pytest.approx(region.mean())
        assert result["auroc"][i].item() == pytest.approx(roc_auc_score(region, values))
        peaks = values == values.max()
        assert result["pointing_hit"][i].item() == pytest.approx((peaks & region).sum() / peaks.sum())
    with pytest.raises(ValueError, match="no pixel"):
        annotation_agreement(maps, torch.zeros_like(masks))
    assert math.isnan(annotation_agreement(maps[:1], torch.ones_like(masks[:1]))["auroc"].item())


def test_noisy_linear_imputation_solves_the_neighbour_mean_equations():
    """Brute force: every imputed pixel equals the weighted mean of its 8 neighbours (face 2, diagonal 1, renormalised
    at the border), known pixels untouched; an interior linear ramp is reproduced exactly; same in every channel."""
    rng = np.random.default_rng(0)
    image = rng.random((2, 9, 11))
    removed = rng.random((9, 11)) < 0.4
    filled = NoisyLinearImputation.impute(image, removed)
    np.testing.assert_array_equal(filled[:, ~removed], image[:, ~removed])
    for r, c in zip(*np.nonzero(removed)):
        total, weight = np.zeros(2), 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr or dc) and 0 <= r + dr < 9 and 0 <= c + dc < 11:
                    w = 2.0 if abs(dr) + abs(dc) == 1 else 1.0
                    total, weight = total + w * filled[:, r + dr, c + dc], weight + w
        np.testing.assert_allclose(filled[:, r, c], total / weight, rtol=1e-10, atol=1e-12)
    ramp = np.add.outer(np.arange(9.0), 0.5 * np.arange(11.0))[None]
    interior = np.zeros((9, 11), dtype=bool)
    interior[2:6, 3:8] = True
    np.testing.assert_allclose(NoisyLinearImputation.impute(ramp, interior), ramp, atol=1e-12)


def test_fills_are_seeded_per_image_and_touch_only_the_mask():
    x = torch.rand(3, 2, 12, 12)
    mask = torch.rand(3, 1, 12, 12) < 0.3
    seeds = torch.tensor([5, 6, 7])
    for fill in (GaussianFill(0.5, 0.25), NoisyLinearImputation(0.01)):
        out = fill(x, mask, seeds)
        assert torch.equal(out[~mask.expand_as(x)], x[~mask.expand_as(x)])
        assert torch.equal(out, fill(x, mask, seeds)) and not torch.equal(out, fill(x, mask, seeds + 1))
        torch.testing.assert_close(fill(x[1:2], mask[1:2], seeds[1:2]), out[1:2])
    exact = torch.from_numpy(np.stack([NoisyLinearImputation.impute(i, m[0]) for i, m in
                                       zip(x.double().numpy(), mask.numpy())])).float()
    noise = (NoisyLinearImputation(0.01)(x, mask, seeds) - exact)[mask.expand_as(x)]
    assert 0.005 < noise.std().item() < 0.02  # the ROAD noise on top of the linear imputation


def test_curve_auc_is_the_mean_height():
    assert curve_auc([0.0, 0.5], [1.0, 0.0]) == pytest.approx(0.5)
    assert curve_auc([0.0, 0.1, 0.5], [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]]) == pytest.approx([1.0, 0.9])
    with pytest.raises(ValueError, match="increase"):
        curve_auc([0.0, 0.0], [1.0, 1.0])


def test_eq_23_to_26_by_hand_on_a_linear_model():
    """The contrastive perturbation study (eq. 23-26) written out in numpy: TopK of S and BottomK of I by sorting,
    those pixels set to a constant fill, a linear model's predictions, F1 by scikit-learn; against the study's own
    control (ContrastivePerturbation inside the study's batch) and the one-call function."""
    from scripts.attribution import IFIM
    from scripts.controls import ContrastivePerturbation, StudyBatch, StudySetup, StudyTotals

    rng = np.random.default_rng(0)  # a draw whose perturbed top sets keep some positives (F1_high > 0)
    weights = rng.normal(size=(2, 16))
    model = nn.Linear(16, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weights))
    net = nn.Sequential(nn.Flatten(), model)
    x = rng.random((12, 1, 4, 4))
    y = np.array([0, 1] * 6)
    sensitive, complement = rng.random((12, 1, 4, 4)), rng.random((12, 1, 4, 4))  # distinct values: no ties
    fill_value, alphas = 0.3, (0.1, 0.25)

    def predict(images):
        return (images.reshape(len(images), -1) @ weights.T).argmax(1)

    clean = predict(x)
    expected = {}
    for alpha in alphas:
        k = int(np.ceil(alpha * 16))
        high, low = x.copy().reshape(12, -1), x.copy().reshape(12, -1)
        for i in range(12):
            high[i, np.argsort(-sensitive[i].ravel())[:k]] = fill_value
            low[i, np.argsort(complement[i].ravel())[:k]] = fill_value
        f1_clean, f1_high, f1_low = (f1_score(y, p) for p in (clean, predict(high), predict(low)))
        expected[alpha] = {"f1_clean": f1_clean, "f1_high": f1_high, "f1_low": f1_low, "ratio": f1_low / f1_high,
                           "drop_high": f1_clean - f1_high, "drop_low": f1_clean - f1_low}
    fill = GaussianFill(fill_value, 0.0)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    maps = {IFIM.maps[0]: torch.from_numpy(sensitive), IFIM.maps[1]: torch.from_numpy(complement)}
    function = contrastive_perturbation(net, tx, ty, maps[IFIM.maps[0]], maps[IFIM.maps[1]], alphas, fill=fill)
    control = ContrastivePerturbation([fill])
    control.setup(StudySetup([IFIM], list(IFIM.maps), alphas))
    seeds = image_seeds(tx)
    control.update(StudyBatch(net, tx, ty, torch.from_numpy(clean), seeds, ["u"] * 12, maps, 2))
    probabilities = torch.softmax(net(tx).double(), 1).detach()
    study = control.compute(StudyTotals(ty, probabilities, ["u"] * 12, 2)).scores[fill.tag][IFIM.name]
    for alpha in alphas:
        for key, value in expected[alpha].items():
            assert function[alpha][key] == pytest.approx(value), (alpha, key)
            assert study[f"{alpha:g}"][key] == pytest.approx(value), (alpha, key)
    assert expected[0.25]["f1_high"] != expected[0.25]["f1_clean"]  # the perturbation moved something


def test_matched_resolution_by_hand_on_a_linear_model():
    """MatchedResolution's ratio: both maps smoothed by MONAI's GaussianFilter in the test, then TopK / BottomK by
    sorting, a constant fill and scikit-learn's F1, as eq. 23-26 by hand."""
    from monai.networks.layers import GaussianFilter

    from scripts.attribution import IFIM
    from scripts.controls import MatchedResolution, StudyBatch, StudySetup, StudyTotals

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(2, 64))
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2, bias=False)).double()
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(weights))
    x, y = rng.random((12, 1, 8, 8)), np.array([0, 1] * 6)
    sensitive, complement = rng.random((12, 1, 8, 8)), rng.random((12, 1, 8, 8))
    smooth = GaussianFilter(2, 1.5)
    with torch.no_grad():
        smoothed = [smooth(torch.from_numpy(m)).numpy() for m in (sensitive, complement)]
    clean = (x.reshape(12, -1) @ weights.T).argmax(1)
    alpha, k = 0.1, 7  # ceil(0.1 * 64)
    high, low = x.copy().reshape(12, -1), x.copy().reshape(12, -1)
    for i in range(12):
        high[i, np.argsort(-smoothed[0][i].ravel())[:k]] = 0.3
        low[i, np.argsort(smoothed[1][i].ravel())[:k]] = 0.3
    f1_high, f1_low = (f1_score(y, (p @ weights.T).argmax(1)) for p in (high, low))
    control = MatchedResolution(GaussianFill(0.3, 0.0), sigma=1.5)
    control.setup(StudySetup([IFIM], list(IFIM.maps), (alpha,)))
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    maps = {IFIM.maps[0]: torch.from_numpy(sensitive), IFIM.maps[1]: torch.from_numpy(complement)}
    control.update(StudyBatch(net, tx, ty, torch.from_numpy(clean), image_seeds(tx), ["u"] * 12, maps, 2))
    probabilities = torch.softmax(net(tx), 1).detach()
    result = control.compute(StudyTotals(ty, probabilities, ["u"] * 12, 2))
    assert f1_high > 0 and result.ratios[IFIM.name]["0.1"] == pytest.approx(f1_low / f1_high)


def test_cascading_randomization_re_initializes_from_the_output_down():
    """cascade_layers lists the layers with parameters from the output back; randomized_copy(layers=...) changes
    those and nothing else; the control's first step is scipy's Spearman between the maps of the model and of the
    copy whose top layer alone is random."""
    from scipy.stats import spearmanr

    from scripts.attribution import IFIM, attribute, select_methods
    from scripts.controls import CascadingRandomization, StudyBatch, StudySetup, StudyTotals
    from scripts.networks import ShallowCNN

    torch.manual_seed(4)
    model = ShallowCNN(2, 1, 2).eval()
    assert cascade_layers(model) == ["classifier", "features.6", "features.3", "features.0"]
    top = randomized_copy(model, seed=1, layers=["classifier"])
    assert not torch.equal(top.classifier.weight, model.classifier.weight)
    assert all(torch.equal(a, b) for a, b in zip(top.features.parameters(), model.features.parameters()))
    x = torch.rand(4, 1, 16, 16)
    y = torch.tensor([0, 1, 0, 1])
    methods = select_methods(["ifim"])
    control = CascadingRandomization()
    control.setup(StudySetup(methods, list(IFIM.maps), (0.05,), seed=1))
    maps = {m: attribute(m, model, x) for m in IFIM.maps}

    def maps_of(other, images, stage, names=None):
        return {m: attribute(m, other, images) for m in IFIM.maps}

    control.update(StudyBatch(model, x, y, model(x).argmax(1), image_seeds(x), ["u"] * 4, maps, 2, maps_of))
    result = control.compute(StudyTotals(y, torch.softmax(model(x), 1).detach().double(), ["u"] * 4, 2))
    first = list(result.per_step)[0]
    top_maps = attribute("ifim_sensitive", top, x)
    expected = np.mean([spearmanr(maps["ifim_sensitive"][i].flatten(), top_maps[i].flatten())[0] for i in range(4)])
    assert first.startswith("1 of 4") and result.per_step[first]["ifim_sensitive"]["mean"] == pytest.approx(expected)
    assert len(result.per_step) == 4


def test_epsilon_sweep_by_hand():
    """Per epsilon: predictions flipped, the clean class's probability change and S's correlation under FGSM, as
    computed here from fgsm() (its closed form is tested above) and the maps; random signs are +-epsilon."""
    from scripts.attribution import IFIM, attribute, select_methods
    from scripts.controls import EpsilonSweep, StudyBatch, StudySetup, StudyTotals
    from scripts.networks import ShallowCNN

    torch.manual_seed(5)
    model = ShallowCNN(2, 1, 2).eval()
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 0, 1])
    control = EpsilonSweep([0.01, 0.05])
    control.setup(StudySetup(select_methods(["ifim"]), list(IFIM.maps), (0.05,)))
    maps = {m: attribute(m, model, x) for m in IFIM.maps}

    def maps_of(other, images, stage, names=None):
        return {m: attribute(m, other, images) for m in IFIM.maps}

    with torch.no_grad():
        target = model(x).argmax(1)
    control.update(StudyBatch(model, x, y, target, image_seeds(x), ["u"] * 4, maps, 2, maps_of))
    result = control.compute(StudyTotals(y, torch.softmax(model(x), 1).detach().double(), ["u"] * 4, 2))
    for epsilon in (0.01, 0.05):
        x_adv = fgsm(model, x, y, epsilon)
        with torch.no_grad():
            clean, adv = torch.softmax(model(x).double(), 1), torch.softmax(model(x_adv).double(), 1)
        row = result.sweep[f"{epsilon:g}"]["fgsm"]
        assert row["flipped"]["mean"] == pytest.approx((adv.argmax(1) != target).double().mean().item())
        change = (adv[torch.arange(4), target] - clean[torch.arange(4), target]).abs().mean().item()
        assert row["output change"]["mean"] == pytest.approx(change)
        pearson = pearson_per_image(maps["ifim_sensitive"], attribute("ifim_sensitive", model, x_adv))
        assert row["ifim_sensitive"]["mean"] == pytest.approx(pearson.mean().item())
    assert result.sweep["0.05"]["fgsm"]["output change"]["mean"] > result.sweep["0.01"]["fgsm"]["output change"]["mean"]
