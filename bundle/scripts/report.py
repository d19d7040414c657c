# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The evaluation report: every number of :class:`scripts.study.AttributionStudy` and Table II, as Markdown, CSV,
JSON and figures (Fig. 1-4 of the paper), with the findings stated from the numbers themselves.

Each control's typed result (``scripts.controls.Section``) renders its own section, findings and files; the report
composes them with what belongs to the run as a whole: the header (images, units, intervals), the test metrics,
Table II, the paper's numbers beside this run's, where the time went and the overlays.

:func:`write_report` builds the report in a hidden staging folder inside ``report_dir`` and then moves each of its
files into place: every file is whole, a failure before the moves leaves the previous report as it was, and files
in ``report_dir`` that are not the report's (:data:`REPORT_FILES`) are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from .atomic import atomic_write, remove_stale_temporaries, temporary_prefix, write_csv
from .attribution import display_name
from .controls import report_files
from .study import StudyResults
from .table2 import SCORES as TABLE2_SCORES
from .tasks import PAPER_TABLE2, TASKS
from .verdicts import fmt, jsonable, table
from .visualize import maps_grid_figure, save_figure_atomic

__all__ = ["write_report", "findings", "primary_endpoint", "REPORT_FILES"]

# Every file a report may write: its own and every section's. Names a report writes replace the old ones; names it
# does not write this time (e.g. table2.csv without Table II) are removed, so the folder never mixes two reports.
# Nothing else is touched.
_OWN_FILES = ("report.md", "results.json", "table2.csv", "fig1_overlays.png")
REPORT_FILES = _OWN_FILES + report_files()


def findings(study: StudyResults, seed_table: Optional[dict] = None) -> List[str]:
    """Plain statements, each derived from the numbers: what holds of the paper's claims and what does not (the
    primary endpoint's answer first; its question is :func:`primary_endpoint`)."""
    lines = [line for section in study.sections for line in section.findings(study.sections)]
    if seed_table:
        n = seed_table["precision"]["n"]
        lines.append(f"Table II over {n} training seed{'s' if n != 1 else ''}: precision "
                     f"{fmt(seed_table['precision']['mean'])} +- {fmt(seed_table['precision']['std'])}, recall "
                     f"{fmt(seed_table['recall']['mean'])} +- {fmt(seed_table['recall']['std'])}.")
    return lines


def primary_endpoint(study: StudyResults) -> List[str]:
    """The declared primary endpoint, how it was declared, and its answer: the report states it before any
    number."""
    return [line for section in study.sections for line in section.primary_lines()]


def _overlay_figure(examples: Sequence[dict], out: Path) -> Optional[str]:
    if not examples:
        return None
    images = [e["image"].sum(0) if e["image"].ndim == 3 else e["image"] for e in examples]
    if images[0].ndim != 2:
        return None  # 3D maps: inference's NIfTI files on the volume's grid are the way to look at them
    boxes = [None if e["signal"] is None else (e["signal"][0], 2 * e["signal"][1]) for e in examples]
    titles = [f"label {e['label']}, pred {e['predicted']}" for e in examples]
    maps = [{display_name(name): values for name, values in e["maps"].items()} for e in examples]
    save_figure_atomic(maps_grid_figure(images, maps, titles, boxes),
                       out / "fig1_overlays.png")
    return "fig1_overlays.png"


def _header(study: StudyResults, context: Mapping[str, object]) -> List[str]:
    parts = ["# iFIM evaluation report", ""]
    settings = {k: v for k, v in context.items() if k != "test_set"}
    if settings:
        parts += ["Run: " + ", ".join(f"{k} = `{v}`" for k, v in settings.items()), ""]
    if context.get("test_set"):
        parts += [f"The test split: {context['test_set']}.", ""]
    primary = primary_endpoint(study)
    if primary:
        parts += ["## Primary endpoint", ""] + primary + [""]
    parts += [f"{study.n_images} test images, {study.num_classes} classes, iFIM rho = {study.rho}. Every number below "
              "was computed by this run.", ""]
    kind = f"{study.unit_key}s" if study.unit_key else "units (each image its own)"
    low, high = study.images_per_unit
    each = f"{low}" if low == high else f"{low}-{high}"
    if study.n_units < 2:
        return parts + [f"The test images come from one independent unit ({kind}), {each} images: one unit, no "
                        "interval. Every comparison below is a point estimate that says nothing about how it would "
                        "vary with other units.", ""]
    return parts + [f"The test images come from {study.n_units} independent {kind}, {each} images each. Intervals in "
                    f"[brackets] are {100 * study.level:g} % cluster-bootstrap intervals over those units "
                    f"({study.resamples} resamples): they reflect how many independent units the numbers rest on, "
                    "not the number of images.", ""]


def _table2(seed_table: Optional[dict], test_metrics: Mapping[str, float]) -> List[str]:
    parts = []
    if test_metrics:
        parts += ["## Test metrics of the evaluated checkpoint", "",
                  table(["metric", "value"], [[k, fmt(float(v))] for k, v in test_metrics.items()]), ""]
    if seed_table:
        parts += ["## Table II: precision and recall over training seeds", "",
                  table(["seed", "checkpoint", *TABLE2_SCORES],
                        [[r["seed"], f"`{r['checkpoint']}`", *(fmt(r[k]) for k in TABLE2_SCORES)]
                         for r in seed_table["seeds"]]), "",
                  "mean +- std (ddof 1): " + ", ".join(f"{k} {fmt(seed_table[k]['mean'])} +- "
                                                       f"{fmt(seed_table[k]['std'])}" for k in TABLE2_SCORES), ""]
    return parts


