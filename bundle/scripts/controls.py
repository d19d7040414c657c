# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The controls of the map comparison, one accumulator each: a new control is one new class, and one entry in the
``controls`` of the study in ``configs/evaluate.yaml``.

Every control follows one protocol (:class:`Control`): ``setup(study)`` with what the study decided for all of
them (:class:`StudySetup`: its map methods, maps, pixel fractions and seed), ``update(batch)`` with a
:class:`StudyBatch` (the model, the images, their labels, predictions, seeds, units and every map),
``merge(other)`` with the same control of another share of the data (another process; the accumulators are lists
that concatenate), and ``compute(totals)`` with the :class:`StudyTotals` every control shares (labels, clean
predictions, the cluster-bootstrap weights). ``compute`` returns a typed :class:`Section`: the control's numbers,
what they add to ``results.json``, the headline metrics, and its part of the report (findings stated from the
numbers, Markdown, CSV, figures). :class:`scripts.study.AttributionStudy` composes the controls,
:func:`scripts.report.write_report` the sections.

Controls (the paper's Sec. IV-E/F, and what a reviewer adds):

* :class:`ContrastivePerturbation`: eq. 23-26 under every fill; iFIM perturbs TopK(S) against BottomK(I), every
  other method its own top-k against its bottom-k, plus k random pixels.
* :class:`DeletionCurves`: MoRF / LeRF curves of F1 and the true-class probability, their AUCs.
* :class:`MatchedResolution`: the perturbation study with every map smoothed alike before ranking.
* :class:`FGSMStability`: eq. 27, correlation of the maps of x and x_adv, and the predictions the attack flipped,
  beside a random-sign perturbation of the same epsilon; :class:`EpsilonSweep`: the same at several epsilons.
* :class:`TopKOverlap`: for C = 2, the overlap of the top-k sets of S(x) and of the vanilla gradient.
* :class:`ComplementVsImage`: the correlation of I(x) with |x|.
* :class:`Detectability`: recall of the clean predictions by signal amplitude.
* :class:`SignalLocalization`: the maps' energy on a known signal, and the pointing game.
* :class:`ModelRandomization`: Spearman correlation of the maps of the model and of a randomized copy;
  :class:`CascadingRandomization`: the same with the layers re-initialized one at a time from the output down.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np
import torch
from monai.networks.layers import GaussianFilter
from torch import nn

from .atomic import write_csv
from .attribution import CONTROL_MAPS, IFIM, MAP_METHODS, MapMethod, display_name
from .bootstrap import (
    bootstrap_p_value,
    holm,
    paired_differences,
    percentile_interval,
    resampled_means,
    unit_bootstrap_weights,
)
from .borrowing import borrowed
from .detectors import detector_scores, weighted_aurocs
from .ifim import energy_k, ifim_decompose
from .metrics import (
    Fill,
    cascade_layers,
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
    random_sign,
    randomized_copy,
    signal_localization,
    spearman_per_image,
)
from .verdicts import TIE, best, brief, ci, defined, fmt, interval_status, judge, outcome, table
from .visualize import grouped_bar_figure, line_panels_figure, save_figure_atomic

__all__ = ["StudySetup", "StudyBatch", "StudyTotals", "Section", "Sections", "Control", "ContrastivePerturbation",
           "MatchedResolution", "ResolutionResult", "DeletionCurves", "FGSMStability", "TopKOverlap",
           "ComplementVsImage", "Detectability", "SignalLocalization", "ModelRandomization", "PerturbationResult",
           "CurvesResult", "FGSMResult", "TopKOverlapResult", "ComplementResult", "DetectabilityResult",
           "LocalizationResult", "RandomizationResult", "CascadingRandomization", "CascadeResult",
           "EpsilonSweep", "SweepResult", "TrivialDetectors", "DetectorResult", "BeyondGradient",
           "BeyondGradientResult", "RhoSweep", "RhoSweepResult"]

SENSITIVE, COMPLEMENT = IFIM.maps  # S(x) and I(x): the maps the paper's claims are about
GRADIENT = MAP_METHODS["vanilla_gradient"].maps[0]
CURVE_KEYS = ("morf_f1", "lerf_f1", "morf_prob", "lerf_prob")
Intervals = Dict[str, object]


@dataclass
class StudySetup:
    """What the study decides for every control: its map ``methods`` (registry records, in registry order), their
    ``maps`` (names), the perturbed pixel fractions ``alphas`` and the ``seed``."""

    methods: List[MapMethod]
    maps: List[str]
    alphas: Tuple[float, ...]
    seed: int = 0

    @property
    def method_names(self) -> List[str]:
        return [m.name for m in self.methods]


@dataclass
class StudyBatch:
    """One batch as every control sees it. ``maps``: ``{name: (B, 1, *spatial)}`` of the clean images;
    ``maps_of(model, x, stage, methods=None)``: the same maps (of the named ``methods``, default all) for other
    images or another model (timed under ``stage``), each image's draws from its own seed;
    ``timed(stage)``: a context that adds its wall-clock time to ``stage``."""

    model: nn.Module
    x: torch.Tensor  # (B, C_in, *spatial)
    y: torch.Tensor  # (B,) labels
    target: torch.Tensor  # (B,) clean predictions, the class every map explains
    seeds: torch.Tensor  # (B,) per-image seeds (scripts.metrics.image_seeds)
    units: List[str]  # the independent unit of each image
    maps: Dict[str, torch.Tensor]
    num_classes: int
    maps_of: Optional[Callable[..., Dict[str, torch.Tensor]]] = None
    timed: Callable[[str], ContextManager] = lambda stage: nullcontext()
    signal_center: Optional[torch.Tensor] = None  # (B, spatial_dims), -1 where absent
    signal_sigma: Optional[torch.Tensor] = None  # (B,) voxels
    signal_amplitude: Optional[torch.Tensor] = None  # (B,)

    def known_signals(self) -> Optional[torch.Tensor]:
        """``(B,)`` bool: positives with a known signal centre; None without signal keys."""
        if self.signal_center is None or self.signal_sigma is None:
            return None
        centers = torch.as_tensor(self.signal_center).to(self.x.device).view(len(self.x), -1)
        return (self.y >= 1) & (centers >= 0).all(1)  # label 0: signal absent; every other label a signal


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


class Section:
    """A control's typed result and its part of the report. Subclasses are dataclasses of the control's numbers;
    ``files`` names every report file a section of that kind may write (the report owns exactly these and its own)."""

    files: ClassVar[Tuple[str, ...]] = ()
    kinds: ClassVar[List[Type["Section"]]] = []

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Section.kinds.append(cls)

    def results(self) -> dict:
        """Its entries of ``results.json["study"]``."""
        return {}

    def intervals(self) -> Intervals:
        """Its entries of ``results.json["study"]["intervals"]``."""
        return {}

    def metrics(self, prefix: str) -> Dict[str, float]:
        """Headline numbers for ``engine.state.metrics`` (logged by ``StatsHandler``)."""
        return {}

    def findings(self, sections: "Sections") -> List[str]:
        """Plain statements, each computed from the numbers (``sections``: the study's other results)."""
        return []

    def paper_rows(self, sections: "Sections") -> List[List[str]]:
        """Rows ``[claim, what the paper reports, this run]`` of the report's "Beside the paper" table."""
        return []

    def primary_lines(self) -> List[str]:
        """The declared primary endpoint and its answer, which the report states before any other number."""
        return []

    def render(self, out: Path) -> List[str]:
        """Write its CSVs and figures into ``out``; return its Markdown lines."""
        return []


S = TypeVar("S", bound=Section)


class Sections(list):
    """The sections of a study, in the order of its controls."""

    def find(self, kind: Type[S]) -> Optional[S]:
        """The first section of ``kind``; None when the study had no such control."""
        return next((s for s in self if isinstance(s, kind)), None)


def report_files() -> Tuple[str, ...]:
    """Every file any section may write."""
    return tuple(name for kind in Section.kinds for name in kind.files)


class Control:
    """One control: ``setup(study)``, ``reset``, ``update(batch)``, ``merge(other)``, ``compute(totals) -> Section``.
    Subclasses name their accumulators (lists, or dicts of lists) in ``accumulators`` and set them in ``reset``;
    ``merge`` concatenates them, in the order of the shares. ``setup`` keeps what the study decided as ``study``
    and resets."""

    accumulators: Tuple[str, ...] = ()
    study: StudySetup

    def setup(self, study: StudySetup) -> None:
        self.study = study
        self.reset()

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, batch: StudyBatch) -> None:
        raise NotImplementedError

    def merge(self, other: "Control") -> None:
        for name in self.accumulators:
            setattr(self, name, _extend(getattr(self, name), getattr(other, name)))

    def compute(self, totals: StudyTotals) -> Section:
        raise NotImplementedError


class FollowingControl(Control):
    """A control that recomputes the maps of some of the study's methods (``methods``; None: every one): ``setup``
    sets ``followed`` (their names, in the study's order) and ``followed_maps`` (the maps they return)."""

    methods: Optional[List[str]] = None

    def setup(self, study: StudySetup) -> None:
        chosen = study.methods if self.methods is None else [m for m in study.methods if m.name in self.methods]
        self.followed = [m.name for m in chosen]
        self.followed_maps = [name for m in chosen for name in m.maps]
        super().setup(study)


def _alpha_keys(alphas: Sequence[float]) -> List[str]:
    return [f"{a:g}" for a in alphas]


def _percent(alpha: str) -> str:
    return f"{100 * float(alpha):g}"


class ContrastivePerturbation(Control):
    """eq. 23-26 per method and fill: the class probabilities after replacing each perturbed set (``(alpha, "high" |
    "low" | "random")``); F1 scores, ratios and drops against the clean predictions, with intervals and the paired
    interval of iFIM's ratio minus every other method's.

    The answer to "does Fig. 3's claim hold" is one primary endpoint, declared with the study: iFIM's F1 ratio under
    one fill at one fraction is higher than every other method's, each paired 95 % interval clear of 0 (an
    intersection-union test: no adjustment needed). Every other fill, fraction and method is a secondary family:
    one-sided bootstrap p-values of iFIM's ratio above each method's, Holm-adjusted over the whole family.

    Args:
        fills: what replaces the perturbed pixels (``scripts.metrics.GaussianFill``, ``NoisyLinearImputation``),
            one or more with distinct ``tag`` s, the same fill for every method.
        primary: the primary endpoint, ``{"fill": <fill tag>, "alpha": <one of the study's alphas>,
            "provenance": <how and when it was chosen>}``; None: no primary endpoint (the report says so).
    """

    accumulators = ("probabilities",)

    def __init__(self, fills: Sequence[Fill], primary: Optional[Mapping[str, object]] = None):
        tags = [fill.tag for fill in fills]
        if not tags or len(set(tags)) != len(tags):
            raise ValueError(f"the fills must be one or more with distinct tags, got {tags}.")
        self.fills = list(fills)
        self.primary = None if primary is None else dict(primary)
        if self.primary is not None and self.primary.get("fill") not in tags:
            raise ValueError(f"primary: fill {self.primary.get('fill')!r} is not one of the fills' tags {tags}.")

    def setup(self, study: StudySetup) -> None:
        if self.primary is not None and float(self.primary.get("alpha", math.nan)) not in study.alphas:
            raise ValueError(f"primary: alpha {self.primary.get('alpha')!r} is not one of the study's alphas "
                             f"{list(study.alphas)}.")
        super().setup(study)

    def reset(self) -> None:
        # fill tag -> method -> (alpha, set) -> [(B, C) probabilities]
        self.probabilities: Dict[str, Dict[str, Dict]] = {f.tag: {m: {} for m in self.study.method_names}
                                                          for f in self.fills}

    def update(self, batch: StudyBatch) -> None:
        for method in self.study.methods:
            masks = perturbation_mask_sets(*method.ranked(batch.maps), self.study.alphas, batch.seeds)
            for fill in self.fills:
                with batch.timed(f"perturbation: {fill.name}"):
                    for key, probs in perturbed_probabilities(batch.model, batch.x, masks, fill, batch.seeds).items():
                        self.probabilities[fill.tag][method.name].setdefault(key, []).append(probs.cpu())

    def compute(self, totals: StudyTotals) -> "PerturbationResult":
        scores: Dict[str, dict] = {}
        intervals: Dict[str, dict] = {}
        differences: Dict[str, dict] = {}
        ratios_by_fill: Dict[str, dict] = {}
        for fill in self.fills:
            scores[fill.tag], intervals[fill.tag], resampled_ratios = {}, {}, {}
            for method in self.study.method_names:
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
            differences[fill.tag] = {a: paired_differences({m: r[a] for m, r in resampled_ratios.items()}, IFIM.name)
                                     for a in _alpha_keys(self.study.alphas)}
            ratios_by_fill[fill.tag] = resampled_ratios
        primary = None if self.primary is None else {
            "fill": self.primary["fill"], "alpha": f"{float(self.primary['alpha']):g}",
            "provenance": str(self.primary.get("provenance") or "")}
        return PerturbationResult(list(self.study.alphas), [{"tag": f.tag, "name": f.name} for f in self.fills],
                                  self.study.seed, scores, intervals, differences,
                                  {f.tag: f.provenance for f in self.fills if getattr(f, "provenance", None)},
                                  primary, _secondary_tests(ratios_by_fill))


