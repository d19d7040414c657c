"""The handlers inside a real MONAI SupervisedEvaluator (no_grad, decollated batches)."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator

from scripts.handlers import IFIMHandler, PerturbationMetricsHandler
from scripts.ifim import ifim_decompose
from scripts.metrics import contrastive_perturbation
from scripts.networks import ShallowCNN


def _data(n=6, shape=(1, 16, 16), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(*shape, generator=generator), "label": i % 2, "image_path": f"/data/case_{i}.png"}
            for i in range(n)]


def _run(model, data, handlers, batch_size=4):
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=DataLoader(data, batch_size=batch_size),
                                    network=model, val_handlers=handlers)
    evaluator.run()
    return evaluator


def test_ifim_handler_writes_maps_png_and_csv(tmp_path):
    torch.manual_seed(0)
    model, data = ShallowCNN(2, 1, 2), _data()
    evaluator = _run(model, data, [IFIMHandler(output_dir=tmp_path)])
    last = evaluator.state.ifim
    direct = ifim_decompose(model, torch.stack([d["image"] for d in data[4:]]))
    torch.testing.assert_close(last.x_sens, direct.x_sens)  # the last batch, computed under the engine's no_grad
    rows = list(csv.DictReader((tmp_path / "ifim.csv").open()))
    assert [r["file"] for r in rows] == [f"case_{i}" for i in range(6)]
    assert float(rows[5]["lambda_1"]) == pytest.approx(float(direct.eigenvalues[1, 0]), rel=1e-5)
    for i in range(6):
        sens = np.load(tmp_path / f"case_{i}_x_sens.npy")
        comp = np.load(tmp_path / f"case_{i}_x_comp.npy")
        np.testing.assert_allclose(sens + comp, data[i]["image"].numpy(), rtol=0, atol=1e-6)
        assert (tmp_path / f"case_{i}_ifim.png").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_ifim_handler_3d_writes_nifti(tmp_path):
    torch.manual_seed(1)
    data = _data(n=2, shape=(1, 8, 8, 8))
    _run(ShallowCNN(3, 1, 3), data, [IFIMHandler(output_dir=tmp_path)], batch_size=2)
    sens = np.asarray(nib.load(str(tmp_path / "case_0_x_sens.nii.gz")).dataobj)
    comp = np.asarray(nib.load(str(tmp_path / "case_0_x_comp.nii.gz")).dataobj)
    assert sens.shape == (8, 8, 8)
    np.testing.assert_allclose(sens + comp, data[0]["image"][0].numpy(), rtol=0, atol=1e-6)


def test_ifim_handler_without_output_dir_only_computes(tmp_path):
    evaluator = _run(ShallowCNN(2, 1, 2), _data(n=2), [IFIMHandler()], batch_size=2)
    assert evaluator.state.ifim.x_sens.shape == (2, 1, 16, 16)
    assert not list(tmp_path.iterdir())


def test_perturbation_metrics_match_the_plain_function():
    """One batch holding the whole set: the handler's numbers are contrastive_perturbation's on that set."""
    torch.manual_seed(2)
    # narrow width and this seed give an untrained net whose F1 ratios are defined (not 0/0) on these 8 images
    model, data = ShallowCNN(2, 1, 2, channels=(16, 32, 64)), _data(n=8)
    handler = PerturbationMetricsHandler(alphas=(0.01, 0.03), seed=5)
    evaluator = _run(model, data, [handler], batch_size=8)
    x = torch.stack([d["image"] for d in data])
    y = torch.tensor([d["label"] for d in data])
    result = ifim_decompose(model, x)
    expected = contrastive_perturbation(model, x, y, result.x_sens.abs().sum(1, keepdim=True),
                                        result.x_comp.abs().sum(1, keepdim=True), alphas=(0.01, 0.03), seed=5 + 1)
    metrics = evaluator.state.metrics
    for alpha, tag in ((0.01, "1"), (0.03, "3")):
        assert np.isfinite(expected[alpha]["ratio"])  # NaN == NaN would fail for the wrong reason
        assert metrics[f"ifim_perturbation_ratio_{tag}"] == expected[alpha]["ratio"]
        for name in ("high", "low", "random"):
            assert metrics[f"ifim_perturbation_drop_{name}_{tag}"] == expected[alpha][f"drop_{name}"]
    assert metrics["ifim_perturbation_f1_clean"] == expected[0.01]["f1_clean"]


def test_handler_needs_a_model():
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    IFIMHandler().attach(engine)
    with pytest.raises(ValueError, match="no model"):
        engine.run([{"image": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1)}])
