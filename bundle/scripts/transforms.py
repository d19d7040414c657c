# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""MONAI transforms of the bundle: the SKS/BKS signal insertion of the paper's MRI task (Sec. IV-A).

A signal-present image gets exactly one Gaussian blob, ``amplitude * exp(-|r - c|^2 / (2 sigma^2))``, added to every
channel, with its centre ``c`` drawn uniformly among the voxels of a white-matter mask and its amplitude drawn
uniformly in ``amplitude_range`` (paper: 0.1-0.35). A signal-absent image is returned unchanged.
"""

from __future__ import annotations

from typing import Dict, Hashable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_tensor

__all__ = ["gaussian_blob", "InsertGaussianSignal", "InsertGaussianSignald", "SIGNAL_KEYS"]

# Keys InsertGaussianSignald writes (after the ``meta_prefix``); absent signals get centre -1, sigma 0, amplitude 0.
SIGNAL_KEYS = ("signal_center", "signal_sigma", "signal_amplitude")

Range = Union[float, Tuple[float, float]]


def gaussian_blob(spatial_shape: Sequence[int], center: Sequence[float], sigma: float, amplitude: float,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``amplitude * exp(-|r - center|^2 / (2 sigma^2))`` on a voxel grid, shape ``spatial_shape`` (2D or 3D)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    axes = [torch.arange(n, dtype=torch.float64) - float(c) for n, c in zip(spatial_shape, center)]
    grids = torch.meshgrid(*axes, indexing="ij")
    squared = sum(g**2 for g in grids)
    return (amplitude * torch.exp(-squared / (2.0 * sigma**2))).to(dtype)


def _as_range(value: Range, name: str) -> Tuple[float, float]:
    low, high = (value, value) if np.isscalar(value) else tuple(value)
    if not 0 < low <= high:
        raise ValueError(f"{name} must be a positive number or a (low, high) range with 0 < low <= high; got {value}.")
    return float(low), float(high)


def _spatial_mask(mask, spatial_shape: Tuple[int, ...]) -> np.ndarray:
    """The mask as a boolean array of ``spatial_shape``; accepts ``(*spatial)`` or channel-first ``(1, *spatial)``."""
    mask_np = np.asarray(convert_to_tensor(mask, track_meta=False).detach().cpu()) != 0
    if mask_np.shape == (1, *spatial_shape):
        mask_np = mask_np[0]
    if mask_np.shape != tuple(spatial_shape):
        raise ValueError(f"mask shape {mask_np.shape} does not match the image's spatial shape {tuple(spatial_shape)} "
                         "(images are channel first, (C, *spatial); masks (1, *spatial) or (*spatial)).")
    return mask_np


class InsertGaussianSignal(RandomizableTransform):
    """With probability ``prob``, add one Gaussian signal centred in the mask; otherwise leave the image as is.

    After each call, ``present`` (bool), ``center`` (voxel coordinates), ``sigma`` and ``amplitude`` describe what
    was inserted.

    Args:
        prob: probability of a signal-present image.
        amplitude_range: ``(low, high)`` of the uniform amplitude, or one value.
        sigma: width in voxels, fixed, or ``(low, high)`` of a uniform draw.

    Shapes: ``img (C, *spatial)``, ``mask (1, *spatial)`` or ``(*spatial)``, non-zero inside the white matter.
    """

    def __init__(self, prob: float = 0.5, amplitude_range: Range = (0.1, 0.35), sigma: Range = 3.0):
        RandomizableTransform.__init__(self, prob)
        self.amplitude_range = _as_range(amplitude_range, "amplitude_range")
        self.sigma_range = _as_range(sigma, "sigma")
        self.present = False
        self.center: Tuple[int, ...] = ()
        self.sigma = 0.0
        self.amplitude = 0.0

    def randomize(self, mask: np.ndarray) -> None:
        super().randomize(None)
        self.present = bool(self._do_transform)
        if not self.present:
            self.center, self.sigma, self.amplitude = (), 0.0, 0.0
            return
        voxels = np.argwhere(mask)
        if len(voxels) == 0:
            raise ValueError("the white-matter mask is empty: there is no voxel to centre the signal on.")
        self.center = tuple(int(v) for v in voxels[self.R.randint(len(voxels))])
        self.amplitude = float(self.R.uniform(*self.amplitude_range))
        self.sigma = float(self.R.uniform(*self.sigma_range))

    def __call__(self, img, mask, randomize: bool = True) -> torch.Tensor:
        img_t = convert_to_tensor(img, track_meta=False)
        spatial = tuple(img_t.shape[1:])
        mask_np = _spatial_mask(mask, spatial)
        if randomize:
            self.randomize(mask_np)
        if not self.present:
            return img if isinstance(img, torch.Tensor) else img_t
        blob = gaussian_blob(spatial, self.center, self.sigma, self.amplitude, dtype=img_t.dtype)
        return img + blob.to(img_t.device)[None]


class InsertGaussianSignald(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`InsertGaussianSignal`; one draw serves every key.

    Writes ``data[label_key]`` (1 signal present, 0 absent) and, prefixed by ``meta_prefix``,
    ``signal_center`` (float32 voxel coordinates, -1 when absent), ``signal_sigma`` and ``signal_amplitude``
    (0 when absent), so localization metrics can find the signal.

    Args:
        keys: image keys to add the signal to.
        mask_key: key of the white-matter mask.
        label_key: key the label is written to.
        prob, amplitude_range, sigma: as in :class:`InsertGaussianSignal`.
        meta_prefix: prefix of the signal keys, default ``""``.
    """

    def __init__(self, keys: KeysCollection = "image", mask_key: str = "mask", label_key: str = "label",
                 prob: float = 0.5, amplitude_range: Range = (0.1, 0.35), sigma: Range = 3.0, meta_prefix: str = "",
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.inserter = InsertGaussianSignal(prob=prob, amplitude_range=amplitude_range, sigma=sigma)
        self.mask_key, self.label_key, self.meta_prefix = mask_key, label_key, meta_prefix

    def set_random_state(self, seed: Optional[int] = None, state: Optional[np.random.RandomState] = None):
        super().set_random_state(seed, state)
        self.inserter.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        if self.mask_key not in d:
            raise KeyError(f"InsertGaussianSignald needs the white-matter mask under key {self.mask_key!r}.")
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        spatial = tuple(d[keys[0]].shape[1:])
        mask = _spatial_mask(d[self.mask_key], spatial)
        self.inserter.randomize(mask)
        for key in keys:
            d[key] = self.inserter(d[key], mask, randomize=False)
        ins = self.inserter
        center = ins.center if ins.present else (-1,) * len(spatial)
        d[self.label_key] = int(ins.present)
        d[f"{self.meta_prefix}signal_center"] = torch.tensor(center, dtype=torch.float32)
        d[f"{self.meta_prefix}signal_sigma"] = float(ins.sigma)
        d[f"{self.meta_prefix}signal_amplitude"] = float(ins.amplitude)
        return d
