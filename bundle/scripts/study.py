# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's comparison of maps (Sec. IV-E, IV-F) and the reviewer's controls, accumulated batch by batch.

:class:`AttributionStudy` takes batches (``update``) and returns one results dict (``compute``), so it runs inside an
ignite handler (:class:`scripts.handlers.AttributionStudyHandler`) or from plain Python. Per batch, for every map
of :data:`STUDY_MAPS` (``scripts.attribution.attribute``), with the model's predicted class as the target:

* contrastive pixel perturbation (eq. 23-26): iFIM perturbs TopK(S) against BottomK(I); every other method the
  top-k against the bottom-k of its own map; plus k random pixels; the same noise for every method;
* FGSM (eq. 27): Pearson correlation of the map of x and of x_adv (same target), and the predictions it flipped;
* localization where a signal is known (positives carrying ``signal_center`` >= 0): energy inside the disk of
  radius ``2 sigma`` against the disk's area fraction, and the pointing game;
* model-parameter randomization (Adebayo et al. 2018): Spearman correlation of the maps of the model and of a
  randomized copy (high correlation means the map does not depend on what the model learned);
* for C = 2, the overlap of the top-k sets of S(x) and of the vanilla gradient (equal in exact arithmetic: for a
  binary softmax both are multiples of |grad(z_1 - z_0)|).

Uncertainty: the test images are not independent (the default task's images are augmented copies of a dozen
slices of one brain; OCT and CXR have several images per patient), so every interval is a cluster bootstrap over
the independent units each image comes from (``units``: slices, subjects or patients): each resample draws units
with replacement and takes all their images (:func:`unit_bootstrap_weights`), and the 95 % interval is the
percentile interval of the statistic over the resamples.

Every random draw for an image (noise, random pixels, tie-breaking, the random map, GradientShap) comes from the
image's own seed (``scripts.metrics.image_seeds``), and the figure's examples are chosen by that seed too, so the
results do not depend on batch size, data order or the number of processes: studies of the shares of a dataset
:meth:`~AttributionStudy.merge` into the study of the whole (up to the float round-off of sums in another order).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch import nn

from .attribution import attribute, ifim_maps
from .metrics import (
    eval_logits,
    fgsm,
    image_seeds,
    mean_std,
    pearson_per_image,
    perturbation_masks,
    perturbation_scores,
    perturbed_predictions,
    randomized_copy,
    signal_localization,
    spearman_per_image,
)

__all__ = ["STUDY_MAPS", "PERTURBATION_METHODS", "AttributionStudy", "study_maps", "background_images",
           "unit_bootstrap_weights", "percentile_interval", "resampled_means"]

IFIM_MAPS = ("ifim_sensitive", "ifim_complement")
# maps compared one by one (FGSM, localization, randomization): the two iFIM parts and every baseline
STUDY_MAPS = IFIM_MAPS + ("gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam", "deepshap", "vanilla_gradient",
                          "random")
# the perturbation study pairs S with I for iFIM; a single map is ranked against itself
PERTURBATION_METHODS = ("ifim",) + STUDY_MAPS[2:]


def background_images(entries: Sequence[Mapping], transform: Callable, n: int = 16, seed: int = 0,
                      image_key: str = "image") -> Optional[torch.Tensor]:
    """A fixed background set for GradientShap: ``n`` entries drawn at random (seeded) from ``entries`` (the
    training split), through ``transform``, stacked ``(n, C_in, *spatial)`` float32; None when ``n`` is 0."""
    if n <= 0:
        return None
    if not entries:
        raise ValueError("no entries to draw the GradientShap background from (the training split is empty).")
    chosen = np.random.default_rng(seed).choice(len(entries), size=min(n, len(entries)), replace=False)
    images = [convert_to_tensor(transform(dict(entries[i]))[image_key], track_meta=False) for i in sorted(chosen)]
    return torch.stack(images).float()


