# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's perturbation metrics (Sec. IV-E, IV-F) and the controls a reviewer asks for, as plain functions.

Maps are ``(B, 1, *spatial)`` magnitudes (DESIGN.md); images ``(B, C_in, *spatial)``; a "pixel" is a spatial
position, perturbed in every input channel.

* Contrastive pixel perturbation, eq. 23-26: :func:`perturbation_masks`, :func:`replace_pixels`,
  :func:`contrastive_perturbation` (F1 after perturbing the k = ceil(alpha * HW) pixels ranked highest by the
  sensitive map and lowest by the insensitive one, their ratio, the absolute drops and a random-pixel control).
* FGSM, eq. 27: :func:`fgsm`; stability of maps under it: :func:`pearson_per_image`.
* Localization where the signal is known (SKS/BKS): :func:`signal_localization`.
* Model-randomization sanity check (Adebayo et al. 2018): :func:`randomized_copy`, :func:`spearman_per_image`.
* Table II: :func:`precision_recall`, :func:`mean_std`.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch
from ignite.metrics import EpochMetric
from scipy.stats import spearmanr
from sklearn.metrics import f1_score, precision_score, recall_score
from torch import nn

from .ifim import eval_mode

__all__ = ["num_perturbed", "perturbation_masks", "random_pixel_mask", "replace_pixels", "f1", "eval_logits",
           "predict", "perturbed_predictions", "perturbation_scores", "contrastive_perturbation", "fgsm",
           "pearson_per_image", "spearman_per_image", "signal_localization", "randomized_copy", "precision_recall",
           "classification_metric", "mean_std"]


def _check_map(values: torch.Tensor, name: str) -> None:
    if values.ndim < 3 or values.shape[1] != 1:
        raise ValueError(f"{name} must be a (B, 1, *spatial) map, got shape {tuple(values.shape)}.")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or Inf values.")


def num_perturbed(alpha: float, n_pixels: int) -> int:
    """k = ceil(alpha * HW) of Sec. IV-E, for a fraction ``alpha`` in (0, 1]."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}.")
    return min(n_pixels, math.ceil(alpha * n_pixels - 1e-9))  # the tolerance keeps 0.01 * 100 at 1, not 2


def perturbation_masks(high_map: torch.Tensor, low_map: torch.Tensor, alpha: float):
    """Boolean ``(B, 1, *spatial)`` masks: TopK(|high_map|, k) (eq. 23) and BottomK(|low_map|, k) (eq. 24).

    For iFIM, ``high_map`` is S(x) = |x_sens| and ``low_map`` I(x) = |x_comp|; for a single-map method both are
    that map (its top-k against its bottom-k). Ties break by position, deterministically.
    """
    _check_map(high_map, "high_map")
    _check_map(low_map, "low_map")
    if high_map.shape != low_map.shape:
        raise ValueError(f"maps differ in shape: {tuple(high_map.shape)} vs {tuple(low_map.shape)}.")
    flat_high, flat_low = high_map.abs().flatten(1), low_map.abs().flatten(1)
    k = num_perturbed(alpha, flat_high.shape[1])
    masks = []
    for flat, largest in ((flat_high, True), (flat_low, False)):
        # stable sort: equal values keep their order, so ties break by position
        order = torch.sort(flat, dim=1, descending=largest, stable=True).indices[:, :k]
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
        masks.append(mask.view(high_map.shape))
    return masks[0], masks[1]


def random_pixel_mask(like: torch.Tensor, alpha: float, seed: int = 0) -> torch.Tensor:
    """k uniformly random pixels per image, ``(B, 1, *spatial)`` boolean: the control that shows whether
    perturbing k pixels moves the model at all."""
    generator = torch.Generator().manual_seed(seed)
    batch, n_pixels = like.shape[0], like[0, 0].numel()
    k = num_perturbed(alpha, n_pixels)
    scores = torch.rand(batch, n_pixels, generator=generator)
    order = scores.topk(k, dim=1).indices
    mask = torch.zeros(batch, n_pixels, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(batch, 1, *like.shape[2:]).to(like.device)


def replace_pixels(x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """eq. 25-26: x with the masked pixels (all channels) replaced by ``noise`` (shaped like x)."""
    if mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:] or noise.shape != x.shape:
        raise ValueError(f"x {tuple(x.shape)}, mask {tuple(mask.shape)} and noise {tuple(noise.shape)} disagree.")
    return torch.where(mask.expand_as(x), noise, x)


def f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """F1 of the positive class (label 1) for a binary task, macro-averaged F1 for more classes."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if num_classes == 2:
        return float(f1_score(y_true, y_pred, average="binary", pos_label=1, zero_division=0))
    return float(f1_score(y_true, y_pred, average="macro", labels=list(range(num_classes)), zero_division=0))


