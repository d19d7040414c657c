# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's perturbation metrics (Sec. IV-E, IV-F) and the controls a reviewer asks for, as plain functions.

Maps are ``(B, 1, *spatial)`` magnitudes (DESIGN.md); images ``(B, C_in, *spatial)``; a "pixel" is a spatial
position, perturbed in every input channel.

* Every random draw for an image (noise, random pixels, tie-breaking) comes from its own seed
  (``scripts.seeding.image_seeds``), so an image's results do not depend on its batch or the number of processes.
* Contrastive pixel perturbation, eq. 23-26: :func:`perturbation_masks`, :func:`replace_pixels`,
  :func:`contrastive_perturbation` (F1 after perturbing the k = ceil(alpha * HW) pixels ranked highest by the
  sensitive map and lowest by the insensitive one, their ratio, the absolute drops and a random-pixel control).
  What replaces the pixels (the paper: "a fixed distribution") is a fill: :class:`GaussianFill` or ROAD's
  :class:`NoisyLinearImputation`, which keeps the perturbed image close to the data.
* Deletion curves (MoRF / LeRF): :func:`curve_auc`; :func:`f1_scores` scores predictions (or bootstrap resamples).
* FGSM, eq. 27: :func:`fgsm`; stability of maps under it: :func:`pearson_per_image`.
* Agreement with a region that matters: :func:`annotation_agreement` (a reader's annotation) and
  :func:`signal_localization` (the known signal of SKS/BKS).
* Model-randomization sanity check (Adebayo et al. 2018): :func:`randomized_copy`, :func:`spearman_per_image`.
* Table II: :func:`confusion_matrix`, :func:`scores_from_confusion`, :func:`mean_std`,
  and :func:`classification_metric`, an ignite metric on the confusion matrix (summed over processes under DDP).
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from ignite.metrics import ConfusionMatrix, MetricsLambda
from scipy import sparse
from scipy.sparse.linalg import splu
from scipy.stats import rankdata, spearmanr
from torch import nn

from .borrowing import borrowed
from .seeding import Seeds, per_image_seeds

__all__ = ["PERTURBATION_ALPHAS", "num_perturbed", "perturbation_masks", "random_pixel_mask",
           "replace_pixels", "GaussianFill", "NoisyLinearImputation", "f1", "f1_scores", "eval_logits",
           "perturbation_mask_sets", "perturbed_probabilities", "perturbed_predictions", "perturbation_scores",
           "curve_auc",
           "contrastive_perturbation", "fgsm", "random_sign",
           "pearson_per_image", "spearman_per_image", "annotation_agreement", "signal_localization",
           "randomized_copy", "cascade_layers", "confusion_matrix",
           "scores_from_confusion", "classification_metric", "mean_std"]

# draws derived from an image's seed s: the noise uses s, the random pixels of the i-th alpha s + 1 + i
TIE_BREAK_OFFSET = 1 << 20  # the random order that breaks ties between equal map values
RANDOM_SIGN_OFFSET = 1 << 21  # the signs of the random-sign control of FGSM
# the paper's perturbed pixel fractions (Sec. IV-E: 1, 2 and 3 %)
PERTURBATION_ALPHAS = (0.01, 0.02, 0.03)


def _generators(seeds: torch.Tensor, offset: int = 0):
    return [torch.Generator().manual_seed(int(s) + offset) for s in seeds.tolist()]


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


def perturbation_masks(high_map: torch.Tensor, low_map: torch.Tensor, alpha: float,
                       seeds: Optional[Seeds] = None):
    """Boolean ``(B, 1, *spatial)`` masks: TopK(|high_map|, k) (eq. 23) and BottomK(|low_map|, k) (eq. 24).

    For iFIM, ``high_map`` is S(x) = |x_sens| and ``low_map`` I(x) = |x_comp|; for a single-map method both are
    that map (its top-k against its bottom-k). Ties are broken at random: pixels of equal value are ranked in a
    random order drawn per image from ``seeds`` (``(B,)``, or an integer hashed with each image of ``high_map``,
    :func:`scripts.seeding.image_seeds`). A map that is zero on much of the image (a CAM after its ReLU, a saturated
    gradient) so has a bottom set spread over its zero region, not the first pixels in memory order (the top rows).
    """
    _check_map(high_map, "high_map")
    _check_map(low_map, "low_map")
    if high_map.shape != low_map.shape:
        raise ValueError(f"maps differ in shape: {tuple(high_map.shape)} vs {tuple(low_map.shape)}.")
    flat_high, flat_low = high_map.abs().flatten(1), low_map.abs().flatten(1)
    n_pixels = flat_high.shape[1]
    k = num_perturbed(alpha, n_pixels)
    seeds = per_image_seeds(high_map, 0 if seeds is None else seeds)
    shuffles = torch.stack([torch.randperm(n_pixels, generator=g) for g in _generators(seeds, TIE_BREAK_OFFSET)])
    shuffles = shuffles.to(flat_high.device)
    masks = []
    for flat, largest in ((flat_high, True), (flat_low, False)):
        # a stable sort of the shuffled values: equal values keep their random order
        order = torch.sort(flat.gather(1, shuffles), dim=1, descending=largest, stable=True).indices[:, :k]
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, shuffles.gather(1, order), True)
        masks.append(mask.view(high_map.shape))
    return masks[0], masks[1]


