# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Data for the bundle's tasks.

So far: a procedural SKS/BKS phantom, the fast offline stand-in for the paper's MRI task (Sec. IV-A) where tests
and demonstrations need speed. The real-layout datalist builders (Kermany OCT, NIH ChestX-ray14, HCP, the MNI152
default) come with the data issue.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .transforms import InsertGaussianSignald

__all__ = ["phantom_slice", "phantom_dataset"]


def phantom_slice(size: int, rng: np.random.RandomState) -> Tuple[np.ndarray, np.ndarray]:
    """One brain-like 2D slice with a lumpy background, and its white-matter mask.

    Tissue intensities mimic a T1 slice (white matter 0.8, grey matter 0.55, ventricles 0.2, outside 0); the
    background is known only statistically (BKS): head shape, ventricle size and 20-40 Gaussian lumps of random
    position, width and sign are drawn per slice, plus white noise.

    Returns:
        image: ``(1, size, size)`` float32, roughly in [0, 1].
        mask: ``(1, size, size)`` uint8 white-matter mask (never empty).
    """
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    angle = rng.uniform(-0.3, 0.3)
    ry, rx = yy * np.cos(angle) - xx * np.sin(angle), yy * np.sin(angle) + xx * np.cos(angle)
    head_a, head_b = rng.uniform(0.78, 0.9), rng.uniform(0.62, 0.75)
    brain = (ry / head_a) ** 2 + (rx / head_b) ** 2 <= 1
    white = (ry / (0.72 * head_a)) ** 2 + (rx / (0.68 * head_b)) ** 2 <= 1
    vent_a, vent_b = rng.uniform(0.12, 0.25), rng.uniform(0.06, 0.12)
    ventricles = (ry / vent_a) ** 2 + (rx / vent_b) ** 2 <= 1
    white &= ~ventricles
    image = np.where(brain, 0.55, 0.0) + np.where(white, 0.25, 0.0) + np.where(ventricles, -0.35, 0.0)
    lumps = np.zeros_like(image)
    for _ in range(rng.randint(20, 41)):
        cy, cx = rng.uniform(-0.8, 0.8, size=2)
        width = rng.uniform(0.06, 0.15)
        lumps += rng.uniform(-0.06, 0.06) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    image = np.where(brain, image + lumps, 0.0) + rng.normal(0.0, 0.02, size=image.shape)
    return image[None].astype(np.float32), white[None].astype(np.uint8)


def phantom_dataset(n: int, size: int = 64, seed: int = 0, prob: float = 0.5,
                    amplitude_range: Sequence[float] = (0.1, 0.35), sigma: Optional[float] = None
                    ) -> List[Dict[str, object]]:
    """``n`` SKS/BKS phantom samples as MONAI-style dicts, reproducible from ``seed``.

    Each dict holds ``image`` ``(1, size, size)`` float32 tensor, ``mask``, ``label`` (1 signal present) and the
    signal keys of :class:`~scripts.transforms.InsertGaussianSignald`. ``sigma`` defaults to ``size / 24`` voxels.
    """
    rng = np.random.RandomState(seed)
    inserter = InsertGaussianSignald(keys="image", mask_key="mask", label_key="label", prob=prob,
                                     amplitude_range=tuple(amplitude_range), sigma=sigma or size / 24)
    inserter.set_random_state(seed=seed + 1)
    samples = []
    for _ in range(n):
        image, mask = phantom_slice(size, rng)
        samples.append(inserter({"image": torch.from_numpy(image), "mask": torch.from_numpy(mask)}))
    return samples
