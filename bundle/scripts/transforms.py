# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""MONAI transforms of the bundle and the modality chains of the paper's three tasks (Sec. IV-A).

* SKS/BKS signal insertion: a signal-present image gets exactly one Gaussian blob,
  ``amplitude * exp(-|r - c|^2 / (2 sigma^2))``, added to every channel, with its centre ``c`` drawn uniformly among
  the voxels of a white-matter mask and its amplitude uniformly in ``amplitude_range`` (paper: 0.1-0.35). A
  signal-absent image is returned unchanged.
* Small pieces MONAI lacks: RGB-to-grayscale, MONOCHROME1 inversion for DICOM (MONAI's ``PydicomReader`` applies
  RescaleSlope/Intercept but not the photometric interpretation), and per-sample seeding so that every datalist
  entry is one fixed image.
* Chains (``Compose`` factories): :func:`image_transforms` (OCT and CXR) and :func:`mri_transforms`. Every chain
  reads files through the same steps (:mod:`scripts.sources`), so a format reads the same way in training and on a
  user's scans.
"""

from __future__ import annotations

from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    CopyItemsd,
    EnsureTyped,
    MapTransform,
    Rand2DElasticd,
    RandAffined,
    RandFlipd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityd,
    ScaleIntensityRangePercentilesd,
    ThreadUnsafe,
    ThresholdIntensityd,
    Transform,
)
from monai.utils import convert_to_tensor

from .sources import (
    DEFAULT_MAX_VOXELS,
    EnsureSpatialDimsd,
    LoadImageCheckedd,
    RefuseFlatImagesd,
    RowsColumnsd,
    is_dicom_file,
)

__all__ = ["gaussian_blob", "InsertGaussianSignal", "InsertGaussianSignald", "InsertLumpsd", "EnsureGrayscale",
           "EnsureGrayscaled", "InvertMonochrome1", "InvertMonochrome1d", "PerSampleSeedd", "image_transforms",
           "mri_transforms", "LoadImageCheckedd"]

Range = Union[float, Tuple[float, float]]


def gaussian_blob(spatial_shape: Sequence[int], center: Sequence[float], sigma: Union[float, Sequence[float]],
                  amplitude: float, dtype: torch.dtype = torch.float32,
                  axes: Optional[np.ndarray] = None) -> torch.Tensor:
    """``amplitude * exp(-sum_i (u_i . (r - center))^2 / (2 sigma_i^2))`` on a voxel grid, shape ``spatial_shape``
    (2D or 3D): ``sigma`` one width, or one per principal axis ``u_i``, the columns of the rotation ``axes``
    (default the grid's axes)."""
    dims = len(spatial_shape)
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (dims,))
    if not np.all(sigmas > 0):
        raise ValueError(f"sigma must be positive, got {sigma}.")
    rotation = torch.as_tensor(np.eye(dims) if axes is None else np.asarray(axes, np.float64))
    offsets = [torch.arange(n, dtype=torch.float64) - float(c) for n, c in zip(spatial_shape, center)]
    grid = torch.stack(torch.meshgrid(*offsets, indexing="ij"), dim=-1)  # (*spatial, dims)
    squared = ((grid @ rotation) ** 2 / torch.as_tensor(sigmas) ** 2).sum(-1)
    return (amplitude * torch.exp(-squared / 2.0)).to(dtype)