def random_pixel_mask(like: torch.Tensor, alpha: float, seed: Seeds = 0) -> torch.Tensor:
    """k uniformly random pixels per image, ``(B, 1, *spatial)`` boolean: the control that shows whether
    perturbing k pixels moves the model at all. ``seed``: ``(B,)`` per-image seeds, or an integer hashed with each
    image of ``like`` (:func:`scripts.seeding.image_seeds`)."""
    n_pixels = like[0, 0].numel()
    k = num_perturbed(alpha, n_pixels)
    scores = torch.stack([torch.rand(n_pixels, generator=g) for g in _generators(per_image_seeds(like, seed))])
    order = scores.topk(k, dim=1).indices
    mask = torch.zeros(len(like), n_pixels, dtype=torch.bool).scatter_(1, order, True)
    return mask.view(len(like), 1, *like.shape[2:]).to(like.device)


def replace_pixels(x: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """eq. 25-26: x with the masked pixels (all channels) replaced by ``noise`` (shaped like x)."""
    if mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:] or noise.shape != x.shape:
        raise ValueError(f"x {tuple(x.shape)}, mask {tuple(mask.shape)} and noise {tuple(noise.shape)} disagree.")
    return torch.where(mask.expand_as(x), noise, x)


def _standard_noise(x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """N(0, 1) noise shaped like ``x`` (float64, CPU), each image's drawn from its own seed."""
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=torch.float64) for g in _generators(seeds)])


