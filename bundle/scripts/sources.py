# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""A user's image files in, maps back onto each file's own grid out.

Reading (MONAI's readers, set up for the formats a folder of scans holds):

* :func:`image_readers`: NIfTI (nibabel), PNG / JPEG / BMP (PIL, with palette, CMYK, gray+alpha and bilevel images
  converted to what they show), DICOM with or without a ``.dcm`` suffix (pydicom; rescale slope / intercept applied
  by MONAI's reader).
* :class:`LoadImageCheckedd`: ``LoadImaged`` with the reader of each file's format, whose errors name the file.
* :class:`EnsureSpatialDimsd`: drops singleton axes (a slice stored as (H, W, 1), a one-frame DICOM) and refuses
  volumes, wrong ranks and non-finite pixels, naming the file.
* :class:`RowsColumnsd`: MONAI reads PNG, JPEG and DICOM as (columns, rows), the order ITK and the viewers use;
  the models see rows x columns, as the images are displayed. Invertible, so maps go back to the reader's order.
* :func:`find_image_files`: every image file under a folder, by suffix or DICOM marker.

Writing:

* :class:`InvertToSourced`: MONAI's ``Invertd`` (undo resizing, padding, transposition) that passes an image made in
  memory (no recorded operations) through unchanged.
* :class:`SaveOnSourceGridd`: a map as NIfTI with the shape and affine the reader gave its source, written atomically
  under a name the caller chooses.
* :class:`AsOwnGridd`: present a synthetic image (no source file) as a source in its own right.

Nothing here imports MONAI engines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Hashable, Iterable, List, Mapping, Sequence, Tuple

import nibabel as nib
import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PILReader, PydicomReader
from monai.transforms import Invertd, InvertibleTransform, LoadImaged, MapTransform
from monai.utils import MetaKeys, TraceKeys
from PIL import Image

from .atomic import fit_name, is_run_dir_name, nifti_affine, save_nifti
from .errors import one_line

__all__ = ["IMAGE_SUFFIXES", "is_dicom_file", "is_nifti_file", "find_image_files", "image_readers", "image_format",
           "LoadImageCheckedd", "DEFAULT_MAX_VOXELS", "header_voxels", "EnsureSpatialDimsd", "RefuseFlatImagesd",
           "RowsColumnsd", "AsOwnGridd", "InvertToSourced", "source_affine", "SaveOnSourceGridd",
           "WarnOffTaskModalityd"]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES


def _has_suffix(path: os.PathLike, suffixes: Sequence[str]) -> bool:
    return str(path).lower().endswith(tuple(suffixes))


def is_nifti_file(path: os.PathLike) -> bool:
    return _has_suffix(path, NIFTI_SUFFIXES)


def is_dicom_file(path: os.PathLike) -> bool:
    """A ``.dcm`` / ``.dicom`` suffix, a DICOM Part 10 file whatever its name (``DICM`` after the preamble), or a
    file without any suffix whose header pydicom reads without a preamble and which holds an image (``Rows`` and
    ``Columns``): older exports (``IM0001``) have no preamble."""
    if _has_suffix(path, DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            if f.read(132)[128:] == b"DICM":
                return True
    except OSError:
        return False
    if "." in Path(path).name:
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["Rows", "Columns"])
    except Exception:  # anything pydicom cannot parse is not DICOM
        return False
    return "Rows" in header and "Columns" in header


def find_image_files(root: os.PathLike, exclude: Iterable[os.PathLike] = ()
                     ) -> Tuple[List[Path], int, List[Tuple[Path, str]]]:
    """Every image file under ``root``, recursively, sorted: NIfTI, PNG, JPEG, BMP and DICOM (by suffix, or any
    other file carrying the DICOM marker). Hidden files and folders and the ``exclude`` folders (e.g. an output
    folder inside ``root``) are left out; when an ``exclude`` folder is ``root`` itself (the output folder is the
    input folder), the run folders earlier runs made in it (``run-<date>-<time>``) are left out instead. Symbolic
    links are followed, but every folder and file is visited once (by its real path): a link back to a parent
    folder ends the descent there instead of looping.

    Returns:
        the image files, the number of other files ignored, and ``(path, reason)`` for what could not be looked
        at: a folder that cannot be listed (permissions, a path over the system's limit), a link to nothing.
    """
    root = Path(root)
    excluded = {Path(p).resolve() for p in exclude}
    images, ignored, problems = [], 0, []
    seen_folders, seen_files = {os.path.realpath(root)}, set()

    def unlisted(err: OSError) -> None:
        problems.append((Path(err.filename or root), f"folder cannot be listed: {err.strerror or err}"))

    outputs_here = root.resolve() in excluded  # earlier runs' folders sit among the inputs
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=unlisted):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(Path(folder) / d)
            if outputs_here and Path(folder) == root and is_run_dir_name(d):
                continue
            if not d.startswith(".") and Path(real) not in excluded and real not in seen_folders:
                seen_folders.add(real)
                kept.append(d)
        dirs[:] = kept
        for name in sorted(files):  # os.walk lists a link to nothing among the files
            path = Path(folder) / name
            if name.startswith("."):
                continue
            if not path.is_file():
                if path.is_symlink() and not path.exists():
                    problems.append((path, f"a symbolic link to {os.readlink(path)}, which does not exist"))
                continue
            real = os.path.realpath(path)
            if real in seen_files:
                continue
            seen_files.add(real)
            if _has_suffix(name, IMAGE_SUFFIXES) or is_dicom_file(path):
                images.append(path)
            else:
                ignored += 1
    return images, ignored, problems


def _pil_as_shown(image: Image.Image) -> Image.Image:
    """A PIL image in a mode whose pixel values are what it shows: palette indices become their colours, CMYK
    becomes RGB, gray+alpha drops its alpha, bilevel becomes 8-bit gray. Gray (8/16/32-bit), RGB and RGBA pass."""
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "1"):
        return image.convert("L")
    if image.mode == "PA":
        return image.convert("RGBA")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


