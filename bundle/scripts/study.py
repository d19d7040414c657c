# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's comparison of maps (Sec. IV-E, IV-F) and the reviewer's controls, accumulated batch by batch.

:class:`AttributionStudy` takes batches (``update``) and returns one results dict (``compute``), so it runs inside an
ignite handler (:class:`scripts.handlers.AttributionStudyHandler`) or from plain Python. Per batch, for every map
of :data:`STUDY_MAPS` (``scripts.attribution.attribute``), with the model's predicted class as the target:

* contrastive pixel perturbation (eq. 23-26): iFIM perturbs TopK(S) against BottomK(I); every other method the
  top-k against the bottom-k of its own map; plus k random pixels; under every fill of ``noise_models`` (the paper
  names only "a fixed distribution": N(0, 1), N(0.5, 0.25^2) and ROAD's noisy linear imputation by default), the
  same fill for every method;
* deletion curves over alpha from 0 to 50 %: F1 and the true-class probability after removing the most relevant
  pixels first (MoRF: iFIM's TopK(S)) or the least relevant first (LeRF: iFIM's BottomK(I)), with their AUCs;
* detectability: recall of the clean predictions by the inserted signal's amplitude (SKS/BKS);
* FGSM (eq. 27): Pearson correlation of the map of x and of x_adv (same target), and the predictions it flipped;
* localization where a signal is known (positives carrying ``signal_center`` >= 0): energy inside the disk of
  radius ``2 sigma`` against the disk's area fraction, and the pointing game;
* model-parameter randomization (Adebayo et al. 2018): Spearman correlation of the maps of the model and of a
  randomized copy (high correlation means the map does not depend on what the model learned);
* for C = 2, the overlap of the top-k sets of S(x) and of the vanilla gradient (equal in exact arithmetic: for a
  binary softmax both are multiples of |grad(z_1 - z_0)|);
* the correlation of I(x) with the image's own magnitude |x| (x_sens is a small part of x, so I(x) is close to |x|,
  and I's stability under FGSM is the image's own);
* where the time goes: seconds per map method and per stage.

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
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch import nn

from .attribution import attribute, ifim_maps
from .metrics import (
    Fill,
    GaussianFill,
    NoisyLinearImputation,
    curve_auc,
    eval_logits,
    f1_scores,
    fgsm,
    image_seeds,
    mean_std,
    pearson_per_image,
    perturbation_mask_sets,
    perturbation_masks,
    perturbation_scores,
    perturbed_probabilities,
    randomized_copy,
    signal_localization,
    spearman_per_image,
)

__all__ = ["STUDY_MAPS", "PERTURBATION_METHODS", "AttributionStudy", "study_maps", "background_images",
           "unit_bootstrap_weights", "percentile_interval", "resampled_means", "default_noise_models"]

IFIM_MAPS = ("ifim_sensitive", "ifim_complement")
# maps compared one by one (FGSM, localization, randomization): the two iFIM parts and every baseline
STUDY_MAPS = IFIM_MAPS + ("gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam", "deepshap", "gradientshap",
                          "vanilla_gradient", "random")
# the perturbation study pairs S with I for iFIM; a single map is ranked against itself
PERTURBATION_METHODS = ("ifim",) + STUDY_MAPS[2:]
CURVE_KEYS = ("morf_f1", "lerf_f1", "morf_prob", "lerf_prob")


def default_noise_models() -> List[Fill]:
    """The fills of the perturbation study, fixed before any result was seen (issue 13): the standard normal, the
    N(0.5, 0.25^2) the configs used before, and ROAD's noisy linear imputation."""
    return [GaussianFill(0.0, 1.0), GaussianFill(0.5, 0.25), NoisyLinearImputation(0.01)]


