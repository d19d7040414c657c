# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The evaluation report: every number of :class:`scripts.study.AttributionStudy` and Table II, as Markdown, CSV,
JSON and figures (Fig. 1-4 of the paper), with the findings stated from the numbers themselves.

:func:`write_report` builds the report in a hidden staging folder inside ``report_dir`` and then moves each of its
files into place: every file is whole, a failure before the moves leaves the previous report as it was, and files
in ``report_dir`` that are not the report's (:data:`REPORT_FILES`) are never touched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .atomic import atomic_write, remove_stale_temporaries, temporary_prefix, write_csv
from .visualize import grouped_bar_figure, line_panels_figure, maps_grid_figure, save_figure_atomic

__all__ = ["write_report", "findings", "REPORT_FILES"]

# Every file a report may write. Names a report writes replace the old ones; names it does not write this time
# (e.g. table2.csv without Table II) are removed, so the folder never mixes two reports. Nothing else is touched.
REPORT_FILES = ("report.md", "results.json", "perturbation.csv", "fgsm.csv", "randomization.csv", "localization.csv",
                "table2.csv", "curves.csv", "detectability.csv", "fig1_overlays.png", "fig3_perturbation_ratio.png",
                "fig3_f1_drops.png", "fig4_fgsm_correlation.png", "fig_randomization.png", "fig_localization.png",
                "fig_deletion_curves.png", "fig_detectability.png")