def _secondary_tests(ratios: Dict[str, Dict[str, Dict[str, np.ndarray]]]) -> Dict[str, dict]:
    """``{fill: {alpha: {method: {"p", "p_holm"}}}}``: the one-sided bootstrap p-value of iFIM's ratio above each
    other method's (``ratios[fill][method][alpha]``: resampled ratios), Holm-adjusted over every fill, fraction and
    method together."""
    keys, p_values = [], []
    for tag, per_method in ratios.items():
        if IFIM.name not in per_method:
            continue
        for alpha, ours in per_method[IFIM.name].items():
            for method, values in per_method.items():
                if method != IFIM.name:
                    with np.errstate(invalid="ignore"):
                        p_values.append(bootstrap_p_value(ours - values[alpha]))
                    keys.append((tag, alpha, method))
    tests: Dict[str, dict] = {}
    for (tag, alpha, method), p, adjusted in zip(keys, p_values, holm(p_values)):
        tests.setdefault(tag, {}).setdefault(alpha, {})[method] = {"p": p, "p_holm": adjusted}
    return tests


@dataclass
class PerturbationResult(Section):
    """The contrastive perturbation study: ``scores[fill tag][method][alpha]`` (``f1_clean``, ``f1_high``,
    ``f1_low``, ``f1_random``, ``ratio``, ``drop_high``, ``drop_low``, ``drop_random``), their intervals in the
    same layout, ``differences[fill tag][alpha][method]``: the paired interval of iFIM's ratio minus the method's;
    ``provenance``: per fill tag, how the fill was chosen where the report must say so; ``primary``: the declared
    primary endpoint (``fill`` tag, ``alpha``, ``provenance``); ``tests[fill][alpha][method]``: the secondary
    family's one-sided p-values of iFIM's ratio above the method's, raw and Holm-adjusted."""

    files: ClassVar[Tuple[str, ...]] = ("perturbation.csv", "fig3_perturbation_ratio.png", "fig3_f1_drops.png")
    alphas: List[float]
    fills: List[Dict[str, str]]
    seed: int
    scores: Dict[str, dict]
    score_intervals: Dict[str, dict] = field(default_factory=dict)
    differences: Dict[str, dict] = field(default_factory=dict)
    provenance: Dict[str, str] = field(default_factory=dict)
    primary: Optional[Dict[str, str]] = None
    tests: Dict[str, dict] = field(default_factory=dict)
    level: ClassVar[float] = 0.05  # the family-wise error rate of the secondary family

    @property
    def names(self) -> Dict[str, str]:
        return {f["tag"]: f["name"] for f in self.fills}

    def results(self) -> dict:
        return {"perturbation": self.scores, "noise_models": self.fills, "noise_seed": self.seed,
                "perturbation_primary": self.primary, "perturbation_tests": self.tests}

    def intervals(self) -> Intervals:
        return {"perturbation": self.score_intervals, f"ratio_{IFIM.name}_minus": self.differences}

    def metrics(self, prefix: str) -> Dict[str, float]:
        return {f"{prefix}_ratio_{tag}_{method}_{_percent(alpha)}": values["ratio"]
                for tag, per_method in self.scores.items() for method, per_alpha in per_method.items()
                for alpha, values in per_alpha.items()}

    def primary_verdict(self) -> Tuple[str, str, Optional[bool]]:
        """The declared primary endpoint: ``(its question, with how it was declared; the answer from the numbers;
        whether iFIM's ratio is above every other method's with each paired interval clear of 0)`` (None: no
        primary endpoint, or not computable)."""
        if self.primary is None:
            return ("No primary endpoint was declared (ContrastivePerturbation's `primary` in configs/evaluate.yaml): "
                    "every comparison below is exploratory."), "", None
        tag, alpha = self.primary["fill"], self.primary["alpha"]
        question = (f"Primary endpoint: under {self.names.get(tag, tag)} at {_percent(alpha)} % of pixels, is "
                    f"{IFIM.display}'s F1 ratio above every other method's, each paired 95 % interval of the "
                    "difference clear of 0?")
        if self.primary.get("provenance"):
            question += f" Declared {self.primary['provenance']}."
        per_method = self.scores.get(tag, {})
        differences = self.differences.get(tag, {}).get(alpha, {})
        others = [m for m in per_method if m != IFIM.name]
        if IFIM.name not in per_method or not others or not differences:
            return question, "Not computable in this run (no iFIM ratio, other method or interval).", None
        degenerate = self.uninformative(tag)
        status = {m: interval_status(differences, m, 1.0) for m in others}
        failing = [m for m in others if status[m] != "clear"]
        ours = per_method[IFIM.name][alpha]["ratio"]
        answer = (f"{'Yes' if not failing else 'No'}. {IFIM.display}'s ratio is {fmt(ours)}"
                  + ci(self.score_intervals.get(tag, {}).get(IFIM.name, {}).get(alpha, {}).get("ratio"))
                  + f"; clear of 0 against {len(others) - len(failing)} of {len(others)} methods")
        by_status: Dict[str, List[str]] = {}
        for m in failing:
            by_status.setdefault(status[m] or "no interval", []).append(
                f"{display_name(m)} {fmt(per_method[m][alpha]['ratio'])}{ci(differences.get(m))}")
        answer += "".join(f"; {kind}: " + ", ".join(entries) for kind, entries in by_status.items()) + "."
        if degenerate:
            answer += f" The primary fill is {degenerate}."
        return question, answer, not failing

    def _judged(self) -> Tuple[List[str], Dict[str, int]]:
        """The secondary family per fill, a few sentences each: iFIM's ratio and its point verdict at each
        fraction, against how many methods it is higher at family-wise 5 % (Holm), and the fractions at which its
        top set does no more than random pixels; per fill name, at how many fractions it is higher than every
        method."""
        lines, holds_clear, names = [], {}, self.names
        family = sum(len(per_method) for per_alpha in self.tests.values() for per_method in per_alpha.values())
        alphas = _alpha_keys(self.alphas)
        for tag, perturbation in self.scores.items():
            if IFIM.name not in perturbation:
                continue
            points, above, harmless, clear = [], [], [], 0
            for alpha in alphas:
                ratios = {m: v[alpha]["ratio"] for m, v in perturbation.items()}
                claim = brief(ratios, IFIM.name, self.differences.get(tag, {}).get(alpha, {}), highest=True)
                points.append(f"{_percent(alpha)} % {fmt(ratios[IFIM.name])} ({claim})")
                tests = self.tests.get(tag, {}).get(alpha, {})
                below = [m for m, t in tests.items() if defined(t["p_holm"]) and t["p_holm"] < self.level]
                clear += bool(tests) and len(below) == len(tests)
                if tests:
                    above.append((alpha, len(below), len(tests)))
                ours = perturbation[IFIM.name][alpha]
                if ours["drop_high"] <= ours["drop_random"]:
                    harmless.append((alpha, ours["drop_high"], ours["drop_random"]))
            holds_clear[names.get(tag, tag)] = clear
            degenerate = self.uninformative(tag)
            sentences = [f"This fill is {degenerate}."] if degenerate else []
            sentences.append(f"{IFIM.display}'s ratio at " + "; ".join(points) + ".")
            if above:
                sentences.append(
                    f"At family-wise {100 * self.level:g} % (Holm over {family} comparisons) it is above "
                    + ", ".join(f"{k} of {n}" for _, k, n in above) + " other methods at "
                    + ", ".join(_percent(a) for a, _, _ in above) + " %.")
            if harmless:
                sentences.append(
                    f"At {', '.join(_percent(a) for a, _, _ in harmless)} % replacing its top pixels lowers F1 no "
                    f"more than replacing random pixels ({', '.join(fmt(h) for _, h, _ in harmless)} against "
                    f"{', '.join(fmt(r) for _, _, r in harmless)}): the ratio reflects how harmless the bottom set "
                    "is, not that the top set is special.")
            lines.append(f"Pixels replaced by {names.get(tag, tag)}{self._role(tag)}: " + " ".join(sentences))
        if holds_clear and self.tests:
            lines.append(f"Secondary family over {len(self.alphas)} pixel fractions: {self._summary(holds_clear)}.")
        return lines, holds_clear

    def uninformative(self, tag: str) -> Optional[str]:
        """Why the fill ``tag`` says nothing about the maps, from its numbers: at every fraction replacing random
        pixels lowers F1 as much as replacing any map's top pixels (within :data:`scripts.verdicts.TIE`), e.g. a
        fill under which every image gets the same prediction; None when some map's top set does more."""
        per_method = self.scores.get(tag, {})
        alphas = _alpha_keys(self.alphas)
        if not per_method or not alphas:
            return None
        random_drops, top_drops = [], []
        for alpha in alphas:
            drops = [v[alpha]["drop_high"] for v in per_method.values() if defined(v[alpha]["drop_high"])]
            random_drop = max(v[alpha]["drop_random"] for v in per_method.values())
            if not drops or not defined(random_drop) or random_drop < max(drops) - TIE:
                return None
            random_drops.append(random_drop)
            top_drops.append(max(drops))
        return (f"uninformative: at every fraction replacing random pixels lowers F1 as much as replacing any map's "
                f"top pixels (random {', '.join(fmt(v) for v in random_drops)}; the largest top-set drop "
                f"{', '.join(fmt(v) for v in top_drops)}), so the fill, not the map, decides the predictions and "
                "its ratios are no evidence about the maps")

    def _role(self, tag: str) -> str:
        if self.primary is None:
            return " (exploratory)"
        return " (holds the primary endpoint; the rest is secondary)" if tag == self.primary["fill"] else \
            " (secondary)"

    def _summary(self, holds_clear: Dict[str, int]) -> str:
        counts = ", ".join(f"{k} of {len(self.alphas)} under {name}" for name, k in holds_clear.items())
        return (f"{IFIM.display}'s ratio is above every other method's at family-wise {100 * self.level:g} % "
                f"(Holm) at {counts}")

    def findings(self, sections: Sections) -> List[str]:
        _, answer, _ = self.primary_verdict()
        return ([f"Primary endpoint (stated above): {answer}"] if answer else []) + self._judged()[0]

    def primary_lines(self) -> List[str]:
        question, answer, _ = self.primary_verdict()
        return [f"{question} Answer: {answer}" if answer else question]

    def paper_rows(self, sections: Sections) -> List[List[str]]:
        holds_clear = self._judged()[1]
        rows = []
        if self.primary is not None:
            holds = self.primary_verdict()[2]
            rows.append([f"Fig. 3: {IFIM.display} has the highest F1 ratio (primary endpoint)",
                         "holds for every task and classifier",
                         {True: "holds", False: "does not hold", None: "not computable"}[holds]])
        if holds_clear and self.tests:
            rows.append([f"Fig. 3: {IFIM.display} has the highest F1 ratio at 1, 2, 3 % (secondary)",
                         "holds for every task and classifier", self._summary(holds_clear)])
        return rows

    def render(self, out: Path) -> List[str]:
        names, alphas = self.names, _alpha_keys(self.alphas)
        write_csv(out / "perturbation.csv", ["fill", "method", "alpha", "f1_clean", "f1_high", "f1_low", "f1_random",
                                             "ratio", "drop_high", "drop_low", "drop_random"],
                  [[names.get(tag, tag), method, alpha, v["f1_clean"], v["f1_high"], v["f1_low"], v["f1_random"],
                    v["ratio"], v["drop_high"], v["drop_low"], v["drop_random"]]
                   for tag, per_method in self.scores.items() for method, per_alpha in per_method.items()
                   for alpha, v in per_alpha.items()])
        self._figures(out)
        provenance = (" How a fill was chosen, as the config records it: " + "; ".join(
            f"{names.get(tag, tag)} {note}" for tag, note in self.provenance.items()) + "." if self.provenance
            else " The config records nothing on how the fills were chosen.")
        lines = ["## Contrastive pixel perturbation (eq. 23-26, Fig. 3)", "",
                 f"k = ceil(alpha HW) pixels replaced, under each fill below (seed {self.seed}), the same fill for "
                 f"every method. {IFIM.display}: TopK(S) vs BottomK(I); others: top-k vs bottom-k of the same map; "
                 "`random`: k random pixels (control). F1 of class 1 (C = 2) or macro. The paper says only \"a fixed "
                 f"distribution\".{provenance}",
                 ""]
        for tag, per_method in self.scores.items():
            intervals = self.score_intervals.get(tag, {})

            def cell(method: str, alpha: str, key: str) -> str:
                return fmt(per_method[method][alpha][key]) + ci(intervals.get(method, {}).get(alpha, {}).get(key))

            lines += [f"### {names.get(tag, tag)}", "",
                      table(["method"] + [f"ratio {_percent(a)} %" for a in alphas]
                            + [f"drop high / low / random {_percent(a)} %" for a in alphas],
                            [[display_name(m)] + [cell(m, a, "ratio") for a in alphas]
                             + [" / ".join(cell(m, a, f"drop_{s}") for s in ("high", "low", "random")) for a in alphas]
                             for m in per_method]), ""]
        return lines + ["![ratio](fig3_perturbation_ratio.png)", "", "![drops](fig3_f1_drops.png)", ""]

    def _figures(self, out: Path) -> None:
        alphas, tags = _alpha_keys(self.alphas), list(self.scores)
        groups = [f"{self.names.get(t, t).split(' (')[0]}\n{_percent(a)} %" for t in tags for a in alphas]
        methods = list(self.scores[tags[0]])
        ratios = {display_name(m): [self.scores[t][m][a]["ratio"] for t in tags for a in alphas] for m in methods}
        bounds = {display_name(m): [self.score_intervals.get(t, {}).get(m, {}).get(a, {}).get("ratio")
                                    for t in tags for a in alphas] for m in methods}
        save_figure_atomic(grouped_bar_figure(ratios, groups, "F1 low / F1 high", "Contrastive pixel perturbation "
                                              "(Fig. 3) under each fill, 95 % intervals: higher = top pixels matter "
                                              "more", reference=1.0, intervals=bounds),
                           out / "fig3_perturbation_ratio.png")
        drops = {f"{display_name(m)} {s}": [self.scores[t][m][a][f"drop_{s}"] for t in tags for a in alphas]
                 for m in methods for s in ("high", "random") if m == IFIM.name or s == "high"}
        save_figure_atomic(grouped_bar_figure(drops, groups, "F1 drop", "F1 drop after replacing top-k pixels, and "
                                              "the random-pixel control"), out / "fig3_f1_drops.png")


