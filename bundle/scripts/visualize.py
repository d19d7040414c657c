# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Overlays and figures: maps over the image in the paper's contrast-adjusted jet colormap (Fig. 1-2)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402

from .atomic import atomic_write  # noqa: E402

__all__ = ["contrast_adjust", "jet_overlay", "decomposition_figure", "sample_grid_figure", "save_figure_atomic"]

Box = Tuple[Sequence[float], float]  # (centre (row, col), half width) of a known signal


def contrast_adjust(values: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Scale to [0, 1] between the ``low`` and ``high`` percentiles, clipping outside; a constant map gives 0."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.zeros_like(values)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def jet_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB ``(H, W, 3)`` float in [0, 1]: the contrast-adjusted ``heat`` in jet, blended over the grey ``image``.

    Args:
        image: ``(H, W)`` background.
        heat: ``(H, W)`` map, e.g. ``|x_sens|`` summed over channels.
        alpha: weight of the map.
    """
    grey = contrast_adjust(image, 0.5, 99.5)[..., None].repeat(3, axis=-1)
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


def decomposition_figure(image: np.ndarray, x_sens: np.ndarray, x_comp: np.ndarray, title: str = "",
                         box: Optional[Box] = None) -> plt.Figure:
    """Image | |x_sens| | |x_comp| side by side, the maps in contrast-adjusted jet over the image (Fig. 1).

    Args:
        image, x_sens, x_comp: ``(H, W)`` arrays (channels already summed for the maps).
        title: figure title.
        box: optional ``(center (row, col), half_width)`` of a known signal, drawn in red on every panel.
    """
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    panels = [(contrast_adjust(image, 0.5, 99.5), "image", "gray"),
              (jet_overlay(image, np.abs(x_sens)), "sensitive |x_sens|", None),
              (jet_overlay(image, np.abs(x_comp)), "complement |x_comp|", None)]
    for ax, (data, label, cmap) in zip(axes, panels):
        _show(ax, data, label, cmap, box)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


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