def eval_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 64
                ) -> torch.Tensor:
    """Logits ``(B, C)`` of ``model`` on ``x``, in batches, in eval mode without autograd (modes restored)."""
    with eval_mode(model, grad=False):
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Predicted classes ``(B,)``, see :func:`eval_logits`."""
    return eval_logits(model, x, batch_size).argmax(1)


PERTURBED_SETS = ("high", "low", "random")


def perturbed_predictions(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, high_map: torch.Tensor,
                          low_map: Optional[torch.Tensor] = None, alphas: Sequence[float] = (0.01, 0.02, 0.03),
                          noise_mean: float = 0.0, noise_std: float = 1.0, seed: int = 0,
                          clean: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """One batch of the contrastive pixel-perturbation study (eq. 23-26): predictions on the clean images and on
    each perturbed set, ``{"clean": (B,), (alpha, "high" | "low" | "random"): (B,)}``.

    The k highest pixels of ``high_map`` and the k lowest of ``low_map`` (``high_map`` itself when None) are
    replaced by Gaussian noise N(noise_mean, noise_std^2) drawn once from ``seed``, the same value at a given pixel
    for every set; ``random`` replaces k uniformly drawn pixels (the control). ``clean``: the clean predictions
    ``(B,)`` when the caller has them already (one forward pass fewer).
    """
    low_map = high_map if low_map is None else low_map
    generator = torch.Generator().manual_seed(seed)
    noise = (noise_mean + noise_std * torch.randn(x.shape, generator=generator, dtype=torch.float64)).to(x)
    predictions: Dict = {"clean": predict(model, x) if clean is None else clean}
    for i, alpha in enumerate(alphas):
        mask_high, mask_low = perturbation_masks(high_map, low_map, alpha)
        masks = {"high": mask_high, "low": mask_low, "random": random_pixel_mask(high_map, alpha, seed=seed + 1 + i)}
        for name in PERTURBED_SETS:
            predictions[(alpha, name)] = predict(model, replace_pixels(x, masks[name], noise))
    return predictions


def perturbation_scores(y: torch.Tensor, predictions: Dict, num_classes: int) -> Dict[float, Dict[str, float]]:
    """F1 scores of the perturbed sets over a whole evaluation set (see :func:`contrastive_perturbation`)."""
    y_list = y.tolist()
    f1_clean = f1(y_list, predictions["clean"].tolist(), num_classes)
    results: Dict[float, Dict[str, float]] = {}
    for alpha in sorted({key[0] for key in predictions if key != "clean"}):
        scores = {name: f1(y_list, predictions[(alpha, name)].tolist(), num_classes) for name in PERTURBED_SETS}
        results[alpha] = {"f1_clean": f1_clean, "f1_high": scores["high"], "f1_low": scores["low"],
                          "f1_random": scores["random"], "ratio": _ratio(scores["low"], scores["high"]),
                          "drop_high": f1_clean - scores["high"], "drop_low": f1_clean - scores["low"],
                          "drop_random": f1_clean - scores["random"]}
    return results


def _ratio(low: float, high: float) -> float:
    """F1_low / F1_high; ``inf`` when only F1_high is 0, NaN when both are (a model that never finds class 1)."""
    if high > 0:
        return low / high
    return math.inf if low > 0 else math.nan


def contrastive_perturbation(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                             high_map: torch.Tensor, low_map: Optional[torch.Tensor] = None,
                             alphas: Sequence[float] = (0.01, 0.02, 0.03), noise_mean: float = 0.0,
                             noise_std: float = 1.0, seed: int = 0, num_classes: Optional[int] = None
                             ) -> Dict[float, Dict[str, float]]:
    """The contrastive pixel-perturbation study of Sec. IV-E on a set of images held in memory.

    Returns:
        ``{alpha: {"f1_clean", "f1_high", "f1_low", "f1_random", "ratio", "drop_high", "drop_low",
        "drop_random"}}``. ``ratio = f1_low / f1_high`` (the paper's figure of merit; ``inf`` when only f1_high is
        0, NaN when both are);
        the drops are ``f1_clean - f1_*``, so a large ratio with no drop at all is visible for what it is.
        F1 is of the positive class for C = 2, macro-averaged for more classes.
    """
    num_classes = num_classes or int(eval_logits(model, x[:1]).shape[1])
    predictions = perturbed_predictions(model, x, high_map, low_map, alphas, noise_mean, noise_std, seed)
    return perturbation_scores(y, predictions, num_classes)


def fgsm(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
         epsilon: float) -> torch.Tensor:
    """eq. 27: ``x + epsilon * sign(grad_x CE(f(x), y))``, in eval mode (mode restored), under any grad mode."""
    with eval_mode(model):
        x_leaf = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_leaf), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_leaf)
    return (x.detach() + epsilon * grad.sign()).detach()


def pearson_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two maps per image, ``(B,)`` float64; NaN where either map is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    denominator = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(denominator > 0, (a * b).sum(1) / denominator.clamp_min(1e-300), float("nan"))


def spearman_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of two maps per image, ``(B,)`` float64 (scipy, ties averaged); NaN where a map
    is constant."""
    values = []
    for row_a, row_b in zip(a.flatten(1).double().cpu().numpy(), b.flatten(1).double().cpu().numpy()):
        if np.ptp(row_a) == 0 or np.ptp(row_b) == 0:
            values.append(float("nan"))
        else:
            values.append(float(spearmanr(row_a, row_b).statistic))
    return torch.tensor(values, dtype=torch.float64)