def _high_low_ratios(probabilities: Mapping[str, Mapping], alphas: Sequence[float], totals: StudyTotals
                     ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Dict[str, np.ndarray]]]:
    """eq. 26's F1 ratio of each map's high and low perturbed sets alone (no random set): ``probabilities[map][(alpha,
    "high" | "low")]`` lists of ``(B, C)`` -> ``ratios[map][alpha]`` and, with the totals' bootstrap weights, the
    resampled ratios ``(R,)`` (empty dicts without weights)."""
    ratios: Dict[str, Dict[str, float]] = {}
    resampled: Dict[str, Dict[str, np.ndarray]] = {}
    for name, per_key in probabilities.items():
        predicted = {key: torch.cat(values).argmax(1) for key, values in per_key.items()}
        ratios[name], resampled[name] = {}, {}
        for alpha in alphas:
            # perturbation_scores scores a random set too: the clean predictions stand in, its score unused
            sets = {"clean": totals.clean, (alpha, "high"): predicted[(alpha, "high")],
                    (alpha, "low"): predicted[(alpha, "low")], (alpha, "random"): totals.clean}
            ratios[name][f"{alpha:g}"] = perturbation_scores(totals.y, sets, totals.num_classes)[alpha]["ratio"]
            if totals.weights is not None:
                resampled[name][f"{alpha:g}"] = perturbation_scores(totals.y, sets, totals.num_classes,
                                                                    totals.weights)[alpha]["ratio"]
    return ratios, resampled


class MatchedResolution(Control):
    """Fig. 3's comparison again with every map ranked at the same resolution: each map (S and I for iFIM) smoothed
    by one Gaussian of ``sigma`` pixels (``monai.networks.layers.GaussianFilter``) before its top and bottom pixels
    are chosen, the same fill for every method. Coarse maps (CAMs) and pixel-sharp ones (gradients, iFIM) are
    otherwise compared as if alike, and smoothing alone, which adds no information, can move a ratio several-fold.
    The report sets each method's ratio beside its unsmoothed one and says whether the verdict depends on it.

    Args:
        fill: what replaces the perturbed pixels; its tag must be one of ``ContrastivePerturbation``'s fills so
            the two can be set side by side.
        sigma: the Gaussian's standard deviation in pixels.
    """

    accumulators = ("probabilities",)

    def __init__(self, fill: Fill, sigma: float = 2.0):
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}.")
        self.fill, self.sigma = fill, float(sigma)

    def reset(self) -> None:
        self.probabilities: Dict[str, Dict] = {m: {} for m in self.study.method_names}  # method -> (alpha, set) -> []

    def update(self, batch: StudyBatch) -> None:
        with batch.timed(f"matched resolution: {self.fill.name}"):
            smooth = GaussianFilter(batch.x.ndim - 2, self.sigma).to(batch.x.device)
            for method in self.study.methods:
                with torch.no_grad():
                    high, low = (smooth(m.to(torch.float64)).to(m.dtype) for m in method.ranked(batch.maps))
                masks = perturbation_mask_sets(high, low, self.study.alphas, batch.seeds, sets=("high", "low"))
                for key, probs in perturbed_probabilities(batch.model, batch.x, masks, self.fill, batch.seeds).items():
                    self.probabilities[method.name].setdefault(key, []).append(probs.cpu())

    def compute(self, totals: StudyTotals) -> "ResolutionResult":
        ratios, resampled = _high_low_ratios(self.probabilities, self.study.alphas, totals)
        differences = {a: paired_differences({m: r[a] for m, r in resampled.items() if a in r}, IFIM.name)
                       for a in _alpha_keys(self.study.alphas)}
        return ResolutionResult(self.fill.tag, self.fill.name, self.sigma, ratios, differences)


@dataclass
class ResolutionResult(Section):
    """The ratios with every map smoothed alike: ``ratios[method][alpha]`` under the fill ``fill_tag``, and
    ``differences[alpha][method]``: the paired interval of iFIM's smoothed ratio minus the method's."""

    fill_tag: str
    fill_name: str
    sigma: float
    ratios: Dict[str, Dict[str, float]]
    differences: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)

    def results(self) -> dict:
        return {"matched_resolution": {"fill": self.fill_tag, "sigma": self.sigma, "ratios": self.ratios}}

    def intervals(self) -> Intervals:
        return {f"matched_resolution_ratio_{IFIM.name}_minus": self.differences}

    def _raw(self, sections: Sections) -> Dict[str, Dict[str, float]]:
        perturbation = sections.find(PerturbationResult)
        per_method = perturbation.scores.get(self.fill_tag, {}) if perturbation else {}
        return {m: {a: v[a]["ratio"] for a in v} for m, v in per_method.items()}

    def findings(self, sections: Sections) -> List[str]:
        if IFIM.name not in self.ratios:
            return []
        raw, parts, depends = self._raw(sections), [], []
        for alpha in self.ratios[IFIM.name]:
            smoothed = {m: v[alpha] for m, v in self.ratios.items()}
            part = (f"{_percent(alpha)} % {fmt(smoothed[IFIM.name])} "
                    f"({brief(smoothed, IFIM.name, self.differences.get(alpha, {}), highest=True)}")
            if IFIM.name in raw and alpha in raw[IFIM.name]:
                unsmoothed = {m: v[alpha] for m, v in raw.items()}
                part += f"; unsmoothed {brief(unsmoothed, IFIM.name, {}, highest=True)}"
                if outcome(unsmoothed, IFIM.name, True) != outcome(smoothed, IFIM.name, True):
                    depends.append(_percent(alpha))
            parts.append(part + ")")
        said = (f"the verdict depends on resolution at {', '.join(depends)} %" if depends else
                "no verdict depends on resolution")
        return [f"Matched resolution (every map smoothed by a Gaussian of {self.sigma:g} pixels, pixels replaced by "
                f"{self.fill_name}): {IFIM.display}'s smoothed ratio at " + "; ".join(parts) + f". So {said}."]

    def render(self, out: Path) -> List[str]:
        alphas = list(next(iter(self.ratios.values()), {}))
        return ["## Matched resolution", "",
                f"Fig. 3's ratio with every map smoothed by the same Gaussian ({self.sigma:g} pixels) before ranking, "
                f"pixels replaced by {self.fill_name}; the unsmoothed ratios are in the table above.", "",
                table(["method"] + [f"smoothed ratio {_percent(a)} %" for a in alphas],
                      [[display_name(m)] + [self._cell(m, a) for a in alphas] for m in self.ratios]), ""]

    def _cell(self, method: str, alpha: str) -> str:
        interval = ci(self.differences.get(alpha, {}).get(method))
        return fmt(self.ratios[method][alpha]) + (f" ({IFIM.display} minus it{interval})" if interval else "")


class DeletionCurves(Control):
    """Deletion curves per method: F1 and mean true-class probability at alpha = 0 (clean) and every curve point,
    removing the most relevant pixels first (MoRF, the ``high`` sets) or the least relevant first (LeRF, ``low``);
    their AUCs (mean height over alpha), LeRF minus MoRF (higher: the map orders pixels by their effect), and 95 %
    intervals with the paired differences of iFIM minus every other method.

    Args:
        points: the curves' pixel fractions besides 0 and the study's ``alphas`` (one or more).
        fill: what replaces the removed pixels (ROAD's imputation stays closest to the data, as ROAD proposes).
    """

    accumulators = ("probabilities",)

    def __init__(self, points: Sequence[float], fill: Fill):
        if not len(points):
            raise ValueError("a deletion curve needs at least one pixel fraction besides 0.")
        self.curve_points, self.fill = tuple(points), fill

    def setup(self, study: StudySetup) -> None:
        self.points = tuple(sorted(set(study.alphas) | set(self.curve_points)))
        super().setup(study)

    def reset(self) -> None:
        self.probabilities: Dict[str, Dict] = {m: {} for m in self.study.method_names}  # method -> (alpha, set) -> []

    def update(self, batch: StudyBatch) -> None:
        with batch.timed(f"deletion curves: {self.fill.name}"):
            for method in self.study.methods:
                masks = perturbation_mask_sets(*method.ranked(batch.maps), self.points, batch.seeds,
                                               sets=("high", "low"))
                for key, probs in perturbed_probabilities(batch.model, batch.x, masks, self.fill, batch.seeds).items():
                    self.probabilities[method.name].setdefault(key, []).append(probs.cpu())

    def compute(self, totals: StudyTotals) -> "CurvesResult":
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
        intervals[f"delta_{IFIM.name}_minus"] = {
            measure: paired_differences({m: r[f"delta_{measure}"] for m, r in resampled_deltas.items()}, IFIM.name)
            for measure in ("f1", "prob")}
        return CurvesResult(results, intervals)