class GaussianFill:
    """Replace the masked pixels by N(mean, std^2) noise (eq. 25-26), drawn per image from its seed: the same value at
    a given pixel whichever set of pixels is perturbed, so the sets compared differ only in where they are.

    ``__call__(x, mask, seeds)``: ``x (B, C_in, *spatial)``, ``mask (B, 1, *spatial)`` boolean, ``seeds (B,)``.
    ``provenance``: how the fill was chosen, when the report must say so (e.g. after test results were seen).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, provenance: Optional[str] = None):
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std}.")
        self.mean, self.std, self.provenance = float(mean), float(std), provenance

    @property
    def name(self) -> str:
        return f"N({self.mean:g}, {self.std:g}^2)"

    @property
    def tag(self) -> str:
        return f"gauss_{self.mean:g}_{self.std:g}"

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        return replace_pixels(x, mask, (self.mean + self.std * _standard_noise(x, seeds)).to(x))


class NoisyLinearImputation:
    """ROAD's noisy linear imputation (Rong et al., ICML 2022): the masked pixels take the values that make each of
    them the weighted mean of its neighbours (face neighbours weigh twice the others: ROAD's 1/6 and 1/12 in 2D;
    weights renormalised at the border), one sparse linear system per image solved for every channel, plus
    N(0, noise_std^2) noise (per image, seeded). Removed pixels so look like their surroundings instead of an
    outlier the model may react to by itself. Written here with scipy's sparse solver: no pinned library has it.

    ``__call__(x, mask, seeds)``: ``x (B, C_in, *spatial)``, ``mask (B, 1, *spatial)`` boolean, ``seeds (B,)``.
    ``provenance``: how the fill was chosen, when the report must say so.
    """

    def __init__(self, noise_std: float = 0.01, provenance: Optional[str] = None):
        if not noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}.")
        self.noise_std, self.provenance = float(noise_std), provenance

    @property
    def name(self) -> str:
        return f"ROAD imputation (+N(0, {self.noise_std:g}^2))"

    @property
    def tag(self) -> str:
        return "road"

    @staticmethod
    def impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
        """``image (C_in, *spatial)`` with the ``removed (*spatial)`` pixels linearly imputed (float64).

        Each removed pixel i satisfies ``s_i x_i - sum_j w_ij x_j = sum_k w_ik x_k`` (j its removed neighbours, k
        its kept ones, ``s_i`` the sum of its weights inside the image): the neighbour-mean equations multiplied by
        ``s_i``, which makes the matrix symmetric (``w_ij`` depends only on the offset) and positive definite, so
        SuperLU can order it as a symmetric one: about twice as fast on large removed regions, the same solution.
        """
        spatial = removed.shape
        unknown = np.flatnonzero(removed)
        flat = image.reshape(image.shape[0], -1).astype(np.float64).copy()
        if unknown.size == 0:
            return flat.reshape(image.shape)
        if unknown.size == removed.size:  # nothing to impute from
            flat[:] = 0.0
            return flat.reshape(image.shape)
        position = np.full(removed.size, -1, dtype=np.int64)
        position[unknown] = np.arange(unknown.size)
        coords = np.stack(np.unravel_index(unknown, spatial), 1)  # (m, dims)
        diagonal = np.zeros(unknown.size)
        rows, cols, values = [np.arange(unknown.size)], [np.arange(unknown.size)], []
        rhs = np.zeros((unknown.size, flat.shape[0]))
        for offset in itertools.product((-1, 0, 1), repeat=len(spatial)):
            if not any(offset):
                continue
            weight = 2.0 if sum(map(abs, offset)) == 1 else 1.0  # face neighbours twice the others (ROAD)
            target = coords + np.asarray(offset)
            inside = np.all((target >= 0) & (target < np.asarray(spatial)), 1)
            index = np.zeros(unknown.size, dtype=np.int64)
            index[inside] = np.ravel_multi_index(tuple(target[inside].T), spatial)
            diagonal += weight * inside
            free = inside & (position[index] >= 0)
            known = inside & ~free
            rhs[known] += weight * flat[:, index[known]].T
            rows.append(np.flatnonzero(free))
            cols.append(position[index[free]])
            values.append(np.full(int(free.sum()), -weight))
        matrix = sparse.csc_matrix((np.concatenate([diagonal] + values), (np.concatenate(rows), np.concatenate(cols))),
                                   shape=(unknown.size, unknown.size))
        solution = splu(matrix, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(rhs)
        flat[:, unknown] = np.asarray(solution).reshape(unknown.size, -1).T
        return flat.reshape(image.shape)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        if mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
            raise ValueError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} disagree.")
        images = x.detach().cpu().double().numpy()
        removed = mask[:, 0].cpu().numpy().astype(bool)
        filled = np.stack([self.impute(image, region) for image, region in zip(images, removed)])
        imputed = torch.from_numpy(filled) + self.noise_std * _standard_noise(x, seeds)
        return replace_pixels(x, mask, imputed.to(x))


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows the true classes, columns the predicted ones."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} labels against {y_pred.size} predictions.")
    outside = [v for v in np.concatenate([y_true, y_pred]).tolist() if not 0 <= v < num_classes]
    if outside:
        raise ValueError(f"class {outside[0]} outside 0..{num_classes - 1}.")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(confusion) -> Dict[str, float]:
    """Precision, recall and F1 from a ``(C, C)`` confusion matrix (rows true, columns predicted): of the positive
    class (label 1) when C = 2, macro-averaged over all C classes otherwise; an undefined ratio (no such prediction
    or label) counts 0, as scikit-learn's ``zero_division=0``. A stack ``(..., C, C)`` (e.g. bootstrap resamples,
    weighted counts) gives arrays ``(...)`` instead of floats.

    Counts, unlike lists of predictions, add up over batches and processes (an all-reduce under DDP)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    predicted, actual = confusion.sum(-2), confusion.sum(-1)

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    per_class = {"precision": ratio(tp, predicted), "recall": ratio(tp, actual),
                 "f1": ratio(2 * tp, predicted + actual)}
    scores = {name: values[..., 1] if confusion.shape[-1] == 2 else values.mean(-1)
              for name, values in per_class.items()}
    return {name: float(v) for name, v in scores.items()} if confusion.ndim == 2 else scores


