# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Datalists for the paper's three tasks (Sec. IV-A), from a user's local copy laid out as the public release is.

Every builder returns a MONAI-style datalist ``{"training": [...], "validation": [...], "test": [...]}`` of dicts
(``{"image": path, "label": int, ...}``), seeded and reproducible, and writes it as JSON when given a path.

* :func:`build_oct_datalist`: Kermany OCT, ``{train,test}/{NORMAL,DRUSEN,CNV,DME}/*.jpeg``; DME excluded.
* :func:`build_cxr_datalist`: NIH ChestX-ray14, ``Data_Entry_2017_v2020.csv`` (or the first release's
  ``Data_Entry_2017.csv``) and ``images_*/images/*.png``.
* :func:`build_hcp_datalist`: HCP-style subject folders with a T1w volume and a white-matter source.
* :func:`build_simulated_datalist`: the offline tasks (``polarity``, ``sksbks``), simulated subjects warped from the
  MNI152 2009 templates inside nilearn's wheel.
* :func:`phantom_dataset`: an in-memory procedural SKS/BKS phantom for tests and quick demonstrations.
* :func:`folder_datalist` and :class:`SkippingDataset`: a user's folder of scans for inference, where a file that
  cannot be read is skipped with a warning instead of ending the run.

Splits never share a patient (OCT, CXR) or subject (HCP, simulated). The MRI builders cut axial slices once into
small 2D NIfTI files under a cache folder (loading a whole volume per sample would dominate training time); each
entry carries its own ``seed``, which :func:`scripts.transforms.mri_transforms` uses for augmentation and the
signal, so every entry is one fixed image, as in the paper's fixed SKS/BKS set.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from monai.data import IterableDataset
from monai.transforms import apply_transform
from torch.utils.data import get_worker_info

from .atomic import atomic_write, save_nifti
from .errors import one_line
from .sources import IMAGE_SUFFIXES as READABLE_SUFFIXES
from .sources import find_image_files
from .subjects import SimulateSubject, SubjectSettings
from .transforms import InsertGaussianSignald

__all__ = ["phantom_slice", "phantom_dataset", "split_by_group", "write_datalist", "build_oct_datalist",
           "build_cxr_datalist", "build_hcp_datalist", "build_simulated_datalist",
           "mni152_template_paths",
           "folder_datalist", "SkippingDataset", "SPLITS", "OCT_CLASSES", "NIH_CSV_NAMES", "read_nih_rows",
           "cxr_label", "read_nih_boxes"]

logger = logging.getLogger(__name__)

SPLITS = ("training", "validation", "test")
OCT_CLASSES = ("NORMAL", "DRUSEN", "CNV")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


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


def write_datalist(datalist: Mapping[str, List[dict]], path: os.PathLike) -> Path:
    """Write a datalist as JSON atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(datalist, indent=1))
    return Path(path)


def _finish(datalist: Dict[str, List[dict]], output_json: Optional[os.PathLike]) -> Dict[str, List[dict]]:
    if output_json is not None:
        write_datalist(datalist, output_json)
    return datalist


def _require_dir(path: os.PathLike, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {path}")
    return path


def split_by_group(items: Sequence[dict], counts: Mapping[str, Mapping[int, int]], seed: int = 0,
                   group_key: str = "patient", label_key: str = "label") -> Dict[str, List[dict]]:
    """Choose ``counts[split][label]`` items per split and label so that no group (patient) is in two splits.

    Groups are visited in a seeded random order; each goes, among the splits it can help (it has items of a label
    that split still needs), to the one with the largest share of its request still unmet, so small splits fill in
    step with large ones. Raises ``ValueError`` naming the split and label when the items cannot fill a count.
    """
    rng = np.random.RandomState(seed)
    by_group: Dict[str, Dict[int, List[dict]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_group[str(item[group_key])][int(item[label_key])].append(item)
    need = {split: dict(per_label) for split, per_label in counts.items()}
    chosen: Dict[str, List[dict]] = {split: [] for split in counts}
    for group in rng.permutation(sorted(by_group)):
        per_label = by_group[group]
        fill = {split: sum(min(need[split].get(lab, 0), len(v)) for lab, v in per_label.items()) for split in need}
        helped = [sp for sp in need if fill[sp] > 0]
        if not helped:
            continue
        split = max(helped, key=lambda sp: (sum(need[sp].values()) / max(1, sum(counts[sp].values())), fill[sp]))
        for lab, group_items in sorted(per_label.items()):
            take = min(need[split].get(lab, 0), len(group_items))
            picks = rng.permutation(len(group_items))[:take]
            chosen[split].extend(group_items[i] for i in sorted(picks))
            need[split][lab] = need[split].get(lab, 0) - take
    for split, per_label in need.items():
        for lab, missing in per_label.items():
            if missing > 0:
                have = counts[split][lab] - missing
                raise ValueError(f"not enough images with label {lab} for the {split} split: need "
                                 f"{counts[split][lab]}, could place {have} without sharing a patient across splits.")
    for split in chosen:
        chosen[split] = [chosen[split][i] for i in rng.permutation(len(chosen[split]))]
    return chosen


def _per_class_counts(per_class: Sequence[int], labels: Iterable[int]) -> Dict[str, Dict[int, int]]:
    if len(per_class) != 3:
        raise ValueError(f"per_class must give (training, validation, test) counts, got {tuple(per_class)}.")
    return {split: {lab: int(n) for lab in labels} for split, n in zip(SPLITS, per_class)}


def build_oct_datalist(root: os.PathLike, per_class: Sequence[int] = (2000, 100, 100), seed: int = 0,
                       classes: Sequence[str] = OCT_CLASSES, output_json: Optional[os.PathLike] = None
                       ) -> Dict[str, List[dict]]:
    """Kermany retinal OCT (normal / drusen / CNV; DME excluded), from ``root/{train,test}/{CLASS}/*.jpeg``.

    Training and validation come from ``train/``, test from ``test/``; patients (the middle field of
    ``CNV-1016042-1.jpeg``) are never shared between splits, and test patients are kept out of training and
    validation. Labels follow ``classes`` order (default NORMAL 0, DRUSEN 1, CNV 2).

    Args:
        root: folder holding ``train/`` and ``test/`` (e.g. ``OCT2017/`` of the public release).
        per_class: images per class for (training, validation, test); paper: 2000, 100, 100.
    """
    root = _require_dir(root, "Kermany OCT root")
    found: Dict[str, List[dict]] = {}
    for folder in ("train", "test"):
        items = []
        for label, cls in enumerate(classes):
            class_dir = _require_dir(root / folder / cls, f"OCT class {cls}")
            for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                parts = path.stem.split("-")
                patient = parts[1] if len(parts) >= 3 else path.stem
                items.append({"image": str(path), "label": label, "class": cls, "patient": patient})
        found[folder] = items
    counts = _per_class_counts(per_class, range(len(classes)))
    test_patients = {item["patient"] for item in found["test"]}
    train_pool = [item for item in found["train"] if item["patient"] not in test_patients]
    datalist = split_by_group(train_pool, {k: counts[k] for k in SPLITS[:2]}, seed=seed)
    datalist.update(split_by_group(found["test"], {"test": counts["test"]}, seed=seed + 1))
    return _finish({split: datalist[split] for split in SPLITS}, output_json)


NIH_CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")  # the current release's name first


def _nih_csv(root: Path, csv_name: Optional[str]) -> Path:
    """The label file: ``csv_name`` under ``root``, or the first of :data:`NIH_CSV_NAMES` there (each also as
    ``.csv.gz``)."""
    names = [csv_name] if csv_name else [n + gz for n in NIH_CSV_NAMES for gz in ("", ".gz")]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"NIH label file not found in {root}: looked for {', '.join(names)}; pass csv_name "
                            "(--dataset_dir holds the release folder).")


def _open_csv(path: Path):
    """A ``.csv`` or ``.csv.gz`` file opened as text for the ``csv`` module; a spreadsheet's byte-order mark is not
    read as part of the first column's name."""
    return (gzip.open if path.suffix == ".gz" else open)(path, "rt", newline="", encoding="utf-8-sig")


def read_nih_rows(csv_path: os.PathLike) -> Iterator[Dict[str, str]]:
    """The rows of an NIH label file (``.csv`` or ``.csv.gz``), as dicts; the required columns checked."""
    csv_path = Path(csv_path)
    with _open_csv(csv_path) as f:
        reader = csv.DictReader(f)
        required = {"Image Index", "Finding Labels", "Patient ID"}
        if not required <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path} lacks the columns {sorted(required - set(reader.fieldnames or ()))}.")
        yield from reader


def cxr_label(findings: str, negative: str = "No Finding") -> Optional[int]:
    """The cardiomegaly task's label of a "Finding Labels" cell: 1 with Cardiomegaly, 0 for a negative (``"No
    Finding"`` only, or ``"any"`` image without cardiomegaly), None for an image the task leaves out."""
    labels = findings.split("|")
    if "Cardiomegaly" in labels:
        return 1
    return 0 if negative == "any" or labels == ["No Finding"] else None


def read_nih_boxes(bbox_csv: os.PathLike, finding: str = "Cardiomegaly") -> Dict[str, List[tuple]]:
    """``{image name: [(x, y, w, h), ...]}`` of one finding in NIH's ``BBox_List_2017.csv`` (``.gz`` too): x along
    the columns and y down the rows of the 1024 x 1024 image, in pixels. Its header names the box columns once
    (``Bbox [x,y,w,h]`` and three empty ones), so they are read by position."""
    path = Path(bbox_csv)
    if not path.is_file():
        raise FileNotFoundError(f"box list not found: {path}")
    boxes: Dict[str, List[tuple]] = {}
    with _open_csv(path) as f:
        rows = csv.reader(f)
        header = next(rows, [])
        if len(header) < 6 or header[0] != "Image Index":
            raise ValueError(f"{path} is not an NIH box list: expected columns Image Index, Finding Label, "
                             f"Bbox [x,y,w,h] (4 numbers); found {header[:6]}.")
        for number, row in enumerate(rows, start=2):
            if len(row) >= 6 and row[1] == finding:
                try:
                    boxes.setdefault(row[0], []).append(tuple(float(v) for v in row[2:6]))
                except ValueError as err:
                    raise ValueError(f"{path} line {number}: the box is not 4 numbers: {row[2:6]}") from err
    return boxes


def build_cxr_datalist(root: os.PathLike, per_class: Sequence[int] = (800, 50, 70), seed: int = 0,
                       negative: str = "No Finding", csv_name: Optional[str] = None,
                       boxed_in_test: Optional[os.PathLike] = None, official_split: bool = False,
                       output_json: Optional[os.PathLike] = None) -> Dict[str, List[dict]]:
    """NIH ChestX-ray14 cardiomegaly detection: label 1 if "Cardiomegaly" is among the finding labels, 0 for the
    negatives, from the release's label file under ``root`` and the PNGs anywhere under ``root``
    (``images_*/images/``).

    Args:
        root: the release folder.
        per_class: images per class for (training, validation, test); paper: 800, 50, 70.
        negative: ``"No Finding"`` (default: images with no finding at all) or ``"any"`` (every image without
            cardiomegaly, other findings allowed).
        csv_name: the label file's name; None: ``Data_Entry_2017_v2020.csv`` (the current release), else
            ``Data_Entry_2017.csv`` (the first), each also gzipped.
        boxed_in_test: NIH's ``BBox_List_2017.csv``: the patients with a Cardiomegaly box go to the test split
            first (their images count towards its per-class numbers), so that their images can be scored against the
            radiologists' boxes (:func:`scripts.review.boxes_to_labels`); the rest is split as usual.
        official_split: draw the test split only from the release's ``test_list.txt`` and training and validation
            only from its ``train_val_list.txt`` (both patient-wise), as results on the official split are reported.

    Splits are patient-disjoint ("Patient ID"). Rows whose image is not on disk are skipped with a warning, so a
    partial copy works when it holds enough images.
    """
    root = _require_dir(root, "NIH ChestX-ray14 root")
    csv_path = _nih_csv(root, csv_name)
    if negative not in ("No Finding", "any"):
        raise ValueError(f"negative must be 'No Finding' or 'any', got {negative!r}.")
    on_disk = {p.name: p for p in root.rglob("*.png")}
    items, missing = [], 0
    for row in read_nih_rows(csv_path):
        label = cxr_label(row["Finding Labels"], negative)
        if label is None:
            continue
        path = on_disk.get(row["Image Index"])
        if path is None:
            missing += 1
            continue
        items.append({"image": str(path), "label": label, "patient": row["Patient ID"]})
    if missing:
        logger.warning("%d images listed in %s are not under %s and were skipped.", missing, csv_path, root)
    counts = _per_class_counts(per_class, (0, 1))
    if official_split:
        if boxed_in_test is not None:
            raise ValueError("official_split and boxed_in_test both choose the test patients: pass one of them.")
        lists = {name: root / name for name in ("train_val_list.txt", "test_list.txt")}
        for path in lists.values():
            if not path.is_file():
                raise FileNotFoundError(f"official split list not found: {path} (official_split needs the release's "
                                        "train_val_list.txt and test_list.txt).")
        test_names = set(lists["test_list.txt"].read_text().split())
        train_val_names = set(lists["train_val_list.txt"].read_text().split())
        test_items = [item for item in items if Path(item["image"]).name in test_names]
        other_items = [item for item in items if Path(item["image"]).name in train_val_names]
        datalist = split_by_group(other_items, {k: counts[k] for k in ("training", "validation")}, seed=seed)
        datalist["test"] = split_by_group(test_items, {"test": counts["test"]}, seed=seed)["test"]
        return _finish(datalist, output_json)
    if boxed_in_test is None:
        return _finish(split_by_group(items, counts, seed=seed), output_json)
    patient_of = {Path(item["image"]).name: item["patient"] for item in items}
    boxed = {patient_of[name] for name in read_nih_boxes(boxed_in_test) if name in patient_of}
    held = [item for item in items if item["patient"] in boxed]
    held_counts = {label: sum(item["label"] == label for item in held) for label in (0, 1)}
    for label, have in held_counts.items():
        if have > counts["test"][label]:
            raise ValueError(f"the {len(boxed)} boxed patients have {have} images with label {label}, more than the "
                             f"test split's {counts['test'][label]}: raise its count in per_class.")
    rest = {split: dict(per_label) for split, per_label in counts.items()}
    rest["test"] = {label: counts["test"][label] - have for label, have in held_counts.items()}
    datalist = split_by_group([item for item in items if item["patient"] not in boxed], rest, seed=seed)
    datalist["test"] = held + datalist["test"]
    return _finish(datalist, output_json)


# ---- SKS/BKS MRI: axial slices of T1w volumes with a white-matter mask ----------------------------------------


def _load_volume(path: Path) -> np.ndarray:
    try:
        return np.asarray(nib.load(str(path)).dataobj)
    except Exception as err:  # nibabel raises several types for truncated or foreign files
        raise ValueError(f"cannot read NIfTI volume {path}: {err}") from err


def _slice_cache_key(t1: np.ndarray, wm: np.ndarray) -> str:
    """A digest of what the slices are cut from: the T1 voxels and the white-matter mask (so a changed volume or
    ``wm_threshold`` cuts new slices instead of reusing stale ones)."""
    digest = hashlib.sha256()
    for array in (t1, np.packbits(wm)):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str(wm.shape).encode())
    return digest.hexdigest()[:16]


def _write_slice(t1_z: np.ndarray, mask_z: np.ndarray, out_dir: Path, subject: str, z: int,
                 reuse: bool = False) -> dict:
    """Axial slice ``z`` of a subject as two 2D NIfTI files (T1 float32, white-matter mask uint8), anterior up;
    its record. ``reuse``: keep files already there (the same volume and mask cut them)."""
    names = [out_dir / f"{subject}_z{z:03d}_{kind}.nii.gz" for kind in ("t1", "wm")]
    if not (reuse and all(n.exists() for n in names)):
        save_nifti(np.ascontiguousarray(np.rot90(t1_z)), names[0])
        save_nifti(np.ascontiguousarray(np.rot90(mask_z)).astype(np.uint8), names[1])
    return {"image": str(names[0]), "mask": str(names[1]), "subject": subject, "slice": z}


def _axial_slices(t1_path: Path, wm: np.ndarray, out_dir: Path, subject: str, min_wm_voxels: int) -> List[dict]:
    """Write the axial slices of a volume holding at least ``min_wm_voxels`` white-matter voxels as 2D NIfTI files
    (image float32, mask uint8), oriented anterior up, into ``out_dir/<subject>-<key>/`` where the key digests the
    volume and the mask; return their records."""
    t1 = _load_volume(t1_path).astype(np.float32)
    if t1.ndim != 3 or t1.shape != wm.shape:
        raise ValueError(f"{t1_path} has shape {t1.shape}; expected a 3D volume shaped like its white-matter mask "
                         f"{wm.shape}.")
    out_dir = out_dir / f"{subject}-{_slice_cache_key(t1, wm)}"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for z in range(t1.shape[2]):
        mask = wm[:, :, z]
        if mask.sum() < min_wm_voxels:
            continue
        records.append(_write_slice(t1[:, :, z], mask, out_dir, subject, z, reuse=True))
    return records


def _slice_entries(records: Sequence[dict], n: int, seed: int) -> List[dict]:
    """``n`` entries cycling through shuffled slice records, each with a distinct per-entry ``seed``."""
    if n and not records:
        raise ValueError("no slice holds enough white matter to build entries from.")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(records)) if records else []
    seeds = rng.choice(2**31 - 1, size=n, replace=False)  # Generator.choice samples without a full permutation
    return [dict(records[order[i % len(records)]], seed=int(seeds[i])) for i in range(n)]


def _check_counts(counts: Sequence[int]) -> Tuple[int, int, int]:
    if len(counts) != 3 or min(counts) < 0:
        raise ValueError(f"counts must give (training, validation, test) entry numbers >= 0, got {tuple(counts)}.")
    return tuple(int(c) for c in counts)


def build_hcp_datalist(root: os.PathLike, cache_dir: os.PathLike, counts: Sequence[int] = (8904, 1113, 1113),
                       seed: int = 0, t1_pattern: str = "T1w/T1w_acpc_dc_restore_brain.nii.gz",
                       aseg_pattern: Optional[str] = "T1w/aparc+aseg.nii.gz", wm_labels: Sequence[int] = (2, 41),
                       wm_prob_pattern: Optional[str] = None, wm_threshold: float = 0.5, min_wm_voxels: int = 500,
                       split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                       output_json: Optional[os.PathLike] = None) -> Dict[str, List[dict]]:
    """SKS/BKS entries from HCP-style subjects, ``root/{subject}/T1w/...``; subject-disjoint splits.

    White matter comes from a FreeSurfer ``aparc+aseg`` volume (labels 2 and 41, cerebral white matter) or, when
    ``wm_prob_pattern`` is given, from a probability map above ``wm_threshold``. Axial slices with at least
    ``min_wm_voxels`` white-matter voxels are written to ``cache_dir``; ``counts`` entries per split cycle over them
    with distinct seeds (so each slice backs several images with different augmentation and signal draws).

    Args:
        root: folder of subject folders.
        cache_dir: where the 2D slice files go (reused on later builds).
        counts: entries for (training, validation, test); paper: 8904, 1113, 1113.
        split_fractions: share of subjects per split (at least one subject each).
    """
    root = _require_dir(root, "HCP subjects root")
    counts = _check_counts(counts)
    subjects = sorted(p.name for p in root.iterdir() if p.is_dir())
    if len(subjects) < 3:
        raise ValueError(f"{root} holds {len(subjects)} subject folders; subject-disjoint splits need at least 3.")
    records: Dict[str, List[dict]] = {}
    for subject in subjects:
        t1_path = root / subject / t1_pattern
        if wm_prob_pattern is not None:
            wm_path = root / subject / wm_prob_pattern
        elif aseg_pattern is not None:
            wm_path = root / subject / aseg_pattern
        else:
            raise ValueError("give aseg_pattern (FreeSurfer labels) or wm_prob_pattern (probability map).")
        for path in (t1_path, wm_path):
            if not path.is_file():
                raise FileNotFoundError(f"subject {subject}: file not found: {path}")
        source = _load_volume(wm_path)
        wm = source > wm_threshold if wm_prob_pattern is not None else np.isin(source, list(wm_labels))
        records[subject] = _axial_slices(t1_path, wm, Path(cache_dir), subject, min_wm_voxels)
    order = list(np.random.RandomState(seed).permutation(subjects))
    n_val = max(1, int(round(split_fractions[1] * len(order))))
    n_test = max(1, int(round(split_fractions[2] * len(order))))
    groups = {"validation": order[:n_val], "test": order[n_val:n_val + n_test], "training": order[n_val + n_test:]}
    datalist = {split: _slice_entries([r for s in groups[split] for r in records[s]], n, seed + i)
                for i, (split, n) in enumerate(zip(SPLITS, counts))}
    return _finish(datalist, output_json)


def mni152_template_paths() -> Tuple[Path, Path]:
    """The MNI152 2009 T1 and white-matter templates inside nilearn's wheel (nilearn only locates them)."""
    from nilearn.datasets import struct  # imported here: nilearn is slow to import and only needed for this

    paths = Path(struct.MNI152_FILE_PATH), Path(struct.WM_MNI152_FILE_PATH)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"MNI152 template not found at {path}; is nilearn installed in full?")
    return paths


