# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The controls of the map comparison, one accumulator each: a new control is one new class.

Every control follows one protocol (:class:`Control`): ``update(batch)`` with a :class:`StudyBatch` (the model, the
images, their labels, predictions, seeds, units and every map), ``merge(other)`` with the same control of another
share of the data (another process; the accumulators are lists that concatenate), and ``compute(totals)`` with the
:class:`StudyTotals` every control shares (labels, clean predictions, the cluster-bootstrap weights), returning its
results and its 95 % intervals. :class:`scripts.study.AttributionStudy` composes them;
:class:`scripts.handlers.PerturbationMetricsHandler` runs :class:`ContrastivePerturbation` alone.

Controls (the paper's Sec. IV-E/F, and what a reviewer adds):

* :class:`ContrastivePerturbation`: eq. 23-26 under every fill; iFIM perturbs TopK(S) against BottomK(I), every
  other method its own top-k against its bottom-k, plus k random pixels.
* :class:`DeletionCurves`: MoRF / LeRF curves of F1 and the true-class probability, their AUCs.
* :class:`FGSMStability`: eq. 27, correlation of the maps of x and x_adv, and the predictions the attack flipped.
* :class:`ModelRandomization`: Spearman correlation of the maps of the model and of a randomized copy.
* :class:`SignalLocalization`: the maps' energy on a known signal, and the pointing game.
* :class:`TopKOverlap`: for C = 2, the overlap of the top-k sets of S(x) and of the vanilla gradient.
* :class:`ComplementVsImage`: the correlation of I(x) with |x|.
* :class:`Detectability`: recall of the clean predictions by signal amplitude.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .metrics import (
    Fill,
    curve_auc,
    eval_logits,
    f1_scores,
    fgsm,
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

__all__ = ["StudyBatch", "StudyTotals", "Control", "ContrastivePerturbation", "DeletionCurves", "FGSMStability",
           "ModelRandomization", "SignalLocalization", "TopKOverlap", "ComplementVsImage", "Detectability",
           "unit_bootstrap_weights", "percentile_interval", "resampled_means", "paired_differences", "method_maps"]

IFIM_MAPS = ("ifim_sensitive", "ifim_complement")
CURVE_KEYS = ("morf_f1", "lerf_f1", "morf_prob", "lerf_prob")
Intervals = Dict[str, object]


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


def paired_differences(resampled: Dict[str, np.ndarray], ours: str) -> Dict[str, List[float]]:
    """Interval of ``ours`` minus every other method, resample by resample (the paired comparison)."""
    if ours not in resampled:
        return {}
    with np.errstate(invalid="ignore"):
        return {m: percentile_interval(resampled[ours] - v) for m, v in resampled.items() if m != ours}


def method_maps(method: str, maps: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (ranked-high, ranked-low) maps of a perturbation method: (S, I) for ``ifim``, a map twice otherwise."""
    return (maps[IFIM_MAPS[0]], maps[IFIM_MAPS[1]]) if method == "ifim" else (maps[method],) * 2


@dataclass
class StudyBatch:
    """One batch as every control sees it. ``maps``: ``{name: (B, 1, *spatial)}`` of the clean images;
    ``maps_of(model, x, stage)``: the same maps for other images or another model (timed under ``stage``);
    ``timed(stage)``: a context that adds its wall-clock time to ``stage``."""

    model: nn.Module
    x: torch.Tensor  # (B, C_in, *spatial)
    y: torch.Tensor  # (B,) labels
    target: torch.Tensor  # (B,) clean predictions, the class every map explains
    seeds: torch.Tensor  # (B,) per-image seeds (scripts.metrics.image_seeds)
    units: List[str]  # the independent unit of each image
    maps: Dict[str, torch.Tensor]
    num_classes: int
    maps_of: Optional[Callable[[nn.Module, torch.Tensor, str], Dict[str, torch.Tensor]]] = None
    timed: Callable[[str], ContextManager] = lambda stage: nullcontext()
    signal_center: Optional[torch.Tensor] = None  # (B, spatial_dims), -1 where absent
    signal_sigma: Optional[torch.Tensor] = None  # (B,) voxels
    signal_amplitude: Optional[torch.Tensor] = None  # (B,)

    def known_signals(self) -> Optional[torch.Tensor]:
        """``(B,)`` bool: positives with a known signal centre; None without signal keys."""
        if self.signal_center is None or self.signal_sigma is None:
            return None
        centers = torch.as_tensor(self.signal_center).to(self.x.device).view(len(self.x), -1)
        return (self.y == 1) & (centers >= 0).all(1)


@dataclass
class StudyTotals:
    """What every control's ``compute`` shares: per image, in study order, the labels, clean class probabilities
    and units; the cluster-bootstrap ``weights`` ``(R, N)`` (None: no intervals)."""

    y: torch.Tensor
    clean_probabilities: torch.Tensor
    units: List[str]
    num_classes: int
    weights: Optional[np.ndarray] = None
    seed: int = 0
    n_bootstrap: int = 1000
    clean: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.clean = self.clean_probabilities.argmax(1)


def _extend(mine, theirs):
    """Concatenate accumulators: lists extend, dicts merge key by key (recursively)."""
    if isinstance(mine, list):
        mine.extend(theirs)
        return mine
    for key, value in theirs.items():
        mine[key] = _extend(mine[key], value) if key in mine else value
    return mine


class Control:
    """One control: ``reset``, ``update(batch)``, ``merge(other)``, ``compute(totals) -> (results, intervals)``.
    Subclasses name their accumulators (lists, or dicts of lists) in ``accumulators`` and set them in ``reset``;
    ``merge`` concatenates them, in the order of the shares."""

    accumulators: Tuple[str, ...] = ()

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, batch: StudyBatch) -> None:
        raise NotImplementedError

    def merge(self, other: "Control") -> None:
        for name in self.accumulators:
            setattr(self, name, _extend(getattr(self, name), getattr(other, name)))

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        raise NotImplementedError


class ContrastivePerturbation(Control):
    """eq. 23-26 per method and fill: the class probabilities after replacing each perturbed set (``(alpha, "high" |
    "low" | "random")``); F1 scores, ratios and drops against the clean predictions, with intervals and the paired
    interval of iFIM's ratio minus every other method's."""

    accumulators = ("probabilities",)

    def __init__(self, methods: Sequence[str], alphas: Sequence[float], fills: Sequence[Fill]):
        tags = [fill.tag for fill in fills]
        if not tags or len(set(tags)) != len(tags):
            raise ValueError(f"the fills must be one or more with distinct tags, got {tags}.")
        self.methods, self.alphas, self.fills = list(methods), tuple(alphas), list(fills)
        self.reset()

    def reset(self) -> None:
        # fill tag -> method -> (alpha, set) -> [(B, C) probabilities]
        self.probabilities: Dict[str, Dict[str, Dict]] = {f.tag: {m: {} for m in self.methods} for f in self.fills}

    def update(self, batch: StudyBatch) -> None:
        for method in self.methods:
            masks = perturbation_mask_sets(*method_maps(method, batch.maps), self.alphas, batch.seeds)
            for fill in self.fills:
                with batch.timed(f"perturbation: {fill.name}"):
                    for key, probs in perturbed_probabilities(batch.model, batch.x, masks, fill, batch.seeds).items():
                        self.probabilities[fill.tag][method].setdefault(key, []).append(probs.cpu())

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        scores: Dict[str, dict] = {}
        intervals: Dict[str, dict] = {}
        differences: Dict[str, dict] = {}
        for fill in self.fills:
            scores[fill.tag], intervals[fill.tag], resampled_ratios = {}, {}, {}
            for method in self.methods:
                merged = {key: torch.cat(values).argmax(1) for key, values in
                          self.probabilities[fill.tag][method].items()}
                merged["clean"] = totals.clean
                point = perturbation_scores(totals.y, merged, totals.num_classes)
                scores[fill.tag][method] = {f"{alpha:g}": values for alpha, values in point.items()}
                if totals.weights is None:
                    continue
                resampled = perturbation_scores(totals.y, merged, totals.num_classes, totals.weights)
                intervals[fill.tag][method] = {
                    f"{alpha:g}": {key: percentile_interval(v) for key, v in values.items()}
                    for alpha, values in resampled.items()}
                resampled_ratios[method] = {f"{alpha:g}": values["ratio"] for alpha, values in resampled.items()}
            # paired: the resample's iFIM value minus the other method's, for the paper's claims
            differences[fill.tag] = {f"{a:g}": paired_differences({m: r[f"{a:g}"] for m, r in
                                                                   resampled_ratios.items()}, "ifim")
                                     for a in self.alphas}
        return {"perturbation": scores}, {"perturbation": intervals, "ratio_ifim_minus": differences}


class DeletionCurves(Control):
    """Deletion curves per method: F1 and mean true-class probability at alpha = 0 (clean) and every curve point,
    removing the most relevant pixels first (MoRF, the ``high`` sets) or the least relevant first (LeRF, ``low``);
    their AUCs (mean height over alpha), LeRF minus MoRF (higher: the map orders pixels by their effect), and 95 %
    intervals with the paired differences of iFIM minus every other method."""

    accumulators = ("probabilities",)

    def __init__(self, methods: Sequence[str], points: Sequence[float], fill: Fill):
        if not len(points):
            raise ValueError("a deletion curve needs at least one pixel fraction besides 0.")
        self.methods, self.points, self.fill = list(methods), tuple(sorted(points)), fill
        self.reset()

    def reset(self) -> None:
        self.probabilities: Dict[str, Dict] = {m: {} for m in self.methods}  # method -> (alpha, set) -> [(B, C)]

    def update(self, batch: StudyBatch) -> None:
        with batch.timed(f"deletion curves: {self.fill.name}"):
            for method in self.methods:
                masks = perturbation_mask_sets(*method_maps(method, batch.maps), self.points, batch.seeds,
                                               sets=("high", "low"))
                for key, probs in perturbed_probabilities(batch.model, batch.x, masks, self.fill, batch.seeds).items():
                    self.probabilities[method].setdefault(key, []).append(probs.cpu())

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        alphas = [0.0, *self.points]
        index = totals.y.view(-1, 1)
        results: dict = {"fill": self.fill.name, "alphas": alphas, "methods": {}}
        intervals: dict = {}
        resampled_deltas = {}
        for method, per_key in self.probabilities.items():
            probs = {key: torch.cat(values) for key, values in per_key.items()}
            curve, resampled = {}, {}
            for order, name in (("morf", "high"), ("lerf", "low")):
                steps = [totals.clean_probabilities] + [probs[(a, name)] for a in self.points]
                predicted = [p.argmax(1).tolist() for p in steps]
                true_class = [p.gather(1, index)[:, 0].numpy() for p in steps]
                curve[f"{order}_f1"] = [f1_scores(totals.y.tolist(), p, totals.num_classes) for p in predicted]
                curve[f"{order}_prob"] = [float(v.mean()) for v in true_class]
                if totals.weights is not None:
                    resampled[f"{order}_f1"] = np.stack([f1_scores(totals.y.tolist(), p, totals.num_classes,
                                                                   totals.weights) for p in predicted], -1)
                    resampled[f"{order}_prob"] = np.stack([resampled_means(v, totals.weights) for v in true_class], -1)
            auc = {key: float(curve_auc(alphas, curve[key])) for key in CURVE_KEYS}
            for measure in ("f1", "prob"):
                auc[f"delta_{measure}"] = auc[f"lerf_{measure}"] - auc[f"morf_{measure}"]
            results["methods"][method] = {**curve, "auc": auc}
            if totals.weights is not None:
                auc_resampled = {key: curve_auc(alphas, resampled[key]) for key in CURVE_KEYS}
                for measure in ("f1", "prob"):
                    auc_resampled[f"delta_{measure}"] = (auc_resampled[f"lerf_{measure}"]
                                                         - auc_resampled[f"morf_{measure}"])
                intervals[method] = {key: percentile_interval(v) for key, v in auc_resampled.items()}
                resampled_deltas[method] = auc_resampled
        intervals["delta_ifim_minus"] = {measure: paired_differences({m: r[f"delta_{measure}"] for m, r in
                                                                      resampled_deltas.items()}, "ifim")
                                         for measure in ("f1", "prob")}
        return {"curves": results}, {"curves": intervals}


class FGSMStability(Control):
    """eq. 27: per map, the Pearson correlation of the maps of x and of x_adv (explaining the clean prediction),
    and whether the attack flipped the prediction; the paired interval of S minus every other map."""

    accumulators = ("flipped", "pearson")

    def __init__(self, maps: Sequence[str], epsilon: float):
        self.maps, self.epsilon = list(maps), epsilon
        self.reset()

    def reset(self) -> None:
        self.flipped: List[float] = []
        self.pearson: Dict[str, List[float]] = {m: [] for m in self.maps}

    def update(self, batch: StudyBatch) -> None:
        with batch.timed("fgsm: attack"):
            x_adv = fgsm(batch.model, batch.x, batch.y, self.epsilon)
            self.flipped += (eval_logits(batch.model, x_adv).argmax(1) != batch.target).double().tolist()
        adv_maps = batch.maps_of(batch.model, x_adv, "fgsm maps")
        with batch.timed("correlations"):
            for m in self.maps:
                self.pearson[m] += pearson_per_image(batch.maps[m], adv_maps[m]).tolist()

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        results = {"fgsm": {"epsilon": self.epsilon, "flip_rate": float(np.mean(self.flipped)),
                            "pearson": {m: mean_std(self.pearson[m]) for m in self.maps}}}
        if totals.weights is None:
            return results, {}
        means = {m: resampled_means(self.pearson[m], totals.weights) for m in self.maps}
        return results, {"fgsm_flip_rate": percentile_interval(resampled_means(self.flipped, totals.weights)),
                         "fgsm_pearson": {m: percentile_interval(v) for m, v in means.items()},
                         "fgsm_pearson_ifim_sensitive_minus": paired_differences(means, "ifim_sensitive")}


class ModelRandomization(Control):
    """Model-parameter randomization (Adebayo et al. 2018): Spearman correlation of the maps of the model and of a
    copy with every parameter re-initialized (seeded); high correlation: the map does not depend on what the model
    learned."""

    accumulators = ("spearman",)

    def __init__(self, maps: Sequence[str], seed: int = 0):
        self.maps, self.seed = list(maps), seed
        self._random_model: Optional[nn.Module] = None
        self.reset()

    def reset(self) -> None:
        self.spearman: Dict[str, List[float]] = {m: [] for m in self.maps}

    def __getstate__(self) -> dict:
        """What is sent to another process: the accumulators, not the model copy."""
        return {**self.__dict__, "_random_model": None}

    def update(self, batch: StudyBatch) -> None:
        if self._random_model is None:
            self._random_model = randomized_copy(batch.model, seed=self.seed)
        random_maps = batch.maps_of(self._random_model, batch.x, "randomized-model maps")
        with batch.timed("correlations"):
            for m in self.maps:
                self.spearman[m] += spearman_per_image(batch.maps[m], random_maps[m]).tolist()

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        results = {"randomization": {m: mean_std(self.spearman[m]) for m in self.maps}}
        if totals.weights is None:
            return results, {}
        return results, {"randomization": {m: percentile_interval(resampled_means(self.spearman[m], totals.weights))
                                           for m in self.maps}}


class SignalLocalization(Control):
    """Where a signal is known (positives carrying ``signal_center`` >= 0): each map's energy inside the disk of
    radius ``radius_in_sigmas`` sigma against the disk's area share, the pointing game and the AUROC
    (``scripts.metrics.signal_localization``), with intervals over the units of those images."""

    accumulators = ("values", "units")

    def __init__(self, maps: Sequence[str], radius_in_sigmas: float = 2.0):
        self.maps, self.radius = list(maps), radius_in_sigmas
        self.reset()

    def reset(self) -> None:
        self.values: Dict[str, Dict[str, List[float]]] = {m: {} for m in self.maps}
        self.units: List[str] = []  # the unit of each image in the lists

    def update(self, batch: StudyBatch) -> None:
        known = batch.known_signals()
        if known is None or not known.any():
            return
        with batch.timed("localization and overlap"):
            centers = torch.as_tensor(batch.signal_center).to(batch.x.device).view(len(batch.x), -1).double()
            sigmas = torch.as_tensor(batch.signal_sigma).to(batch.x.device).view(-1).double()[known]
            self.units += [batch.units[i] for i in known.nonzero()[:, 0].tolist()]
            for m in self.maps:
                for key, values in signal_localization(batch.maps[m][known], centers[known], sigmas,
                                                       self.radius).items():
                    self.values[m].setdefault(key, []).extend(values.tolist())

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        results = {m: {key: float(np.mean(values)) for key, values in self.values[m].items()}
                   for m in self.maps if self.values[m]}
        for m in results:
            results[m]["n"] = len(self.values[m]["pointing_hit"])
        intervals: Dict[str, Dict[str, List[float]]] = {}
        if self.units and totals.weights is not None:
            weights = unit_bootstrap_weights(self.units, totals.n_bootstrap, totals.seed)
            intervals = {m: {key: percentile_interval(resampled_means(values, weights))
                             for key, values in self.values[m].items()} for m in results}
        return {"localization": results}, {"localization": intervals}


class TopKOverlap(Control):
    """For C = 2: the share of the top-k pixels of S(x) that are also top-k of the vanilla gradient (all of them in
    exact arithmetic: for a binary softmax both maps are multiples of |grad(z_1 - z_0)|)."""

    accumulators = ("overlap",)

    def __init__(self, alphas: Sequence[float]):
        self.alphas = tuple(alphas)
        self.reset()

    def reset(self) -> None:
        self.overlap: Dict[float, List[float]] = {a: [] for a in self.alphas}

    def update(self, batch: StudyBatch) -> None:
        if batch.num_classes != 2 or not {"ifim_sensitive", "vanilla_gradient"} <= set(batch.maps):
            return
        with batch.timed("localization and overlap"):
            for alpha in self.alphas:
                top_s, _ = perturbation_masks(batch.maps["ifim_sensitive"], batch.maps["ifim_sensitive"], alpha,
                                              batch.seeds)
                top_g, _ = perturbation_masks(batch.maps["vanilla_gradient"], batch.maps["vanilla_gradient"], alpha,
                                              batch.seeds)
                overlap = (top_s & top_g).flatten(1).sum(1).double() / top_s.flatten(1).sum(1).double()
                self.overlap[alpha] += overlap.tolist()

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        return {"topk_overlap_ifim_sensitive_vs_gradient": {f"{a:g}": float(np.mean(v)) for a, v in
                                                            self.overlap.items() if v}}, {}


class ComplementVsImage(Control):
    """The Pearson correlation of I(x) with the image's own magnitude |x| (summed over channels): x_sens is a small
    part of x, so I(x) is close to |x| and I's stability under FGSM is the image's own."""

    accumulators = ("pearson",)

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.pearson: List[float] = []

    def update(self, batch: StudyBatch) -> None:
        if "ifim_complement" in batch.maps:
            self.pearson += pearson_per_image(batch.maps["ifim_complement"],
                                              batch.x.abs().sum(1, keepdim=True)).tolist()

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        values = self.pearson or [math.nan]
        interval = ([math.nan, math.nan] if not self.pearson or totals.weights is None
                    else percentile_interval(resampled_means(self.pearson, totals.weights)))
        return {"complement_vs_image": {**mean_std(values), "interval": interval}}, {}


class Detectability(Control):
    """Recall of the clean predictions over the positives whose signal amplitude falls in each bin of ``bins``, with
    95 % unit-bootstrap intervals (an SKS/BKS detectability curve); empty without amplitudes."""

    accumulators = ("amplitudes",)

    def __init__(self, bins: Sequence[float] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35)):
        self.bins = tuple(bins)
        self.reset()

    def reset(self) -> None:
        self.amplitudes: List[float] = []  # per image (0: no signal, NaN: unknown)

    def update(self, batch: StudyBatch) -> None:
        amplitudes = (torch.full((len(batch.x),), math.nan) if batch.signal_amplitude is None
                      else torch.as_tensor(batch.signal_amplitude).view(-1).double().cpu())
        self.amplitudes += amplitudes.tolist()

    def compute(self, totals: StudyTotals) -> Tuple[dict, Intervals]:
        amplitudes = np.asarray(self.amplitudes, dtype=np.float64)
        positive = (totals.y.numpy() == 1) & np.isfinite(amplitudes) & (amplitudes > 0)
        if not positive.any() or len(self.bins) < 2:
            return {"detectability": {}}, {}
        hits = (totals.clean.numpy() == 1).astype(np.float64)
        units = np.asarray(totals.units)
        bins = []
        for i, (low, high) in enumerate(zip(self.bins[:-1], self.bins[1:])):
            last = i == len(self.bins) - 2
            inside = positive & (amplitudes >= low) & ((amplitudes <= high) if last else (amplitudes < high))
            if not inside.any():
                bins.append({"low": low, "high": high, "n": 0, "recall": math.nan, "interval": [math.nan, math.nan]})
                continue
            resampled = resampled_means(hits[inside], unit_bootstrap_weights(units[inside], totals.n_bootstrap,
                                                                             totals.seed))
            bins.append({"low": low, "high": high, "n": int(inside.sum()), "recall": float(hits[inside].mean()),
                         "interval": percentile_interval(resampled)})
        outside = int(positive.sum()) - sum(b["n"] for b in bins)
        return {"detectability": {"bins": bins, "n_positives": int(positive.sum()), "outside_bins": outside}}, {}
