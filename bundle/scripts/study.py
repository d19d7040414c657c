# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's comparison of maps (Sec. IV-E, IV-F) and the reviewer's controls, accumulated batch by batch.

:class:`AttributionStudy` takes batches (``update``) and returns typed results (``compute``: a
:class:`StudyResults`), so it runs inside an ignite handler (:class:`scripts.handlers.AttributionStudyHandler`) or
from plain Python. It computes every map of its methods (``scripts.attribution.compute_maps``) once per batch,
with the model's predicted class as the target, and hands them to the controls it was built with
(``scripts.controls``, one accumulator each; ``configs/evaluate.yaml`` lists them with their settings).

Uncertainty: the test images are not independent (the default task's images are augmented copies of a dozen
slices of one brain; OCT and CXR have several images per patient), so every interval is a cluster bootstrap over
the independent units each image comes from (``units``: slices, subjects or patients): each resample draws units
with replacement and takes all their images (``scripts.bootstrap.unit_bootstrap_weights``), and the 95 % interval
is the percentile interval of the statistic over the resamples.

Every random draw for an image (noise, random pixels, tie-breaking, the random map, GradientShap) comes from the
image's own seed (``scripts.seeding.image_seeds``), and the figure's examples are chosen by that seed too, so the
results do not depend on batch size, data order or the number of processes: studies of the shares of a dataset
:meth:`~AttributionStudy.merge` into the study of the whole (up to the float round-off of sums in another order).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.utils import convert_to_tensor
from torch import nn

from .attribution import compute_maps, select_methods
from .bootstrap import unit_bootstrap_weights
from .controls import Control, Sections, StudyBatch, StudySetup, StudyTotals
from .ifim import DEFAULT_RHO
from .metrics import PERTURBATION_ALPHAS, eval_logits
from .seeding import image_seeds

__all__ = ["AttributionStudy", "StudyResults", "background_images"]


def background_images(entries: Sequence[Mapping], transform: Callable, n: int = 16, seed: int = 0,
                      image_key: str = "image") -> Optional[torch.Tensor]:
    """A fixed background set for the SHAP maps (DeepSHAP, GradientShap): ``n`` entries drawn at random (seeded)
    from ``entries`` (the training split), through ``transform``, stacked ``(n, C_in, *spatial)`` float32; None
    when ``n`` is 0."""
    if n <= 0:
        return None
    if not entries:
        raise ValueError("no entries to draw the SHAP background from (the training split is empty): give --counts "
                         "a training count, e.g. \"[64, 16, 16]\", or set --shap_background_size 0 for one all-zero "
                         "baseline.")
    chosen = np.random.default_rng(seed).choice(len(entries), size=min(n, len(entries)), replace=False)
    images = [convert_to_tensor(transform(dict(entries[i]))[image_key], track_meta=False) for i in sorted(chosen)]
    return torch.stack(images).float()


@dataclass
class StudyResults:
    """What a study found: how many images, classes and independent units it rests on, its settings, the seconds
    per stage, and one typed :class:`scripts.controls.Section` per control. :meth:`to_dict` is ``results.json``'s
    ``study``."""

    n_images: int
    num_classes: int
    alphas: List[float]
    n_units: int
    images_per_unit: List[int]
    level: float
    resamples: int
    rho: float
    sections: Sections
    seconds: Dict[str, float] = field(default_factory=dict)
    unit_key: Optional[str] = None  # the datalist key of the units, where the caller knows it

    def metrics(self, prefix: str) -> Dict[str, float]:
        """Every section's headline numbers, for ``engine.state.metrics``."""
        return {k: v for section in self.sections for k, v in section.metrics(prefix).items()}

    def to_dict(self) -> dict:
        """Plain floats, lists and dicts (JSON-ready, up to non-finite floats)."""
        units = {"n": self.n_units, "images_per_unit": list(self.images_per_unit)}
        if self.unit_key is not None:
            units["key"] = self.unit_key
        results = {"n_images": self.n_images, "num_classes": self.num_classes, "alphas": list(self.alphas),
                   "units": units, "intervals": {"level": self.level, "resamples": self.resamples}, "rho": self.rho}
        for section in self.sections:
            results.update(section.results())
            results["intervals"].update(section.intervals())
        results["seconds"] = dict(self.seconds)
        return results