def _wm_probability(wm_path: Path) -> np.ndarray:
    """The MNI152 white-matter template as a probability (the template stores probability x 255)."""
    wm_raw = _load_volume(wm_path).astype(np.float32)
    return wm_raw / (255.0 if wm_raw.max() > 1 else 1.0)


def _subject_seed(seed: int, index: int) -> int:
    """Subject ``index``'s own seed: independent of how many subjects each split has."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _spread_slices(candidates: Sequence[int], n: int, rng: np.random.RandomState) -> List[int]:
    """``n`` of ``candidates`` spread over their inferior-superior range: one drawn in each of ``n`` equal bins
    (fewer when the candidates are fewer)."""
    candidates = sorted(candidates)
    bins = np.array_split(np.asarray(candidates), min(n, len(candidates)))
    return [int(rng.choice(b)) for b in bins if len(b)]


def _simulated_subject(t1: np.ndarray, wm: np.ndarray, simulate: SimulateSubject, seed: int, index: int,
                       slices: int, wm_threshold: float, min_wm_fraction: float, out_dir: Path) -> List[dict]:
    """Subject ``index``: simulated once, ``slices`` axial slices written as 2D NIfTI (T1 float32, white-matter mask
    uint8, anterior up) under ``out_dir`` with a record file written last, so an interrupted build is redone."""
    name = f"sim{index:04d}"
    record_file = out_dir / f"{name}.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    subject_seed = _subject_seed(seed, index)
    t1_sim, wm_sim = simulate(t1, wm, subject_seed)
    mask = wm_sim > wm_threshold
    counts = mask.sum(axis=(0, 1))
    candidates = [z for z in range(mask.shape[2]) if counts[z] >= min_wm_fraction * counts.max()]
    records = []
    for z in _spread_slices(candidates, slices, np.random.RandomState(subject_seed % (2**32))):
        records.append(_write_slice(t1_sim[:, :, z], mask[:, :, z], out_dir, name, z))
    with atomic_write(record_file) as tmp:
        tmp.write_text(json.dumps(records))
    return records


def build_simulated_datalist(cache_dir: os.PathLike, counts: Sequence[int] = (6400, 640, 640),
                             subjects: Sequence[int] = (200, 40, 40), slices_per_subject: int = 8, seed: int = 0,
                             settings: SubjectSettings = SubjectSettings(), wm_threshold: float = 0.5,
                             min_wm_fraction: float = 0.25,
                             output_json: Optional[os.PathLike] = None) -> Dict[str, List[dict]]:
    """The offline tasks' splits: simulated subjects built from the MNI152 2009 templates inside nilearn's wheel.

    Each subject is one draw of :class:`scripts.subjects.SimulateSubject` (its seed from ``seed`` and its index), so
    the training, validation and test subjects (``subjects``, in that order) are disjoint by construction and the
    subject is the bootstrap's unit. ``slices_per_subject`` axial slices are drawn across the brain (one in each of
    as many equal bins of the range whose white matter covers at least ``min_wm_fraction`` of the largest slice's),
    cut once into ``cache_dir/simulated-<key>/`` (the key digests the templates, the settings and ``seed``). ``counts``
    entries per split cycle over the split's slices, each with its own ``seed`` for the chain's augmentation, lumps
    and signal (:func:`scripts.transforms.mri_transforms`). Only the subjects a split's entries need are simulated:
    the first ceil(entries / ``slices_per_subject``) of its block of ``subjects`` (a subject's index, and so its
    anatomy and split, never depends on ``counts``).
    """
    counts = _check_counts(counts)
    subjects = _check_counts(subjects)
    if slices_per_subject < 1:
        raise ValueError(f"slices_per_subject must be at least 1, got {slices_per_subject}.")
    for split, n, m in zip(SPLITS, counts, subjects):
        if n and not m:
            raise ValueError(f"{n} {split} entries need at least one {split} subject; got subjects={subjects}.")
    t1_path, wm_path = mni152_template_paths()
    t1 = _load_volume(t1_path).astype(np.float32)
    wm = _wm_probability(wm_path)
    digest = hashlib.sha256(json.dumps([_slice_cache_key(t1, wm > wm_threshold), settings.as_dict(), int(seed),
                                        slices_per_subject, wm_threshold, min_wm_fraction]).encode())
    out_dir = Path(cache_dir) / f"simulated-{digest.hexdigest()[:16]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    simulate = SimulateSubject(settings)
    first = np.cumsum((0,) + subjects)
    datalist = {}
    for i, (split, n) in enumerate(zip(SPLITS, counts)):
        indices = range(first[i], first[i] + min(subjects[i], -(-n // slices_per_subject)))
        records = [r for index in indices for r in _simulated_subject(
            t1, wm, simulate, seed, index, slices_per_subject, wm_threshold, min_wm_fraction, out_dir)]
        datalist[split] = _slice_entries(records, n, seed + i)
    return _finish(datalist, output_json)


# ---- A user's folder of scans ----------------------------------------------------------------------------------


def folder_datalist(root: os.PathLike, exclude: Sequence[os.PathLike] = ()) -> List[dict]:
    """One entry per image file under ``root``, recursively (NIfTI, PNG, JPEG, BMP, DICOM with or without a
    suffix; see :func:`scripts.sources.find_image_files`), sorted by path: ``{"image": path, "name": path relative
    to root}``. The relative path, extension included, names the input's output files, so no two inputs share one
    (``a.png`` / ``a.jpg``, ``test/NORMAL/1.jpeg`` / ``test/CNV/1.jpeg``). ``exclude``: folders to leave out, e.g.
    an output folder inside ``root``.

    Raises ``FileNotFoundError`` when ``root`` is not a folder and ``ValueError`` when it holds no image file.
    """
    root = _require_dir(root, "image")
    files, ignored, problems = find_image_files(root, exclude=exclude)
    if not files:
        if any(path == root for path, _ in problems):
            raise PermissionError(f"cannot read --dataset_dir {root}: {problems[0][1]}")
        raise ValueError(f"no image file under {root} ({ignored} other files"
                         + (f", {len(problems)} unreadable folders or broken links" if problems else "")
                         + f"): expected {', '.join(READABLE_SUFFIXES)} or DICOM files.")
    if ignored:
        logger.info("%d files under %s are not images and were left out.", ignored, root)
    entries = [{"image": str(path), "name": _relative_name(path, root)} for path in files]
    return entries + [{"image": str(path), "name": _relative_name(path, root), "problem": f"{path}: {reason}"}
                      for path, reason in problems]


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # outside root (a folder reached through a link): named by its full path
        return path.as_posix()


class SkippingDataset(IterableDataset):
    """Entries of ``data`` through ``transform``, in order (shared out between loader workers); an entry whose
    transform fails (unreadable file, a volume for a 2D model, NaN pixels) is skipped with a warning that names it,
    instead of ending the run. :meth:`failure` tells why an entry fails, so a caller can list the skipped ones.

    It has no length (skips are found on the way): an ignite engine learns the epoch's length at its end. Each
    item carries ``entry_index``, its position in ``data``, so a progress display counts the skipped entries before
    it too (:class:`scripts.handlers.InputProgressBar`).
    """

    def __init__(self, data: Sequence[dict], transform=None, name_key: str = "name"):
        super().__init__(data=list(data), transform=transform)
        self.name_key = name_key

    def failure(self, entry: dict) -> Optional[str]:
        """Why ``entry`` cannot be transformed, or None when it can; an entry the listing could not look at
        (``problem``: an unreadable folder, a broken link) says why."""
        if entry.get("problem"):
            return str(entry["problem"])
        try:
            apply_transform(self.transform, entry) if self.transform is not None else entry
        except Exception as err:
            return _reason(err)
        return None

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for i, entry in enumerate(self.data):
            if i % workers != worker:
                continue
            if entry.get("problem"):
                logger.warning("skipped %s", entry["problem"])
                continue
            if self.transform is None:
                yield entry
                continue
            try:
                item = apply_transform(self.transform, entry)
            except Exception as err:
                logger.warning("skipped %s: %s", entry.get(self.name_key, entry.get("image")), _reason(err))
                continue
            yield {**item, "entry_index": i} if isinstance(item, dict) else item


def _reason(err: BaseException) -> str:
    """The whole error a transform raised, on one line, under MONAI's "applying transform ..." wrappers."""
    while err.__cause__ is not None and str(err).startswith("applying transform"):
        err = err.__cause__
    return one_line(err) or type(err).__name__
