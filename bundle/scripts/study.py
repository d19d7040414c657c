# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's comparison of maps (Sec. IV-E, IV-F) and the reviewer's controls, accumulated batch by batch.

:class:`AttributionStudy` takes batches (``update``) and returns one results dict (``compute``), so it runs inside an
ignite handler (:class:`scripts.handlers.AttributionStudyHandler`) or from plain Python. It computes every map of
:data:`STUDY_MAPS` (``scripts.attribution.attribute``) once per batch, with the model's predicted class as the
target, and hands them to its controls (``scripts.controls``, one accumulator each):

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

import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch import nn

from .attribution import attribute
from .controls import (
    ComplementVsImage,
    ContrastivePerturbation,
    Control,
    DeletionCurves,
    Detectability,
    FGSMStability,
    ModelRandomization,
    SignalLocalization,
    StudyBatch,
    StudyTotals,
    TopKOverlap,
    unit_bootstrap_weights,
)
from .ifim import ifim_decompose
from .metrics import Fill, GaussianFill, NoisyLinearImputation, eval_logits, image_seeds

__all__ = ["STUDY_MAPS", "PERTURBATION_METHODS", "AttributionStudy", "study_maps", "background_images",
           "default_noise_models"]

IFIM_MAPS = ("ifim_sensitive", "ifim_complement")
# maps compared one by one (FGSM, localization, randomization): the two iFIM parts and every baseline
STUDY_MAPS = IFIM_MAPS + ("gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam", "deepshap", "gradientshap",
                          "vanilla_gradient", "random")
# the perturbation study pairs S with I for iFIM; a single map is ranked against itself
PERTURBATION_METHODS = ("ifim",) + STUDY_MAPS[2:]


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


def study_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: Sequence[str],
               seeds: torch.Tensor, rho: float = 0.9, background: Optional[torch.Tensor] = None
               ) -> Dict[str, torch.Tensor]:
    """Every map of ``methods`` (``scripts.attribution.attribute``), ``(B, 1, *spatial)`` each, detached, explaining
    ``target`` (``(B,)``); both iFIM parts come from one decomposition whenever either is named; seeded maps draw
    from the per-image ``seeds``; ``background``: the SHAP maps' baselines."""
    maps: Dict[str, torch.Tensor] = {}
    if set(IFIM_MAPS) & set(methods):
        maps.update(zip(IFIM_MAPS, (part.detach() for part in ifim_decompose(model, x, rho=rho).maps())))
    for m in methods:
        if m not in maps:
            maps[m] = attribute(m, model, x, target, rho=rho, seed=seeds, baselines=background).detach()
    return maps


