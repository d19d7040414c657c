"""The handlers inside a real MONAI SupervisedEvaluator (no_grad, decollated batches)."""

from __future__ import annotations

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


def test_ifim_handler_puts_each_batch_decomposition_on_the_state():
    torch.manual_seed(0)
    model, data = ShallowCNN(2, 1, 2), _data()
    evaluator = _run(model, data, [IFIMHandler()])
    last = evaluator.state.ifim
    direct = ifim_decompose(model, torch.stack([d["image"] for d in data[4:]]))
    for name, value in direct.to_dict().items():  # the last batch, computed under the engine's no_grad
        torch.testing.assert_close(getattr(last, name), value)


def test_ifim_handler_3d():
    torch.manual_seed(1)
    data = _data(n=2, shape=(1, 8, 8, 8))
    evaluator = _run(ShallowCNN(3, 1, 3), data, [IFIMHandler()], batch_size=2)
    torch.testing.assert_close(evaluator.state.ifim.x_sens + evaluator.state.ifim.x_comp,
                               torch.stack([d["image"] for d in data]))


@pytest.mark.parametrize("batch_size", [8, 3])
def test_perturbation_metrics_match_the_plain_function(batch_size):
    """The handler's numbers over an epoch, in one batch or in batches of 3, are contrastive_perturbation's on the
    whole set held in memory."""
    torch.manual_seed(2)
    # narrow width and this seed give an untrained net whose F1 ratios are defined (not 0/0) on these 8 images
    model, data = ShallowCNN(2, 1, 2, channels=(16, 32, 64)), _data(n=8)
    handler = PerturbationMetricsHandler(alphas=(0.01, 0.03), seed=5)
    evaluator = _run(model, data, [handler], batch_size=batch_size)
    x = torch.stack([d["image"] for d in data])
    y = torch.tensor([d["label"] for d in data])
    result = ifim_decompose(model, x)
    expected = contrastive_perturbation(model, x, y, result.x_sens.abs().sum(1, keepdim=True),
                                        result.x_comp.abs().sum(1, keepdim=True), alphas=(0.01, 0.03), seed=5)
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