@dataclass
class CurvesResult(Section):
    """Deletion curves: ``curves`` = ``{"fill", "alphas", "methods": {method: {morf_f1, lerf_f1, morf_prob,
    lerf_prob, auc: {...}}}}``; ``auc_intervals[method][auc key]`` and ``auc_intervals["delta_ifim_minus"]``."""

    files: ClassVar[Tuple[str, ...]] = ("curves.csv", "fig_deletion_curves.png")
    curves: dict
    auc_intervals: dict = field(default_factory=dict)

    def results(self) -> dict:
        return {"curves": self.curves}

    def intervals(self) -> Intervals:
        return {"curves": self.auc_intervals}

    def metrics(self, prefix: str) -> Dict[str, float]:
        return {f"{prefix}_deletion_delta_auc_f1_{method}": values["auc"]["delta_f1"]
                for method, values in self.curves["methods"].items()}

    def findings(self, sections: Sections) -> List[str]:
        """Which map orders pixels best by the deletion curves (LeRF minus MoRF AUC), iFIM's place and interval."""
        methods = self.curves["methods"]
        if IFIM.name not in methods:
            return []
        lines, differences = [], self.auc_intervals.get(f"delta_{IFIM.name}_minus", {})
        for measure, label in (("f1", "F1"), ("prob", "true-class probability")):
            deltas = {m: v["auc"][f"delta_{measure}"] for m, v in methods.items()}
            claim, _ = judge(deltas, IFIM.name, differences.get(measure, {}), highest=True)
            lines.append(f"Deletion curves ({self.curves['fill']}, alpha 0-{100 * self.curves['alphas'][-1]:g} %), "
                         f"{label}: LeRF minus MoRF AUC is {fmt(deltas[IFIM.name])} for {IFIM.display}; the claim "
                         f"that {IFIM.display} orders pixels best by it {claim}.")
        return lines

    def render(self, out: Path) -> List[str]:
        methods, alphas = self.curves["methods"], self.curves["alphas"]
        if not methods:
            return []
        write_csv(out / "curves.csv", ["method", "alpha", *CURVE_KEYS],
                  [[method, alpha] + [v[key][i] for key in CURVE_KEYS]
                   for method, v in methods.items() for i, alpha in enumerate(alphas)])
        panels = {f"{label}, {order}": {display_name(m): v[f"{order.lower()}_{key}"] for m, v in methods.items()}
                  for key, label in (("f1", "F1"), ("prob", "true-class probability")) for order in ("MoRF", "LeRF")}
        save_figure_atomic(line_panels_figure([100 * a for a in alphas], panels, "pixels removed (%)",
                                              f"Deletion curves, pixels replaced by {self.curves['fill']}: MoRF low "
                                              "and LeRF high = a map that orders pixels by their effect",
                                              ylim=(0.0, 1.02)),  # F1 and probabilities: one range
                           out / "fig_deletion_curves.png")
        keys = ("morf_f1", "lerf_f1", "delta_f1", "morf_prob", "lerf_prob", "delta_prob")
        return ["## Deletion curves (MoRF / LeRF)", "",
                f"Pixels removed most relevant first (MoRF; {IFIM.display}: TopK(S)) or least relevant first (LeRF; "
                f"{IFIM.display}: BottomK(I)), replaced by {self.curves['fill']}, at alpha = "
                + ", ".join(f"{100 * a:g}" for a in alphas) + " %. AUC: the curve's mean height over alpha. A map that "
                "orders pixels by their effect has a low MoRF and a high LeRF curve: LeRF minus MoRF, higher is "
                "better.", "",
                table(["method", "MoRF F1", "LeRF F1", "LeRF - MoRF (F1)", "MoRF p(true)", "LeRF p(true)",
                       "LeRF - MoRF (p)"],
                      [[display_name(m)] + [fmt(v["auc"][k]) + ci(self.auc_intervals.get(m, {}).get(k)) for k in keys]
                       for m, v in methods.items()]), "", "![curves](fig_deletion_curves.png)", ""]


class FGSMStability(Control):
    """eq. 27: per map, the Pearson correlation of the maps of x and of x_adv (explaining the clean prediction),
    and whether the attack flipped the prediction; the paired interval of S minus every other map. Its control: the
    same for a random-sign perturbation of the same epsilon (``scripts.metrics.random_sign``), which moves every
    entry as far as FGSM in no particular direction, and the paired interval of each map's FGSM minus random-sign
    correlation (a map that changes as much under noise as under the attack says nothing about the attack).

    Args:
        epsilon: the FGSM step, in image intensity units.
    """

    accumulators = ("flipped", "pearson", "flipped_random", "pearson_random")

    def __init__(self, epsilon: float):
        self.epsilon = epsilon

    def reset(self) -> None:
        self.flipped: List[float] = []
        self.pearson: Dict[str, List[float]] = {m: [] for m in self.study.maps}
        self.flipped_random: List[float] = []
        self.pearson_random: Dict[str, List[float]] = {m: [] for m in self.study.maps}

    def update(self, batch: StudyBatch) -> None:
        with batch.timed("fgsm: attack"):
            x_adv = fgsm(batch.model, batch.x, batch.y, self.epsilon)
            x_random = random_sign(batch.x, self.epsilon, batch.seeds)
            self.flipped += (eval_logits(batch.model, x_adv).argmax(1) != batch.target).double().tolist()
            self.flipped_random += (eval_logits(batch.model, x_random).argmax(1) != batch.target).double().tolist()
        adv_maps = batch.maps_of(batch.model, x_adv, "fgsm maps")
        random_maps = batch.maps_of(batch.model, x_random, "random-sign maps")
        with batch.timed("correlations"):
            for m in self.study.maps:
                self.pearson[m] += pearson_per_image(batch.maps[m], adv_maps[m]).tolist()
                self.pearson_random[m] += pearson_per_image(batch.maps[m], random_maps[m]).tolist()

    def compute(self, totals: StudyTotals) -> "FGSMResult":
        maps = self.study.maps
        result = FGSMResult({"epsilon": self.epsilon, "flip_rate": float(np.mean(self.flipped)),
                             "pearson": {m: mean_std(self.pearson[m]) for m in maps},
                             "random_sign": {"flip_rate": float(np.mean(self.flipped_random)),
                                             "pearson": {m: mean_std(self.pearson_random[m]) for m in maps}}})
        if totals.weights is not None:
            weights = totals.weights
            means = {m: resampled_means(self.pearson[m], weights) for m in maps}
            random_means = {m: resampled_means(self.pearson_random[m], weights) for m in maps}
            with np.errstate(invalid="ignore"):
                minus_random = {m: percentile_interval(means[m] - random_means[m]) for m in maps}
            result.stability_intervals = {
                "fgsm_flip_rate": percentile_interval(resampled_means(self.flipped, weights)),
                "fgsm_pearson": {m: percentile_interval(v) for m, v in means.items()},
                f"fgsm_pearson_{SENSITIVE}_minus": paired_differences(means, SENSITIVE),
                "random_sign_flip_rate": percentile_interval(resampled_means(self.flipped_random, weights)),
                "random_sign_pearson": {m: percentile_interval(v) for m, v in random_means.items()},
                "fgsm_minus_random_sign_pearson": minus_random}
        return result


@dataclass
class FGSMResult(Section):
    """FGSM stability: ``fgsm`` = ``{"epsilon", "flip_rate", "pearson": {map: mean_std}, "random_sign":
    {"flip_rate", "pearson"}}``; its intervals: the flip rates', each map's mean correlation's, the paired intervals
    of S minus every other map, and of each map's FGSM minus random-sign correlation."""

    files: ClassVar[Tuple[str, ...]] = ("fgsm.csv", "fig4_fgsm_correlation.png")
    fgsm: dict
    stability_intervals: dict = field(default_factory=dict)

    def results(self) -> dict:
        return {"fgsm": self.fgsm}

    def intervals(self) -> Intervals:
        return self.stability_intervals

    def metrics(self, prefix: str) -> Dict[str, float]:
        metrics = {f"{prefix}_fgsm_pearson_{name}": v["mean"] for name, v in self.fgsm["pearson"].items()}
        return {**metrics, f"{prefix}_fgsm_flip_rate": self.fgsm["flip_rate"]}

    def verdict(self) -> Optional[str]:
        """Fig. 4's claim (S has the lowest clean / adversarial correlation among the maps), judged with the paired
        interval; control maps (fresh noise for x_adv correlates ~0 by construction) are its floor, not rivals."""
        correlations = {m: v["mean"] for m, v in self.fgsm["pearson"].items() if m not in CONTROL_MAPS}
        if SENSITIVE not in correlations:
            return None
        claim = judge(correlations, SENSITIVE, self.stability_intervals.get(f"fgsm_pearson_{SENSITIVE}_minus", {}),
                      highest=False)[0]
        floors = [f"the {m} map, a control, correlates {fmt(v['mean'])}" for m, v in self.fgsm["pearson"].items()
                  if m in CONTROL_MAPS]
        return claim + (f" ({'; '.join(floors)})" if floors else "")

    def _against_random_sign(self) -> Optional[str]:
        """What S's correlation under the attack says beside the random-sign control."""
        control = self.fgsm.get("random_sign")
        if not control or SENSITIVE not in control["pearson"]:
            return None
        attacked, noised = self.fgsm["pearson"][SENSITIVE]["mean"], control["pearson"][SENSITIVE]["mean"]
        interval = self.stability_intervals.get("fgsm_minus_random_sign_pearson", {}).get(SENSITIVE)
        status = interval_status({"random": interval}, "random", -1.0) if interval else None
        said = {"clear": "the attack lowers it more than the random perturbation does",
                "other way": "the random perturbation lowers it more than the attack does",
                "tie": "the two lower it alike", "includes 0": "the difference is not resolved by this test set",
                None: "no interval of the difference"}[status]
        return (f"Beside a random-sign perturbation of the same epsilon, which flips "
                f"{fmt(100 * control['flip_rate'], 1)} % of predictions against the attack's "
                f"{fmt(100 * self.fgsm['flip_rate'], 1)} %, the sensitive map's correlation is {fmt(noised)} against "
                f"{fmt(attacked)} under FGSM (FGSM minus random sign{ci(interval) or ': n/a'}): {said}.")

    def findings(self, sections: Sections) -> List[str]:
        claim = self.verdict()
        if claim is None:
            return []
        lines = [f"FGSM (epsilon {self.fgsm['epsilon']:g}, {fmt(100 * self.fgsm['flip_rate'], 1)} % of predictions "
                 f"flipped): the claim that the {IFIM.display} sensitive map has the lowest clean/adversarial "
                 f"correlation {claim}; its mean correlation is {fmt(self.fgsm['pearson'][SENSITIVE]['mean'])}. Low "
                 "correlation measures sensitivity to the attack, not faithfulness."]
        control = self._against_random_sign()
        return lines + ([control] if control else [])

    def paper_rows(self, sections: Sections) -> List[List[str]]:
        claim = self.verdict()
        return [] if claim is None else [["Fig. 4: S has the lowest clean / adversarial correlation",
                                          "holds for every task and classifier (close to 0 for OCT and X-ray)", claim]]

    def render(self, out: Path) -> List[str]:
        pearson = self.fgsm["pearson"]
        control = (self.fgsm.get("random_sign") or {}).get("pearson", {})
        write_csv(out / "fgsm.csv", ["map", "pearson_mean", "pearson_std", "n", "n_undefined", "random_sign_mean"],
                  [[m, v["mean"], v["std"], v["n"], v["n_undefined"], control.get(m, {}).get("mean")]
                   for m, v in pearson.items()])
        save_figure_atomic(grouped_bar_figure({display_name(m): [v["mean"]] for m, v in pearson.items()},
                                              ["clean vs FGSM"],
                                              "Pearson correlation", f"Clean / adversarial map correlation (Fig. 4), "
                                              f"epsilon {self.fgsm['epsilon']:g}",
                                              errors={display_name(m): [v["std"]] for m, v in pearson.items()}),
                           out / "fig4_fgsm_correlation.png")
        intervals = self.stability_intervals.get("fgsm_pearson", {})
        return ["## Stability under FGSM (eq. 27, Fig. 4)", "",
                f"epsilon = {self.fgsm['epsilon']:g}; predictions flipped: {fmt(100 * self.fgsm['flip_rate'], 1)} %"
                f"{ci(self.stability_intervals.get('fgsm_flip_rate'), scale=100)}. Maps of x and x_adv explain the "
                "same (clean predicted) class.", "",
                "Control: a random-sign perturbation of the same epsilon flips "
                f"{fmt(100 * (self.fgsm.get('random_sign') or {}).get('flip_rate', math.nan), 1)} %"
                f"{ci(self.stability_intervals.get('random_sign_flip_rate'), scale=100)}; a map whose correlation "
                "drops as much under it as under FGSM does not single out the attack.", "",
                table(["map", "Pearson mean (FGSM)", "std", "images", "undefined (constant map)",
                       "Pearson mean (random sign)", "FGSM - random sign"],
                      [[display_name(m), fmt(v["mean"]) + ci(intervals.get(m)), fmt(v["std"]), v["n"], v["n_undefined"],
                        fmt(control.get(m, {}).get("mean", math.nan))
                        + ci(self.stability_intervals.get("random_sign_pearson", {}).get(m)),
                        ci(self.stability_intervals.get("fgsm_minus_random_sign_pearson", {}).get(m)).strip() or "n/a"]
                       for m, v in pearson.items()]), "", "![fgsm](fig4_fgsm_correlation.png)", ""]