def f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """F1 of the positive class (label 1) for a binary task, macro-averaged F1 for more classes."""
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))["f1"]


def eval_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 64
                ) -> torch.Tensor:
    """Logits ``(B, C)`` of ``model`` on ``x``, in batches, in eval mode without autograd (modes restored)."""
    with borrowed(model, grad=False):
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


PERTURBED_SETS = ("high", "low", "random")
Fill = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def perturbation_mask_sets(high_map: torch.Tensor, low_map: Optional[torch.Tensor], alphas: Sequence[float],
                           seeds: torch.Tensor, sets: Sequence[str] = PERTURBED_SETS) -> Dict:
    """``{(alpha, set): (B, 1, *spatial) mask}``: ``high`` the top-k of ``high_map``, ``low`` the bottom-k of
    ``low_map`` (``high_map`` when None), ``random`` k uniformly drawn pixels (:func:`perturbation_masks`,
    :func:`random_pixel_mask`; the random pixels of the i-th alpha are drawn from seed + 1 + i)."""
    low_map = high_map if low_map is None else low_map
    masks = {}
    for i, alpha in enumerate(alphas):
        high, low = perturbation_masks(high_map, low_map, alpha, seeds)
        drawn = {"high": high, "low": low}
        if "random" in sets:
            drawn["random"] = random_pixel_mask(high_map, alpha, seeds + 1 + i)
        masks.update({(alpha, name): drawn[name] for name in sets})
    return masks


def perturbed_probabilities(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, masks: Mapping,
                            fill: Fill, seeds: torch.Tensor) -> Dict:
    """``{key: (B, C) softmax probabilities}`` of ``model`` on ``fill(x, mask, seeds)`` for every mask of ``masks``."""
    return {key: torch.softmax(eval_logits(model, fill(x, mask, seeds)).double(), 1) for key, mask in masks.items()}