# What the paper reports (Table II; the claims of Fig. 3 and 4), shown beside this run's numbers. Table II columns by
# task: the MRI column is the SKS/BKS task's.
PAPER_TABLE2 = {"cxr": {"VGG16": ((0.77, 0.03), (0.78, 0.03)), "ResNet18": ((0.80, 0.01), (0.79, 0.03))},
                "oct": {"VGG16": ((0.98, 0.01), (0.98, 0.01)), "ResNet18": ((0.98, 0.01), (0.98, 0.01))},
                "mri": {"VGG16": ((0.97, 0.01), (0.96, 0.01)), "ResNet18": ((0.97, 0.01), (0.97, 0.01))}}


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _jsonable(value):
    """Plain JSON (no NaN / Infinity literals, which strict parsers reject): non-finite floats become null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _best(scores: Mapping[str, float], highest: bool) -> Optional[str]:
    finite = {k: v for k, v in scores.items() if v is not None and math.isfinite(v)}
    if not finite:
        return None
    return (max if highest else min)(finite, key=finite.get)


TIE = 1e-3  # results closer than this count as equal (e.g. S and the vanilla gradient, the same ranking for C = 2)


def _verdict(scores: Mapping[str, float], ours: str, best: Optional[str], direction: str) -> str:
    """'holds', 'holds, tied with ...' or 'does not hold: <best> is <direction> (<value>)'."""
    if best == ours:
        return "holds"
    if best is not None and math.isfinite(scores[ours]) and abs(scores[best] - scores[ours]) <= TIE:
        return f"holds only as a tie with {best} ({_fmt(scores[best])})"
    return f"does not hold: {best} is {direction} ({_fmt(scores[best]) if best else 'n/a'})"


def _interval_status(differences: Mapping[str, Sequence[float]], other: Optional[str], sign: float
                     ) -> Optional[str]:
    """What the paired bootstrap interval of ours minus ``other`` says in the claimed direction (``sign`` +1: ours
    higher): ``"tie"`` (within +-TIE), ``"clear"`` (clear of 0 that way), ``"other way"`` or ``"includes 0"``;
    None without an interval."""
    if other is None or other not in differences:
        return None
    low, high = differences[other]
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return None
    if max(abs(low), abs(high)) <= TIE:  # the same ranking (e.g. S and the gradient for C = 2): round-off only
        return "tie"
    if (sign > 0 and low > TIE) or (sign < 0 and high < -TIE):
        return "clear"
    if (sign > 0 and high < -TIE) or (sign < 0 and low > TIE):
        return "other way"
    return "includes 0"


def _paired(verdict: str, differences: Mapping[str, Sequence[float]], ours: str, other: Optional[str],
            sign: float) -> str:
    """Add to a verdict what the paired bootstrap interval of ``ours`` minus ``other`` says
    (:func:`_interval_status`)."""
    status = _interval_status(differences, other, sign)
    if status is None:
        return verdict
    low, high = differences[other]
    text = f"{ours} minus {other}: [{_fmt(low)}, {_fmt(high)}]"
    return {"tie": f"{verdict}; the 95 % interval of the difference stays within +-{TIE:g} ({text})",
            "clear": f"{verdict}, and the 95 % interval of the difference stays clear of 0 ({text})",
            "other way": f"{verdict}; the 95 % interval of the difference is clear of 0 the other way ({text})",
            "includes 0": f"{verdict}, but the 95 % interval of the difference includes 0 ({text}): not resolved by "
                          "this test set"}[status]


def _runner_up(scores: Mapping[str, float], ours: str, highest: bool) -> Optional[str]:
    return _best({m: v for m, v in scores.items() if m != ours}, highest)


def _perturbation_findings(study: dict) -> Tuple[List[str], Dict[str, int]]:
    """The paper's Fig. 3 claim (iFIM has the highest F1 ratio) under every fill, and a summary of where it holds;
    and per fill name, at how many fractions it holds with an interval clear of 0."""
    lines, alphas = [], [f"{a:g}" for a in study["alphas"]]
    names = _noise_names(study)
    holds_clear: Dict[str, int] = {}
    for tag, perturbation in study["perturbation"].items():
        if "ifim" not in perturbation:
            continue
        differences = (study.get("intervals") or {}).get("ratio_ifim_minus", {}).get(tag, {})
        parts, clear = [], 0
        for alpha in alphas:
            ratios = {m: v[alpha]["ratio"] for m, v in perturbation.items()}
            best = _best(ratios, highest=True)
            other = _runner_up(ratios, "ifim", highest=True) if best == "ifim" else best
            verdict = _paired(_verdict(ratios, "ifim", best, "higher"), differences.get(alpha, {}), "ifim", other, +1)
            clear += best == "ifim" and _interval_status(differences.get(alpha, {}), other, +1) == "clear"
            parts.append(f"at {100 * float(alpha):g} % it {verdict} (iFIM's ratio {_fmt(ratios['ifim'])})")
            ifim = perturbation["ifim"][alpha]
            if ifim["drop_high"] <= ifim["drop_random"]:
                parts.append(f"at {100 * float(alpha):g} % replacing iFIM's top pixels lowers F1 by "
                             f"{_fmt(ifim['drop_high'])}, no more than replacing random pixels "
                             f"({_fmt(ifim['drop_random'])}): the ratio reflects how harmless the bottom set is, "
                             "not that the top set is special")
        holds_clear[names.get(tag, tag)] = clear
        lines.append(f"Pixels replaced by {names.get(tag, tag)}: the claim that iFIM gets the highest F1 ratio: "
                     + "; ".join(parts) + ".")
    if holds_clear:
        lines.append(f"Summary of Fig. 3's claim over {len(alphas)} pixel fractions: "
                     f"{_claim_summary(holds_clear, len(alphas))}.")
    return lines, holds_clear


def _claim_summary(holds_clear: Mapping[str, int], n: int) -> str:
    counts = ", ".join(f"{k} of {n} under {name}" for name, k in holds_clear.items())
    return f"it holds with a 95 % interval clear of 0 at {counts}"


def _fgsm_verdict(study: dict) -> Optional[str]:
    """Fig. 4's claim (S has the lowest clean / adversarial correlation), judged with the paired interval."""
    correlations = {m: v["mean"] for m, v in study["fgsm"]["pearson"].items()}
    if "ifim_sensitive" not in correlations:
        return None
    lowest = _best(correlations, highest=False)
    other = _runner_up(correlations, "ifim_sensitive", highest=False) if lowest == "ifim_sensitive" else lowest
    return _paired(_verdict(correlations, "ifim_sensitive", lowest, "lower"),
                   (study.get("intervals") or {}).get("fgsm_pearson_ifim_sensitive_minus", {}), "ifim_sensitive",
                   other, -1)


def _curve_findings(study: dict) -> List[str]:
    """Which map orders pixels best by the deletion curves (LeRF minus MoRF AUC), iFIM's place with its interval."""
    curves = (study.get("curves") or {}).get("methods") or {}
    if "ifim" not in curves:
        return []
    lines = []
    differences = ((study.get("intervals") or {}).get("curves") or {}).get("delta_ifim_minus", {})
    for measure, label in (("f1", "F1"), ("prob", "true-class probability")):
        deltas = {m: v["auc"][f"delta_{measure}"] for m, v in curves.items()}
        best = _best(deltas, highest=True)
        other = _runner_up(deltas, "ifim", highest=True) if best == "ifim" else best
        verdict = _paired(_verdict(deltas, "ifim", best, "higher"), differences.get(measure, {}), "ifim", other, +1)
        lines.append(f"Deletion curves ({study['curves']['fill']}, alpha 0-{100 * study['curves']['alphas'][-1]:g} %), "
                     f"{label}: LeRF minus MoRF AUC is {_fmt(deltas['ifim'])} for iFIM; the claim that iFIM orders "
                     f"pixels best by it {verdict}.")
    return lines