class AttributionStudy:
    """Accumulate the map comparison over batches: the maps once per batch, then every control on them.

    Args:
        controls: the controls (``scripts.controls``), each with its own settings; their order is the report's.
        methods: map methods or maps to compare (``scripts.attribution.select_methods``); default
            ``scripts.attribution.DEFAULT_STUDY_METHODS``.
        alphas: perturbed pixel fractions; default ``scripts.metrics.PERTURBATION_ALPHAS`` (the paper's).
        seed: seeds the noise, the random map, GradientShap, the randomized model and the bootstrap.
        rho: iFIM energy threshold.
        max_images: stop accumulating after this many images (None: all).
        n_examples: images kept, with every map, for the overlay figure (positives with a known signal first, then
            by the images' seeds: a random choice that does not depend on the order of the data).
        background: the SHAP maps' baselines ``(N, C_in, *spatial)`` (e.g. training images); default one all-zero
            image.
        n_bootstrap: resamples of the cluster bootstrap over units behind every interval.
    """

    def __init__(self, controls: Sequence[Control], methods: Optional[Sequence[str]] = None,
                 alphas: Optional[Sequence[float]] = None, seed: int = 0, rho: float = DEFAULT_RHO,
                 max_images: Optional[int] = None, n_examples: int = 4, background: Optional[torch.Tensor] = None,
                 n_bootstrap: int = 1000):
        self.methods = select_methods(methods)
        self.maps = [name for method in self.methods for name in method.maps]
        self.alphas = tuple(PERTURBATION_ALPHAS if alphas is None else alphas)
        self.seed, self.rho, self.max_images, self.n_examples = seed, rho, max_images, n_examples
        self.background, self.n_bootstrap = background, n_bootstrap
        self.controls: List[Control] = list(controls)
        setup = StudySetup(self.methods, self.maps, self.alphas, seed)
        for control in self.controls:
            control.setup(setup)
        self.reset()

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
              stage: str, methods: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """Every map (of ``methods``, default all), each method timed under ``<stage>: <method>``."""
        maps: Dict[str, torch.Tensor] = {}
        for method in self.methods if methods is None else [m for m in self.methods if m.name in methods]:
            with self._timed(f"{stage}: {method.name}"):
                maps.update(compute_maps([method], model, x, target, seeds, rho=self.rho, baselines=self.background))
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
                           self.num_classes, lambda other, images, stage, methods=None: self._maps(
                               other, images, target, image_seeds(images, self.seed), stage, methods),  # own draws
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

    def compute(self) -> StudyResults:
        """The study's results, one typed section per control."""
        if not self.labels:
            raise RuntimeError("the study saw no images.")
        unique_units, counts = np.unique(np.asarray(self.units), return_counts=True)
        # one unit: every resample is the same data, so an interval would only look narrow, not be one
        weights = unit_bootstrap_weights(self.units, self.n_bootstrap, self.seed) if len(unique_units) > 1 else None
        totals = StudyTotals(torch.cat(self.labels), torch.cat(self.clean_probabilities), self.units,
                             self.num_classes, weights, self.seed, self.n_bootstrap)
        sections = Sections(control.compute(totals) for control in self.controls)
        return StudyResults(self.n_images, self.num_classes, list(self.alphas), int(len(unique_units)),
                            [int(counts.min()), int(counts.max())], 0.95, self.n_bootstrap, self.rho, sections,
                            dict(sorted(self.seconds.items(), key=lambda item: -item[1])))