def perturbed_predictions(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, high_map: torch.Tensor,
                          low_map: Optional[torch.Tensor] = None, alphas: Sequence[float] = PERTURBATION_ALPHAS,
                          noise_mean: float = 0.0, noise_std: float = 1.0, seed: Seeds = 0,
                          clean: Optional[torch.Tensor] = None, fill: Optional[Fill] = None) -> Dict[str, torch.Tensor]:
    """One batch of the contrastive pixel-perturbation study (eq. 23-26): predictions on the clean images and on
    each perturbed set, ``{"clean": (B,), (alpha, "high" | "low" | "random"): (B,)}``.

    The k highest pixels of ``high_map`` and the k lowest of ``low_map`` (``high_map`` itself when None; ties in
    a random order) are replaced by ``fill`` (default :class:`GaussianFill` N(noise_mean, noise_std^2): the same
    value at a given pixel for every set); ``random`` replaces k uniformly drawn pixels (the control). Every draw
    for an image comes from its seed: ``seed`` is ``(B,)`` per-image seeds or an integer hashed with each image
    (:func:`scripts.seeding.image_seeds`), so results do not depend on the batch. ``clean``: the clean predictions
    ``(B,)`` when the caller has them already (one forward pass fewer).
    """
    seeds = per_image_seeds(x, seed)
    fill = GaussianFill(noise_mean, noise_std) if fill is None else fill
    masks = perturbation_mask_sets(high_map, low_map, alphas, seeds)
    predictions: Dict = {"clean": eval_logits(model, x).argmax(1) if clean is None else clean}
    probabilities = perturbed_probabilities(model, x, masks, fill, seeds)
    predictions.update({key: probs.argmax(1) for key, probs in probabilities.items()})
    return predictions


def f1_scores(y: Sequence[int], predicted: Sequence[int], num_classes: int, weights: Optional[np.ndarray] = None):
    """F1 (:func:`scores_from_confusion`) of ``predicted`` against ``y``; with ``weights`` ``(R, N)`` (each image's
    count in R bootstrap resamples) an array ``(R,)``, one F1 per resample."""
    if weights is None:
        return f1(y, predicted, num_classes)
    y, predicted = np.asarray(y, dtype=np.int64).ravel(), np.asarray(predicted, dtype=np.int64).ravel()
    confusion_matrix(y, predicted, num_classes)  # checks the classes
    # (R, N) @ (N, C^2): the weighted confusion matrix of every resample at once
    counts = weights @ np.eye(num_classes**2)[y * num_classes + predicted]
    return scores_from_confusion(counts.reshape(-1, num_classes, num_classes))["f1"]


def perturbation_scores(y: torch.Tensor, predictions: Dict, num_classes: int,
                        weights: Optional[np.ndarray] = None) -> Dict[float, Dict[str, float]]:
    """F1 scores of the perturbed sets over a whole evaluation set (see :func:`contrastive_perturbation`).
    ``weights`` ``(R, N)``: each image's count in R resamples (a bootstrap); every score is then an array ``(R,)``."""
    y_list = y.tolist()

    def f1_of(predicted: torch.Tensor):
        return f1_scores(y_list, predicted.tolist(), num_classes, weights)

    f1_clean = f1_of(predictions["clean"])
    results: Dict[float, Dict[str, float]] = {}
    for alpha in sorted({key[0] for key in predictions if key != "clean"}):
        scores = {name: f1_of(predictions[(alpha, name)]) for name in PERTURBED_SETS}
        results[alpha] = {"f1_clean": f1_clean, "f1_high": scores["high"], "f1_low": scores["low"],
                          "f1_random": scores["random"], "ratio": _ratio(scores["low"], scores["high"]),
                          "drop_high": f1_clean - scores["high"], "drop_low": f1_clean - scores["low"],
                          "drop_random": f1_clean - scores["random"]}
    return results