class EpsilonSweep(FollowingControl):
    """FGSM at several ``epsilons`` beside a random-sign perturbation of each: per epsilon the share of predictions
    flipped, the mean change of the clean class's probability (how far the model's output moved) and each followed
    map's Pearson correlation with its clean map. One epsilon is a single setting; the sweep shows whether a map's
    (in)stability tracks the change in the model's output or only the size of the step.

    Args:
        epsilons: the steps, in image intensity units.
        methods: the map methods to follow (default every method of the study); each epsilon costs two computations
            of their maps.
    """

    accumulators = ("values",)

    def __init__(self, epsilons: Sequence[float], methods: Optional[Sequence[str]] = None):
        if not len(epsilons):
            raise ValueError("an epsilon sweep needs at least one epsilon.")
        self.epsilons, self.methods = tuple(float(e) for e in epsilons), None if methods is None else list(methods)

    def reset(self) -> None:
        # f"{epsilon:g}" -> perturbation ("fgsm" | "random sign") -> quantity ("flipped", "output change", map) -> []
        self.values: Dict[str, Dict[str, Dict[str, List[float]]]] = {}

    def update(self, batch: StudyBatch) -> None:
        clean = torch.softmax(eval_logits(batch.model, batch.x).double(), 1)
        target = batch.target.view(-1, 1).cpu()
        for epsilon in self.epsilons:
            with batch.timed("epsilon sweep: attacks"):
                perturbed = {"fgsm": fgsm(batch.model, batch.x, batch.y, epsilon),
                             "random sign": random_sign(batch.x, epsilon, batch.seeds)}
            for kind, images in perturbed.items():
                probs = torch.softmax(eval_logits(batch.model, images).double(), 1)
                maps = batch.maps_of(batch.model, images, "epsilon sweep", self.followed)
                store = self.values.setdefault(f"{epsilon:g}", {}).setdefault(kind, {})
                store.setdefault("flipped", []).extend((probs.argmax(1) != batch.target).double().tolist())
                store.setdefault("output change", []).extend(
                    (probs.cpu().gather(1, target) - clean.cpu().gather(1, target)).abs()[:, 0].tolist())
                for m in self.followed_maps:
                    store.setdefault(m, []).extend(pearson_per_image(batch.maps[m], maps[m]).tolist())

    def compute(self, totals: StudyTotals) -> "SweepResult":
        def summary(values: List[float]) -> dict:
            interval = ([math.nan, math.nan] if totals.weights is None
                        else percentile_interval(resampled_means(values, totals.weights)))
            return {"mean": float(np.nanmean(values)) if np.isfinite(values).any() else math.nan,
                    "interval": interval}

        return SweepResult({eps: {kind: {q: summary(v) for q, v in per_q.items()} for kind, per_q in per_kind.items()}
                            for eps, per_kind in self.values.items()})


@dataclass
class SweepResult(Section):
    """``sweep[epsilon][perturbation][quantity]`` = ``{"mean", "interval"}``, perturbation ``fgsm`` or ``random
    sign``, quantity ``flipped``, ``output change`` or a map's Pearson correlation with its clean map."""

    sweep: Dict[str, Dict[str, Dict[str, dict]]]

    def results(self) -> dict:
        return {"epsilon_sweep": self.sweep}

    def findings(self, sections: Sections) -> List[str]:
        epsilons = list(self.sweep)
        if len(epsilons) < 2 or SENSITIVE not in self.sweep[epsilons[0]].get("fgsm", {}):
            return []
        first, last = self.sweep[epsilons[0]], self.sweep[epsilons[-1]]

        def move(kind: str, quantity: str, scale: float = 1.0, digits: int = 3) -> str:
            a, b = first[kind][quantity], last[kind][quantity]
            return (f"{fmt(scale * a['mean'], digits)}{ci(a['interval'], scale)} to "
                    f"{fmt(scale * b['mean'], digits)}{ci(b['interval'], scale)}")

        return [f"Epsilon sweep ({epsilons[0]} to {epsilons[-1]}): under FGSM the {IFIM.display} sensitive map's "
                f"correlation with its clean map goes from {move('fgsm', SENSITIVE)} while "
                f"{move('fgsm', 'flipped', 100, 1)} % of predictions flip and the clean class's probability moves by "
                f"{move('fgsm', 'output change')}; "
                f"under random signs of the same sizes from {move('random sign', SENSITIVE)}, with "
                f"{move('random sign', 'flipped', 100, 1)} % flipped."]

    def render(self, out: Path) -> List[str]:
        epsilons = list(self.sweep)
        if not epsilons:
            return []
        rows = []
        for kind in ("fgsm", "random sign"):
            for quantity in self.sweep[epsilons[0]].get(kind, {}):
                label = display_name(quantity) if quantity not in ("flipped", "output change") else quantity
                rows.append([kind, label] + [fmt(self.sweep[e][kind][quantity]["mean"])
                                             + ci(self.sweep[e][kind][quantity]["interval"]) for e in epsilons])
        return ["## Epsilon sweep (Fig. 4 at several steps)", "",
                "Per step: the share of predictions flipped, the mean absolute change of the clean class's "
                "probability, and each map's Pearson correlation with its clean map, under FGSM and under a "
                "random-sign perturbation of the same size.", "",
                table(["perturbation", "quantity"] + [f"epsilon {e}" for e in epsilons], rows), ""]


def _top_set(maps: torch.Tensor, alpha: float, seeds: torch.Tensor) -> torch.Tensor:
    """Boolean ``(B, 1, *spatial)``: each map's top-k pixels (k at ``alpha``, ties broken at random per image)."""
    return perturbation_masks(maps, maps, alpha, seeds)[0]