def _identity_findings(study: dict) -> List[str]:
    """For C = 2: how far S and the vanilla gradient, equal rankings in exact arithmetic, agree in this run, and
    which of the perturbed sets carries the difference of their ratios."""
    overlap = study.get("topk_overlap_ifim_sensitive_vs_gradient") or {}
    if not overlap:
        return []
    measured = ", ".join(f"{_fmt(v)} at {100 * float(a):g} %" for a, v in overlap.items())
    line = ("For C = 2 the iFIM sensitive map is a multiple of |grad(z_1 - z_0)| and so ranks pixels as the vanilla "
            f"gradient |grad log p| does: their top-k sets coincide in exact arithmetic. Measured mean top-k overlap: "
            f"{measured}")
    low = min(overlap.values())
    line += "." if low >= 1.0 else (f"; the up to {_fmt(100 * (1 - low), 2)} % that differ are pixels whose order the "
                                    "float32 round-off of the two computations changes (in float64 the sets agree "
                                    "exactly, tests/test_study.py).")
    gaps = {"high": [], "low": []}
    for perturbation in study["perturbation"].values():
        if {"ifim", "vanilla_gradient"} <= set(perturbation):
            for alpha in perturbation["ifim"]:
                for name in gaps:
                    gaps[name].append(abs(perturbation["ifim"][alpha][f"f1_{name}"]
                                          - perturbation["vanilla_gradient"][alpha][f"f1_{name}"]))
    if gaps["high"]:
        high, low = max(gaps["high"]), max(gaps["low"])
        carrier = "bottom" if low > high else "top"
        line += (f" Over every fill and fraction, F1 after perturbing the top sets differs between the two by at most "
                 f"{_fmt(high)}, after perturbing the bottom sets (iFIM's BottomK(I), the gradient's own bottom-k) by "
                 f"up to {_fmt(low)}: the {carrier} sets carry the difference of their ratios.")
    return [line]


def _detectability_findings(study: dict) -> List[str]:
    bins = [b for b in (study.get("detectability") or {}).get("bins", []) if b["n"]]
    if len(bins) < 2:
        return []
    first, last = bins[0], bins[-1]
    trend = "rises" if last["recall"] > first["recall"] else "falls" if last["recall"] < first["recall"] else "stays"
    return [f"Detectability: recall {trend} from {_fmt(first['recall'])} [{_fmt(first['interval'][0])}, "
            f"{_fmt(first['interval'][1])}] for signal amplitudes {first['low']:g}-{first['high']:g} to "
            f"{_fmt(last['recall'])} [{_fmt(last['interval'][0])}, {_fmt(last['interval'][1])}] for "
            f"{last['low']:g}-{last['high']:g}."]


def findings(study: dict, seed_table: Optional[dict] = None) -> List[str]:
    """Plain statements, each derived from the numbers: what holds of the paper's claims and what does not."""
    lines = []
    lines += _perturbation_findings(study)[0]
    lines += _curve_findings(study)
    fgsm_verdict = _fgsm_verdict(study)
    if fgsm_verdict is not None:
        lines.append(f"FGSM (epsilon {study['fgsm']['epsilon']:g}, {_fmt(100 * study['fgsm']['flip_rate'], 1)} % of "
                     f"predictions flipped): the claim that the iFIM sensitive map has the lowest clean/adversarial "
                     f"correlation {fgsm_verdict}; its mean correlation is "
                     f"{_fmt(study['fgsm']['pearson']['ifim_sensitive']['mean'])}. Low correlation measures "
                     "sensitivity to the attack, not faithfulness.")
    lines += _identity_findings(study)
    complement = study.get("complement_vs_image") or {}
    if complement.get("n"):
        r = complement["mean"]
        low, high = complement.get("interval", [math.nan, math.nan])
        if r >= 0.9:
            lines.append(f"I(x) is close to the image itself: its Pearson correlation with |x| averages {_fmt(r)} "
                         f"[{_fmt(low)}, {_fmt(high)}], so x_sens is a small part of x and I's stability under FGSM "
                         f"({_fmt(study['fgsm']['pearson'].get('ifim_complement', {}).get('mean', math.nan))}) is "
                         "mostly the image's own, not evidence about the decomposition.")
        else:
            lines.append(f"I(x) differs from the image: its Pearson correlation with |x| averages {_fmt(r)} "
                         f"[{_fmt(low)}, {_fmt(high)}].")
    lines += _detectability_findings(study)
    localization = study.get("localization") or {}
    if localization:
        gain = {m: v["energy_fraction"] / v["area_fraction"] for m, v in localization.items() if v["area_fraction"]}
        best = _best(gain, highest=True)
        if best is not None:
            lines.append(f"Localization: {best} puts the most map energy on the known signal, "
                         f"{_fmt(gain[best], 1)} times a uniform map's share; iFIM sensitive: "
                         f"{_fmt(gain.get('ifim_sensitive', math.nan), 1)} times.")
    randomization = {m: v["mean"] for m, v in study["randomization"].items()}
    failing = sorted(m for m, v in randomization.items() if v is not None and math.isfinite(v) and v > 0.5)
    if failing:
        lines.append("Model randomization: the maps of " + ", ".join(failing) + " keep a rank correlation above 0.5 "
                     "with those of a randomly initialised copy, so they depend little on what the model learned.")
    if seed_table:
        n = seed_table["precision"]["n"]
        lines.append(f"Table II over {n} training seed{'s' if n != 1 else ''}: precision "
                     f"{_fmt(seed_table['precision']['mean'])} +- {_fmt(seed_table['precision']['std'])}, recall "
                     f"{_fmt(seed_table['recall']['mean'])} +- {_fmt(seed_table['recall']['std'])}.")
    return lines