class AttributionStudy:
    """Accumulate the map comparison over batches: the maps once per batch, then every control of
    ``scripts.controls`` on them.

    Args:
        methods: maps to compare, from :data:`STUDY_MAPS` (both iFIM parts are computed whenever either is named).
        alphas: perturbed pixel fractions (paper: 1, 2, 3 %).
        noise_models: the fills that replace perturbed pixels (``scripts.metrics.GaussianFill``,
            ``NoisyLinearImputation``; distinct ``tag`` s); default :func:`default_noise_models`.
        epsilon: FGSM step (image intensity units).
        seed: seeds the noise, the random map, GradientShap, the randomized model and the bootstrap.
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
        self.seed, self.rho, self.max_images, self.n_examples = seed, rho, max_images, n_examples
        self.background, self.n_bootstrap = background, n_bootstrap
        perturbed = self.perturbation_methods
        self.controls: List[Control] = [ContrastivePerturbation(perturbed, self.alphas, self.noise_models)]
        if len(curve_alphas):
            self.controls.append(DeletionCurves(perturbed, sorted(set(self.alphas) | set(curve_alphas)),
                                                NoisyLinearImputation(0.01) if curve_fill is None else curve_fill))
        self.controls += [FGSMStability(self.maps, epsilon), ModelRandomization(self.maps, seed),
                          SignalLocalization(self.maps, radius_in_sigmas), TopKOverlap(self.alphas),
                          ComplementVsImage(), Detectability(amplitude_bins)]
        self.reset()

    @property
    def perturbation_methods(self) -> List[str]:
        return [m for m in PERTURBATION_METHODS if m in self.maps or (m == "ifim" and IFIM_MAPS[0] in self.maps)]

    def reset(self) -> None:
        self.n_images, self.n_batches, self.num_classes = 0, 0, 0
        self.labels: List[torch.Tensor] = []
        self.units: List[str] = []
        self.clean_probabilities: List[torch.Tensor] = []
        self.seconds: Dict[str, float] = {}
        self.examples: List[dict] = []
        for control in self.controls:
            control.reset()

    @property
    def full(self) -> bool:
        return self.max_images is not None and self.n_images >= self.max_images

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
        units = [f"image {s}" for s in seeds.tolist()] if units is None else [str(u) for u in units]
        logits = eval_logits(model, x)
        self.num_classes = int(logits.shape[1])
        target = logits.argmax(1)
        batch = StudyBatch(model, x, y, target, seeds, units, self._maps(model, x, target, seeds, "maps"),
                           self.num_classes, lambda other, images, stage: self._maps(other, images, target, seeds,
                                                                                     stage),
                           self._timed, signal_center, signal_sigma, signal_amplitude)
        for control in self.controls:
            control.update(batch)
        self.units += units
        self.labels.append(y.cpu())
        self.clean_probabilities.append(torch.softmax(logits.double(), 1).cpu())
        self._keep_examples(batch)
        self.n_images += len(x)
        self.n_batches += 1

    def _keep_examples(self, batch: StudyBatch) -> None:
        """Keep the ``n_examples`` images first by (no known signal, seed): positives with a known signal first,
        their box shows where a map should point; the seed makes the choice independent of the data's order."""
        known = batch.known_signals()
        for i in range(len(batch.x)):
            has_signal = known is not None and bool(known[i])
            signal = (torch.as_tensor(batch.signal_center[i]).tolist(), float(batch.signal_sigma[i])) \
                if has_signal else None
            self.examples.append({"image": batch.x[i].detach().cpu().numpy(), "label": int(batch.y[i]),
                                  "predicted": int(batch.target[i]),
                                  "maps": {m: batch.maps[m][i, 0].cpu().numpy() for m in self.maps},
                                  "signal": signal, "order": (not has_signal, int(batch.seeds[i]))})
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
            self.clean_probabilities += other.clean_probabilities
            for stage, seconds in other.seconds.items():
                self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            for mine, theirs in zip(self.controls, other.controls):
                mine.merge(theirs)
            self.examples += other.examples
        self._trim_examples()

    def compute(self) -> dict:
        """The study's results (plain floats and dicts, JSON-ready)."""
        if not self.labels:
            raise RuntimeError("the study saw no images.")
        totals = StudyTotals(torch.cat(self.labels), torch.cat(self.clean_probabilities), self.units,
                             self.num_classes, unit_bootstrap_weights(self.units, self.n_bootstrap, self.seed),
                             self.seed, self.n_bootstrap)
        unique_units, counts = np.unique(np.asarray(self.units), return_counts=True)
        results = {"n_images": self.n_images, "num_classes": self.num_classes, "alphas": list(self.alphas),
                   "units": {"n": int(len(unique_units)), "images_per_unit": [int(counts.min()), int(counts.max())]},
                   "intervals": {"level": 0.95, "resamples": self.n_bootstrap},
                   "noise_models": [{"tag": f.tag, "name": f.name} for f in self.noise_models],
                   "noise_seed": self.seed, "rho": self.rho, "curves": {}}
        for control in self.controls:
            values, intervals = control.compute(totals)
            results.update(values)
            results["intervals"].update(intervals)
        results["seconds"] = dict(sorted(self.seconds.items(), key=lambda item: -item[1]))
        return results