def _share_in(top: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``(B,)`` share of the pixels of the sets ``top`` that are also in ``other``."""
    return (top & other).flatten(1).sum(1).double() / top.flatten(1).sum(1).double()


class TopKOverlap(Control):
    """For C = 2: the share of the top-k pixels of S(x) that are also top-k of the vanilla gradient (all of them in
    exact arithmetic: for a binary softmax both maps are multiples of |grad(z_1 - z_0)|)."""

    accumulators = ("overlap",)

    def reset(self) -> None:
        self.overlap: Dict[float, List[float]] = {a: [] for a in self.study.alphas}

    def update(self, batch: StudyBatch) -> None:
        if batch.num_classes != 2 or not {SENSITIVE, GRADIENT} <= set(batch.maps):
            return
        with batch.timed("localization and overlap"):
            for alpha in self.study.alphas:
                top_s, top_g = (_top_set(batch.maps[m], alpha, batch.seeds) for m in (SENSITIVE, GRADIENT))
                self.overlap[alpha] += _share_in(top_s, top_g).tolist()

    def compute(self, totals: StudyTotals) -> "TopKOverlapResult":
        return TopKOverlapResult({f"{a:g}": float(np.mean(v)) for a, v in self.overlap.items() if v})


@dataclass
class TopKOverlapResult(Section):
    """``overlap[alpha]``: the mean share of S's top-k pixels that are the gradient's top-k too (C = 2)."""

    overlap: Dict[str, float]

    def results(self) -> dict:
        return {f"topk_overlap_{SENSITIVE}_vs_gradient": self.overlap}

    def findings(self, sections: Sections) -> List[str]:
        """How far S and the vanilla gradient, equal rankings in exact arithmetic, agree in this run, and which of
        the perturbed sets carries the difference of their ratios."""
        if not self.overlap:
            return []
        measured = ", ".join(f"{fmt(v)} at {_percent(a)} %" for a, v in self.overlap.items())
        line = (f"For C = 2 the {IFIM.display} sensitive map is a multiple of |grad(z_1 - z_0)| and so ranks pixels as "
                "the vanilla gradient |grad log p| does: their top-k sets coincide in exact arithmetic. Measured mean "
                f"top-k overlap: {measured}")
        low = min(self.overlap.values())
        line += "." if low >= 1.0 else (f"; the up to {fmt(100 * (1 - low), 2)} % that differ are pixels whose order "
                                        "the float32 round-off of the two computations changes (in float64 the sets "
                                        "agree exactly, tests/test_study.py).")
        perturbation = sections.find(PerturbationResult)
        gaps: Dict[str, List[float]] = {"high": [], "low": []}
        for per_method in (perturbation.scores.values() if perturbation else []):
            if {IFIM.name, GRADIENT} <= set(per_method):
                for alpha in per_method[IFIM.name]:
                    for name in gaps:
                        gaps[name].append(abs(per_method[IFIM.name][alpha][f"f1_{name}"]
                                              - per_method[GRADIENT][alpha][f"f1_{name}"]))
        if gaps["high"]:
            high, low = max(gaps["high"]), max(gaps["low"])
            carrier = "bottom" if low > high else "top"
            line += (f" Over every fill and fraction, F1 after perturbing the top sets differs between the two by at "
                     f"most {fmt(high)}, after perturbing the bottom sets ({IFIM.display}'s BottomK(I), the gradient's "
                     f"own bottom-k) by up to {fmt(low)}: the {carrier} sets carry the difference of their ratios.")
        return [line]


class ComplementVsImage(Control):
    """The Pearson correlation of I(x) with the image's own magnitude |x| (summed over channels): x_sens is a small
    part of x, so I(x) is close to |x| and I's stability under FGSM is the image's own."""

    accumulators = ("pearson",)

    def reset(self) -> None:
        self.pearson: List[float] = []

    def update(self, batch: StudyBatch) -> None:
        if COMPLEMENT in batch.maps:
            self.pearson += pearson_per_image(batch.maps[COMPLEMENT], batch.x.abs().sum(1, keepdim=True)).tolist()

    def compute(self, totals: StudyTotals) -> "ComplementResult":
        values = self.pearson or [math.nan]
        interval = ([math.nan, math.nan] if not self.pearson or totals.weights is None
                    else percentile_interval(resampled_means(self.pearson, totals.weights)))
        return ComplementResult({**mean_std(values), "interval": interval})


@dataclass
class ComplementResult(Section):
    """``correlation``: mean_std of the per-image Pearson correlation of I(x) with |x|, and its ``interval``."""

    correlation: dict
    close: ClassVar[float] = 0.9  # a correlation whose whole interval lies above this counts as "close to |x|"

    def results(self) -> dict:
        return {"complement_vs_image": self.correlation}

    def findings(self, sections: Sections) -> List[str]:
        if not self.correlation.get("n"):
            return []
        r = self.correlation["mean"]
        low, high = self.correlation.get("interval", [math.nan, math.nan])
        bound = self.close
        if not (defined(low) and low >= bound):
            said = ("differs from the image" if defined(high) and high < bound else
                    f"is not resolved as close to the image (its interval reaches below {bound:g})")
            return [f"I(x) {said}: its Pearson correlation with |x| averages {fmt(r)} [{fmt(low)}, {fmt(high)}]."]
        fgsm_result = sections.find(FGSMResult)
        stability = (fgsm_result.fgsm["pearson"].get(COMPLEMENT, {}) if fgsm_result else {}).get("mean", math.nan)
        return [f"I(x) is close to the image itself: its Pearson correlation with |x| averages {fmt(r)} "
                f"[{fmt(low)}, {fmt(high)}], so x_sens is a small part of x and I's stability under FGSM "
                f"({fmt(stability)}) is mostly the image's own, not evidence about the decomposition."]


class Detectability(Control):
    """Recall of the clean predictions over the positives whose signal amplitude falls in each bin of ``bins``, with
    95 % unit-bootstrap intervals (an SKS/BKS detectability curve; a positive counts as detected when any signal
    class, label >= 1, is predicted); empty without amplitudes."""

    accumulators = ("amplitudes",)

    def __init__(self, bins: Sequence[float] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35)):
        self.bins = tuple(bins)

    def reset(self) -> None:
        self.amplitudes: List[float] = []  # per image (0: no signal, NaN: unknown)

    def update(self, batch: StudyBatch) -> None:
        amplitudes = (torch.full((len(batch.x),), math.nan) if batch.signal_amplitude is None
                      else torch.as_tensor(batch.signal_amplitude).view(-1).double().cpu())
        self.amplitudes += amplitudes.tolist()

    def compute(self, totals: StudyTotals) -> "DetectabilityResult":
        amplitudes = np.asarray(self.amplitudes, dtype=np.float64)
        positive = (totals.y.numpy() >= 1) & np.isfinite(amplitudes) & (amplitudes > 0)
        if not positive.any() or len(self.bins) < 2:
            return DetectabilityResult({})
        hits = (totals.clean.numpy() >= 1).astype(np.float64)  # detected: any signal class predicted
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
        return DetectabilityResult({"bins": bins, "n_positives": int(positive.sum()), "outside_bins": outside})


@dataclass
class DetectabilityResult(Section):
    """``curve`` = ``{"bins": [{low, high, n, recall, interval}], "n_positives", "outside_bins"}`` (empty without
    amplitudes)."""

    files: ClassVar[Tuple[str, ...]] = ("detectability.csv", "fig_detectability.png")
    curve: dict

    def results(self) -> dict:
        return {"detectability": self.curve}

    def _filled(self) -> List[dict]:
        return [b for b in self.curve.get("bins", []) if b["n"]]

    def findings(self, sections: Sections) -> List[str]:
        bins = self._filled()
        if len(bins) < 2:
            return []
        first, last = bins[0], bins[-1]
        trend = ("rises" if last["recall"] > first["recall"] else "falls" if last["recall"] < first["recall"]
                 else "stays")
        return [f"Detectability: recall {trend} from {fmt(first['recall'])} [{fmt(first['interval'][0])}, "
                f"{fmt(first['interval'][1])}] for signal amplitudes {first['low']:g}-{first['high']:g} to "
                f"{fmt(last['recall'])} [{fmt(last['interval'][0])}, {fmt(last['interval'][1])}] for "
                f"{last['low']:g}-{last['high']:g}."]

    def render(self, out: Path) -> List[str]:
        if not self.curve.get("bins"):
            return []
        write_csv(out / "detectability.csv", ["amplitude_low", "amplitude_high", "n", "recall", "low", "high"],
                  [[b["low"], b["high"], b["n"], b["recall"], *b["interval"]] for b in self.curve["bins"]])
        lines = ["## Detectability: recall by signal amplitude", "",
                 f"Clean predictions of the {self.curve['n_positives']} signal-present test images, by the amplitude "
                 "of the inserted signal (95 % unit-bootstrap intervals).", "",
                 table(["amplitude", "images", "recall"],
                       [[f"{b['low']:g}-{b['high']:g}", b["n"],
                         fmt(b["recall"]) + (ci(b["interval"]) if b["n"] else "")] for b in self.curve["bins"]]), ""]
        bins = self._filled()
        if bins:
            band = {"recall": ([b["interval"][0] for b in bins], [b["interval"][1] for b in bins])}
            save_figure_atomic(line_panels_figure([(b["low"] + b["high"]) / 2 for b in bins],
                                                  {"clean test images": {"recall": [b["recall"] for b in bins]}},
                                                  "signal amplitude (bin centre)",
                                                  "Detectability: recall by signal amplitude (95 % interval shaded)",
                                                  bands={"clean test images": band}), out / "fig_detectability.png")
            lines += ["![detectability](fig_detectability.png)", ""]
        return lines


class SignalLocalization(Control):
    """Where a signal is known (positives carrying ``signal_center`` >= 0): each map's energy inside the disk of
    radius ``radius_in_sigmas`` sigma against the disk's area share, the pointing game and the AUROC
    (``scripts.metrics.signal_localization``), with intervals over the units of those images."""

    accumulators = ("values", "units")

    def __init__(self, radius_in_sigmas: float = 2.0):
        self.radius = radius_in_sigmas

    def reset(self) -> None:
        self.values: Dict[str, Dict[str, List[float]]] = {m: {} for m in self.study.maps}
        self.units: List[str] = []  # the unit of each image in the lists

    def update(self, batch: StudyBatch) -> None:
        known = batch.known_signals()
        if known is None or not known.any():
            return
        with batch.timed("localization and overlap"):
            centers = torch.as_tensor(batch.signal_center).to(batch.x.device).view(len(batch.x), -1).double()
            sigmas = torch.as_tensor(batch.signal_sigma).to(batch.x.device).view(-1).double()[known]
            self.units += [batch.units[i] for i in known.nonzero()[:, 0].tolist()]
            for m in self.study.maps:
                for key, values in signal_localization(batch.maps[m][known], centers[known], sigmas,
                                                       self.radius).items():
                    self.values[m].setdefault(key, []).extend(values.tolist())

    def compute(self, totals: StudyTotals) -> "LocalizationResult":
        results = {m: {key: float(np.mean(values)) for key, values in self.values[m].items()}
                   for m in self.study.maps if self.values[m]}
        for m in results:
            results[m]["n"] = len(self.values[m]["pointing_hit"])
        intervals: Dict[str, Dict[str, List[float]]] = {}
        paired: Dict[str, Dict[str, List[float]]] = {}
        if self.units and totals.weights is not None:
            weights = unit_bootstrap_weights(self.units, totals.n_bootstrap, totals.seed)
            resampled = {m: {key: resampled_means(values, weights) for key, values in self.values[m].items()}
                         for m in results}
            intervals = {m: {key: percentile_interval(v) for key, v in per_key.items()}
                         for m, per_key in resampled.items()}
            paired = {key: paired_differences({m: per_key[key] for m, per_key in resampled.items()}, SENSITIVE)
                      for key in LocalizationResult.scores}
        return LocalizationResult(results, intervals, self.radius, paired)


@dataclass
class LocalizationResult(Section):
    """``per_map[map]`` = ``{energy_fraction, area_fraction, pointing_hit, auroc, n}`` over the positives with a
    known signal, ``per_map_intervals`` in the same layout; ``radius``: the disk's radius in sigmas."""

    files: ClassVar[Tuple[str, ...]] = ("localization.csv", "fig_localization.png")
    # the three scores a finding weighs: energy on the signal (per image the disk is the same for every map, so
    # this ranks maps as energy / area does), the rank-based AUROC, the pointing game
    scores: ClassVar[Tuple[str, ...]] = ("energy_fraction", "auroc", "pointing_hit")
    per_map: Dict[str, dict]
    per_map_intervals: Dict[str, dict] = field(default_factory=dict)
    radius: float = 2.0
    paired: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)  # score -> map -> S minus map

    def results(self) -> dict:
        return {"localization": self.per_map}

    def intervals(self) -> Intervals:
        return {"localization": self.per_map_intervals, f"localization_{SENSITIVE}_minus": self.paired}

    def findings(self, sections: Sections) -> List[str]:
        gain = {m: v["energy_fraction"] / v["area_fraction"] for m, v in self.per_map.items() if v["area_fraction"]}
        winner = best(gain, highest=True)
        if winner is None:
            return []
        lines = [f"Localization: {display_name(winner)} puts the most map energy on the known signal, "
                 f"{fmt(gain[winner], 1)} times a uniform map's share"
                 + ("." if winner == SENSITIVE or SENSITIVE not in gain else
                    f"; {display_name(SENSITIVE)}: {fmt(gain[SENSITIVE], 1)} times.")]
        if SENSITIVE not in self.per_map:
            return lines
        names = {"energy_fraction": "energy on the signal", "auroc": "AUROC", "pointing_hit": "pointing game"}
        judged = []
        for key in self.scores:
            scores = {m: v[key] for m, v in self.per_map.items() if key in v}
            if SENSITIVE not in scores:
                continue
            holds = judge(scores, SENSITIVE, self.paired.get(key, {}), highest=True)[1]
            judged.append((key, brief(scores, SENSITIVE, self.paired.get(key, {}), highest=True), holds))
        clear = [names[key] for key, _, holds in judged if holds]
        ours = self.per_map[SENSITIVE]
        claims = "; ".join(f"by {names[key]} {fmt(ours.get(key, math.nan))} ({text})" for key, text, _ in judged)
        lines.append(f"Localization, {len(judged)} scores weighed, {display_name(SENSITIVE)}: {claims}. It leads "
                     f"with an interval clear of 0 by {len(clear)} of {len(judged)} scores"
                     + (f" ({', '.join(clear)})." if clear else "."))
        return lines

    def render(self, out: Path) -> List[str]:
        if not self.per_map:
            return []
        loc = self.per_map
        write_csv(out / "localization.csv", ["map", "energy_fraction", "area_fraction", "pointing_hit", "n"],
                  [[m, v["energy_fraction"], v["area_fraction"], v["pointing_hit"], v["n"]] for m, v in loc.items()])
        save_figure_atomic(grouped_bar_figure({display_name(m): [v["energy_fraction"], v["pointing_hit"]]
                                               for m, v in loc.items()},
                                              ["energy inside signal disk", "pointing-game hit rate"], "fraction",
                                              "Localization of the known signal (disk area fraction dashed)",
                                              reference=float(np.mean([v["area_fraction"] for v in loc.values()]))),
                           out / "fig_localization.png")

        def interval(m: str, key: str) -> str:
            return ci(self.per_map_intervals.get(m, {}).get(key))

        return ["## Localization of the known signal", "",
                f"Share of map energy inside the disk of radius {self.radius:g} sigma around the inserted signal, that "
                "disk's area share (what a uniform map scores), the AUROC of the map's values against the disk (0.5: "
                "chance) and the pointing-game hit rate, over positives.", "",
                table(["map", "energy inside", "area share", "energy / area", "AUROC", "pointing hit", "images"],
                      [[display_name(m), fmt(v["energy_fraction"]) + interval(m, "energy_fraction"),
                        fmt(v["area_fraction"]),
                        fmt(v["energy_fraction"] / v["area_fraction"] if v["area_fraction"] else math.nan, 2),
                        fmt(v.get("auroc", math.nan)) + interval(m, "auroc"),
                        fmt(v["pointing_hit"]) + interval(m, "pointing_hit"), v["n"]] for m, v in loc.items()]), "",
                "![localization](fig_localization.png)", ""]


class ModelRandomization(Control):
    """Model-parameter randomization (Adebayo et al. 2018): Spearman correlation of the maps of the model and of a
    copy with every parameter re-initialized (seeded by the study's seed); high correlation: the map does not depend
    on what the model learned."""

    accumulators = ("spearman",)

    def __init__(self):
        self._random_model: Optional[nn.Module] = None

    def reset(self) -> None:
        self.spearman: Dict[str, List[float]] = {m: [] for m in self.study.maps}

    def __getstate__(self) -> dict:
        """What is sent to another process: the accumulators, not the model copy."""
        return {**self.__dict__, "_random_model": None}

    def update(self, batch: StudyBatch) -> None:
        if self._random_model is None:
            self._random_model = randomized_copy(batch.model, seed=self.study.seed)
        random_maps = batch.maps_of(self._random_model, batch.x, "randomized-model maps")
        with batch.timed("correlations"):
            for m in self.study.maps:
                self.spearman[m] += spearman_per_image(batch.maps[m], random_maps[m]).tolist()

    def compute(self, totals: StudyTotals) -> "RandomizationResult":
        result = RandomizationResult({m: mean_std(self.spearman[m]) for m in self.study.maps})
        if totals.weights is not None:
            result.per_map_intervals = {m: percentile_interval(resampled_means(self.spearman[m], totals.weights))
                                        for m in self.study.maps}
        return result


class CascadingRandomization(FollowingControl):
    """Cascading model randomization (Adebayo et al. 2018): the layers re-initialized one more at a time from the
    output down to the input (``scripts.metrics.cascade_layers``), and per step each map's Spearman correlation with
    the trained model's; a map that keeps its correlation while the layers that decide the class are random does
    not depend on them.

    Args:
        methods: the map methods to follow (default every method of the study); each step costs one computation of
            their maps.
    """

    accumulators = ("spearman",)
    bound: ClassVar[float] = 0.5

    def __init__(self, methods: Optional[Sequence[str]] = None):
        self.methods = None if methods is None else list(methods)
        self._steps: Optional[List[Tuple[str, nn.Module]]] = None

    def reset(self) -> None:
        self.spearman: Dict[str, Dict[str, List[float]]] = {}  # step (layers so far) -> map -> per image

    def __getstate__(self) -> dict:
        """What is sent to another process: the accumulators, not the model copies."""
        return {**self.__dict__, "_steps": None}

    def update(self, batch: StudyBatch) -> None:
        if not self.followed:
            return
        if self._steps is None:
            layers = cascade_layers(batch.model)
            self._steps = [(f"{i + 1} of {len(layers)} (to {layers[i]})",
                            randomized_copy(batch.model, seed=self.study.seed, layers=layers[:i + 1]))
                           for i in range(len(layers))]
        for step, model in self._steps:
            maps = batch.maps_of(model, batch.x, "cascading randomization", self.followed)
            with batch.timed("correlations"):
                for m in self.followed_maps:
                    self.spearman.setdefault(step, {}).setdefault(m, []).extend(
                        spearman_per_image(batch.maps[m], maps[m]).tolist())

    def compute(self, totals: StudyTotals) -> "CascadeResult":
        per_step = {step: {m: mean_std(v) for m, v in per_map.items()} for step, per_map in self.spearman.items()}
        intervals = {} if totals.weights is None else {
            step: {m: percentile_interval(resampled_means(v, totals.weights)) for m, v in per_map.items()}
            for step, per_map in self.spearman.items()}
        return CascadeResult(per_step, intervals)