def _is_colour(dataset) -> bool:
    """A single-frame colour DICOM (a dataset or a header): RGB / YBR samples, or palette indices (read through the
    palette)."""
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        return False
    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    return photometric == "PALETTE COLOR" or int(dataset.get("SamplesPerPixel", 1) or 1) > 1


class _DicomReader(PydicomReader):
    """MONAI's ``PydicomReader`` (which claims every file) restricted to DICOM files, by suffix or marker, so it
    can sit beside the other readers, and reading a single-frame colour image as the picture it shows: palette
    indices through the file's palette (``pydicom.pixels.apply_color_lut``), RGB and YBR samples (pydicom gives YBR
    as RGB) as a colour axis, not a third spatial one; a file without preamble and file meta in the encoding it was
    read in. MONAI's reader takes the samples axis of a (rows, columns, 3) array for depth and never applies a
    palette."""

    def verify_suffix(self, filename) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(is_dicom_file(name) for name in names)

    def _get_array_data(self, img, filename):
        if "TransferSyntaxUID" not in getattr(img, "file_meta", {}):  # no preamble, no file meta: as it was read
            from pydicom.dataset import FileMetaDataset
            from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

            implicit, little = img.original_encoding
            if not little:
                raise ValueError("big-endian DICOM without file meta information: its pixels cannot be decoded")
            img.file_meta = getattr(img, "file_meta", None) or FileMetaDataset()
            img.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        if str(img.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            return apply_color_lut(img.pixel_array, img).astype(np.float32)
        return super()._get_array_data(img, filename)

    def get_data(self, data):
        array, meta = super().get_data(data)
        datasets = data if isinstance(data, list) else [data]
        if len(datasets) == 1 and not isinstance(datasets[0], list) and _is_colour(datasets[0]) and array.ndim == 3:
            meta[MetaKeys.SPATIAL_SHAPE] = tuple(array.shape[:2])
            meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = -1
        return array, meta


def image_readers() -> Dict[str, object]:
    """The reader of each format :class:`LoadImageCheckedd` reads, in MONAI's default orientation conventions (the
    ones ITK and the viewers use): NIfTI as stored, PNG / JPEG / BMP and DICOM as (columns, rows)."""
    return {"nifti": NibabelReader(), "raster": PILReader(converter=_pil_as_shown),
            "dicom": _DicomReader(force=True)}  # force: DICOM files without a preamble


def image_format(path: os.PathLike) -> str:
    """``"nifti"``, ``"raster"`` (PNG, JPEG, BMP) or ``"dicom"`` (by suffix or marker); ``ValueError`` otherwise."""
    if is_nifti_file(path):
        return "nifti"
    if _has_suffix(path, RASTER_SUFFIXES):
        return "raster"
    if is_dicom_file(path):
        return "dicom"
    raise ValueError(f"{path} is not a NIfTI, PNG, JPEG, BMP or DICOM file.")


DEFAULT_MAX_VOXELS = 2**28  # 268M: a 16384^2 radiograph or a 640^3 volume; real CXR / MRI are far below


def header_voxels(path: os.PathLike) -> int:
    """The number of voxels a file's header claims (spatial extent, channels not counted), read without pixels."""
    kind = image_format(path)
    if kind == "nifti":
        shape = nib.load(str(path)).shape[:3]
    elif kind == "raster":
        with Image.open(path) as image:
            shape = image.size
    else:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if "Rows" not in header or "Columns" not in header:
            kind = " ".join(filter(None, ("DICOM", str(header.get("Modality", "")))))
            raise ValueError(f"it is a {kind} object without an image (no Rows and Columns: a plan, report or "
                             "structure set), nothing to analyse")
        shape = (int(header.Rows), int(header.Columns), int(header.get("NumberOfFrames", 1) or 1))
    return int(np.prod([int(s) for s in shape], dtype=np.int64))


class WarnOffTaskModalityd(MapTransform):
    """Warn, once per file, when a DICOM input is not of the kind the model was trained on: its ``Modality`` is not
    one of ``modalities`` (an ultrasound given to an MRI model), or it is a colour image for a model of gray ones.
    The model still answers, but its prediction and maps say nothing about the task; the warning says so. Runs on
    the entry's file paths, before loading (the header only)."""

    def __init__(self, keys: KeysCollection, modalities: Sequence[str], task: str, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.modalities = tuple(m.upper() for m in modalities)
        self.task = task
        self.warned: set = set()

    def __call__(self, data: Mapping[Hashable, object]) -> Dict[Hashable, object]:
        for key in self.key_iterator(data):
            path = data[key]
            if not isinstance(path, (str, os.PathLike)) or str(path) in self.warned or not is_dicom_file(path):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                         specific_tags=["Modality", "SamplesPerPixel", "PhotometricInterpretation"])
            except Exception:  # the loader names unreadable files
                continue
            modality = str(header.get("Modality", "")).upper()
            reasons = []
            if modality and self.modalities and modality not in self.modalities:
                reasons.append(f"its Modality is {modality}, the model's task {self.task!r} has "
                               f"{'/'.join(self.modalities)} images")
            if _is_colour(header):
                reasons.append("it is a colour image, the model was trained on gray ones")
            if reasons:
                self.warned.add(str(path))
                logger.warning("%s: %s; the prediction and maps say nothing about the task.", path,
                               " and ".join(reasons))
        return dict(data)


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` (channel first, MetaTensor) that reads each file with the one reader of its format
    (:func:`image_readers`, chosen by suffix or DICOM marker), so a corrupt file fails with its reader's own
    message, and whose errors name the file: a missing path raises ``FileNotFoundError``, an unreadable one
    ``ValueError``. (MONAI alone tries every reader in turn and reports any failure as "cannot find a suitable
    reader".) A file whose header claims more than ``max_voxels`` voxels is refused before its pixels are
    allocated (a 59-byte NIfTI can claim 30000^2). The meta is reduced to what every format has
    (:func:`_source_meta`), so mixed batches collate, and keeps the reader's shape and affine, so maps can be written
    back on the source's grid."""

    def __init__(self, keys: KeysCollection, max_voxels: int = DEFAULT_MAX_VOXELS, **kwargs):
        kwargs.setdefault("image_only", True)
        kwargs.setdefault("ensure_channel_first", True)
        super().__init__(keys, **kwargs)
        self.readers = image_readers()
        self.max_voxels = int(max_voxels)

    def __call__(self, data, reader=None):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, os.PathLike)):
                continue
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"{key!r}: image file not found: {path}")
            try:
                voxels = header_voxels(path)
            except Exception as err:
                raise ValueError(f"cannot read {key!r} file {path}: {one_line(err)}") from err
            if voxels > self.max_voxels:
                raise ValueError(f"{key!r} file {path} claims {voxels} voxels, more than max_voxels={self.max_voxels}; "
                                 "raise max_voxels if the image is real.")
            try:
                img = self._loader(path, reader or self.readers[image_format(path)])
            except Exception as err:
                raise ValueError(f"cannot read {key!r} file {path}: {one_line(err)}") from err
            if isinstance(img, MetaTensor):
                img.meta = _source_meta(img.meta)
            d[key] = img
        return d


MAX_DIMS = 8  # NIfTI holds at most 7 dimensions


def _source_meta(meta: Mapping) -> dict:
    """The meta every loaded image carries, the same keys and shapes whatever its format, so a batch of PNG, DICOM
    and NIfTI inputs collates: ``filename_or_obj``, ``affine``, ``original_affine`` (the reader's, 4x4; PIL gives
    none, so its affine) and ``source_shape`` (the reader's spatial shape, zero-padded to :data:`MAX_DIMS` since
    ranks differ: (H, W) and a (H, W, 1) slice)."""
    affine = torch.as_tensor(np.asarray(meta["affine"], dtype=np.float64))
    original = np.asarray(meta.get("original_affine", affine), dtype=np.float64)
    return {"filename_or_obj": str(meta.get("filename_or_obj", "")), "affine": affine,
            "original_affine": torch.as_tensor(original), "source_shape": encode_shape(meta["spatial_shape"])}


def encode_shape(shape: Sequence[int]) -> torch.Tensor:
    """A spatial shape as :data:`MAX_DIMS` integers, zero-padded (no image axis has length 0)."""
    shape = [int(s) for s in shape]
    return torch.tensor(shape + [0] * (MAX_DIMS - len(shape)), dtype=torch.long)


def decode_shape(encoded: torch.Tensor) -> Tuple[int, ...]:
    return tuple(int(s) for s in torch.as_tensor(encoded).reshape(-1) if s > 0)


def _source_of(img) -> str:
    return str(getattr(img, "meta", {}).get("filename_or_obj", "the image"))


class EnsureSpatialDimsd(MapTransform):
    """Bring each loaded image to ``spatial_dims`` spatial axes by dropping trailing singleton axes (a 2D slice
    stored as (H, W, 1), a one-frame DICOM), and refuse what a ``spatial_dims``-D model cannot take: a volume or
    multi-frame series (a 4D NIfTI's frames too: they are not colour channels), or NaN / Inf pixels. Errors name
    the file. The reader's shape stays in the
    ``source_shape`` meta, so :class:`SaveOnSourceGridd` writes maps back in it.

    Shapes: ``(C, *spatial) -> (C, *spatial[:spatial_dims])``.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int = 2, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] > 1 and is_nifti_file(_source_of(img)):  # NIfTI's 4th / 5th axis: time or vector frames
                raise ValueError(f"{_source_of(img)} is a 4D NIfTI of {img.shape[0]} frames (shape "
                                 f"{(*img.shape[1:], img.shape[0])}); the model takes one image per file: save each "
                                 "frame as a file of its own.")
            spatial = tuple(img.shape[1:])
            while len(spatial) > self.spatial_dims and spatial[-1] == 1:
                img, spatial = img[..., 0], spatial[:-1]
            if len(spatial) != self.spatial_dims:
                what = "a volume or multi-frame series" if len(spatial) > self.spatial_dims else "an image"
                shape = f"of shape {tuple(d[key].shape[1:])}"
                source = _source_of(d[key])
                if len(spatial) > self.spatial_dims and is_dicom_file(source):  # frames, rows x columns as stored
                    header = pydicom.dcmread(source, stop_before_pixels=True, force=True)
                    frames = int(header.get("NumberOfFrames", 1) or 1)
                    if frames > 1:
                        shape = f"of {frames} frames of {header.Rows} x {header.Columns} pixels"
                raise ValueError(f"{source} is {what} {shape}; the model takes {self.spatial_dims}D images.")
            if not torch.isfinite(torch.as_tensor(img)).all():
                raise ValueError(f"{_source_of(d[key])} holds NaN or Inf pixels.")
            if isinstance(img, MetaTensor):
                img.affine = _drop_axes(img.affine, self.spatial_dims)
            d[key] = img
        return d


class RefuseFlatImagesd(MapTransform):
    """Refuse an image that resizing its longest side to ``size`` would flatten below one pixel across (a 2 x 2400
    strip at 64): named, with its shape, instead of an empty array failing later in the run.

    Shapes: ``(C, *spatial)`` passes unchanged.
    """

    def __init__(self, keys: KeysCollection, size: int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.size = int(size)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        for key in self.key_iterator(data):
            spatial = tuple(data[key].shape[1:])
            if min(spatial) * self.size / max(spatial) < 0.5:  # rounds to 0 pixels
                raise ValueError(f"{_source_of(data[key])} is {' x '.join(map(str, spatial))} pixels: resized to "
                                 f"{self.size} along its longest side, its short side would be under one pixel.")
        return dict(data)


def _drop_axes(affine: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """The affine of the first ``spatial_dims`` axes (the dropped singleton axes carry no extent)."""
    affine = torch.as_tensor(affine)
    keep = list(range(spatial_dims)) + [affine.shape[0] - 1]
    return affine[keep][:, keep]


class RowsColumnsd(MapTransform, InvertibleTransform):
    """2D images read by PIL or pydicom, which MONAI returns as (columns, rows), transposed to rows x columns, the
    order the images are displayed in and the models were trained on; NIfTI arrays pass as stored. Invertible:
    ``Invertd`` puts maps back in the reader's order.

    Shapes: ``(C, W, H) -> (C, H, W)`` for PNG / JPEG / BMP / DICOM, unchanged for NIfTI.
    """

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            swap = img.ndim == 3 and not is_nifti_file(_source_of(img))
            d[key] = self._swap(img) if swap else img
            if isinstance(d[key], MetaTensor):
                self.push_transform(d[key], extra_info={"swapped": swap})
        return d

    @staticmethod
    def _swap(img: torch.Tensor) -> torch.Tensor:
        out = img.transpose(1, 2).contiguous()
        if isinstance(out, MetaTensor):
            affine = torch.as_tensor(out.affine).clone()
            affine[:, [0, 1]] = affine[:, [1, 0]]  # world position of (row, col) is that of (col, row) before
            out.affine = affine
        return out

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            op = self.pop_transform(d[key])
            if op[TraceKeys.EXTRA_INFO]["swapped"]:
                d[key] = self._swap(d[key])
        return d


class AsOwnGridd(MapTransform):
    """Present an image made in memory (a synthetic SKS/BKS test image) as a source in its own right: a MetaTensor
    on an identity grid with no record of the steps that made it, so :class:`InvertToSourced` leaves its maps on
    this grid and :class:`SaveOnSourceGridd` writes them with an identity affine. ``filename_or_obj`` names the
    file it was made from (``path_key``)."""

    def __init__(self, keys: KeysCollection = "image", path_key: str = "image_path", allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.path_key = path_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            array = torch.as_tensor(d[key]).clone()
            affine = torch.eye(len(array.shape[1:]) + 1, dtype=torch.float64)
            d[key] = MetaTensor(array, meta=_source_meta({
                "filename_or_obj": str(d.get(self.path_key, "")), "affine": affine,
                "spatial_shape": array.shape[1:]}))
        return d


class InvertToSourced(Invertd):
    """MONAI's ``Invertd`` for maps: each key gets the source image's (``orig_keys``) meta and recorded operations,
    and the invertible steps of ``transform`` are undone, so a ``(C, *model grid)`` map lands on the grid the
    reader gave the source. An image with no recorded operations (made in memory, :class:`AsOwnGridd`) is its own
    grid: its maps only take its meta. ``nearest_interp`` defaults to False: maps are resampled with the mode the
    preprocessing used. Several keys of one source are undone together, as the channels of one tensor (each step
    acts on channels alike): one pass through the inverse chain instead of one per map."""

    _JOINT = "_maps_of_one_source"

    def __init__(self, keys: KeysCollection, transform, orig_keys: KeysCollection = "image",
                 nearest_interp: bool = False, **kwargs):
        super().__init__(keys, transform, orig_keys=orig_keys, nearest_interp=nearest_interp, **kwargs)
        sources = set(self.orig_keys)
        self.joint = None
        if len(self.keys) > 1 and len(sources) == 1:
            self.joint = Invertd(self._JOINT, transform, orig_keys=next(iter(sources)), nearest_interp=nearest_interp,
                                 **kwargs)

    def _invert_together(self, d: Dict[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        keys = [key for key in self.keys if key in d]
        channels = [d[key].shape[0] for key in keys]
        d[self._JOINT] = MetaTensor(torch.cat([d[key].as_tensor() for key in keys]), meta=dict(d[keys[0]].meta),
                                    applied_operations=list(d[keys[0]].applied_operations))
        d = self.joint(d)
        joint = d.pop(self._JOINT)
        for key, part in zip(keys, torch.split(joint, channels)):
            d[key] = MetaTensor(part.as_tensor(), meta=dict(joint.meta))
        return d

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key, orig_key in self.key_iterator(d, self.orig_keys):
            source = d.get(orig_key)
            if not isinstance(source, MetaTensor):
                raise ValueError(f"InvertToSourced: {orig_key!r} is not a MetaTensor; preprocessing must keep its "
                                 "meta (EnsureTyped(track_meta=True)) so maps can be put back on its grid.")
            if not isinstance(d[key], MetaTensor):
                d[key] = MetaTensor(torch.as_tensor(d[key]))
            if not source.applied_operations:
                d[key] = MetaTensor(d[key].as_tensor(), meta=dict(source.meta))
        if any(isinstance(d.get(o), MetaTensor) and d[o].applied_operations for o in self.orig_keys):
            d = self._invert_together(d) if self.joint is not None else super().__call__(d)
        return d


def source_affine(values) -> np.ndarray:
    """The 4x4 voxel-to-world affine of the grid ``values`` (a map put back on its source's grid) lies on: the
    reader's (``original_affine``), else its ``affine``, else identity; what :class:`SaveOnSourceGridd` writes."""
    meta = getattr(values, "meta", {})
    return nifti_affine(np.asarray(meta.get("original_affine", meta.get("affine", np.eye(4))), dtype=np.float64))


class SaveOnSourceGridd(MapTransform):
    """Write each key as NIfTI ``<output_dir>/<name>_<key>.nii.gz`` on its source's grid: the array in the shape
    the reader gave the source (its ``source_shape`` meta; only singleton axes may differ, e.g. a (H, W, 1) slice)
    and with the reader's affine (``original_affine``), so the map overlays the scan in 3D Slicer, ITK-SNAP or OHIF.
    Run after :class:`InvertToSourced`.

    MONAI's ``SaveImaged`` does not fit: its names drop the extension (``a.png`` and ``a.jpg`` would write the same
    file), its writers squeeze or pad axes (a (H, W, 1) slice cannot be written as such) and it writes in place.
    This writes the exact shape through :func:`scripts.atomic.save_nifti`, whole or not at all.

    Args:
        keys: maps ``(C, *spatial)``; one channel is written in the source's spatial shape, several channels last.
        output_dir: root of the written files; ``name`` may hold sub-folders.
        name_key: key of each input's name (unique per input, e.g. its path relative to the input folder).
        dtype: data type written.
    """

    def __init__(self, keys: KeysCollection, output_dir: os.PathLike, name_key: str = "name",
                 dtype=np.float32, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_dir, self.name_key, self.dtype = Path(output_dir), name_key, dtype

    def path(self, name: str, key: str) -> Path:
        """``<output_dir>/<name>_<key>.nii.gz``, shortened when over the file system's limit
        (:func:`scripts.atomic.fit_name`)."""
        return fit_name(self.output_dir / name, f"_{key}.nii.gz")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {})
            values = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
            array = values.detach().cpu().numpy().astype(self.dtype)
            shape = decode_shape(meta["source_shape"]) if "source_shape" in meta else array.shape[1:]
            if array.shape[0] == 1 and array[0].size == int(np.prod(shape)):
                array = array.reshape(shape)
            elif tuple(array.shape[1:]) == shape:
                array = np.moveaxis(array, 0, -1)
            else:
                raise ValueError(f"{key!r} of {d[self.name_key]} has shape {tuple(array.shape)}, not on its source's "
                                 f"grid {shape}: run InvertToSourced first.")
            save_nifti(array, self.path(d[self.name_key], str(key)), affine=source_affine(d[key]))
        return d
