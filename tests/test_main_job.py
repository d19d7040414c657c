"""README command 1's job, tiny: it trains, decomposes and writes figures and a CSV; figures are saved atomically."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from scripts.visualize import contrast_adjust, decomposition_figure, jet_overlay, save_figure_atomic

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_figures_and_csv(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--output_dir", str(out), "--size", "32",
                          "--train", "64", "--val", "16", "--epochs", "1", "--samples", "3"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert str(out.resolve()) in run.stdout
    rows = list(csv.DictReader((out / "eigenvalues.csv").open()))
    assert [r["file"] for r in rows] == ["sample_00.png", "sample_01.png", "sample_02.png"]
    for row in rows:
        p0, p1 = float(row["p_0"]), float(row["p_1"])
        assert p0 + p1 == pytest.approx(1, abs=1e-5)
        assert int(row["rank"]) in (0, 1) and float(row["lambda_2"]) == 0  # binary softmax: rank <= 1
        assert int(row["k"]) == int(row["rank"])
        assert np.asarray(Image.open(out / row["file"])).ndim == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([r["file"] for r in rows] + ["eigenvalues.csv"])


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