def _ci(study: dict, path: Sequence[str], scale: float = 1.0) -> str:
    """`` [low, high]`` of the study's interval at ``path`` under ``intervals``; empty where there is none."""
    node = study.get("intervals")
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return ""
        node = node[key]
    low, high = node
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return ""
    return f" [{_fmt(scale * low, 1 if scale != 1 else 3)}, {_fmt(scale * high, 1 if scale != 1 else 3)}]"


def _noise_names(study: dict) -> Dict[str, str]:
    return {m["tag"]: m["name"] for m in study.get("noise_models", [])}


def _perturbation_rows(study: dict) -> List[list]:
    names = _noise_names(study)
    rows = []
    for tag, per_method in study["perturbation"].items():
        for method, per_alpha in per_method.items():
            for alpha, v in per_alpha.items():
                rows.append([names.get(tag, tag), method, alpha, v["f1_clean"], v["f1_high"], v["f1_low"],
                             v["f1_random"], v["ratio"], v["drop_high"], v["drop_low"], v["drop_random"]])
    return rows


def _curve_rows(study: dict) -> List[list]:
    curves = study.get("curves") or {}
    return [[method, alpha] + [v[key][i] for key in ("morf_f1", "lerf_f1", "morf_prob", "lerf_prob")]
            for method, v in (curves.get("methods") or {}).items() for i, alpha in enumerate(curves["alphas"])]