def _paper_section(study: StudyResults, seed_table: Optional[dict], context: Mapping[str, object]) -> List[str]:
    """This run beside what the paper reports: Table II (where the task has a column) and the paper's claims."""
    task = TASKS.get(str(context.get("task", "")))
    column = task.paper_column if task is not None else None
    rows = []
    if column and seed_table:
        for i, name in enumerate(("precision", "recall")):
            paper = "; ".join(f"{net} {v[i][0]:.2f} +- {v[i][1]:.2f}" for net, v in PAPER_TABLE2[column].items())
            ours = (f"{fmt(seed_table[name]['mean'])} +- {fmt(seed_table[name]['std'])} "
                    f"({seed_table[name]['n']} seed{'s' if seed_table[name]['n'] != 1 else ''})")
            rows.append([f"Table II, {column.upper()}: {name}", paper, f"{context.get('network', '')}: {ours}"])
    rows += [row for section in study.sections for row in section.paper_rows(study.sections)]
    if not rows:
        return []
    return ["## Beside the paper", "", "The paper's settings differ (full-size images, VGG16 / ResNet18, 10 seeds, "
            "early stopping); this run's are at the top of the report.", "",
            table(["", "paper", "this run"], rows), ""]


def _timing(study: StudyResults) -> List[str]:
    seconds = study.seconds
    if not seconds:
        return []
    total = sum(seconds.values())
    shown = {k: v for k, v in seconds.items() if v >= 0.01 * total}
    rest = {k: v for k, v in seconds.items() if k not in shown}
    rows = [[k, fmt(v, 1), f"{100 * v / total:.1f} %"] for k, v in shown.items()]
    if rest:
        rows.append([f"{len(rest)} other stages, each under 1 %", fmt(sum(rest.values()), 1),
                     f"{100 * sum(rest.values()) / total:.1f} %"])
    return ["## Where the study's time goes", "",
            f"{fmt(total, 0)} s in all on this machine (the Table II seeds' training not included), by stage and map "
            "method (all of them in `results.json`):", "", table(["stage", "seconds", "share"], rows), ""]


def _markdown(study: StudyResults, sections: List[str], test_metrics: Mapping[str, float],
              seed_table: Optional[dict], overlay: Optional[str], context: Mapping[str, object],
              files: Sequence[str]) -> str:
    parts = _header(study, context)
    parts += ["## Findings", ""] + [f"- {line}" for line in findings(study, seed_table)] + [""]
    parts += _table2(seed_table, test_metrics) + sections
    parts += _paper_section(study, seed_table, context) + _timing(study)
    if overlay:
        parts += ["## Maps (Fig. 1-2)", "", "Each map in contrast-adjusted jet over the image; red box: the inserted "
                  "signal (half width 2 sigma).", "", f"![overlays]({overlay})", ""]
    parts += ["## Files", "", "`results.json` (everything above)" + "".join(f", `{name}`" for name in files) + ".",
              ""]
    return "\n".join(parts)


def write_report(report_dir: os.PathLike, study: StudyResults, examples: Sequence[dict] = (),
                 test_metrics: Optional[Mapping[str, float]] = None, seed_table: Optional[dict] = None,
                 context: Optional[Mapping[str, object]] = None) -> Path:
    """Write ``report.md``, ``results.json``, CSVs and figures into ``report_dir``: the report's own files
    (:data:`REPORT_FILES`) are replaced, anything else in the folder is left alone.

    Args:
        study: :meth:`scripts.study.AttributionStudy.compute`'s results.
        examples: :attr:`scripts.study.AttributionStudy.examples`, for the overlay figure.
        test_metrics: the evaluator's metrics (accuracy, precision, ...).
        seed_table: :func:`scripts.table2.seed_table`'s dict (Table II), if run.
        context: run settings shown at the top (task, network, checkpoint, ...); ``test_set``, what the test split
            is made of (:func:`scripts.tasks.split_composition`), as a sentence of its own.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(report_dir, ".report-staging")  # left by a report killed mid-way
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(".report-staging"), dir=report_dir))
    try:
        test_metrics = {k: float(v) for k, v in (test_metrics or {}).items() if isinstance(v, (int, float))}
        sections = [line for section in study.sections for line in section.render(tmp)]
        overlay = _overlay_figure(examples, tmp)
        if seed_table:
            write_csv(tmp / "table2.csv", ["seed", "checkpoint", *TABLE2_SCORES],
                      [[r["seed"], r["checkpoint"], *(r[k] for k in TABLE2_SCORES)] for r in seed_table["seeds"]])
        results = {"study": study.to_dict(), "test_metrics": test_metrics, "table2": seed_table,
                   "primary_endpoint": primary_endpoint(study), "findings": findings(study, seed_table),
                   "context": {k: str(v) for k, v in (context or {}).items()}}
        with atomic_write(tmp / "results.json") as path:
            path.write_text(json.dumps(jsonable(results), indent=2))
        csvs = sorted(p.name for p in tmp.iterdir() if p.suffix == ".csv")
        with atomic_write(tmp / "report.md") as path:
            path.write_text(_markdown(study, sections, test_metrics, seed_table, overlay, context or {}, csvs))
        written = sorted(p.name for p in tmp.iterdir())
        owned = set(_OWN_FILES) | set(report_files())  # a control defined after this module's import too
        unexpected = set(written) - owned
        if unexpected:
            raise RuntimeError(f"write_report made files it does not own: {sorted(unexpected)}")
        for name in sorted(written, key=lambda n: n == "report.md"):  # report.md last: it marks a whole report
            os.replace(tmp / name, report_dir / name)
        for name in owned - set(written):
            (report_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report_dir
