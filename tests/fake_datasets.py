"""Small files in the formats and folder layouts of the public datasets, made by the tests (no download)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(path: Path, pixels: np.ndarray, monochrome1: bool = False, slope: float = 1.0,
                intercept: float = 0.0) -> Path:
    """A minimal valid DICOM file holding ``pixels`` (uint16, rows x cols) with the given photometric tags."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "P0"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_gray(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    """An 8-bit image file (JPEG or PNG by suffix); ``mode="RGB"`` writes three identical channels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels.astype(np.uint8))
    (image.convert("RGB") if mode == "RGB" else image).save(path)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: Optional[np.ndarray] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, np.eye(4) if affine is None else affine), str(path))
    return path


def make_kermany_oct(root: Path, counts: Dict[str, Dict[str, int]], size=(40, 48), patients_per_class: int = 6,
                     seed: int = 0) -> Path:
    """Kermany OCT layout: ``root/{train,test}/{CLASS}/{CLASS}-{patient}-{n}.jpeg``; counts[split][class].
    Test patients partly overlap the training ones."""
    rng = np.random.RandomState(seed)
    for split, per_class in counts.items():
        for c, (cls, n) in enumerate(per_class.items()):
            for i in range(n):
                # each class has its own patients; test patients partly overlap the training ones, so builders
                # must keep them apart
                patient = (1000 + 100 * c + rng.randint(patients_per_class)
                           + (0 if split == "train" else patients_per_class // 2))
                pixels = rng.randint(0, 256, size=size)
                write_gray(root / split / cls / f"{cls}-{patient}-{i}.jpeg", pixels, "RGB" if i % 3 == 0 else "L")
    return root


def make_nih_cxr(root: Path, rows: Iterable[Dict[str, str]], size=(32, 32), seed: int = 0,
                 folders: int = 2) -> Path:
    """NIH ChestX-ray14 layout: ``Data_Entry_2017.csv`` and ``images_00k/images/*.png`` spread over folders."""
    rng = np.random.RandomState(seed)
    rows = list(rows)
    header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
              "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "Data_Entry_2017.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, row in enumerate(rows):
            writer.writerow([row["Image Index"], row["Finding Labels"], 0, row["Patient ID"], 50, "M", "PA",
                             size[1], size[0], 0.14, 0.14])
            folder = root / f"images_{i % folders + 1:03d}" / "images"
            if not row.get("missing"):
                write_gray(folder / row["Image Index"], rng.randint(0, 256, size=size))
    return root


def make_hcp(root: Path, subjects: Iterable[str], shape=(24, 28, 20), seed: int = 0, aseg: bool = True) -> Path:
    """HCP-style subjects: ``root/{subject}/T1w/T1w_acpc_dc_restore_brain.nii.gz`` and ``aparc+aseg.nii.gz``
    (FreeSurfer labels: 2 and 41 cerebral white matter, 3 and 42 cortex), or ``wm_prob.nii.gz`` when not aseg."""
    rng = np.random.RandomState(seed)
    for subject in subjects:
        t1 = rng.uniform(0, 1000, size=shape).astype(np.float32)
        labels = np.zeros(shape, dtype=np.int16)
        cx, cy = shape[0] // 2, shape[1] // 2
        labels[cx - 6:cx, cy - 6:cy + 6, 4:-4] = 2
        labels[cx:cx + 6, cy - 6:cy + 6, 4:-4] = 41
        labels[cx - 8:cx - 6, cy - 6:cy + 6, 4:-4] = 3
        folder = root / subject / "T1w"
        write_nifti(folder / "T1w_acpc_dc_restore_brain.nii.gz", t1)
        if aseg:
            write_nifti(folder / "aparc+aseg.nii.gz", labels)
        else:
            write_nifti(folder / "wm_prob.nii.gz", np.isin(labels, (2, 41)).astype(np.float32) * 0.9)
    return root


def make_scan_folder(root: Path) -> dict:
    """A user's folder: the acceptance set of the 'your own images' issue, a slice stored as (H, W, 1), a DICOM
    without suffix, and files the model cannot take. Returns {name: expected reason or None}."""
    rng = np.random.RandomState(0)
    yy, xx = np.mgrid[:48, :40]
    picture = 60 + 120 * np.exp(-((yy - 14) ** 2 + (xx - 12) ** 2) / 40.0) + 50 * xx / 40 + rng.rand(48, 40)
    affine = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -5], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    write_gray(root / "gray.png", picture)
    (root / "color").mkdir(parents=True)
    Image.fromarray(np.stack([picture, picture[::-1], picture], -1).astype(np.uint8)).save(root / "color" / "rgb.jpg")
    write_nifti(root / "mri" / "axial.nii.gz", picture.astype(np.float32), affine=affine)
    write_nifti(root / "mri" / "slab.nii.gz", picture.T[..., None].astype(np.float32), affine=affine)
    shutil.copy(get_testdata_file("MR_small.dcm"), root / "MR_small.dcm")
    write_dicom(root / "dicom" / "IM0001", (picture * 10).astype(np.uint16), monochrome1=True)
    write_gray(root / "case.a.png", picture)
    write_gray(root / "case.b.png", picture[::-1])
    write_nifti(root / "mri" / "volume.nii.gz", rng.rand(10, 12, 14).astype(np.float32))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "README.txt").write_text("not an image")
    good = ["MR_small.dcm", "case.a.png", "case.b.png", "color/rgb.jpg", "dicom/IM0001", "gray.png",
            "mri/axial.nii.gz", "mri/slab.nii.gz"]
    return {**{name: None for name in good}, "broken.jpg": "cannot read 'image' file",
            "mri/volume.nii.gz": "is a volume or multi-frame series"}


def make_review_studies(root: Path) -> Dict[str, Path]:
    """A MONAI Label studies folder: a 2D NIfTI with a rotated affine and a PNG of another shape, by datastore id."""
    yy, xx = np.mgrid[:48, :40]
    picture = 60 + 120 * np.exp(-((yy - 14) ** 2 + (xx - 12) ** 2) / 40.0) + 50 * xx / 40
    affine = np.array([[0, -0.8, 0, 10], [0.7, 0, 0, -5], [0, 0, 2.5, 30], [0, 0, 0, 1.0]])
    return {"axial": write_nifti(root / "axial.nii.gz", picture.astype(np.float32), affine=affine),
            "gray": write_gray(root / "gray.png", picture[::-1, :36])}


def source_grid(path: Path):
    """Spatial shape and affine of ``path`` as the bundle's reader gives them: what a map or label on the image's
    own grid must match."""
    from monai.transforms import LoadImage

    from scripts.sources import image_format, image_readers

    loaded = LoadImage(image_only=True, ensure_channel_first=True, reader=image_readers()[image_format(path)])(
        str(path))
    return tuple(loaded.shape[1:]), np.asarray(loaded.meta["affine"])
