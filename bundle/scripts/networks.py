# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Classifiers the paper studies. Each returns one logits tensor ``(B, num_classes)``.

So far: the paper's shallow CNN (Sec. IV-C, "three convolutional layers with ReLU activations"). VGG16 and ResNet18
follow with the bundle workflows.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from torch import nn

__all__ = ["ShallowCNN"]


class ShallowCNN(nn.Module):
    """Three 3x3 convolutions with ReLU, then global pooling and a linear head; 2D or 3D.

    Each convolution but the last is followed by 2x max pooling, so the receptive field grows to cover a
    signal of a few pixels' width. ReLUs are not in place, so gradient-based attribution libraries can hook them.
    The paper leaves the head open. Global *max* pooling is the default because the SKS/BKS task asks whether a
    small signal is present anywhere: an average over all positions dilutes its response (on the 64^2 phantom,
    the average-pooled net stayed at chance after 6 epochs where the max-pooled one learned).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels ``C_in``.
        num_classes: outputs ``C``.
        channels: widths of the three convolutions.
        global_pool: ``"max"`` or ``"avg"``.

    Shapes: ``(B, C_in, *spatial) -> (B, C)``.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 2,
                 channels: Sequence[int] = (16, 32, 64), global_pool: str = "max"):
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
