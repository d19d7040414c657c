"""The figures: contrast adjustment, jet overlays, and atomic saves that leave no partial file."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from scripts.visualize import contrast_adjust, decomposition_figure, jet_overlay, save_figure_atomic


def test_contrast_and_overlay():
    values = np.arange(100.0).reshape(10, 10)
    scaled = contrast_adjust(values, 10, 90)
    assert scaled.min() == 0 and scaled.max() == 1 and scaled[5, 0] == pytest.approx((50 - 9.9) / (89.1 - 9.9))
    assert np.all(contrast_adjust(np.ones((4, 4))) == 0)
    rgb = jet_overlay(values, values[::-1])
    assert rgb.shape == (10, 10, 3) and 0 <= rgb.min() and rgb.max() <= 1


def test_failed_save_leaves_no_file(tmp_path):
    fig = decomposition_figure(np.random.rand(8, 8), np.random.rand(8, 8), np.random.rand(8, 8),
                               box=((4, 4), 2.0))
    save_figure_atomic(fig, tmp_path / "ok.png")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
    fig = plt.figure()
    with pytest.raises(ValueError):
        save_figure_atomic(fig, tmp_path / "bad.notaformat")
    assert [p.name for p in tmp_path.iterdir()] == ["ok.png"]