def _figures(study: dict, out: Path) -> Dict[str, str]:
    names = {}
    alphas = [f"{a:g}" for a in study["alphas"]]
    noise = _noise_names(study)
    tags = list(study["perturbation"])
    groups = [f"{noise.get(t, t).split(' (')[0]}\n{100 * float(a):g} %" for t in tags for a in alphas]
    methods = list(study["perturbation"][tags[0]])
    ratios = {m: [study["perturbation"][t][m][a]["ratio"] for t in tags for a in alphas] for m in methods}
    save_figure_atomic(grouped_bar_figure(ratios, groups, "F1 low / F1 high", "Contrastive pixel perturbation "
                                          "(Fig. 3) under each fill: higher = top pixels matter more", reference=1.0),
                       out / "fig3_perturbation_ratio.png")
    names["fig3"] = "fig3_perturbation_ratio.png"
    drops = {f"{m} {s}": [study["perturbation"][t][m][a][f"drop_{s}"] for t in tags for a in alphas]
             for m in methods for s in ("high", "random") if m == "ifim" or s == "high"}
    save_figure_atomic(grouped_bar_figure(drops, groups, "F1 drop", "F1 drop after replacing top-k pixels, and "
                                          "the random-pixel control"), out / "fig3_f1_drops.png")
    names["drops"] = "fig3_f1_drops.png"
    curves = study.get("curves") or {}
    if curves.get("methods"):
        x = [100 * a for a in curves["alphas"]]
        panels = {f"{label}, {order}": {m: v[f"{order.lower()}_{key}"] for m, v in curves["methods"].items()}
                  for key, label in (("f1", "F1"), ("prob", "true-class probability")) for order in ("MoRF", "LeRF")}
        save_figure_atomic(line_panels_figure(x, panels, "pixels removed (%)", f"Deletion curves, pixels replaced by "
                                              f"{curves['fill']}: MoRF low and LeRF high = a map that orders pixels "
                                              "by their effect"), out / "fig_deletion_curves.png")
        names["curves"] = "fig_deletion_curves.png"
    bins = [b for b in (study.get("detectability") or {}).get("bins", []) if b["n"]]
    if bins:
        centres = [(b["low"] + b["high"]) / 2 for b in bins]
        recall = {"recall": [b["recall"] for b in bins]}
        band = {"recall": ([b["interval"][0] for b in bins], [b["interval"][1] for b in bins])}
        save_figure_atomic(line_panels_figure(centres, {"clean test images": recall}, "signal amplitude (bin centre)",
                                              "Detectability: recall by signal amplitude (95 % interval shaded)",
                                              bands={"clean test images": band}), out / "fig_detectability.png")
        names["detectability"] = "fig_detectability.png"
    pearson = study["fgsm"]["pearson"]
    save_figure_atomic(grouped_bar_figure({m: [v["mean"]] for m, v in pearson.items()}, ["clean vs FGSM"],
                                          "Pearson correlation", f"Clean / adversarial map correlation (Fig. 4), "
                                          f"epsilon {study['fgsm']['epsilon']:g}",
                                          errors={m: [v["std"]] for m, v in pearson.items()}),
                       out / "fig4_fgsm_correlation.png")
    names["fig4"] = "fig4_fgsm_correlation.png"
    randomization = study["randomization"]
    save_figure_atomic(grouped_bar_figure({m: [v["mean"]] for m, v in randomization.items()}, ["trained vs random"],
                                          "Spearman correlation", "Model-randomization sanity check (lower = "
                                          "map depends on the learned weights)",
                                          errors={m: [v["std"]] for m, v in randomization.items()}),
                       out / "fig_randomization.png")
    names["randomization"] = "fig_randomization.png"
    if study.get("localization"):
        loc = study["localization"]
        save_figure_atomic(grouped_bar_figure({m: [v["energy_fraction"], v["pointing_hit"]] for m, v in loc.items()},
                                              ["energy inside signal disk", "pointing-game hit rate"], "fraction",
                                              "Localization of the known signal (disk area fraction dashed)",
                                              reference=float(np.mean([v["area_fraction"] for v in loc.values()]))),
                           out / "fig_localization.png")
        names["localization"] = "fig_localization.png"
    return names


def _overlay_figure(examples: Sequence[dict], out: Path) -> Optional[str]:
    if not examples:
        return None
    images = [e["image"].sum(0) if e["image"].ndim == 3 else e["image"] for e in examples]
    if images[0].ndim != 2:
        return None  # 3D maps: the NIfTI files of IFIMHandler are the way to look at them
    boxes = [None if e["signal"] is None else (e["signal"][0], 2 * e["signal"][1]) for e in examples]
    titles = [f"label {e['label']}, pred {e['predicted']}" for e in examples]
    save_figure_atomic(maps_grid_figure(images, [e["maps"] for e in examples], titles, boxes),
                       out / "fig1_overlays.png")
    return "fig1_overlays.png"


