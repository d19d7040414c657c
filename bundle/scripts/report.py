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
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from .atomic import atomic_write, remove_stale_temporaries, temporary_prefix, write_csv
from .visualize import grouped_bar_figure, maps_grid_figure, save_figure_atomic

__all__ = ["write_report", "findings", "REPORT_FILES"]

# Every file a report may write. Names a report writes replace the old ones; names it does not write this time
# (e.g. table2.csv without Table II) are removed, so the folder never mixes two reports. Nothing else is touched.
REPORT_FILES = ("report.md", "results.json", "perturbation.csv", "fgsm.csv", "randomization.csv", "localization.csv",
                "table2.csv", "fig1_overlays.png", "fig3_perturbation_ratio.png", "fig3_f1_drops.png",
                "fig4_fgsm_correlation.png", "fig_randomization.png", "fig_localization.png")


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


def _paired(verdict: str, differences: Mapping[str, Sequence[float]], ours: str, other: Optional[str],
            sign: float) -> str:
    """Add to a verdict what the paired bootstrap interval of ``ours`` minus ``other`` says: whether the difference
    in the claimed direction (``sign`` +1: ours higher) stays clear of 0 over the interval."""
    if other is None or other not in differences:
        return verdict
    low, high = differences[other]
    if low is None or high is None or (isinstance(low, float) and math.isnan(low)):
        return verdict
    text = f"{ours} minus {other}: [{_fmt(low)}, {_fmt(high)}]"
    if max(abs(low), abs(high)) <= TIE:  # the same ranking (e.g. S and the gradient for C = 2): round-off only
        return f"{verdict}; the 95 % interval of the difference stays within +-{TIE:g} ({text})"
    if (sign > 0 and low > TIE) or (sign < 0 and high < -TIE):
        return f"{verdict}, and the 95 % interval of the difference stays clear of 0 ({text})"
    if (sign > 0 and high < -TIE) or (sign < 0 and low > TIE):
        return f"{verdict}; the 95 % interval of the difference is clear of 0 the other way ({text})"
    return f"{verdict}, but the 95 % interval of the difference includes 0 ({text}): not resolved by this test set"


def _runner_up(scores: Mapping[str, float], ours: str, highest: bool) -> Optional[str]:
    return _best({m: v for m, v in scores.items() if m != ours}, highest)


def findings(study: dict, seed_table: Optional[dict] = None) -> List[str]:
    """Plain statements, each derived from the numbers: what holds of the paper's claims and what does not."""
    lines = []
    perturbation, alphas = study["perturbation"], [f"{a:g}" for a in study["alphas"]]
    for alpha in alphas:
        ratios = {m: v[alpha]["ratio"] for m, v in perturbation.items()}
        best = _best(ratios, highest=True)
        if "ifim" in ratios:
            other = _runner_up(ratios, "ifim", highest=True) if best == "ifim" else best
            verdict = _paired(_verdict(ratios, "ifim", best, "higher"),
                              (study.get("intervals") or {}).get("ratio_ifim_minus", {}).get(alpha, {}), "ifim",
                              other, +1)
            lines.append(f"alpha = {100 * float(alpha):g} %: the claim that iFIM gets the highest F1 ratio {verdict}; "
                         f"iFIM's ratio is {_fmt(ratios['ifim'])}.")
            ifim = perturbation["ifim"][alpha]
            if ifim["drop_high"] <= ifim["drop_random"]:
                lines.append(f"alpha = {100 * float(alpha):g} %: replacing iFIM's top pixels lowers F1 by "
                             f"{_fmt(ifim['drop_high'])}, no more than replacing random pixels "
                             f"({_fmt(ifim['drop_random'])}): the ratio reflects how harmless the bottom set is, "
                             "not that the top set is special.")
    correlations = {m: v["mean"] for m, v in study["fgsm"]["pearson"].items()}
    lowest = _best(correlations, highest=False)
    if "ifim_sensitive" in correlations:
        other = _runner_up(correlations, "ifim_sensitive", highest=False) if lowest == "ifim_sensitive" else lowest
        verdict = _paired(_verdict(correlations, "ifim_sensitive", lowest, "lower"),
                          (study.get("intervals") or {}).get("fgsm_pearson_ifim_sensitive_minus", {}),
                          "ifim_sensitive", other, -1)
        lines.append(f"FGSM (epsilon {study['fgsm']['epsilon']:g}, {_fmt(100 * study['fgsm']['flip_rate'], 1)} % of "
                     f"predictions flipped): the claim that the iFIM sensitive map has the lowest clean/adversarial "
                     f"correlation {verdict}; its mean correlation is {_fmt(correlations['ifim_sensitive'])}. Low "
                     "correlation measures sensitivity to the attack, not faithfulness.")
    overlap = study.get("topk_overlap_ifim_sensitive_vs_gradient") or {}
    if overlap:
        measured = ", ".join(f"{_fmt(v)} at {100 * float(a):g} %" for a, v in overlap.items())
        lines.append("For C = 2 the iFIM sensitive map is a multiple of |grad(z_1 - z_0)| and so ranks pixels exactly "
                     "as the vanilla gradient |grad log p| does (a multiple of the same vector): their top-k sets "
                     f"coincide. Measured mean top-k overlap: {measured} (below 1 only through ties and float "
                     "round-off). Their F1 ratios differ only through the bottom-k set.")
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


