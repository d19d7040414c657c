"""The paper's networks: one logits tensor out, 2D/3D where offered, usable by the iFIM engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.ifim import ifim_decompose
from scripts.networks import VGG16, ShallowCNN, get_network, resnet18


@pytest.mark.parametrize("name,dims,shape", [
    ("shallow_cnn", 2, (2, 1, 32, 32)), ("shallow_cnn", 3, (2, 1, 16, 16, 16)),
    ("resnet18", 2, (2, 1, 64, 64)), ("resnet18", 3, (1, 1, 32, 32, 32)),
    ("vgg16", 2, (2, 1, 32, 32)),
])
def test_one_logits_tensor_per_network(name, dims, shape):
    torch.manual_seed(0)
    kwargs = {"hidden": 64} if name == "vgg16" else {}
    model = get_network(name, spatial_dims=dims, in_channels=1, num_classes=3, **kwargs).eval()
    with torch.no_grad():
        logits = model(torch.randn(*shape))
    assert isinstance(logits, torch.Tensor) and logits.shape == (shape[0], 3)
    assert not any(getattr(m, "inplace", False) for m in model.modules())  # attribution hooks need out-of-place


def test_vgg16_is_configuration_d():
    model = VGG16(in_channels=3, num_classes=1000)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and [c.out_channels for c in convs][-1] == 512
    assert sum(p.numel() for p in model.parameters()) == 138_357_544  # the published VGG16 parameter count
    bn = VGG16(batch_norm=True, hidden=32)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 13


def test_resnet18_has_the_published_layout():
    model = resnet18(spatial_dims=2, in_channels=3, num_classes=1000)
    # torchvision's resnet18 has 11,689,512 parameters; MONAI's shortcut convolutions add biases (128 + 256 + 512).
    assert sum(p.numel() for p in model.parameters()) == 11_689_512 + 896
    assert model.conv1.stride == (2, 2) and model.conv1.kernel_size == (7, 7)


def test_bad_names_and_dims_raise():
    with pytest.raises(ValueError, match="unknown network"):
        get_network("alexnet")
    with pytest.raises(ValueError, match="2D only"):
        get_network("vgg16", spatial_dims=3)
    with pytest.raises(ValueError, match="global_pool"):
        ShallowCNN(global_pool="median")


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_deep_networks_work_with_the_engine(name):
    """BatchNorm (ResNet) in train mode and dropout (VGG) must not make a batch differ from single images."""
    torch.manual_seed(0)
    model = get_network(name, num_classes=3, **({"hidden": 32} if name == "vgg16" else {})).train()
    x = torch.randn(3, 1, 32, 32)
    batched = ifim_decompose(model, x)
    assert model.training
    single = ifim_decompose(model, x[1:2])
    torch.testing.assert_close(batched.x_sens[1:2], single.x_sens, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batched.eigenvalues[1:2], single.eigenvalues, rtol=1e-4, atol=1e-12)