def _markdown(study: dict, test_metrics: Mapping[str, float], seed_table: Optional[dict], figures: Dict[str, str],
              overlay: Optional[str], context: Mapping[str, object]) -> str:
    alphas = [f"{a:g}" for a in study["alphas"]]
    parts = ["# iFIM evaluation report", ""]
    if context:
        parts += ["Run: " + ", ".join(f"{k} = `{v}`" for k, v in context.items()), ""]
    parts += [f"{study['n_images']} test images, {study['num_classes']} classes, iFIM rho = {study['rho']}. "
              "Every number below was computed by this run.", ""]
    units, intervals = study.get("units"), study.get("intervals")
    if units and intervals:
        low, high = units["images_per_unit"]
        kind = f"{units['key']}s" if units.get("key") else "units (each image its own)"
        each = f"{low}" if low == high else f"{low}-{high}"
        parts += [f"The test images come from {units['n']} independent {kind}, {each} images each. Intervals in "
                  f"[brackets] are {100 * intervals['level']:g} % cluster-bootstrap intervals over those units "
                  f"({intervals['resamples']} resamples): they reflect how many independent units the numbers rest "
                  "on, not the number of images.", ""]
    parts += ["## Findings", ""]
    parts += [f"- {line}" for line in findings(study, seed_table)] + [""]
    if test_metrics:
        parts += ["## Test metrics of the evaluated checkpoint", "",
                  _table(["metric", "value"], [[k, _fmt(float(v))] for k, v in test_metrics.items()]), ""]
    if seed_table:
        parts += ["## Table II: precision and recall over training seeds", "",
                  _table(["seed", "checkpoint", "precision", "recall", "F1", "accuracy"],
                         [[r["seed"], f"`{r['checkpoint']}`", _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]),
                           _fmt(r["accuracy"])] for r in seed_table["seeds"]]), "",
                  "mean +- std (ddof 1): " + ", ".join(f"{k} {_fmt(seed_table[k]['mean'])} +- "
                                                       f"{_fmt(seed_table[k]['std'])}"
                                                       for k in ("precision", "recall", "f1", "accuracy")), ""]
    names = _noise_names(study)
    parts += ["## Contrastive pixel perturbation (eq. 23-26, Fig. 3)", "",
              f"k = ceil(alpha HW) pixels replaced, under each fill below (seed {study.get('noise_seed', 0)}), the "
              "same fill for every method. iFIM: TopK(S) vs BottomK(I); others: top-k vs bottom-k of the same map; "
              "`random`: k random pixels (control). F1 of class 1 (C = 2) or macro. The paper says only \"a fixed "
              "distribution\"; evaluate.yaml's fills were set in advance, not tuned on test results"
              + (", except that N(0.5, 0.25^2) was first picked, in an earlier version, after N(0, 1) test results had "
                 "been seen" if "gauss_0.5_0.25" in names else "") + ".", ""]
    for tag, per_method in study["perturbation"].items():
        parts += [f"### {names.get(tag, tag)}", "",
                  _table(["method"] + [f"ratio {100 * float(a):g} %" for a in alphas]
                         + [f"drop high / low / random {100 * float(a):g} %" for a in alphas],
                         [[m] + [_fmt(v[a]["ratio"]) + _ci(study, ("perturbation", tag, m, a, "ratio")) for a in alphas]
                          + [" / ".join(_fmt(v[a][f"drop_{s}"]) + _ci(study, ("perturbation", tag, m, a, f"drop_{s}"))
                                        for s in ("high", "low", "random")) for a in alphas]
                          for m, v in per_method.items()]), ""]
    parts += [f"![ratio]({figures['fig3']})", "", f"![drops]({figures['drops']})", ""]
    curves = study.get("curves") or {}
    if curves.get("methods"):
        parts += ["## Deletion curves (MoRF / LeRF)", "",
                  f"Pixels removed most relevant first (MoRF; iFIM: TopK(S)) or least relevant first (LeRF; iFIM: "
                  f"BottomK(I)), replaced by {curves['fill']}, at alpha = "
                  + ", ".join(f"{100 * a:g}" for a in curves["alphas"]) + " %. AUC: the curve's mean height over "
                  "alpha. A map that orders pixels by their effect has a low MoRF and a high LeRF curve: LeRF minus "
                  "MoRF, higher is better.", "",
                  _table(["method", "MoRF F1", "LeRF F1", "LeRF - MoRF (F1)", "MoRF p(true)", "LeRF p(true)",
                          "LeRF - MoRF (p)"],
                         [[m] + [_fmt(v["auc"][k]) + _ci(study, ("curves", m, k))
                                 for k in ("morf_f1", "lerf_f1", "delta_f1", "morf_prob", "lerf_prob", "delta_prob")]
                          for m, v in curves["methods"].items()]), "", f"![curves]({figures['curves']})", ""]
    fgsm = study["fgsm"]
    parts += ["## Stability under FGSM (eq. 27, Fig. 4)", "",
              f"epsilon = {fgsm['epsilon']:g}; predictions flipped: {_fmt(100 * fgsm['flip_rate'], 1)} %"
              f"{_ci(study, ('fgsm_flip_rate',), scale=100)}. Maps of x and x_adv explain the same (clean "
              "predicted) class.", "",
              _table(["map", "Pearson mean", "std", "images", "undefined (constant map)"],
                     [[m, _fmt(v["mean"]) + _ci(study, ("fgsm_pearson", m)), _fmt(v["std"]), v["n"], v["n_undefined"]]
                      for m, v in fgsm["pearson"].items()]), "", f"![fgsm]({figures['fig4']})", ""]
    if study.get("localization"):
        parts += ["## Localization of the known signal", "",
                  "Share of map energy inside the disk of radius 2 sigma around the inserted signal, that disk's "
                  "area share (what a uniform map scores), and the pointing-game hit rate, over positives.", "",
                  _table(["map", "energy inside", "area share", "energy / area", "pointing hit", "images"],
                         [[m, _fmt(v["energy_fraction"]) + _ci(study, ("localization", m, "energy_fraction")),
                           _fmt(v["area_fraction"]),
                           _fmt(v["energy_fraction"] / v["area_fraction"] if v["area_fraction"] else math.nan, 2),
                           _fmt(v["pointing_hit"]) + _ci(study, ("localization", m, "pointing_hit")), v["n"]]
                          for m, v in study["localization"].items()]), "",
                  f"![localization]({figures['localization']})", ""]
    parts += ["## Model-parameter randomization sanity check", "",
              "Spearman correlation between the maps of the trained model and of a copy with every parameter "
              "re-initialised (Adebayo et al. 2018). A map that passes changes: low correlation.", "",
              _table(["map", "Spearman mean", "std", "images", "undefined"],
                     [[m, _fmt(v["mean"]) + _ci(study, ("randomization", m)), _fmt(v["std"]), v["n"],
                       v["n_undefined"]] for m, v in study["randomization"].items()]), "",
              f"![randomization]({figures['randomization']})", ""]
    detectability = study.get("detectability") or {}
    if detectability.get("bins"):
        parts += ["## Detectability: recall by signal amplitude", "",
                  f"Clean predictions of the {detectability['n_positives']} signal-present test images, by the "
                  "amplitude of the inserted signal (95 % unit-bootstrap intervals).", "",
                  _table(["amplitude", "images", "recall"],
                         [[f"{b['low']:g}-{b['high']:g}", b["n"], _fmt(b["recall"]) + (
                             f" [{_fmt(b['interval'][0])}, {_fmt(b['interval'][1])}]" if b["n"] else "")]
                          for b in detectability["bins"]]), ""]
        if figures.get("detectability"):
            parts += [f"![detectability]({figures['detectability']})", ""]
    parts += _paper_section(study, seed_table, context)
    seconds = study.get("seconds") or {}
    if seconds:
        total = sum(seconds.values())
        shown = {k: v for k, v in seconds.items() if v >= 0.01 * total}
        rest = {k: v for k, v in seconds.items() if k not in shown}
        rows = [[k, _fmt(v, 1), f"{100 * v / total:.1f} %"] for k, v in shown.items()]
        if rest:
            rows.append([f"{len(rest)} other stages, each under 1 %", _fmt(sum(rest.values()), 1),
                         f"{100 * sum(rest.values()) / total:.1f} %"])
        parts += ["## Where the study's time goes", "",
                  f"{_fmt(total, 0)} s in all on this machine (the Table II seeds' training not included), by "
                  "stage and map method (all of them in `results.json`):", "",
                  _table(["stage", "seconds", "share"], rows), ""]
    if overlay:
        parts += ["## Maps (Fig. 1-2)", "", "Each map in contrast-adjusted jet over the image; red box: the inserted "
                  "signal (half width 2 sigma).", "", f"![overlays]({overlay})", ""]
    parts += ["## Files", "", "`results.json` (everything above), `perturbation.csv`, `fgsm.csv`, `randomization.csv`"
              + (", `localization.csv`" if study.get("localization") else "")
              + (", `table2.csv`" if seed_table else "") + ".", ""]
    return "\n".join(parts)


