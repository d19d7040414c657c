# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Overlays and figures: maps over the image in the paper's contrast-adjusted jet colormap (Fig. 1-2)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from monai.transforms import Transform  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from .atomic import atomic_write, fit_name  # noqa: E402

__all__ = ["contrast_adjust", "jet_overlay", "decomposition_panels", "sample_grid_figure",
           "maps_grid_figure", "grouped_bar_figure", "line_panels_figure", "save_figure_atomic", "save_rgb_atomic",
           "save_decomposition_png",            "SaveDecompositionFigured"]

Box = Tuple[Sequence[float], float]  # (centre (row, col), half width) of a known signal


def contrast_adjust(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Scale to [0, 1] between the ``low`` and ``high`` percentiles, clipping outside; a constant map gives 0."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def grey_background(image: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` float in [0, 1]: ``image`` scaled between its 0.5 and 99.5 percentiles, in grey."""
    return contrast_adjust(image, 0.5, 99.5)[..., None].repeat(3, axis=-1)


def jet_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5,
                background: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB ``(H, W, 3)`` float in [0, 1]: the contrast-adjusted ``heat`` in jet, blended over the grey ``image``.

    Args:
        image: ``(H, W)`` background.
        heat: ``(H, W)`` map, e.g. ``|x_sens|`` summed over channels.
        alpha: weight of the map.
        background: ``grey_background(image)`` when the caller has it already (several maps over one image).
    """
    grey = grey_background(image) if background is None else background
    colored = colormaps["jet"](contrast_adjust(heat))[..., :3]
    return (1 - alpha) * grey + alpha * colored


def save_figure_atomic(fig: plt.Figure, path: os.PathLike, dpi: int = 100) -> Path:
    """Save ``fig`` to ``path`` atomically (no half-written file remains) and close it."""
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


PANEL_LABELS = ("image", "sensitive |x_sens|", "complement |x_comp|")
_GUTTER, _TITLE_HEIGHT, _LABEL_HEIGHT, _BAR_HEIGHT = 6, 18, 16, 10


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=11)  # Pillow's own font (FreeType builds)
    except (TypeError, OSError):
        return ImageFont.load_default()  # the bitmap font of builds without FreeType


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(255.0 * rgb), 0, 255).astype(np.uint8)


def decomposition_panels(image: np.ndarray, x_sens: np.ndarray, x_comp: np.ndarray, title: str = "",
                         panel_size: int = 192) -> np.ndarray:
    """Image | |x_sens| | |x_comp| side by side (Fig. 1) as an ``(H, W, 3)`` uint8 RGB array, composited without
    matplotlib's figure machinery (per-image figures of a large run: the layout of axes and text costs far more than
    the pixels): a title row; image | |x_sens| | |x_comp| (each :func:`jet_overlay`, channels already summed), each
    enlarged by pixel repetition to about ``panel_size`` and labelled; under the maps, the jet colour bar from the
    low to the high end of their contrast-adjusted range.

    Args:
        image, x_sens, x_comp: ``(H, W)`` arrays.
        title: the title row's text.
        panel_size: the longer side of a panel in pixels, at least the map's own.
    """
    height, width = image.shape
    scale = max(1, panel_size // max(height, width))
    grey = grey_background(image)
    panels = [grey] + [jet_overlay(image, np.abs(m), background=grey) for m in (x_sens, x_comp)]
    panels = [_to_uint8(panel).repeat(scale, axis=0).repeat(scale, axis=1) for panel in panels]
    ph, pw = panels[0].shape[:2]
    top = _TITLE_HEIGHT + _LABEL_HEIGHT
    canvas = np.full((top + ph + 2 * _GUTTER + _BAR_HEIGHT + 4, 3 * pw + 4 * _GUTTER, 3), 255, dtype=np.uint8)
    for i, panel in enumerate(panels):
        left = _GUTTER + i * (pw + _GUTTER)
        canvas[top:top + ph, left:left + pw] = panel
    bar = _to_uint8(colormaps["jet"](np.linspace(0.0, 1.0, 2 * pw + _GUTTER))[:, :3])
    canvas[top + ph + _GUTTER:top + ph + _GUTTER + _BAR_HEIGHT, 2 * _GUTTER + pw:2 * _GUTTER + pw + len(bar)] = bar
    picture = Image.fromarray(canvas)
    draw, font = ImageDraw.Draw(picture), _font()
    draw.text((_GUTTER, 3), title, fill=(0, 0, 0), font=font)
    for i, label in enumerate(PANEL_LABELS):
        draw.text((_GUTTER + i * (pw + _GUTTER), _TITLE_HEIGHT + 2), label, fill=(0, 0, 0), font=font)
    draw.text((_GUTTER, top + ph + _GUTTER - 2), "maps: 1st to 99th percentile", fill=(0, 0, 0), font=font)
    return np.asarray(picture)


def save_rgb_atomic(rgb: np.ndarray, path: os.PathLike) -> Path:
    """Save an ``(H, W, 3)`` uint8 array as PNG at ``path`` atomically (no half-written file remains)."""
    with atomic_write(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)  # fast; these are small files
    return Path(path)


def save_decomposition_png(path: os.PathLike, image: np.ndarray, x_sens: np.ndarray, x_comp: np.ndarray,
                           title: str = "") -> Path:
    """:func:`decomposition_panels` written to ``path`` (:func:`save_rgb_atomic`)."""
    return save_rgb_atomic(decomposition_panels(image, x_sens, x_comp, title=title), path)


def _show(ax: plt.Axes, data: np.ndarray, title: str, cmap: Optional[str], box: Optional[Box]) -> None:
    ax.imshow(data, cmap=cmap)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    if box is not None:
        (row, col), half = box
        ax.add_patch(plt.Rectangle((col - half, row - half), 2 * half, 2 * half, fill=False, color="red", lw=1))


def sample_grid_figure(images: Sequence[np.ndarray], titles: Sequence[str], boxes: Sequence[Optional[Box]],
                       columns: int = 4) -> plt.Figure:
    """A grid of ``(H, W)`` images in gray, each titled, known signals boxed in red."""
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    for ax, image, title, box in zip(axes.flat, images, titles, boxes):
        _show(ax, contrast_adjust(image, 0.5, 99.5), title, "gray", box)
    return fig


def maps_grid_figure(images: Sequence[np.ndarray], maps: Sequence[Mapping[str, np.ndarray]], titles: Sequence[str],
                     boxes: Sequence[Optional[Box]]) -> plt.Figure:
    """One row per image: the image, then each of its maps in contrast-adjusted jet over it (Fig. 1-2 across
    methods); known signals boxed in red.

    Args:
        images: ``(H, W)`` backgrounds.
        maps: per image, ``{method: (H, W) map}``, the same methods in the same order for every image.
        titles: one row label per image.
        boxes: per image, ``(centre, half width)`` of its signal or None.
    """
    methods = list(maps[0]) if maps else []
    columns = 1 + len(methods)
    fig, axes = plt.subplots(len(images), columns, figsize=(1.7 * columns, 1.9 * len(images)), squeeze=False)
    for row, (image, row_maps, title, box) in enumerate(zip(images, maps, titles, boxes)):
        _show(axes[row, 0], contrast_adjust(image, 0.5, 99.5), title, "gray", box)
        for col, method in enumerate(methods, start=1):
            _show(axes[row, col], jet_overlay(image, row_maps[method]), method if row == 0 else "", None, box)
    # one scale for every panel: each map is contrast-adjusted to its own 1st-99th percentile before colouring
    fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0.0, 1.0), cmap="jet"), ax=axes, shrink=0.6, pad=0.01,
                 label="map value, contrast-adjusted per map (low to high)")
    return fig


def grouped_bar_figure(values: Mapping[str, Sequence[float]], groups: Sequence[str], ylabel: str, title: str = "",
                       errors: Optional[Mapping[str, Sequence[float]]] = None,
                       reference: Optional[float] = None,
                       intervals: Optional[Mapping[str, Sequence[Sequence[float]]]] = None) -> plt.Figure:
    """Bars of ``values[method][g]`` for each group ``g`` (e.g. a pixel fraction), methods side by side within a
    group, iFIM entries hatched; optional error bars (``errors``: symmetric, e.g. a std; ``intervals``: per bar its
    ``(low, high)``, e.g. a 95 % interval, drawn where both ends are finite) and a dashed reference line (e.g.
    ratio 1: no contrast). Non-finite values are drawn as missing and marked ``n/a``."""
    methods = list(values)
    width = 0.8 / max(1, len(methods))
    # wide enough for the bars, but capped: nine fills x fractions of ten methods stay readable at 16 inches
    fig, ax = plt.subplots(figsize=(min(16.0, max(6.0, 0.5 * len(methods) * len(groups) + 2)), 3.6))
    colors = colormaps["tab10"]
    for j, method in enumerate(methods):
        heights = np.asarray(values[method], dtype=np.float64)
        positions = np.arange(len(groups)) + (j - (len(methods) - 1) / 2) * width
        finite = np.isfinite(heights)
        err = None if errors is None else np.asarray(errors[method], dtype=np.float64)[finite]
        if intervals is not None and method in intervals:
            bounds = np.asarray([(np.nan, np.nan) if b is None else b for b in intervals[method]],
                                dtype=np.float64).reshape(-1, 2)
            spans = np.stack([heights - bounds[:, 0], bounds[:, 1] - heights])
            spans[:, ~np.isfinite(spans).all(0)] = 0.0  # an interval reaching inf is not drawn
            err = np.clip(spans, 0.0, None)[:, finite]
        ax.bar(positions[finite], heights[finite], width, yerr=err, label=method, color=colors(j % 10),
               hatch="//" if method.lower().startswith("ifim") else None, edgecolor="black", linewidth=0.4,
               capsize=2)
        for x in positions[~finite]:
            ax.text(x, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    return fig


class SaveDecompositionFigured(Transform):
    """Postprocessing step of iFIM inference: ``<output_dir>/<name>_ifim.png``, the model's input and its
    |x_sens| and |x_comp| (channels summed) in contrast-adjusted jet (:func:`decomposition_panels`), titled with the
    predicted class, its probability, the rank and k. Run it before the maps are put back on the source's grid: it
    shows what the model saw. 3D inputs show their middle slice along the last axis.

    Args:
        output_dir: root of the figures; ``name`` may hold sub-folders.
        class_names: names of the outputs, for the title; default their indices.
        image_key, sens_key, comp_key, probs_key, rank_key, k_key, name_key: keys of one decollated item.
    """

    def __init__(self, output_dir: os.PathLike, class_names: Optional[Sequence[str]] = None, image_key="image",
                 sens_key="x_sens", comp_key="x_comp", probs_key="probs", rank_key="rank", k_key="k",
                 name_key="name"):
        self.output_dir = Path(output_dir)
        self.class_names = None if class_names is None else list(class_names)
        self.keys = (image_key, sens_key, comp_key)
        self.probs_key, self.rank_key, self.k_key, self.name_key = probs_key, rank_key, k_key, name_key

    def path(self, name: str) -> Path:
        """``<output_dir>/<name>_ifim.png``, shortened when over the file system's limit
        (:func:`scripts.atomic.fit_name`)."""
        return fit_name(self.output_dir / name, "_ifim.png")

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        image, sens, comp = (torch.as_tensor(data[key]).detach().cpu().float() for key in self.keys)
        planes = [image[0], sens.abs().sum(0), comp.abs().sum(0)]
        if planes[0].ndim == 3:
            planes = [plane[..., plane.shape[-1] // 2] for plane in planes]
        probs = torch.as_tensor(data[self.probs_key]).reshape(-1)
        predicted = int(probs.argmax())
        label = self.class_names[predicted] if self.class_names else str(predicted)
        name = str(data[self.name_key])
        title = (f"{name}: {label} (p = {float(probs[predicted]):.3f}), rank {int(data[self.rank_key])}, "
                 f"k {int(data[self.k_key])}")
        save_decomposition_png(self.path(name), *(plane.numpy() for plane in planes), title=title)
        return dict(data)


Band = Tuple[Sequence[float], Sequence[float]]  # (low, high) of an interval along a curve


def line_panels_figure(x: Sequence[float], panels: Mapping[str, Mapping[str, Sequence[float]]], xlabel: str,
                       title: str = "", bands: Optional[Mapping[str, Mapping[str, Band]]] = None,
                       ylim: Optional[Tuple[float, float]] = None) -> plt.Figure:
    """One axes per panel (``panels[panel title][series] = y over x``), a series in the same colour in every panel,
    iFIM drawn thicker; ``bands[panel][series] = (low, high)`` shades an interval; ``ylim``: one y-range for every
    panel, so panels of one family of curves compare at a glance."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.6, 3.6), squeeze=False)
    colors = colormaps["tab10"]
    names = list(dict.fromkeys(series for lines in panels.values() for series in lines))
    for ax, (panel, lines) in zip(axes[0], panels.items()):
        for series, y in lines.items():
            color = colors(names.index(series) % 10)
            ax.plot(x, np.asarray(y, dtype=np.float64), color=color, marker=".", label=series,
                    linewidth=2.2 if series.lower().startswith("ifim") else 1.0)
            band = (bands or {}).get(panel, {}).get(series)
            if band is not None:
                ax.fill_between(x, np.asarray(band[0], dtype=np.float64), np.asarray(band[1], dtype=np.float64),
                                color=color, alpha=0.15, linewidth=0)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0, -1].legend(fontsize=6, ncol=1, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.suptitle(title, fontsize=10)
    return fig