def signal_localization(maps: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor,
                        radius_in_sigmas: float = 2.0) -> Dict[str, torch.Tensor]:
    """How much of each map falls on a known signal: the disk (ball in 3D) of radius ``radius_in_sigmas * sigma``
    around its centre.

    Args:
        maps: ``(B, 1, *spatial)`` magnitudes.
        centers: ``(B, spatial_dims)`` voxel coordinates of the signal centres.
        sigmas: ``(B,)`` signal widths in voxels.

    Returns:
        ``energy_fraction`` (share of the map's total inside the disk), ``area_fraction`` (the disk's share of the
        image: what a map spread evenly would score) and ``pointing_hit`` (1.0 when the map's maximum lies in the
        disk), each ``(B,)`` float64.
    """
    _check_map(maps, "maps")
    spatial = maps.shape[2:]
    if centers.shape != (maps.shape[0], len(spatial)) or sigmas.shape != (maps.shape[0],):
        raise ValueError(f"centers must be (B, {len(spatial)}) and sigmas (B,); got {tuple(centers.shape)} and "
                         f"{tuple(sigmas.shape)}.")
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij")
    coords = torch.stack(grids).to(maps.device)  # (dims, *spatial)
    offset = coords[None] - centers.double().view(-1, len(spatial), *[1] * len(spatial))
    inside = offset.pow(2).sum(1) <= (radius_in_sigmas * sigmas.double()).view(-1, *[1] * len(spatial)) ** 2
    magnitude = maps[:, 0].abs().double()
    total = magnitude.flatten(1).sum(1)
    energy = torch.where(total > 0, (magnitude * inside).flatten(1).sum(1) / total.clamp_min(1e-300), 0.0)
    peak = magnitude.flatten(1).argmax(1)
    hit = inside.flatten(1).gather(1, peak[:, None])[:, 0].double()
    return {"energy_fraction": energy, "area_fraction": inside.flatten(1).double().mean(1), "pointing_hit": hit}


def randomized_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialized (each module's ``reset_parameters``, seeded) and
    batch-norm statistics reset: the randomized model of the model-parameter randomization test."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return clone


def precision_recall(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> Dict[str, float]:
    """Precision and recall of the positive class (binary) or macro-averaged (more classes), as in Table II."""
    average = "binary" if num_classes == 2 else "macro"
    labels = None if num_classes == 2 else list(range(num_classes))
    return {"precision": float(precision_score(y_true, y_pred, average=average, labels=labels, zero_division=0)),
            "recall": float(recall_score(y_true, y_pred, average=average, labels=labels, zero_division=0))}


def classification_metric(name: str, num_classes: int) -> EpochMetric:
    """An ignite ``EpochMetric`` for an evaluator's ``{"pred": (B, C) logits, "label": (B,)}`` batch outputs:
    ``name`` is ``"precision"``, ``"recall"`` (as :func:`precision_recall`) or ``"f1"`` (as :func:`f1`), over the
    whole epoch."""
    if name not in ("precision", "recall", "f1"):
        raise ValueError(f"name must be precision, recall or f1, got {name!r}.")

    def compute(logits: torch.Tensor, labels: torch.Tensor) -> float:
        y_true, y_pred = labels.view(-1).tolist(), logits.argmax(1).tolist()
        return f1(y_true, y_pred, num_classes) if name == "f1" else precision_recall(y_true, y_pred, num_classes)[name]

    return EpochMetric(compute, output_transform=lambda output: (output["pred"], output["label"]),
                       check_compute_fn=False)


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) over training seeds: Table II's mean +- std."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value.")
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "n": int(array.size)}