def _paper_section(study: dict, seed_table: Optional[dict], context: Mapping[str, object]) -> List[str]:
    """This run beside what the paper reports: Table II (where the task has a column) and the claims of Fig. 3-4."""
    task = str(context.get("task", ""))
    column = "mri" if task.startswith("sksbks") else task if task in PAPER_TABLE2 else None
    rows = []
    if column and seed_table:
        for i, name in enumerate(("precision", "recall")):
            paper = "; ".join(f"{net} {v[i][0]:.2f} +- {v[i][1]:.2f}" for net, v in PAPER_TABLE2[column].items())
            ours = (f"{_fmt(seed_table[name]['mean'])} +- {_fmt(seed_table[name]['std'])} "
                    f"({seed_table[name]['n']} seed{'s' if seed_table[name]['n'] != 1 else ''})")
            rows.append([f"Table II, {column.upper()}: {name}", paper, f"{context.get('network', '')}: {ours}"])
    holds_clear = _perturbation_findings(study)[1]
    if holds_clear:
        rows.append(["Fig. 3: iFIM has the highest F1 ratio at 1, 2, 3 %", "holds for every task and classifier",
                     _claim_summary(holds_clear, len(study["alphas"]))])
    fgsm_verdict = _fgsm_verdict(study)
    if fgsm_verdict is not None:
        rows.append(["Fig. 4: S has the lowest clean / adversarial correlation", "holds for every task and "
                     "classifier (close to 0 for OCT and X-ray)", fgsm_verdict])
    if not rows:
        return []
    return ["## Beside the paper", "", "The paper's settings differ (full-size images, VGG16 / ResNet18, 10 seeds, "
            "early stopping); this run's are at the top of the report.", "",
            _table(["", "paper", "this run"], rows), ""]