def background_images(entries: Sequence[Mapping], transform: Callable, n: int = 16, seed: int = 0,
                      image_key: str = "image") -> Optional[torch.Tensor]:
    """A fixed background set for the SHAP maps (DeepSHAP, GradientShap): ``n`` entries drawn at random (seeded)
    from ``entries`` (the training split), through ``transform``, stacked ``(n, C_in, *spatial)`` float32; None
    when ``n`` is 0."""
    if n <= 0:
        return None
    if not entries:
        raise ValueError("no entries to draw the SHAP background from (the training split is empty).")
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
    """``[low, high]`` percentile interval of resampled statistics (NaN resamples left out; NaN when none), each end
    the nearest resample outward, so the interval is never narrower than the interpolated one."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return [math.nan, math.nan]
    tail = (1 - level) / 2 * 100
    # the order statistics just outside the interval (not interpolated): an infinite ratio stays inf, never NaN
    low = np.nanpercentile(values, tail, method="lower")
    high = np.nanpercentile(values, 100 - tail, method="higher")
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
    from the per-image ``seeds``; ``background``: the SHAP maps' baselines."""
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
        noise_models: the fills that replace perturbed pixels (``scripts.metrics.GaussianFill``,
            ``NoisyLinearImputation``; distinct ``tag`` s); default :func:`default_noise_models`.
        epsilon: FGSM step (image intensity units).
        seed: seeds the noise, the random map, GradientShap and the randomized model.
        rho: iFIM energy threshold.
        max_images: stop accumulating after this many images (None: all).
        n_examples: images kept, with every map, for the overlay figure (positives with a known signal first, then
            by the images' seeds: a random choice that does not depend on the order of the data).
        radius_in_sigmas: localization disk radius.
        background: the SHAP maps' baselines ``(N, C_in, *spatial)`` (e.g. training images); default one all-zero
            image.
        n_bootstrap: resamples of the cluster bootstrap over units behind every interval.
        curve_alphas: the deletion curves' pixel fractions besides 0 and ``alphas`` (empty: no curves).
        curve_fill: the fill of the deletion curves; default ROAD's imputation (the removal that stays closest to
            the data, as ROAD proposes for MoRF / LeRF).
        amplitude_bins: bins of the signal amplitude for the detectability curve.
    """

    def __init__(self, methods: Sequence[str] = STUDY_MAPS, alphas: Sequence[float] = (0.01, 0.02, 0.03),
                 noise_models: Optional[Sequence[Fill]] = None, epsilon: float = 0.01, seed: int = 0,
                 rho: float = 0.9, max_images: Optional[int] = None, n_examples: int = 4,
                 radius_in_sigmas: float = 2.0, background: Optional[torch.Tensor] = None, n_bootstrap: int = 1000,
                 curve_alphas: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5), curve_fill: Optional[Fill] = None,
                 amplitude_bins: Sequence[float] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35)):
        unknown = set(methods) - set(STUDY_MAPS)
        if unknown or not methods:
            raise ValueError(f"methods must be a non-empty subset of {STUDY_MAPS}; unknown: {sorted(unknown)}.")
        wanted = set(methods)
        if wanted & set(IFIM_MAPS):  # one decomposition gives both parts, and the perturbation study pairs them
            wanted |= set(IFIM_MAPS)
        self.maps = [m for m in STUDY_MAPS if m in wanted]
        self.alphas = tuple(alphas)
        self.noise_models = list(default_noise_models() if noise_models is None else noise_models)
        tags = [fill.tag for fill in self.noise_models]
        if not tags or len(set(tags)) != len(tags):
            raise ValueError(f"noise_models must be one or more fills with distinct tags, got {tags}.")
        self.curve_points = tuple(sorted(set(self.alphas) | set(curve_alphas))) if len(curve_alphas) else ()
        self.curve_fill = NoisyLinearImputation(0.01) if curve_fill is None else curve_fill
        self.amplitude_bins = tuple(amplitude_bins)
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
        self.clean_probabilities: List[torch.Tensor] = []
        # fill tag -> method -> (alpha, set) -> [(B, C) probabilities]; curves: method -> (alpha, set) -> [...]
        self.probabilities: Dict[str, Dict[str, Dict]] = {f.tag: {m: {} for m in self.perturbation_methods}
                                                          for f in self.noise_models}
        self.curves: Dict[str, Dict] = {m: {} for m in self.perturbation_methods}
        self.amplitudes: List[float] = []  # the inserted signal's amplitude per image (0: none, NaN: unknown)
        self.complement_vs_image: List[float] = []
        self.seconds: Dict[str, float] = {}
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

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def _maps(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, seeds: torch.Tensor,
              stage: str) -> Dict[str, torch.Tensor]:
        """Every map, each method timed under ``<stage>: <method>`` (both iFIM parts as ``ifim``)."""
        maps: Dict[str, torch.Tensor] = {}
        groups = ([list(IFIM_MAPS)] if IFIM_MAPS[0] in self.maps else []) + [[m] for m in self.maps
                                                                             if m not in IFIM_MAPS]
        for group in groups:
            with self._timed(f"{stage}: {'ifim' if group[0] in IFIM_MAPS else group[0]}"):
                maps.update(study_maps(model, x, target, group, seeds, self.rho, self.background))
        return maps

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, signal_center: Optional[torch.Tensor] = None,
               signal_sigma: Optional[torch.Tensor] = None, units: Optional[Sequence] = None,
               signal_amplitude: Optional[torch.Tensor] = None) -> None:
        """Add one batch: ``x (B, C_in, *spatial)``, labels ``y (B,)``; for a known signal, ``signal_center
        (B, spatial_dims)`` (-1 where absent), ``signal_sigma (B,)`` in voxels and ``signal_amplitude (B,)``;
        ``units``: the independent unit (slice, subject, patient) of each image, default each image its own."""
        if self.full:
            return
        if self.max_images is not None:
            keep = self.max_images - self.n_images
            x, y = x[:keep], y[:keep]
            signal_center = None if signal_center is None else signal_center[:keep]
            signal_sigma = None if signal_sigma is None else signal_sigma[:keep]
            units = None if units is None else list(units)[:keep]
            signal_amplitude = None if signal_amplitude is None else signal_amplitude[:keep]
        y = torch.as_tensor(y).view(-1).long().to(x.device)
        seeds = image_seeds(x, self.seed)  # (B,): every draw for an image, wherever it sits
        if units is not None and len(units) != len(x):
            raise ValueError(f"{len(units)} units for {len(x)} images.")
        self.units += [f"image {s}" for s in seeds.tolist()] if units is None else [str(u) for u in units]
        logits = eval_logits(model, x)
        self.num_classes = int(logits.shape[1])
        target = logits.argmax(1)
        self.clean_probabilities.append(torch.softmax(logits.double(), 1).cpu())
        amplitudes = (torch.full((len(x),), math.nan) if signal_amplitude is None
                      else torch.as_tensor(signal_amplitude).view(-1).double().cpu())
        self.amplitudes += amplitudes.tolist()
        maps = self._maps(model, x, target, seeds, "maps")

        for method in self.perturbation_methods:
            high, low = (maps["ifim_sensitive"], maps["ifim_complement"]) if method == "ifim" else (maps[method],) * 2
            masks = perturbation_mask_sets(high, low, self.alphas, seeds)
            for fill in self.noise_models:
                with self._timed(f"perturbation: {fill.name}"):
                    for key, probs in perturbed_probabilities(model, x, masks, fill, seeds).items():
                        self.probabilities[fill.tag][method].setdefault(key, []).append(probs.cpu())
            if self.curve_points:
                with self._timed(f"deletion curves: {self.curve_fill.name}"):
                    curve_masks = perturbation_mask_sets(high, low, self.curve_points, seeds, sets=("high", "low"))
                    for key, probs in perturbed_probabilities(model, x, curve_masks, self.curve_fill, seeds).items():
                        self.curves[method].setdefault(key, []).append(probs.cpu())
        self.labels.append(y.cpu())

        with self._timed("fgsm: attack"):
            x_adv = fgsm(model, x, y, self.epsilon)
            self.flipped.append((eval_logits(model, x_adv).argmax(1) != target).cpu())
        adv_maps = self._maps(model, x_adv, target, seeds, "fgsm maps")
        if self._random_model is None:
            self._random_model = randomized_copy(model, seed=self.seed)
        random_maps = self._maps(self._random_model, x, target, seeds, "randomized-model maps")
        with self._timed("correlations"):
            for m in self.maps:
                self.pearson[m] += pearson_per_image(maps[m], adv_maps[m]).tolist()
                self.spearman[m] += spearman_per_image(maps[m], random_maps[m]).tolist()
            if "ifim_complement" in maps:
                self.complement_vs_image += pearson_per_image(maps["ifim_complement"],
                                                              x.abs().sum(1, keepdim=True)).tolist()

        with self._timed("localization and overlap"):
            known = self._localize(maps, x, y, signal_center, signal_sigma, seeds)
        self._keep_examples(x, y, target, maps, known, signal_center, signal_sigma, seeds)
        self.n_images += len(x)
        self.n_batches += 1

    def _localize(self, maps, x, y, signal_center, signal_sigma, seeds) -> Optional[torch.Tensor]:
        """Localization of a known signal, and for C = 2 the top-k overlap of S and the gradient; returns which
        images carry a known signal (None when the batch has no signal keys)."""
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
        return known

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
            self.clean_probabilities += other.clean_probabilities
            self.amplitudes += other.amplitudes
            self.complement_vs_image += other.complement_vs_image
            for tag, per_method in other.probabilities.items():
                for method, probabilities in per_method.items():
                    for key, values in probabilities.items():
                        self.probabilities[tag][method].setdefault(key, []).extend(values)
            for method, probabilities in other.curves.items():
                for key, values in probabilities.items():
                    self.curves[method].setdefault(key, []).extend(values)
            for stage, seconds in other.seconds.items():
                self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
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

    def _curves(self, y: torch.Tensor, clean: torch.Tensor, weights: np.ndarray):
        """Deletion curves per method: F1 and mean true-class probability at alpha = 0 (clean) and every curve point,
        removing the most relevant pixels first (MoRF, the ``high`` sets) or the least relevant first (LeRF,
        ``low``); their AUCs (mean height over alpha), LeRF minus MoRF (higher: the map orders pixels by their
        effect), and 95 % intervals with the paired differences of iFIM minus every other method."""
        if not self.curve_points or not any(self.curves.values()):
            return {}, {}
        alphas = [0.0, *self.curve_points]
        clean_probs = torch.cat(self.clean_probabilities)
        index = y.view(-1, 1)
        results, intervals, resampled_deltas = {"fill": self.curve_fill.name, "alphas": alphas, "methods": {}}, {}, {}
        for method, per_key in self.curves.items():
            if not per_key:
                continue
            probs = {key: torch.cat(values) for key, values in per_key.items()}
            curve, resampled = {}, {}
            for order, name in (("morf", "high"), ("lerf", "low")):
                steps = [clean_probs] + [probs[(a, name)] for a in self.curve_points]
                predicted = [p.argmax(1).tolist() for p in steps]
                true_class = [p.gather(1, index)[:, 0].numpy() for p in steps]
                curve[f"{order}_f1"] = [f1_scores(y.tolist(), p, self.num_classes) for p in predicted]
                curve[f"{order}_prob"] = [float(v.mean()) for v in true_class]
                resampled[f"{order}_f1"] = np.stack([f1_scores(y.tolist(), p, self.num_classes, weights)
                                                     for p in predicted], -1)
                resampled[f"{order}_prob"] = np.stack([resampled_means(v, weights) for v in true_class], -1)
            auc = {key: float(curve_auc(alphas, curve[key])) for key in CURVE_KEYS}
            auc_resampled = {key: curve_auc(alphas, resampled[key]) for key in CURVE_KEYS}
            for measure in ("f1", "prob"):
                auc[f"delta_{measure}"] = auc[f"lerf_{measure}"] - auc[f"morf_{measure}"]
                auc_resampled[f"delta_{measure}"] = auc_resampled[f"lerf_{measure}"] - auc_resampled[f"morf_{measure}"]
            results["methods"][method] = {**curve, "auc": auc}
            intervals[method] = {key: percentile_interval(v) for key, v in auc_resampled.items()}
            resampled_deltas[method] = auc_resampled
        intervals["delta_ifim_minus"] = {measure: _differences({m: r[f"delta_{measure}"] for m, r in
                                                                resampled_deltas.items()}, "ifim")
                                         for measure in ("f1", "prob")}
        return results, intervals

    def _detectability(self, y: torch.Tensor, clean: torch.Tensor) -> dict:
        """Recall of the clean predictions over the positives whose signal amplitude falls in each bin, with 95 %
        unit-bootstrap intervals (an SKS/BKS detectability curve); empty without amplitudes."""
        amplitudes = np.asarray(self.amplitudes, dtype=np.float64)
        positive = (y.numpy() == 1) & np.isfinite(amplitudes) & (amplitudes > 0)
        if not positive.any() or len(self.amplitude_bins) < 2:
            return {}
        hits = (clean.numpy() == 1).astype(np.float64)
        units = np.asarray(self.units)
        bins = []
        edges = self.amplitude_bins
        for i, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
            last = i == len(edges) - 2
            inside = positive & (amplitudes >= low) & ((amplitudes <= high) if last else (amplitudes < high))
            if not inside.any():
                bins.append({"low": low, "high": high, "n": 0, "recall": math.nan, "interval": [math.nan, math.nan]})
                continue
            resampled = resampled_means(hits[inside], unit_bootstrap_weights(units[inside], self.n_bootstrap,
                                                                             self.seed))
            bins.append({"low": low, "high": high, "n": int(inside.sum()), "recall": float(hits[inside].mean()),
                         "interval": percentile_interval(resampled)})
        outside = int(positive.sum()) - sum(b["n"] for b in bins)
        return {"bins": bins, "n_positives": int(positive.sum()), "outside_bins": outside}

    def compute(self) -> dict:
        """The study's results (plain floats and dicts, JSON-ready)."""
        if not self.labels:
            raise RuntimeError("the study saw no images.")
        y = torch.cat(self.labels)
        weights = unit_bootstrap_weights(self.units, self.n_bootstrap, self.seed)
        clean = torch.cat(self.clean_probabilities).argmax(1)
        perturbation: Dict[str, dict] = {}
        perturbation_ci: Dict[str, dict] = {}
        ratio_differences: Dict[str, dict] = {}
        for fill in self.noise_models:
            perturbation[fill.tag], perturbation_ci[fill.tag], resampled_ratios = {}, {}, {}
            for method in self.perturbation_methods:
                merged = {key: torch.cat(values).argmax(1) for key, values in
                          self.probabilities[fill.tag][method].items()}
                merged["clean"] = clean
                scores = perturbation_scores(y, merged, self.num_classes)
                perturbation[fill.tag][method] = {f"{alpha:g}": values for alpha, values in scores.items()}
                resampled = perturbation_scores(y, merged, self.num_classes, weights)
                perturbation_ci[fill.tag][method] = {
                    f"{alpha:g}": {key: percentile_interval(v) for key, v in values.items()}
                    for alpha, values in resampled.items()}
                resampled_ratios[method] = {f"{alpha:g}": values["ratio"] for alpha, values in resampled.items()}
            # paired: the resample's iFIM value minus the other method's, for the paper's claims
            ratio_differences[fill.tag] = {f"{a:g}": _differences({m: r[f"{a:g}"] for m, r in
                                                                   resampled_ratios.items()}, "ifim")
                                           for a in self.alphas}
        curves, curves_ci = self._curves(y, clean, weights)
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
                          "ratio_ifim_minus": ratio_differences, "curves": curves_ci,
                          "fgsm_pearson_ifim_sensitive_minus": _differences(pearson_means, "ifim_sensitive"),
                          "localization": localization_ci},
            "noise_models": [{"tag": f.tag, "name": f.name} for f in self.noise_models], "noise_seed": self.seed,
            "rho": self.rho, "perturbation": perturbation, "curves": curves,
            "detectability": self._detectability(y, clean),
            "complement_vs_image": {**mean_std(self.complement_vs_image or [math.nan]),
                                    "interval": percentile_interval(resampled_means(self.complement_vs_image, weights))
                                    if self.complement_vs_image else [math.nan, math.nan]},
            "seconds": dict(sorted(self.seconds.items(), key=lambda item: -item[1])),
            "fgsm": {"epsilon": self.epsilon, "flip_rate": float(flipped.mean()),
                     "pearson": {m: mean_std(self.pearson[m]) for m in self.maps}},
            "localization": localization,
            "randomization": {m: mean_std(self.spearman[m]) for m in self.maps},
            "topk_overlap_ifim_sensitive_vs_gradient": {f"{a:g}": float(np.mean(v)) for a, v in
                                                        self.topk_overlap.items() if v},
        }