def _random_rotation(dims: int, rng: np.random.RandomState) -> np.ndarray:
    """A rotation drawn uniformly (Haar) from SO(dims): QR of a Gaussian matrix with the signs fixed."""
    q, r = np.linalg.qr(rng.normal(size=(dims, dims)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


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


SignalShape = Tuple[float, ...]  # (major, minor) or (major, minor, polarity)
ROUND: SignalShape = (1.0, 1.0)
HYPOINTENSE: SignalShape = (1.0, 1.0, -1.0)  # a round signal darker than its surround


class InsertGaussianSignal(RandomizableTransform):
    """With probability ``prob``, add one Gaussian signal of one of ``shapes`` centred in the mask; otherwise leave
    the image as is.

    A shape is ``(major, minor)`` or ``(major, minor, polarity)``: the signal's width is ``major * sigma`` along one
    axis, drawn in a uniformly random direction, and ``minor * sigma`` across it; ``(1, 1)`` is the paper's round
    signal; polarity ``-1`` subtracts it (a hypointense signal), ``+1`` (the default) adds it. After each call,
    ``present`` (bool), ``shape_index`` (-1 when absent), ``center`` (voxel coordinates), ``sigma`` (the widest
    width), ``widths`` and ``axes`` (the rotation whose columns they lie along) and ``amplitude`` describe what was
    inserted.

    Args:
        prob: probability of a signal-present image; None: ``len(shapes) / (len(shapes) + 1)``, so that absent and
            each shape are equally likely.
        amplitude_range: ``(low, high)`` of the uniform amplitude, or one value.
        sigma: width in voxels, fixed, or ``(low, high)`` of a uniform draw.
        shapes: the signal shapes, one drawn uniformly per signal-present image.

    Shapes: ``img (C, *spatial)``, ``mask (1, *spatial)`` or ``(*spatial)``, non-zero inside the white matter.
    """

    def __init__(self, prob: Optional[float] = 0.5, amplitude_range: Range = (0.1, 0.35), sigma: Range = 3.0,
                 shapes: Sequence[SignalShape] = (ROUND,)):
        self.shapes = tuple(tuple(float(v) for v in shape) + (1.0,) * (len(shape) == 2) for shape in shapes)
        if not self.shapes or any(len(shape) != 3 or min(shape[:2]) <= 0 or shape[2] not in (-1.0, 1.0)
                                  for shape in self.shapes):
            raise ValueError(f"shapes must be one or more (major, minor) positive width factors, each optionally "
                             f"followed by a polarity of 1 or -1; got {shapes}.")
        RandomizableTransform.__init__(self, len(self.shapes) / (len(self.shapes) + 1) if prob is None else prob)
        self.amplitude_range = _as_range(amplitude_range, "amplitude_range")
        self.sigma_range = _as_range(sigma, "sigma")
        self.present = False
        self.shape_index = -1
        self.center: Tuple[int, ...] = ()
        self.sigma = 0.0
        self.widths: Tuple[float, ...] = ()
        self.axes: Optional[np.ndarray] = None
        self.amplitude = 0.0
        self.polarity = 1.0

    @property
    def label(self) -> int:
        """0 when absent, else 1 + the index of the inserted shape."""
        return self.shape_index + 1

    def randomize(self, mask: np.ndarray) -> None:
        super().randomize(None)
        self.present = bool(self._do_transform)
        if not self.present:
            self.shape_index, self.center, self.sigma, self.widths, self.axes = -1, (), 0.0, (), None
            self.amplitude = 0.0
            return
        voxels = np.argwhere(mask)
        if len(voxels) == 0:
            raise ValueError("the white-matter mask is empty: there is no voxel to centre the signal on.")
        self.center = tuple(int(v) for v in voxels[self.R.randint(len(voxels))])
        self.amplitude = float(self.R.uniform(*self.amplitude_range))
        base = float(self.R.uniform(*self.sigma_range))
        self.shape_index = int(self.R.randint(len(self.shapes))) if len(self.shapes) > 1 else 0
        major, minor, self.polarity = self.shapes[self.shape_index]
        dims = mask.ndim
        self.widths = (major * base,) + (minor * base,) * (dims - 1)
        self.axes = _random_rotation(dims, self.R) if major != minor else np.eye(dims)
        self.sigma = max(self.widths)

    def __call__(self, img, mask, randomize: bool = True) -> torch.Tensor:
        img_t = convert_to_tensor(img, track_meta=False)
        spatial = tuple(img_t.shape[1:])
        mask_np = _spatial_mask(mask, spatial)
        if randomize:
            self.randomize(mask_np)
        if not self.present:
            return img if isinstance(img, torch.Tensor) else img_t
        blob = gaussian_blob(spatial, self.center, self.widths, self.polarity * self.amplitude, dtype=img_t.dtype,
                             axes=self.axes)
        return img + blob.to(img_t.device)[None]


class InsertGaussianSignald(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`InsertGaussianSignal`; one draw serves every key.

    Writes ``data[label_key]`` (0 signal absent, else 1 + the shape's index: 1 signal present for one shape) and,
    prefixed by ``meta_prefix``, ``signal_center`` (float32 voxel coordinates, -1 when absent), ``signal_sigma``
    (the widest width) and ``signal_amplitude`` (0 when absent), so localization metrics can find the signal.

    Args:
        keys: image keys to add the signal to.
        mask_key: key of the white-matter mask.
        label_key: key the label is written to.
        prob, amplitude_range, sigma, shapes: as in :class:`InsertGaussianSignal`.
        meta_prefix: prefix of the signal keys, default ``""``.
    """

    def __init__(self, keys: KeysCollection = "image", mask_key: str = "mask", label_key: str = "label",
                 prob: Optional[float] = 0.5, amplitude_range: Range = (0.1, 0.35), sigma: Range = 3.0,
                 shapes: Sequence[SignalShape] = (ROUND,), meta_prefix: str = "", allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.inserter = InsertGaussianSignal(prob=prob, amplitude_range=amplitude_range, sigma=sigma, shapes=shapes)
        RandomizableTransform.__init__(self, self.inserter.prob)
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
        d[self.label_key] = ins.label
        d[f"{self.meta_prefix}signal_center"] = torch.tensor(center, dtype=torch.float32)
        d[f"{self.meta_prefix}signal_sigma"] = float(ins.sigma)
        d[f"{self.meta_prefix}signal_amplitude"] = float(ins.amplitude)
        return d


class InsertLumpsd(RandomizableTransform, MapTransform):
    """A lumpy background (Rolland & Barrett's model of anatomical texture): ``number`` Gaussian lumps of width
    ``sigma`` voxels, each centred on a random voxel of the mask, with an amplitude drawn from ``amplitude_range``
    and a random sign, added to every key.

    Lumps as bright (or dark) as the signal but wider mean that neither the brightest pixel nor the mean intensity
    tells a signal-present image from an absent one: a detector has to use the signal's shape.

    Args:
        keys: image keys to add the lumps to.
        mask_key: key of the mask the lump centres are drawn in.
        number: lumps per image; 0 leaves the image as is.
        amplitude_range: ``(low, high)`` of each lump's uniform amplitude, or one value.
        sigma: lump width in voxels.

    Shapes: ``image (C, *spatial)``, ``mask (1, *spatial)``.
    """

    def __init__(self, keys: KeysCollection = "image", mask_key: str = "mask", number: int = 4,
                 amplitude_range: Range = (0.1, 0.35), sigma: float = 6.0, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, 1.0)
        if int(number) != number or number < 0:
            raise ValueError(f"number of lumps must be a whole number >= 0, got {number!r}.")
        self.mask_key, self.number = mask_key, int(number)
        self.amplitude_range = _as_range(amplitude_range, "amplitude_range")
        self.sigma = _as_range(sigma, "sigma")[0]

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys or not self.number:
            return d
        spatial = tuple(d[keys[0]].shape[1:])
        voxels = np.argwhere(_spatial_mask(d[self.mask_key], spatial))
        if len(voxels) == 0:
            return d
        lumps = torch.zeros(spatial, dtype=torch.float64)
        for _ in range(self.number):
            center = voxels[self.R.randint(len(voxels))]
            amplitude = self.R.uniform(*self.amplitude_range) * self.R.choice((-1.0, 1.0))
            lumps += gaussian_blob(spatial, center, self.sigma, amplitude, dtype=torch.float64)
        for key in keys:
            d[key] = d[key] + lumps.to(dtype=d[key].dtype, device=d[key].device)[None]
        return d


class EnsureGrayscale(Transform):
    """``(C, *spatial) -> (1, *spatial)``: one channel passes, RGB(A) becomes ITU-R BT.601 luma (alpha dropped)."""

    LUMA = (0.299, 0.587, 0.114)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        channels = img.shape[0]
        if channels == 1:
            return img
        if channels not in (3, 4):
            raise ValueError(f"expected 1 (gray), 3 (RGB) or 4 (RGBA) channels first, got shape {tuple(img.shape)}.")
        weights = torch.as_tensor(self.LUMA, dtype=img.dtype, device=img.device)
        return (img[:3] * weights.view(3, *[1] * (img.ndim - 1))).sum(0, keepdim=True)


class _EachKeyd(MapTransform):
    """Dictionary version of an array transform without parameters: ``array_transform`` applied to every key."""

    array_transform: type

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.transform = self.array_transform()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class EnsureGrayscaled(_EachKeyd):
    """Dictionary version of :class:`EnsureGrayscale`."""

    array_transform = EnsureGrayscale


class InvertMonochrome1(Transform):
    """Invert a DICOM image whose PhotometricInterpretation is MONOCHROME1 (low values white), within its range.

    The tag is read from the header of the file named in the image's ``filename_or_obj`` meta (pixels not read
    again); a file is DICOM by its ``.dcm`` suffix or by the ``DICM`` marker of its preamble, so exports without a
    suffix are inverted too. Other inputs pass unchanged. Apply after loading (rescale slope/intercept already
    applied by MONAI's ``PydicomReader``) and before intensity scaling.
    """

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        path = getattr(img, "meta", {}).get("filename_or_obj")
        if not path or not is_dicom_file(path):
            return img
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PhotometricInterpretation"],
                                     force=True)
        except Exception as err:  # pydicom raises several types for unreadable headers
            raise ValueError(f"cannot read the DICOM header of {path}: {err}") from err
        if str(header.get("PhotometricInterpretation", "")).upper() != "MONOCHROME1":
            return img
        return img.max() + img.min() - img


class InvertMonochrome1d(_EachKeyd):
    """Dictionary version of :class:`InvertMonochrome1`."""

    array_transform = InvertMonochrome1


class ShiftMinimumToZero(Transform):
    """``img - img.min()``: the darkest pixel at 0, so a zero pad added next is no brighter than the image (a CT
    whose air is -1000 would otherwise get a pad brighter than its air). Percentile scaling from the minimum, which
    follows, gives the same image either way. Written here: MONAI's ``ShiftIntensity`` takes a fixed offset."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img - img.min() if img.numel() else img


class ShiftMinimumToZerod(_EachKeyd):
    """Dictionary version of :class:`ShiftMinimumToZero`."""

    array_transform = ShiftMinimumToZero


class PerSampleSeedd(Transform, ThreadUnsafe):
    """Run random transforms seeded by the sample's own ``seed_key``: each datalist entry is one fixed image.

    MONAI random transforms draw from their own generator, which depends on call order and worker; seeding from the
    entry makes a test set the same images on every pass, in any order, with any number of workers. The output is
    a deterministic function of the entry, so this is deliberately not a ``Randomizable``: ``CacheDataset`` and
    ``PersistentDataset`` cache through it, which is what makes a fixed SKS/BKS set cheap to train on. It reseeds
    its inner transforms on every call, so it is ``ThreadUnsafe``: MONAI deep-copies it for threaded caching.

    Args:
        transforms: the random (and other) dictionary transforms to run.
        seed_key: key of the integer seed every sample must carry.
    """

    def __init__(self, transforms: Sequence[Transform], seed_key: str = "seed"):
        self.compose = Compose(list(transforms))
        self.seed_key = seed_key

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        if self.seed_key not in data:
            raise KeyError(f"PerSampleSeedd needs an integer seed under key {self.seed_key!r} in every sample; "
                           "build the datalist with scripts.data, or pass seed_key=None for fresh random draws.")
        self.compose.set_random_state(seed=int(data[self.seed_key]))
        return self.compose(dict(data))


def _source_steps(keys: Sequence[str], spatial_dims: int = 2, max_voxels: int = DEFAULT_MAX_VOXELS
                  ) -> List[Transform]:
    """Read any image file the way the models were trained to see it: keep the first key's source path under
    ``<key>_path`` (output names), load (NIfTI, PNG / JPEG, DICOM; errors name the file), drop singleton axes and
    refuse volumes or NaN (:class:`~scripts.sources.EnsureSpatialDimsd`), rows x columns for 2D PNG / JPEG / DICOM,
    MONOCHROME1 inverted, one gray channel; a header claiming more than ``max_voxels`` is refused before loading. A
    list, not a nested ``Compose``: ``CacheDataset`` stops caching at a
    ``Compose`` (it counts as random)."""
    steps = [CopyItemsd(keys=keys[0], names=f"{keys[0]}_path"),
             LoadImageCheckedd(keys=list(keys), max_voxels=max_voxels),
             EnsureSpatialDimsd(keys, spatial_dims=spatial_dims)]
    if spatial_dims == 2:
        steps.append(RowsColumnsd(keys))
    return steps + [InvertMonochrome1d(keys[:1]), EnsureGrayscaled(keys[:1])]


def image_transforms(size: int = 256, keys: Sequence[str] = ("image",), track_meta: bool = False,
                     max_voxels: int = DEFAULT_MAX_VOXELS) -> Compose:
    """2D images of the OCT and CXR tasks (PNG / JPEG, DICOM, NIfTI): read as shown (DICOM rescale slope /
    intercept applied, MONOCHROME1 inverted, colour to BT.601 luma), resize to ``size^2`` (area), scale to [0, 1].
    Deterministic; with ``track_meta`` the output keeps its MetaTensor record, so ``Invertd`` can put maps back on
    the source's grid."""
    return Compose([
        *_source_steps(keys, max_voxels=max_voxels),
        Resized(keys, spatial_size=(size, size), mode="area"),
        ScaleIntensityd(keys, minv=0.0, maxv=1.0),
        EnsureTyped(keys, track_meta=track_meta),
    ])


def mri_transforms(size: int = 256, spatial_dims: int = 2, augment: bool = True, signal: bool = True,
                   prob: Optional[float] = None, amplitude_range: Tuple[float, float] = (0.1, 0.35),
                   sigma: Optional[Range] = None, shapes: Sequence[SignalShape] = (ROUND,),
                   signal_width: float = 1 / 24, lumps: int = 0, lump_width: float = 2.0,
                   seed_key: Optional[str] = "seed", track_meta: bool = False,
                   max_voxels: int = DEFAULT_MAX_VOXELS) -> Compose:
    """SKS/BKS MRI: a NIfTI slice (2D) or volume (3D) and its binary white-matter mask -> normalized image with, in
    about ``prob`` of the samples (None: absent and each of ``shapes`` equally often), one Gaussian signal inside
    the (augmented) white matter.

    Steps: load image and mask; resize the longest side to ``size`` and pad to ``size^2`` (or ``size^3``), keeping
    the aspect; map the 0-99.5th intensity percentiles to [0, 1]; with ``augment``, background variability from a
    left-right flip, a small affine (rotation 0.1 rad, scale 5 %, shift 4 % of ``size``), a mild elastic deformation
    (2D) and intensity jitter (scale and shift 5 %); then ``lumps`` lumps of ``lump_width`` times the signal's width
    and the signal's amplitude range inside the white matter (:class:`InsertLumpsd`), then the signal
    (:class:`InsertGaussianSignald`, sigma default ``signal_width * size``, label 0 absent, 1 + the shape's index
    present). Random steps are seeded per entry through
    :class:`PerSampleSeedd` with ``seed_key``, so the chain is deterministic per entry and ``CacheDataset`` can hold
    its outputs; ``seed_key=None`` draws afresh on every call instead (on-the-fly augmentation, not cacheable).

    With ``augment=False, signal=False`` it is the deterministic chain for one ``image`` (no mask) of any format,
    the model's view of a user's scan; ``track_meta`` then keeps the record ``Invertd`` needs.

    Output keys: ``image`` ``(1, *spatial)`` float32 and, with ``signal``, ``mask``, ``label`` and the signal keys.
    """
    keys = ("image", "mask") if signal else ("image",)
    spatial = (size,) * spatial_dims
    random_steps = []
    if augment:
        shift = 0.04 * size
        modes = ("bilinear", "nearest")[:len(keys)]
        random_steps += [
            RandFlipd(keys, prob=0.5, spatial_axis=spatial_dims - 2 if spatial_dims == 2 else 0),
            RandAffined(keys, prob=1.0, rotate_range=0.1 if spatial_dims == 2 else (0.1, 0.1, 0.1),
                        scale_range=0.05, translate_range=shift, mode=modes, padding_mode="zeros"),
        ]
        if spatial_dims == 2:
            random_steps.append(Rand2DElasticd(keys, spacing=size // 8, magnitude_range=(0.5, 1.5), prob=0.5,
                                               mode=modes, padding_mode="zeros"))
        random_steps += [RandScaleIntensityd("image", factors=0.05, prob=1.0),
                         RandShiftIntensityd("image", offsets=0.05, prob=1.0)]
    if signal:
        sigma = sigma or signal_width * size
        if lumps:
            random_steps.append(InsertLumpsd("image", mask_key="mask", number=lumps, amplitude_range=amplitude_range,
                                             sigma=lump_width * _as_range(sigma, "sigma")[1]))
        random_steps.append(InsertGaussianSignald(keys="image", mask_key="mask", label_key="label", prob=prob,
                                                  amplitude_range=amplitude_range, sigma=sigma, shapes=shapes))
    steps = [
        *_source_steps(keys, spatial_dims, max_voxels),
        RefuseFlatImagesd(keys, size),
        Resized(keys, spatial_size=size, size_mode="longest", mode=("area", "nearest")[:len(keys)]),
        ShiftMinimumToZerod("image"),  # so that the zero pad is as dark as the darkest pixel (a CT's -1000)
        ResizeWithPadOrCropd(keys, spatial_size=spatial),
        ScaleIntensityRangePercentilesd("image", lower=0.0, upper=99.5, b_min=0.0, b_max=1.0, clip=True),
    ]
    if signal:
        steps.append(ThresholdIntensityd("mask", threshold=0.5, above=True, cval=0.0))
    if random_steps:
        steps.append(PerSampleSeedd(random_steps, seed_key=seed_key) if seed_key else Compose(random_steps))
    return Compose([*steps, EnsureTyped(keys, track_meta=track_meta)])