def write_report(report_dir: os.PathLike, study: dict, examples: Sequence[dict] = (),
                 test_metrics: Optional[Mapping[str, float]] = None, seed_table: Optional[dict] = None,
                 context: Optional[Mapping[str, object]] = None) -> Path:
    """Write ``report.md``, ``results.json``, CSVs and figures into ``report_dir``: the report's own files
    (:data:`REPORT_FILES`) are replaced, anything else in the folder is left alone.

    Args:
        study: :meth:`scripts.study.AttributionStudy.compute`'s dict.
        examples: :attr:`scripts.study.AttributionStudy.examples`, for the overlay figure.
        test_metrics: the evaluator's metrics (accuracy, precision, ...).
        seed_table: :func:`scripts.table2.seed_table`'s dict (Table II), if run.
        context: run settings shown at the top (task, network, checkpoint, ...).
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(report_dir, ".report-staging")  # left by a report killed mid-way
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(".report-staging"), dir=report_dir))
    try:
        test_metrics = {k: float(v) for k, v in (test_metrics or {}).items() if isinstance(v, (int, float))}
        figures = _figures(study, tmp)
        overlay = _overlay_figure(examples, tmp)
        write_csv(tmp / "perturbation.csv", ["fill", "method", "alpha", "f1_clean", "f1_high", "f1_low", "f1_random",
                                             "ratio", "drop_high", "drop_low", "drop_random"],
                  _perturbation_rows(study))
        if (study.get("curves") or {}).get("methods"):
            write_csv(tmp / "curves.csv", ["method", "alpha", "morf_f1", "lerf_f1", "morf_prob", "lerf_prob"],
                      _curve_rows(study))
        if (study.get("detectability") or {}).get("bins"):
            write_csv(tmp / "detectability.csv", ["amplitude_low", "amplitude_high", "n", "recall", "low", "high"],
                      [[b["low"], b["high"], b["n"], b["recall"], *b["interval"]]
                       for b in study["detectability"]["bins"]])
        write_csv(tmp / "fgsm.csv", ["map", "pearson_mean", "pearson_std", "n", "n_undefined"],
                  [[m, v["mean"], v["std"], v["n"], v["n_undefined"]] for m, v in study["fgsm"]["pearson"].items()])
        write_csv(tmp / "randomization.csv", ["map", "spearman_mean", "spearman_std", "n", "n_undefined"],
                  [[m, v["mean"], v["std"], v["n"], v["n_undefined"]] for m, v in study["randomization"].items()])
        if study.get("localization"):
            write_csv(tmp / "localization.csv", ["map", "energy_fraction", "area_fraction", "pointing_hit", "n"],
                      [[m, v["energy_fraction"], v["area_fraction"], v["pointing_hit"], v["n"]]
                       for m, v in study["localization"].items()])
        if seed_table:
            write_csv(tmp / "table2.csv", ["seed", "checkpoint", "precision", "recall", "f1", "accuracy"],
                      [[r["seed"], r["checkpoint"], r["precision"], r["recall"], r["f1"], r["accuracy"]]
                       for r in seed_table["seeds"]])
        results = {"study": study, "test_metrics": test_metrics, "table2": seed_table,
                   "findings": findings(study, seed_table), "context": {k: str(v) for k, v in (context or {}).items()}}
        with atomic_write(tmp / "results.json") as path:
            path.write_text(json.dumps(_jsonable(results), indent=2))
        with atomic_write(tmp / "report.md") as path:
            path.write_text(_markdown(study, test_metrics, seed_table, figures, overlay, context or {}))
        written = sorted(p.name for p in tmp.iterdir())
        unexpected = set(written) - set(REPORT_FILES)
        if unexpected:
            raise RuntimeError(f"write_report made files it does not own: {sorted(unexpected)}")
        for name in sorted(written, key=lambda n: n == "report.md"):  # report.md last: it marks a whole report
            os.replace(tmp / name, report_dir / name)
        for name in set(REPORT_FILES) - set(written):
            (report_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report_dir
