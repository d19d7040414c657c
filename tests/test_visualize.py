"""The figures: contrast adjustment, jet overlays, and atomic saves that leave no partial file."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from scripts.visualize import contrast_adjust, jet_overlay, sample_grid_figure, save_figure_atomic


def test_contrast_and_overlay():
    values = np.arange(100.0).reshape(10, 10)
    scaled = contrast_adjust(values, 10, 90)
    assert scaled.min() == 0 and scaled.max() == 1 and scaled[5, 0] == pytest.approx((50 - 9.9) / (89.1 - 9.9))
    assert np.all(contrast_adjust(np.ones((4, 4))) == 0)
    rgb = jet_overlay(values, values[::-1])
    assert rgb.shape == (10, 10, 3) and 0 <= rgb.min() and rgb.max() <= 1


def test_failed_save_leaves_no_file(tmp_path):
    fig = sample_grid_figure([np.random.rand(8, 8)], ["one"], [((4, 4), 2.0)])
    save_figure_atomic(fig, tmp_path / "ok.png")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
    fig = plt.figure()
    with pytest.raises(ValueError):
        save_figure_atomic(fig, tmp_path / "bad.notaformat")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]


def test_decomposition_panels_show_each_map_in_contrast_adjusted_jet_over_the_image(tmp_path):
    """The composited figure's panels hold, pixel for pixel (each map pixel repeated), the image scaled between its
    0.5 and 99.5 percentiles and the maps' 1-99 percentile jet blended 50 / 50 over it, computed here from numpy
    and matplotlib's colormap; the PNG written reads back as the same array."""
    from matplotlib import colormaps
    from PIL import Image

    from scripts.visualize import decomposition_panels, save_rgb_atomic

    rng = np.random.default_rng(0)
    image, sens, comp = rng.random((12, 16)), rng.normal(size=(12, 16)), rng.normal(size=(12, 16))

    def scaled(values, low, high):
        lo, hi = np.percentile(values, [low, high])
        return np.clip((values - lo) / (hi - lo), 0, 1)

    grey = scaled(image, 0.5, 99.5)[..., None].repeat(3, -1)
    expected = [grey] + [0.5 * grey + 0.5 * colormaps["jet"](scaled(np.abs(m), 1, 99))[..., :3] for m in (sens, comp)]
    rgb = decomposition_panels(image, sens, comp, title="case: present (p = 0.9)", panel_size=64)
    scale = 64 // 16
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    for panel in expected:  # find each panel by its top-left pixel block and compare it whole
        want = np.clip(np.rint(255 * panel), 0, 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        hits = [(r, c) for r in range(rgb.shape[0] - want.shape[0] + 1) for c in range(rgb.shape[1] - want.shape[1] + 1)
                if np.array_equal(rgb[r:r + 4, c:c + 4], want[:4, :4])
                and np.array_equal(rgb[r:r + want.shape[0], c:c + want.shape[1]], want)]
        assert len(hits) == 1
    assert (rgb[:18] < 128).any()  # the title is drawn
    path = save_rgb_atomic(rgb, tmp_path / "case_ifim.png")
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["case_ifim.png"]