def unit_bootstrap_weights(units: Sequence, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``(n_resamples, N)`` image weights of a cluster bootstrap: each resample draws as many units as there are
    (with replacement) and counts each image as often as its unit was drawn."""
    unique, inverse = np.unique(np.asarray([str(u) for u in units]), return_inverse=True)
    draws = np.random.default_rng(seed).multinomial(len(unique), np.full(len(unique), 1 / len(unique)),
                                                    size=n_resamples)
    return draws[:, inverse].astype(np.float64)


def percentile_interval(values, level: float = 0.95) -> List[float]:
    """``[low, high]`` percentile interval of resampled statistics (NaN resamples left out; NaN when none)."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).any() and not np.isinf(values).any():
        return [math.nan, math.nan]
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def resampled_means(values: Sequence[float], weights: np.ndarray) -> np.ndarray:
    """``(R,)`` means of per-image ``values`` (NaN ones left out) under each resample's ``weights``."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    totals = weights[:, finite].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, weights[:, finite] @ array[finite] / totals, np.nan)


def _differences(resampled: Dict[str, np.ndarray], ours: str) -> Dict[str, List[float]]:
    """Interval of ``ours`` minus every other method, resample by resample (the paired comparison)."""
    if ours not in resampled:
        return {}
    with np.errstate(invalid="ignore"):
        return {m: percentile_interval(resampled[ours] - v) for m, v in resampled.items() if m != ours}


def study_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: Sequence[str],
               seeds: torch.Tensor, rho: float = 0.9, background: Optional[torch.Tensor] = None
               ) -> Dict[str, torch.Tensor]:
    """Every map of ``methods`` (``scripts.attribution.attribute``), ``(B, 1, *spatial)`` each, detached, explaining
    ``target`` (``(B,)``); both iFIM parts come from one decomposition whenever either is named; seeded maps draw
    from the per-image ``seeds``; ``background``: GradientShap's baselines."""
    maps: Dict[str, torch.Tensor] = {}
    if set(IFIM_MAPS) & set(methods):
        maps.update(zip(IFIM_MAPS, (part.detach() for part in ifim_maps(model, x, rho=rho))))
    for m in methods:
        if m not in maps:
            maps[m] = attribute(m, model, x, target, rho=rho, seed=seeds, baselines=background).detach()
    return maps


class AttributionStudy:
    """Accumulate the map comparison over batches.

    Args:
        methods: maps to compare, from :data:`STUDY_MAPS` (both iFIM parts are computed whenever either is named).
        alphas: perturbed pixel fractions (paper: 1, 2, 3 %).
        noise_mean, noise_std: the fixed Gaussian the perturbed pixels are drawn from.
        epsilon: FGSM step (image intensity units).
        seed: seeds the noise, the random map, GradientShap and the randomized model.
        rho: iFIM energy threshold.
        max_images: stop accumulating after this many images (None: all).
        n_examples: images kept, with every map, for the overlay figure (positives with a known signal first, then
            by the images' seeds: a random choice that does not depend on the order of the data).
        radius_in_sigmas: localization disk radius.
        background: GradientShap's baselines ``(N, C_in, *spatial)`` (e.g. training images); default one all-zero
            image.
        n_bootstrap: resamples of the cluster bootstrap over units behind every interval.
    """

    def __init__(self, methods: Sequence[str] = STUDY_MAPS, alphas: Sequence[float] = (0.01, 0.02, 0.03),
                 noise_mean: float = 0.0, noise_std: float = 1.0, epsilon: float = 0.01, seed: int = 0,
                 rho: float = 0.9, max_images: Optional[int] = None, n_examples: int = 4,
                 radius_in_sigmas: float = 2.0, background: Optional[torch.Tensor] = None, n_bootstrap: int = 1000):
        unknown = set(methods) - set(STUDY_MAPS)
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty subset of {STUDY_MAPS}; unknown: {sorted(unknown)}.")
        wanted = set(methods)
        if wanted & set(IFIM_MAPS):  # one decomposition gives both parts, and the perturbation study pairs them
            wanted |= set(IFIM_MAPS)
        self.maps = [m for m in STUDY_MAPS if m in wanted]
        self.alphas, self.noise_mean, self.noise_std = tuple(alphas), noise_mean, noise_std
        self.epsilon, self.seed, self.rho = epsilon, seed, rho
        self.max_images, self.n_examples, self.radius = max_images, n_examples, radius_in_sigmas
        self.background, self.n_bootstrap = background, n_bootstrap
        self.reset()

    @property
    def perturbation_methods(self) -> List[str]:
        return [m for m in PERTURBATION_METHODS if m in self.maps or (m == "ifim" and IFIM_MAPS[0] in self.maps)]

    def reset(self) -> None:
        self.n_images, self.n_batches, self.num_classes = 0, 0, 0
        self.labels: List[torch.Tensor] = []
        self.units: List[str] = []
        self.predictions: Dict[str, Dict] = {m: {} for m in self.perturbation_methods}
        self.flipped: List[torch.Tensor] = []
        self.pearson: Dict[str, List[float]] = {m: [] for m in self.maps}
        self.spearman: Dict[str, List[float]] = {m: [] for m in self.maps}
        self.localization: Dict[str, Dict[str, List[float]]] = {m: {} for m in self.maps}
        self.localization_units: List[str] = []  # the unit of each image in the localization lists
        self.topk_overlap: Dict[float, List[float]] = {a: [] for a in self.alphas}
        self.examples: List[dict] = []
        self._random_model: Optional[nn.Module] = None

    @property
    def full(self) -> bool:
        return self.max_images is not None and self.n_images >= self.max_images

    def __getstate__(self) -> dict:
        """What a study sends to another process (``merge`` after a gather): its accumulators, not the model copy."""
        return {**self.__dict__, "_random_model": None}

    def _maps(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
              seeds: torch.Tensor) -> Dict[str, torch.Tensor]:
        return study_maps(model, x, target, self.maps, seeds, self.rho, self.background)

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, signal_center: Optional[torch.Tensor] = None,
               signal_sigma: Optional[torch.Tensor] = None, units: Optional[Sequence] = None) -> None:
        """Add one batch: ``x (B, C_in, *spatial)``, labels ``y (B,)``; for a known signal, ``signal_center
        (B, spatial_dims)`` (-1 where absent) and ``signal_sigma (B,)`` in voxels; ``units``: the independent unit
        (slice, subject, patient) of each image, default each image its own."""
        if self.full:
            return
        if self.max_images is not None:
            keep = self.max_images - self.n_images
            x, y = x[:keep], y[:keep]
            signal_center = None if signal_center is None else signal_center[:keep]
            signal_sigma = None if signal_sigma is None else signal_sigma[:keep]
            units = None if units is None else list(units)[:keep]
        y = torch.as_tensor(y).view(-1).long().to(x.device)
        seeds = image_seeds(x, self.seed)  # (B,): every draw for an image, wherever it sits
        if units is not None and len(units) != len(x):
            raise ValueError(f"{len(units)} units for {len(x)} images.")
        self.units += [f"image {s}" for s in seeds.tolist()] if units is None else [str(u) for u in units]
        logits = eval_logits(model, x)
        self.num_classes = int(logits.shape[1])
        target = logits.argmax(1)
        maps = self._maps(model, x, target, seeds)

        for method in self.perturbation_methods:
            high, low = (maps["ifim_sensitive"], maps["ifim_complement"]) if method == "ifim" else (maps[method],) * 2
            batch = perturbed_predictions(model, x, high, low, self.alphas, self.noise_mean, self.noise_std, seeds,
                                          clean=target)
            for key, value in batch.items():
                self.predictions[method].setdefault(key, []).append(value.cpu())
        self.labels.append(y.cpu())

        x_adv = fgsm(model, x, y, self.epsilon)
        self.flipped.append((eval_logits(model, x_adv).argmax(1) != target).cpu())
        adv_maps = self._maps(model, x_adv, target, seeds)
        if self._random_model is None:
            self._random_model = randomized_copy(model, seed=self.seed)
        random_maps = self._maps(self._random_model, x, target, seeds)
        for m in self.maps:
            self.pearson[m] += pearson_per_image(maps[m], adv_maps[m]).tolist()
            self.spearman[m] += spearman_per_image(maps[m], random_maps[m]).tolist()

        known = None
        if signal_center is not None and signal_sigma is not None:
            centers = torch.as_tensor(signal_center).to(x.device).view(len(x), -1).double()
            known = (y == 1) & (centers >= 0).all(1)
            if known.any():
                sigmas = torch.as_tensor(signal_sigma).to(x.device).view(-1).double()[known]
                first = len(self.units) - len(x)  # this batch's units were appended above
                self.localization_units += [self.units[first + i] for i in known.nonzero()[:, 0].tolist()]
                for m in self.maps:
                    for key, values in signal_localization(maps[m][known], centers[known], sigmas,
                                                           self.radius).items():
                        self.localization[m].setdefault(key, []).extend(values.tolist())

        if self.num_classes == 2 and {"ifim_sensitive", "vanilla_gradient"} <= set(self.maps):
            for alpha in self.alphas:
                top_s, _ = perturbation_masks(maps["ifim_sensitive"], maps["ifim_sensitive"], alpha, seeds)
                top_g, _ = perturbation_masks(maps["vanilla_gradient"], maps["vanilla_gradient"], alpha, seeds)
                overlap = (top_s & top_g).flatten(1).sum(1).double() / top_s.flatten(1).sum(1).double()
                self.topk_overlap[alpha] += overlap.tolist()

        self._keep_examples(x, y, target, maps, known, signal_center, signal_sigma, seeds)
        self.n_images += len(x)
        self.n_batches += 1

    def _keep_examples(self, x, y, target, maps, known, centers, sigmas, seeds) -> None:
        """Keep the ``n_examples`` images first by (no known signal, seed): positives with a known signal first,
        their box shows where a map should point; the seed makes the choice independent of the data's order."""
        for i in range(len(x)):
            has_signal = known is not None and bool(known[i])
            self.examples.append({"image": x[i].detach().cpu().numpy(), "label": int(y[i]), "predicted": int(target[i]),
                                  "maps": {m: maps[m][i, 0].cpu().numpy() for m in self.maps},
                                  "signal": (centers[i].tolist(), float(sigmas[i])) if has_signal else None,
                                  "order": (not has_signal, int(seeds[i]))})
        self._trim_examples()

    def _trim_examples(self) -> None:
        self.examples = sorted(self.examples, key=lambda e: e["order"])[:self.n_examples]

    def merge(self, others: Sequence["AttributionStudy"]) -> None:
        """Add the accumulations of studies of other shares of the data (e.g. gathered from other processes), so
        this study computes the results of all of them: the results one study of the whole data gives."""
        for other in others:
            self.n_images += other.n_images
            self.n_batches += other.n_batches
            self.num_classes = max(self.num_classes, other.num_classes)
            self.labels += other.labels
            self.units += other.units
            self.flipped += other.flipped
            for method, predictions in other.predictions.items():
                for key, values in predictions.items():
                    self.predictions[method].setdefault(key, []).extend(values)
            for m in self.maps:
                self.pearson[m] += other.pearson[m]
                self.spearman[m] += other.spearman[m]
                for key, values in other.localization[m].items():
                    self.localization[m].setdefault(key, []).extend(values)
            self.localization_units += other.localization_units
            for alpha in self.alphas:
                self.topk_overlap[alpha] += other.topk_overlap[alpha]
            self.examples += other.examples
        self._trim_examples()

    def compute(self) -> dict:
        """The study's results (plain floats and dicts, JSON-ready)."""
        if not self.labels:
            raise RuntimeError("the study saw no images.")
        y = torch.cat(self.labels)
        weights = unit_bootstrap_weights(self.units, self.n_bootstrap, self.seed)
        perturbation, perturbation_ci, resampled_ratios = {}, {}, {}
        for method in self.perturbation_methods:
            merged = {key: torch.cat(values) for key, values in self.predictions[method].items()}
            scores = perturbation_scores(y, merged, self.num_classes)
            perturbation[method] = {f"{alpha:g}": values for alpha, values in scores.items()}
            resampled = perturbation_scores(y, merged, self.num_classes, weights)
            perturbation_ci[method] = {f"{alpha:g}": {key: percentile_interval(v) for key, v in values.items()}
                                       for alpha, values in resampled.items()}
            resampled_ratios[method] = {f"{alpha:g}": values["ratio"] for alpha, values in resampled.items()}
        pearson_means = {m: resampled_means(self.pearson[m], weights) for m in self.maps}
        flipped = torch.cat(self.flipped).double().numpy()
        localization = {m: {key: float(np.mean(values)) for key, values in self.localization[m].items()}
                        for m in self.maps if self.localization[m]}
        for m in localization:
            localization[m]["n"] = len(self.localization[m]["pointing_hit"])
        localization_ci: Dict[str, Dict[str, List[float]]] = {}
        if self.localization_units:
            known_weights = unit_bootstrap_weights(self.localization_units, self.n_bootstrap, self.seed)
            localization_ci = {m: {key: percentile_interval(resampled_means(values, known_weights))
                                   for key, values in self.localization[m].items()} for m in localization}
        unique_units, counts = np.unique(np.asarray(self.units), return_counts=True)
        return {
            "n_images": self.n_images, "num_classes": self.num_classes, "alphas": list(self.alphas),
            "units": {"n": int(len(unique_units)), "images_per_unit": [int(counts.min()), int(counts.max())]},
            "intervals": {"level": 0.95, "resamples": self.n_bootstrap, "perturbation": perturbation_ci,
                          "fgsm_flip_rate": percentile_interval(resampled_means(flipped, weights)),
                          "fgsm_pearson": {m: percentile_interval(v) for m, v in pearson_means.items()},
                          "randomization": {m: percentile_interval(resampled_means(self.spearman[m], weights))
                                            for m in self.maps},
                          # paired: the resample's iFIM value minus the other method's, for the paper's claims
                          "ratio_ifim_minus": {f"{a:g}": _differences({m: r[f"{a:g}"] for m, r in
                                                                       resampled_ratios.items()}, "ifim")
                                               for a in self.alphas},
                          "fgsm_pearson_ifim_sensitive_minus": _differences(pearson_means, "ifim_sensitive"),
                          "localization": localization_ci},
            "noise": {"mean": self.noise_mean, "std": self.noise_std, "seed": self.seed}, "rho": self.rho,
            "perturbation": perturbation,
            "fgsm": {"epsilon": self.epsilon, "flip_rate": float(flipped.mean()),
                     "pearson": {m: mean_std(self.pearson[m]) for m in self.maps}},
            "localization": localization,
            "randomization": {m: mean_std(self.spearman[m]) for m in self.maps},
            "topk_overlap_ifim_sensitive_vs_gradient": {f"{a:g}": float(np.mean(v)) for a, v in
                                                        self.topk_overlap.items() if v},
        }