@dataclass
class CascadeResult(Section):
    """``per_step[step][map]``: mean_std of the Spearman correlation with the trained model's maps once the layers
    of ``step`` (counted from the output) are re-initialized; ``step_intervals`` in the same layout."""

    files: ClassVar[Tuple[str, ...]] = ("fig_cascading_randomization.png",)
    per_step: Dict[str, Dict[str, dict]]
    step_intervals: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)
    bound: ClassVar[float] = 0.5

    def results(self) -> dict:
        return {"cascading_randomization": self.per_step}

    def intervals(self) -> Intervals:
        return {"cascading_randomization": self.step_intervals}

    def findings(self, sections: Sections) -> List[str]:
        steps = list(self.per_step)
        if not steps or not self.step_intervals:
            return []
        parts = []
        for m in self.per_step[steps[0]]:
            below = [i for i, step in enumerate(steps) if defined(self.step_intervals[step][m][1])
                     and self.step_intervals[step][m][1] < self.bound]
            parts.append(f"{display_name(m)} after {below[0] + 1} of {len(steps)}" if below else
                         f"{display_name(m)} not even with all {len(steps)}")
        return [f"Cascading randomization (layers re-initialized from the output down): the rank correlation with "
                f"the trained model's maps falls below {self.bound:g}, its whole 95 % interval under it, for "
                + "; ".join(parts) + " layers."]

    def render(self, out: Path) -> List[str]:
        steps = list(self.per_step)
        if not steps:
            return []
        maps = list(self.per_step[steps[0]])
        curves = {display_name(m): [self.per_step[step][m]["mean"] for step in steps] for m in maps}
        save_figure_atomic(line_panels_figure(list(range(1, len(steps) + 1)), {"Spearman correlation": curves},
                                              "layers re-initialized, from the output down",
                                              "Cascading model randomization (lower = the map depends on the layers "
                                              "randomized so far)"), out / "fig_cascading_randomization.png")
        return ["## Cascading model randomization", "",
                "Spearman correlation of each map with the trained model's after re-initializing the layers from the "
                "output down, one more per column (Adebayo et al. 2018).", "",
                table(["map"] + steps, [[display_name(m)] + [fmt(self.per_step[step][m]["mean"])
                                                             + ci(self.step_intervals.get(step, {}).get(m))
                                                             for step in steps] for m in maps]), "",
                "![cascading randomization](fig_cascading_randomization.png)", ""]


@dataclass
class RandomizationResult(Section):
    """``per_map[map]``: mean_std of the Spearman correlation of its maps under the trained and the randomized
    model; ``per_map_intervals[map]``: the mean's interval."""

    files: ClassVar[Tuple[str, ...]] = ("randomization.csv", "fig_randomization.png")
    per_map: Dict[str, dict]
    per_map_intervals: Optional[Dict[str, List[float]]] = None
    bound: ClassVar[float] = 0.5  # a map correlated above this with the randomized model's fails the check

    def results(self) -> dict:
        return {"randomization": self.per_map}

    def intervals(self) -> Intervals:
        return {} if self.per_map_intervals is None else {"randomization": self.per_map_intervals}

    def findings(self, sections: Sections) -> List[str]:
        intervals = self.per_map_intervals or {}
        failing = sorted(m for m, v in intervals.items() if defined(v[0]) and v[0] > self.bound)
        if not failing:
            return []
        return [f"Model randomization: the maps of {', '.join(map(display_name, failing))} keep a rank correlation "
                f"above {self.bound:g} with those of a randomly initialised copy, their whole 95 % interval above it ("
                + ", ".join(f"{display_name(m)}{ci(intervals[m])}" for m in failing) + "), so they depend little "
                "on what the model learned."]

    def render(self, out: Path) -> List[str]:
        per_map = self.per_map
        write_csv(out / "randomization.csv", ["map", "spearman_mean", "spearman_std", "n", "n_undefined"],
                  [[m, v["mean"], v["std"], v["n"], v["n_undefined"]] for m, v in per_map.items()])
        save_figure_atomic(grouped_bar_figure({display_name(m): [v["mean"]] for m, v in per_map.items()},
                                              ["trained vs random"],
                                              "Spearman correlation", "Model-randomization sanity check (lower = "
                                              "map depends on the learned weights)",
                                              errors={display_name(m): [v["std"]] for m, v in per_map.items()}),
                           out / "fig_randomization.png")
        intervals = self.per_map_intervals or {}
        return ["## Model-parameter randomization sanity check", "",
                "Spearman correlation between the maps of the trained model and of a copy with every parameter "
                "re-initialised (Adebayo et al. 2018). A map that passes changes: low correlation.", "",
                table(["map", "Spearman mean", "std", "images", "undefined"],
                      [[display_name(m), fmt(v["mean"]) + ci(intervals.get(m)), fmt(v["std"]), v["n"], v["n_undefined"]]
                       for m, v in per_map.items()]), "", "![randomization](fig_randomization.png)", ""]


class TrivialDetectors(Control):
    """Can the benchmark be solved without a classifier? The AUROC of each trivial detector
    (:data:`scripts.detectors.TRIVIAL_DETECTORS`: the brightest pixel, the mean intensity) for the first class (signal
    absent) against the others, beside the classifier's (its probability of any other class), each with a
    cluster-bootstrap interval, and the paired interval of the classifier's AUROC minus each detector's. A benchmark
    whose signal a trivial detector finds cannot tell maps apart: a map pointing at the brightest pixel would
    "localise" it for free."""

    accumulators = ("scores",)

    def reset(self) -> None:
        self.scores: Dict[str, List[float]] = {}

    def update(self, batch: StudyBatch) -> None:
        for name, values in detector_scores(batch.x).items():
            self.scores.setdefault(name, []).extend(values.tolist())

    def compute(self, totals: StudyTotals) -> "DetectorResult":
        positive = totals.y.numpy() != 0
        classifier = "classifier"
        scores = {name: np.asarray(v) for name, v in self.scores.items()}
        scores[classifier] = 1.0 - totals.clean_probabilities[:, 0].double().numpy()
        auroc = {name: float(weighted_aurocs(v, positive)[0]) for name, v in scores.items()}
        intervals: Dict[str, List[float]] = {}
        minus: Dict[str, List[float]] = {}
        if totals.weights is not None:
            resampled = {name: weighted_aurocs(v, positive, totals.weights) for name, v in scores.items()}
            intervals = {name: percentile_interval(v) for name, v in resampled.items()}
            minus = {name: percentile_interval(resampled[classifier] - v) for name, v in resampled.items()
                     if name != classifier}
        return DetectorResult(auroc, intervals, minus, int(positive.sum()), int((~positive).sum()))


@dataclass
class DetectorResult(Section):
    """``auroc[name]`` of each trivial detector and of the ``classifier`` for class 0 against the others, their
    ``auroc_intervals``, and ``classifier_minus[detector]``: the paired interval of the classifier's AUROC minus the
    detector's."""

    auroc: Dict[str, float]
    auroc_intervals: Dict[str, List[float]]
    classifier_minus: Dict[str, List[float]]
    n_positive: int
    n_negative: int

    def results(self) -> dict:
        return {"trivial_detectors": {"auroc": self.auroc, "n_positive": self.n_positive,
                                      "n_negative": self.n_negative}}

    def intervals(self) -> Intervals:
        return {"trivial_detectors": self.auroc_intervals, "classifier_auroc_minus": self.classifier_minus}

    def _detectors(self) -> List[str]:
        return [name for name in self.auroc if name != "classifier"]

    def findings(self, sections: Sections) -> List[str]:
        if not self.n_positive or not self.n_negative:
            return []
        parts = []
        for name in self._detectors():
            line = f"the {name} detector's AUROC is {fmt(self.auroc[name])}{ci(self.auroc_intervals.get(name))}"
            if name in self.classifier_minus:
                line += (f", the classifier's minus it {fmt(self.auroc['classifier'] - self.auroc[name])}"
                         f"{ci(self.classifier_minus[name])} ({_sign_status(self.classifier_minus[name])})")
            parts.append(line)
        return [f"Trivial detectors (class 0 against the others): the classifier's AUROC is "
                f"{fmt(self.auroc['classifier'])}{ci(self.auroc_intervals.get('classifier'))}; "
                + "; ".join(parts) + "."]

    def render(self, out: Path) -> List[str]:
        if not self.n_positive or not self.n_negative:
            return []
        rows = [[name, fmt(self.auroc[name]) + ci(self.auroc_intervals.get(name)),
                 "" if name == "classifier" else fmt(self.auroc["classifier"] - self.auroc[name])
                 + ci(self.classifier_minus.get(name))] for name in ["classifier", *self._detectors()]]
        return ["## Trivial detectors: can the task be solved without the classifier?", "",
                f"AUROC for class 0 (signal absent) against the others, {self.n_negative} against {self.n_positive} "
                "test images; the classifier scores an image by its probability of any other class. Ties count one "
                "half (the expectation of breaking them at random). A detector near 0.5 cannot find the signal, so "
                "a map that points at the brightest pixel gains nothing from it.", "",
                table(["scorer", "AUROC", "classifier minus scorer (paired)"], rows), ""]


def _sign_status(interval: Sequence[float]) -> str:
    """What a paired interval of a difference says: above 0, below 0, within the tie margin or including 0."""
    status = interval_status({"d": interval}, "d", 1.0)
    return {"clear": "clear of 0, above", "other way": "clear of 0, below", "tie": "a tie",
            None: "no interval"}.get(status, status)


class BeyondGradient(Control):
    """What iFIM adds to a gradient: per image, the numerical rank of F(x) and K (eq. 13) at each of ``rhos``, and
    the share of S(x)'s top-k pixels that are also top-k of the vanilla gradient of the predicted class
    (|grad log p_c|) and of the gradient of each logit (|grad z_c|), at each of the study's fractions. For C = 2
    every one of these maps is a multiple of one gradient; from C = 3 on, S mixes up to C - 1 directions.

    Args:
        rhos: energy thresholds of the K distribution (the paper: 0.9).
    """

    accumulators = ("ranks", "ks", "overlap")

    def __init__(self, rhos: Sequence[float] = (0.5, 0.7, 0.9, 0.99)):
        self.rhos = tuple(float(r) for r in rhos)

    def reset(self) -> None:
        self.ranks: List[int] = []
        self.ks: Dict[str, List[int]] = {f"{r:g}": [] for r in self.rhos}
        self.overlap: Dict[str, Dict[str, List[float]]] = {}

    def _logit_gradients(self, batch: StudyBatch) -> torch.Tensor:
        """``(C, B, 1, *spatial)``: |grad_x z_c| per class, summed over input channels."""
        with borrowed(batch.model, grad=True):
            x = batch.x.detach().clone().requires_grad_(True)
            logits = batch.model(x)
            grads = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < logits.shape[1] - 1)[0]
                     for c in range(logits.shape[1])]
        return torch.stack([g.detach().abs().sum(1, keepdim=True) for g in grads])

    def update(self, batch: StudyBatch) -> None:
        with batch.timed("iFIM beyond a gradient"):
            result = ifim_decompose(batch.model, batch.x)
            self.ranks += result.rank.tolist()
            for rho in self.rhos:
                self.ks[f"{rho:g}"] += energy_k(result.eigenvalues, result.rank, rho).tolist()
            if SENSITIVE not in batch.maps:
                return
            references = {"vanilla gradient of the predicted class": batch.maps.get(GRADIENT)}
            for c, grad in enumerate(self._logit_gradients(batch)):
                references[f"gradient of logit {c}"] = grad
            for alpha in self.study.alphas:
                top_s = _top_set(batch.maps[SENSITIVE], alpha, batch.seeds)  # once for every reference
                for name, reference in references.items():
                    if reference is None:
                        continue
                    shared = _share_in(top_s, _top_set(reference, alpha, batch.seeds))
                    self.overlap.setdefault(name, {}).setdefault(f"{alpha:g}", []).extend(shared.tolist())

    def compute(self, totals: StudyTotals) -> "BeyondGradientResult":
        ranks = np.asarray(self.ranks, dtype=np.float64)

        def summary(values) -> dict:
            values = np.asarray(values, dtype=np.float64)
            interval = (percentile_interval(resampled_means(values, totals.weights)) if totals.weights is not None
                        else [math.nan, math.nan])
            return {"mean": float(values.mean()) if values.size else math.nan, "interval": interval}

        rank_counts = {str(int(r)): int((ranks == r).sum()) for r in np.unique(ranks)}
        k_counts = {rho: {str(int(k)): int((np.asarray(v) == k).sum()) for k in np.unique(v)}
                    for rho, v in self.ks.items()}
        return BeyondGradientResult(
            num_classes=totals.num_classes, n_images=len(ranks), rank_counts=rank_counts,
            rank_at_least_2=summary(ranks >= 2), k_counts=k_counts,
            k_at_least_2={rho: summary(np.asarray(v) >= 2) for rho, v in self.ks.items()},
            overlap={name: {alpha: summary(v) for alpha, v in per_alpha.items()}
                     for name, per_alpha in self.overlap.items()})


