"""The handlers inside a real MONAI SupervisedEvaluator (no_grad, decollated batches)."""

from __future__ import annotations

import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator

from scripts.handlers import IFIMHandler
from scripts.ifim import ifim_decompose
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


def test_handler_needs_a_model():
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    IFIMHandler().attach(engine)
    with pytest.raises(ValueError, match="no model"):
        engine.run([{"image": torch.zeros(1, 1, 8, 8), "label": torch.zeros(1)}])


def test_durations_read_as_a_person_says_them():
    from scripts.handlers import _duration

    expected = ["0 s", "42 s", "3 min 05 s", "1 h 00 min", "1 h 02 min"]
    assert [_duration(s) for s in (0.4, 42, 185, 3599.6, 3720)] == expected