def curve_auc(alphas: Sequence[float], values) -> np.ndarray:
    """Area under a curve over ``alphas`` (trapezoids) divided by the alpha span: the curve's mean height, in the
    units of ``values`` (``(..., A)``: a curve per row, e.g. per bootstrap resample)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or len(alphas) < 2 or np.any(np.diff(alphas) <= 0):
        raise ValueError(f"alphas must increase, two or more of them; got {alphas.tolist()}.")
    values = np.asarray(values, dtype=np.float64)
    return np.trapezoid(values, alphas, axis=-1) / (alphas[-1] - alphas[0])


def _ratio(low, high):
    """F1_low / F1_high; ``inf`` when only F1_high is 0, NaN when both are (a model that never finds class 1).
    Floats, or arrays of resamples."""
    if np.ndim(high):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(high > 0, low / np.where(high > 0, high, 1.0), np.where(low > 0, np.inf, np.nan))
    if high > 0:
        return low / high
    return math.inf if low > 0 else math.nan


def contrastive_perturbation(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                             high_map: torch.Tensor, low_map: Optional[torch.Tensor] = None,
                             alphas: Sequence[float] = PERTURBATION_ALPHAS, noise_mean: float = 0.0,
                             noise_std: float = 1.0, seed: Seeds = 0, num_classes: Optional[int] = None,
                             fill: Optional[Fill] = None) -> Dict[float, Dict[str, float]]:
    """The contrastive pixel-perturbation study of Sec. IV-E on a set of images held in memory.

    Returns:
        ``{alpha: {"f1_clean", "f1_high", "f1_low", "f1_random", "ratio", "drop_high", "drop_low",
        "drop_random"}}``. ``ratio = f1_low / f1_high`` (the paper's figure of merit; ``inf`` when only f1_high is
        0, NaN when both are);
        the drops are ``f1_clean - f1_*``, so a large ratio with no drop at all is visible for what it is.
        F1 is of the positive class for C = 2, macro-averaged for more classes.
    """
    num_classes = num_classes or int(eval_logits(model, x[:1]).shape[1])
    predictions = perturbed_predictions(model, x, high_map, low_map, alphas, noise_mean, noise_std, seed, fill=fill)
    return perturbation_scores(y, predictions, num_classes)


def fgsm(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
         epsilon: float) -> torch.Tensor:
    """eq. 27: ``x + epsilon * sign(grad_x CE(f(x), y))``, in eval mode (mode restored), under any grad mode."""
    with borrowed(model):
        x_leaf = x.detach().requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_leaf), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_leaf)
    return (x.detach() + epsilon * grad.sign()).detach()


def random_sign(x: torch.Tensor, epsilon: float, seeds: torch.Tensor) -> torch.Tensor:
    """``x + epsilon * s`` with ``s`` a random sign per pixel and channel, drawn per image from ``seeds`` ``(B,)``:
    a perturbation as large as FGSM's (eq. 27) in every entry, in no particular direction (its control)."""
    signs = torch.stack([torch.randint(0, 2, x.shape[1:], generator=g) for g in _generators(seeds, RANDOM_SIGN_OFFSET)])
    return (x.detach() + epsilon * (2 * signs.to(x) - 1)).detach()


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


def annotation_agreement(maps: torch.Tensor, masks: torch.Tensor) -> Dict[str, torch.Tensor]:
    """How well each map agrees with a region known or marked to matter (a reader's annotation, a known signal).

    Args:
        maps: ``(B, 1, *spatial)`` magnitudes.
        masks: ``(B, 1, *spatial)`` boolean regions, each with at least one pixel in and one out.

    Returns:
        ``(B,)`` float64 each: ``energy_fraction`` (share of the map's total inside the region), ``area_fraction``
        (the region's share of the image: what a map spread evenly would score), ``pointing_hit`` (1.0 when the
        map's maximum lies inside; with several maximal pixels, the share of them inside, the expected hit of a
        random pick) and ``auroc`` (the chance that a pixel inside outranks one outside, ties counting one half:
        the Mann-Whitney statistic, NaN for a region covering the whole image).
    """
    _check_map(maps, "maps")
    if masks.shape != maps.shape:
        raise ValueError(f"masks {tuple(masks.shape)} and maps {tuple(maps.shape)} differ in shape.")
    inside = masks.flatten(1).bool()
    if not inside.any(1).all():
        raise ValueError("a mask marks no pixel.")
    magnitude = maps.abs().flatten(1).double()
    total = magnitude.sum(1)
    energy = torch.where(total > 0, (magnitude * inside).sum(1) / total.clamp_min(1e-300), 0.0)
    peaks = magnitude == magnitude.max(1, keepdim=True).values
    hit = (peaks & inside).sum(1).double() / peaks.sum(1).double()
    aurocs = []
    for values, region in zip(magnitude.cpu().numpy(), inside.cpu().numpy()):
        n_in, n_out = int(region.sum()), int((~region).sum())
        if n_out == 0:
            aurocs.append(math.nan)
            continue
        ranks = rankdata(values)  # ties share their mean rank
        aurocs.append((ranks[region].sum() - n_in * (n_in + 1) / 2) / (n_in * n_out))
    return {"energy_fraction": energy, "area_fraction": inside.double().mean(1), "pointing_hit": hit,
            "auroc": torch.tensor(aurocs, dtype=torch.float64, device=maps.device)}


