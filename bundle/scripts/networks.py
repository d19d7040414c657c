# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Classifiers the paper studies (Sec. IV-B, IV-C). Each returns one logits tensor ``(B, num_classes)``.

* :class:`ShallowCNN`: "three convolutional layers with ReLU activations", 2D or 3D.
* :class:`VGG16`: configuration D of Simonyan & Zisserman, 2D. Written here because MONAI has no VGG and
  torchvision's does not install beside the CPU torch build this project pins.
* :func:`resnet18`: MONAI's ResNet18, 2D or 3D, with a stride-2 stem and ReLUs that are not in place (attribution
  libraries hook activations, and in-place ones break them).
* :func:`get_network`: the three by name, for configs.

All activations are out of place, and no weights are downloaded.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.nets import ResNet
from monai.networks.nets import resnet18 as monai_resnet18
from torch import nn

__all__ = ["ShallowCNN", "VGG16", "resnet18", "get_network", "NETWORKS"]


class ShallowCNN(nn.Module):
    """Three 3x3 convolutions with ReLU, then global pooling and a linear head; 2D or 3D.

    Each convolution but the last is followed by 2x max pooling, so the receptive field grows to cover a
    signal of a few pixels' width. ReLUs are not in place, so gradient-based attribution libraries can hook them.
    The paper leaves the head open. Global *max* pooling is the default because the SKS/BKS task asks whether a
    small signal is present anywhere: an average over all positions dilutes its response (on the 64^2 phantom,
    the average-pooled net stayed at chance after 6 epochs where the max-pooled one learned).
    The paper gives no widths either. (32, 64, 128) is the default because (16, 32, 64) underfits the faint
    signals of the default task: trained by train.yaml (64^2, 40 epochs) it reached test recall 0.881, the wider
    net 0.912 (precision 0.947 and 0.965), for about 4x the compute and 93k parameters (see the model card).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        num_classes: outputs ``C``.
        channels: widths of the three convolutions.
        global_pool: ``"max"`` or ``"avg"``.

    Shapes: ``(B, C_in, *spatial) -> (B, C)``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                 channels: Sequence[int] = (32, 64, 128), global_pool: str = "max"):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if len(channels) != 3:
            raise ValueError(f"channels must give the widths of the 3 convolutions, got {tuple(channels)}.")
        pools = {"max": Pool.ADAPTIVEMAX, "avg": Pool.ADAPTIVEAVG}
        if global_pool not in pools:
            raise ValueError(f"global_pool must be one of {tuple(pools)}, got {global_pool!r}.")
        conv, max_pool = Conv[Conv.CONV, spatial_dims], Pool[Pool.MAX, spatial_dims]
        widths = (in_channels, *channels)
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [conv(widths[i], widths[i + 1], kernel_size=3, padding=1), nn.ReLU()]
            if i < 2:
                layers.append(max_pool(kernel_size=2))
        self.features = nn.Sequential(*layers)
        self.pool = Pool[pools[global_pool], spatial_dims](1)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class VGG16(nn.Module):
    """VGG16 (configuration D: 13 3x3 convolutions in 5 blocks, each block ending in 2x max pooling), 2D.

    The classifier is the original's: adaptive average pooling to 7x7, then two fully connected layers of
    ``hidden`` units with ReLU and dropout, then the output layer. With ``hidden=4096`` this is the 134M-parameter
    network of the paper; a smaller ``hidden`` suits CPU experiments.

    Args:
        in_channels: input channels ``C_in``.
        num_classes: outputs ``C``.
        batch_norm: add batch normalization after each convolution (VGG16-BN).
        hidden: width of the two hidden fully connected layers.
        dropout: dropout probability of the classifier.

    Shapes: ``(B, C_in, H, W) -> (B, C)``, ``H, W >= 32``.
    """

    CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, in_channels: int = 1, num_classes: int = 2, batch_norm: bool = False, hidden: int = 4096,
                 dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for item in self.CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(nn.Conv2d(width, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU())
            width = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def resnet18(spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2) -> ResNet:
    """MONAI's ResNet18 with a 7x7, stride-2 stem (as the ImageNet ResNet) and out-of-place ReLUs.

    Shapes: ``(B, C_in, *spatial) -> (B, C)``.
    """
    model = monai_resnet18(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes,
                           conv1_t_size=7, conv1_t_stride=2, act=("relu", {"inplace": False}), pretrained=False)
    for module in model.modules():  # MONAI's blocks build their own in-place ReLUs whatever `act` says
        if getattr(module, "inplace", False):
            module.inplace = False
    return model


NETWORKS = {"shallow_cnn": ShallowCNN, "vgg16": VGG16, "resnet18": resnet18}


def get_network(name: str, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2, **kwargs) -> nn.Module:
    """One of :data:`NETWORKS` by name; ``spatial_dims`` 3 is for the shallow CNN and ResNet18 only."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}.")
    if name == "vgg16":
        if spatial_dims != 2:
            raise ValueError("VGG16 is 2D only; use 'shallow_cnn' or 'resnet18' for 3D inputs.")
        return VGG16(in_channels=in_channels, num_classes=num_classes, **kwargs)
    return NETWORKS[name](spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)