@dataclass
class BeyondGradientResult(Section):
    """The rank and K distributions (``rank_counts``, ``k_counts[rho]``: value -> images), the shares of images with
    rank >= 2 and K >= 2 and ``overlap[reference][alpha]``: the mean top-k overlap of S with each gradient map, each
    ``{"mean", "interval"}``."""

    files: ClassVar[Tuple[str, ...]] = ("ifim_rank_k.csv",)
    num_classes: int
    n_images: int
    rank_counts: Dict[str, int]
    rank_at_least_2: Dict[str, object]
    k_counts: Dict[str, Dict[str, int]]
    k_at_least_2: Dict[str, Dict[str, object]]
    overlap: Dict[str, Dict[str, Dict[str, object]]]

    def results(self) -> dict:
        return {"ifim_rank_counts": self.rank_counts, "ifim_k_counts": self.k_counts,
                "ifim_rank_at_least_2": self.rank_at_least_2, "ifim_k_at_least_2": self.k_at_least_2,
                f"topk_overlap_{SENSITIVE}_vs_gradients": self.overlap}

    def _share(self, summary: Mapping[str, object]) -> str:
        return f"{fmt(100 * summary['mean'], 1)} %{ci(summary['interval'], scale=100)}"

    def findings(self, sections: Sections) -> List[str]:
        if not self.n_images:
            return []
        ks = "; ".join(f"rho {rho}: {self._share(v)}" for rho, v in self.k_at_least_2.items())
        line = (f"What iFIM adds to a gradient ({self.num_classes} classes): F(x) has rank >= 2 on "
                f"{self._share(self.rank_at_least_2)} of the test images, and S(x) mixes K >= 2 directions on "
                f"{ks}.")
        if self.overlap:
            alpha = min(next(iter(self.overlap.values())), key=float)
            means = {name: v[alpha] for name, v in self.overlap.items()}
            lowest, highest = min(means, key=lambda n: means[n]["mean"]), max(means, key=lambda n: means[n]["mean"])
            line += (f" At {_percent(alpha)} % of pixels, S's top-k set shares {fmt(means[highest]['mean'])}"
                     f"{ci(means[highest]['interval'])} of its pixels with the top-k set of the {highest} (the most) "
                     f"and {fmt(means[lowest]['mean'])}{ci(means[lowest]['interval'])} with that of the {lowest} "
                     "(the least).")
        perturbation = sections.find(PerturbationResult)
        if perturbation is not None and perturbation.primary is not None:
            tag, alpha = perturbation.primary["fill"], perturbation.primary["alpha"]
            gap = perturbation.differences.get(tag, {}).get(alpha, {}).get(GRADIENT)
            if gap is not None:
                status = _sign_status(gap)
                line += (" Whether that changes the perturbation result: at the primary endpoint iFIM's F1 ratio "
                         f"minus the vanilla gradient's has the paired interval {ci(gap).strip()} ({status}).")
        return [line]

    def render(self, out: Path) -> List[str]:
        if not self.n_images:
            return []
        values = sorted({int(v) for v in self.rank_counts} | {int(k) for c in self.k_counts.values() for k in c})
        write_csv(out / "ifim_rank_k.csv", ["value", "rank", *[f"k_rho_{rho}" for rho in self.k_counts]],
                  [[v, self.rank_counts.get(str(v), 0), *[c.get(str(v), 0) for c in self.k_counts.values()]]
                   for v in values])
        lines = ["## What iFIM adds to a gradient: rank, K and top-k overlap", "",
                 f"Images by the numerical rank of F(x) and by K (eq. 13) at each rho ({self.n_images} test images, "
                 f"{self.num_classes} classes: rank at most {self.num_classes - 1}).", "",
                 table(["value", "rank", *[f"K at rho {rho}" for rho in self.k_counts]],
                       [[v, self.rank_counts.get(str(v), 0), *[c.get(str(v), 0) for c in self.k_counts.values()]]
                        for v in values]), ""]
        if self.overlap:
            alphas = list(next(iter(self.overlap.values())))
            lines += ["Mean share of S(x)'s top-k pixels that are top-k of each gradient map (95 % intervals):", "",
                      table(["gradient map", *[f"{_percent(a)} %" for a in alphas]],
                            [[name, *[fmt(v[a]["mean"]) + ci(v[a]["interval"]) for a in alphas]]
                             for name, v in self.overlap.items()]), ""]
        return lines


class RhoSweep(Control):
    """Fig. 3's comparison at several energy thresholds: iFIM's S(x) and I(x) split at each of ``rhos`` from one
    decomposition per batch (:meth:`scripts.ifim.IFIMResult.at_rho`), their top / bottom pixels replaced by one
    ``fill`` at ``alphas``, and the vanilla gradient's top / bottom pixels under the same fill, so that each rho's
    F1 ratio has a paired interval against the gradient's. It answers whether the choice of rho, which decides how
    many of F(x)'s directions S mixes, changes what the perturbation study says about iFIM against a gradient.

    Args:
        rhos: the energy thresholds (eq. 13).
        fill: what replaces the perturbed pixels (the primary endpoint's fill, so the sweep reads beside it).
        alphas: the perturbed fractions; None: the study's.
    """

    accumulators = ("probabilities", "ks")

    def __init__(self, rhos: Sequence[float], fill: Fill, alphas: Optional[Sequence[float]] = None):
        self.rhos = tuple(float(r) for r in rhos)
        if not self.rhos or not all(0 < r <= 1 for r in self.rhos):
            raise ValueError(f"rhos must be one or more thresholds in (0, 1], got {list(rhos)}.")
        self.fill = fill
        self.alphas = None if alphas is None else tuple(float(a) for a in alphas)

    def setup(self, study: StudySetup) -> None:
        self.alphas = study.alphas if self.alphas is None else self.alphas
        super().setup(study)

    def reset(self) -> None:
        # f"{rho:g}" or the gradient's map name -> (alpha, set) -> [(B, C) probabilities]
        self.probabilities: Dict[str, Dict] = {}
        self.ks: Dict[str, List[int]] = {f"{r:g}": [] for r in self.rhos}

    def _perturb(self, name: str, high: torch.Tensor, low: torch.Tensor, batch: StudyBatch) -> None:
        masks = perturbation_mask_sets(high, low, self.alphas, batch.seeds, sets=("high", "low"))
        for key, probs in perturbed_probabilities(batch.model, batch.x, masks, self.fill, batch.seeds).items():
            self.probabilities.setdefault(name, {}).setdefault(key, []).append(probs.cpu())

    def update(self, batch: StudyBatch) -> None:
        with batch.timed(f"rho sweep: {self.fill.name}"):
            result = ifim_decompose(batch.model, batch.x)
            for rho in self.rhos:
                split = result.at_rho(rho)
                self.ks[f"{rho:g}"] += split.k.tolist()
                self._perturb(f"{rho:g}", *split.maps(), batch)
            if GRADIENT in batch.maps:
                self._perturb(GRADIENT, batch.maps[GRADIENT], batch.maps[GRADIENT], batch)

    def compute(self, totals: StudyTotals) -> "RhoSweepResult":
        ratios, resampled = _high_low_ratios(self.probabilities, self.alphas, totals)
        minus_gradient: Dict[str, Dict[str, List[float]]] = {}
        if GRADIENT in resampled and totals.weights is not None:
            with np.errstate(invalid="ignore"):
                minus_gradient = {rho: {a: percentile_interval(resampled[rho][a] - resampled[GRADIENT][a])
                                        for a in resampled[rho]} for rho in self.ks}
        k_at_least_2 = {rho: float(np.mean(np.asarray(k) >= 2)) if k else math.nan for rho, k in self.ks.items()}
        return RhoSweepResult(self.fill.tag, self.fill.name, [f"{a:g}" for a in self.alphas], k_at_least_2, ratios,
                              minus_gradient)


@dataclass
class RhoSweepResult(Section):
    """``ratios[rho or the gradient][alpha]``: F1 ratios under the fill ``fill_tag``; ``k_at_least_2[rho]``: the
    share of images whose S mixes K >= 2 directions; ``minus_gradient[rho][alpha]``: the paired interval of iFIM's
    ratio at that rho minus the vanilla gradient's."""

    fill_tag: str
    fill_name: str
    alphas: List[str]
    k_at_least_2: Dict[str, float]
    ratios: Dict[str, Dict[str, float]]
    minus_gradient: Dict[str, Dict[str, List[float]]] = field(default_factory=dict)

    def results(self) -> dict:
        return {"rho_sweep": {"fill": self.fill_tag, "k_at_least_2": self.k_at_least_2, "ratios": self.ratios}}

    def intervals(self) -> Intervals:
        return {f"rho_sweep_ratio_{IFIM.name}_minus_{GRADIENT}": self.minus_gradient}

    def findings(self, sections: Sections) -> List[str]:
        rhos = [rho for rho in self.k_at_least_2 if rho in self.ratios]
        if not rhos:
            return []
        lines = []
        for alpha in self.alphas:
            parts, statuses = [], set()
            for rho in rhos:
                part = f"rho {rho} {fmt(self.ratios[rho][alpha])}"
                gap = self.minus_gradient.get(rho, {}).get(alpha)
                if gap is not None:
                    status = _sign_status(gap)
                    statuses.add(status)
                    part += f" (minus the gradient's {ci(gap).strip()}, {status})"
                parts.append(part)
            line = (f"Rho sweep at {_percent(alpha)} % of pixels replaced by {self.fill_name}: {IFIM.display}'s F1 "
                    "ratio is " + "; ".join(parts))
            if GRADIENT in self.ratios:
                line += f"; the vanilla gradient's {fmt(self.ratios[GRADIENT][alpha])}"
            if len(statuses) == 1:
                line += f". The comparison with the gradient reads the same at every rho ({statuses.pop()})."
            elif statuses:
                line += ". So the comparison with the gradient depends on rho."
            else:
                line += "."
            lines.append(line)
        return lines

    def render(self, out: Path) -> List[str]:
        rhos = [rho for rho in self.k_at_least_2 if rho in self.ratios]
        if not rhos:
            return []

        def cell(rho: str, alpha: str) -> str:
            gap = ci(self.minus_gradient.get(rho, {}).get(alpha))
            return fmt(self.ratios[rho][alpha]) + (f" (minus the gradient's{gap})" if gap else "")

        rows = [[f"rho {rho}", f"{fmt(100 * self.k_at_least_2[rho], 1)} %", *[cell(rho, a) for a in self.alphas]]
                for rho in rhos]
        if GRADIENT in self.ratios:
            rows.append([display_name(GRADIENT), "", *[fmt(self.ratios[GRADIENT][a]) for a in self.alphas]])
        return ["## Rho sweep of the perturbation study", "",
                f"{IFIM.display}'s F1 ratio (S's top pixels against I's bottom pixels, eq. 26) with S and I split at "
                f"each rho from one decomposition, pixels replaced by {self.fill_name}, beside the vanilla gradient's "
                "under the same fill; in brackets the paired 95 % interval of iFIM's ratio minus the gradient's.", "",
                table(["rho", "images with K >= 2", *[f"ratio {_percent(a)} %" for a in self.alphas]], rows), ""]