def signal_localization(maps: torch.Tensor, centers: torch.Tensor, sigmas: torch.Tensor,
                        radius_in_sigmas: float = 2.0) -> Dict[str, torch.Tensor]:
    """How much of each map falls on a known signal: :func:`annotation_agreement` with the disk (ball in 3D) of
    radius ``radius_in_sigmas * sigma`` around the signal's centre as the region.

    Args:
        maps: ``(B, 1, *spatial)`` magnitudes.
        centers: ``(B, spatial_dims)`` voxel coordinates of the signal centres.
        sigmas: ``(B,)`` signal widths in voxels.
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
    return annotation_agreement(maps, inside[:, None])


def randomized_copy(model: nn.Module, seed: int = 0, layers: Optional[Sequence[str]] = None) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialized (each module's ``reset_parameters``, seeded) and
    batch-norm statistics reset: the randomized model of the model-parameter randomization test. ``layers``: only
    the modules of these names (and everything inside them), as the cascading test randomizes from the top down."""
    clone = copy.deepcopy(model)
    chosen = dict(clone.named_modules()) if layers is None else {n: clone.get_submodule(n) for n in layers}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in {id(m): m for top in chosen.values() for m in top.modules()}.values():
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return clone


def cascade_layers(model: nn.Module) -> List[str]:
    """The modules with parameters of their own, from the output back to the input (registration order reversed):
    the layers the cascading randomization test re-initializes one more at a time."""
    own = [name for name, module in model.named_modules()
           if name and next(module.parameters(recurse=False), None) is not None]
    return own[::-1]


def classification_metric(name: str, num_classes: int) -> MetricsLambda:
    """An ignite metric for an evaluator's ``{"pred": (B, C) logits, "label": (B,)}`` batch outputs: ``name`` is
    ``"precision"``, ``"recall"`` (as :func:`scores_from_confusion`) or ``"f1"`` (as :func:`f1`), over the whole epoch.

    It accumulates ignite's ``ConfusionMatrix``, whose counts are summed over processes under DDP, so sharded
    evaluation (shares of any size) scores what one process scores."""
    if name not in ("precision", "recall", "f1"):
        raise ValueError(f"name must be precision, recall or f1, got {name!r}.")
    confusion = ConfusionMatrix(num_classes, output_transform=lambda output: (output["pred"],
                                                                              output["label"].view(-1).long()))
    return MetricsLambda(lambda counts: scores_from_confusion(counts.cpu().numpy())[name], confusion)


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (ddof 1) of the finite values: Table II's mean +- std over training
    seeds, and a study's correlations over images. ``n`` counts the finite values, ``n_undefined`` the NaN ones
    (e.g. the correlation of a constant map); the std of fewer than two values is NaN (reported as n/a, not 0)."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("mean_std needs at least one value.")
    finite = array[np.isfinite(array)]
    return {"mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else math.nan,
            "n": int(finite.size), "n_undefined": int(array.size - finite.size)}
