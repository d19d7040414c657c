# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Simulated subjects: the MNI152 T1 and white-matter templates warped together into one subject's anatomy, with
that subject's bias field and contrast (floor 2 of DESIGN.md; MONAI's random spatial and intensity transforms do
the work, seeded per subject).

One brain augmented slice by slice gives test images that are near copies of training images (neighbouring
slices correlate at r > 0.99), so a bootstrap over them rests on a handful of independent units. A simulated
subject is one independent draw of head shape (an anisotropic affine), local anatomy (a smooth random
deformation), receive-coil shading (a polynomial bias field) and contrast (a gamma curve); the subject is the
bootstrap's unit. The simulation runs on a ``spacing`` mm grid (2 mm by default: the task's images are 64^2, so
finer detail would be resized away).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Tuple

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandSmoothDeformd,
    Resize,
)

__all__ = ["SubjectSettings", "SimulateSubject"]


@dataclass(frozen=True)
class SubjectSettings:
    """What varies between simulated subjects, each drawn uniformly within its range.

    Attributes:
        spacing: the simulation grid in mm (the templates are 1 mm).
        scale: per-axis scale range of the head (0.08: 92 % to 108 %, independently per axis).
        rotate: rotation range in radians about each axis.
        deform: largest displacement of the smooth deformation, as a fraction of the grid (MONAI's ``def_range``).
        deform_grid: control points of the smooth deformation per axis.
        bias: largest coefficient of the degree-3 polynomial bias field (log scale, MONAI's ``coeff_range``).
        gamma: range of the contrast curve's exponent.
    """

    spacing: float = 2.0
    scale: float = 0.08
    rotate: float = 0.08
    deform: float = 0.04
    deform_grid: int = 5
    bias: float = 0.3
    gamma: Tuple[float, float] = (0.7, 1.4)

    def as_dict(self) -> dict:
        return asdict(self)


class SimulateSubject:
    """``(t1 (X, Y, Z), wm (X, Y, Z)) -> (t1', wm')``: one simulated subject from the templates, reproducible from
    ``seed``.

    Both volumes are resampled to ``settings.spacing`` mm, then warped together by one random affine and one
    smooth deformation (the white-matter probability bilinearly, so it stays a probability); the T1 then gets a
    bias field and a contrast curve. The T1 is scaled to [0, 1] first, so the intensity steps act on the same
    range for every subject.

    Shapes: inputs ``(X, Y, Z)`` float arrays on one 1 mm grid; outputs ``(X', Y', Z')`` float32 on the coarser
    grid, the T1 non-negative and the white-matter probability in [0, 1].
    """

    def __init__(self, settings: SubjectSettings = SubjectSettings()):
        self.settings = settings

    def __call__(self, t1: np.ndarray, wm: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
        s = self.settings
        if t1.shape != wm.shape or t1.ndim != 3:
            raise ValueError(f"the T1 {t1.shape} and white-matter {wm.shape} volumes must be one 3D grid.")
        shape = tuple(max(8, int(round(n / s.spacing))) for n in t1.shape)
        resize = Resize(spatial_size=shape, mode="area")
        t1_t = resize(torch.as_tensor(t1, dtype=torch.float32)[None])
        wm_t = resize(torch.as_tensor(wm, dtype=torch.float32)[None])
        t1_t = t1_t / max(float(t1_t.max()), 1e-12)
        keys = ("t1", "wm")
        steps = []  # a zero range is no step (MONAI refuses an empty deformation range)
        if s.scale or s.rotate:
            steps.append(RandAffined(keys, prob=1.0, rotate_range=(s.rotate,) * 3, scale_range=(s.scale,) * 3,
                                     mode="bilinear", padding_mode="zeros"))
        if s.deform:
            steps.append(RandSmoothDeformd(keys, spatial_size=shape, rand_size=(s.deform_grid,) * 3, prob=1.0,
                                           def_range=s.deform, field_mode="trilinear", align_corners=True,
                                           grid_mode="bilinear", grid_padding_mode="zeros"))
        if s.bias:
            steps.append(RandBiasFieldd("t1", degree=3, coeff_range=(0.0, s.bias), prob=1.0))
        if tuple(s.gamma) != (1.0, 1.0):
            steps.append(RandAdjustContrastd("t1", prob=1.0, gamma=s.gamma))
        chain = Compose(steps)
        chain.set_random_state(seed=int(seed) % (2**32))
        out: Dict[str, torch.Tensor] = chain({"t1": t1_t, "wm": wm_t})
        t1_out = np.clip(np.asarray(out["t1"], dtype=np.float32)[0], 0.0, None)
        wm_out = np.clip(np.asarray(out["wm"], dtype=np.float32)[0], 0.0, 1.0)
        return t1_out, wm_out