def _perturbation_rows(study: dict) -> List[list]:
    rows = []
    for method, per_alpha in study["perturbation"].items():
        for alpha, v in per_alpha.items():
            rows.append([method, alpha, v["f1_clean"], v["f1_high"], v["f1_low"], v["f1_random"], v["ratio"],
                         v["drop_high"], v["drop_low"], v["drop_random"]])
    return rows


def _figures(study: dict, out: Path) -> Dict[str, str]:
    names = {}
    alphas = [f"{a:g}" for a in study["alphas"]]
    groups = [f"{100 * float(a):g} %" for a in alphas]
    ratios = {m: [v[a]["ratio"] for a in alphas] for m, v in study["perturbation"].items()}
    save_figure_atomic(grouped_bar_figure(ratios, groups, "F1 low / F1 high", "Contrastive pixel perturbation "
                                          "(Fig. 3): higher = top pixels matter more", reference=1.0),
                       out / "fig3_perturbation_ratio.png")
    names["fig3"] = "fig3_perturbation_ratio.png"
    drops = {f"{m} {s}": [v[a][f"drop_{s}"] for a in alphas] for m, v in study["perturbation"].items()
             for s in ("high", "random") if m == "ifim" or s == "high"}
    save_figure_atomic(grouped_bar_figure(drops, groups, "F1 drop", "F1 drop after replacing top-k pixels, and "
                                          "the random-pixel control"), out / "fig3_f1_drops.png")
    names["drops"] = "fig3_f1_drops.png"
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
    noise = study["noise"]
    parts += ["## Contrastive pixel perturbation (eq. 23-26, Fig. 3)", "",
              f"k = ceil(alpha HW) pixels replaced by N({noise['mean']:g}, {noise['std']:g}^2) noise (seed "
              f"{noise['seed']}), the same noise for every method. iFIM: TopK(S) vs BottomK(I); others: top-k vs "
              "bottom-k of the same map; `random`: k random pixels (control). F1 of class 1 (C = 2) or macro.", "",
              _table(["method"] + [f"ratio {100 * float(a):g} %" for a in alphas]
                     + [f"drop high / low / random {100 * float(a):g} %" for a in alphas],
                     [[m] + [_fmt(v[a]["ratio"]) + _ci(study, ("perturbation", m, a, "ratio")) for a in alphas]
                      + [" / ".join(_fmt(v[a][f"drop_{s}"]) + _ci(study, ("perturbation", m, a, f"drop_{s}"))
                                    for s in ("high", "low", "random")) for a in alphas]
                      for m, v in study["perturbation"].items()]), "",
              f"![ratio]({figures['fig3']})", "", f"![drops]({figures['drops']})", ""]
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
    if overlay:
        parts += ["## Maps (Fig. 1-2)", "", "Each map in contrast-adjusted jet over the image; red box: the inserted "
                  "signal (half width 2 sigma).", "", f"![overlays]({overlay})", ""]
    parts += ["## Files", "", "`results.json` (everything above), `perturbation.csv`, `fgsm.csv`, `randomization.csv`"
              + (", `localization.csv`" if study.get("localization") else "")
              + (", `table2.csv`" if seed_table else "") + ".", ""]
    return "\n".join(parts)


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
        write_csv(tmp / "perturbation.csv", ["method", "alpha", "f1_clean", "f1_high", "f1_low", "f1_random", "ratio",
                                             "drop_high", "drop_low", "drop_random"], _perturbation_rows(study))
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
