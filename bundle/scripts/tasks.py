# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's tasks as data: one :class:`Task` record each in :data:`TASKS`, so a bundle config picks one with a
top-level ``task`` key and nothing else branches on a task's name. Adding a task is one record.

``polarity`` (the offline default, three classes: signal absent, hyperintense, hypointense) and ``sksbks`` (the
paper's binary signal-known-statistically / background-known-statistically task), both offline on simulated subjects
warped from the MNI152 templates inside nilearn's wheel; ``sksbks_hcp``
(HCP subjects under ``dataset_dir``), ``oct`` (Kermany layout under ``dataset_dir``), ``cxr`` (NIH ChestX-ray14
under ``dataset_dir``).

Training and evaluation read a task's splits (:func:`task_datalist`, :func:`task_transforms`); inference reads a
folder of any images through the task's deterministic chain, or, without a folder, an offline task's test images
(:func:`inference_datalist`, :func:`inference_transforms`).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from monai.transforms import Compose

from .data import (
    OCT_CLASSES,
    build_cxr_datalist,
    build_hcp_datalist,
    build_oct_datalist,
    build_simulated_datalist,
    folder_datalist,
)
from .sources import DEFAULT_MAX_VOXELS, AsOwnGridd, WarnOffTaskModalityd
from .transforms import HYPOINTENSE, ROUND, image_transforms, mri_transforms

__all__ = ["Task", "TASKS", "PAPER_TABLE2", "get_task", "task_unit_key", "task_num_classes", "task_class_names",
           "task_datalist", "split_composition", "require_splits", "task_transforms", "inference_datalist",
           "inference_transforms", "MIN_IMAGE_SIZE"]

MIN_IMAGE_SIZE = 16  # the smallest side a task's chain and the networks' pooling are run at

# Table II of the paper, (mean, std) of (precision, recall) per network, by the paper's column
PAPER_TABLE2 = {"cxr": {"VGG16": ((0.77, 0.03), (0.78, 0.03)), "ResNet18": ((0.80, 0.01), (0.79, 0.03))},
                "oct": {"VGG16": ((0.98, 0.01), (0.98, 0.01)), "ResNet18": ((0.98, 0.01), (0.98, 0.01))},
                "mri": {"VGG16": ((0.97, 0.01), (0.96, 0.01)), "ResNet18": ((0.97, 0.01), (0.97, 0.01))}}

# (dataset_dir, cache_dir, counts, seed, output_json) -> {"training": [...], "validation": [...], "test": [...]}
DatalistBuilder = Callable[[Optional[os.PathLike], os.PathLike, Optional[Sequence[int]], int, Optional[os.PathLike]],
                           Dict[str, List[dict]]]


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        name: the configs' ``task``.
        class_names: the classes, in label order.
        unit_key: the datalist key of the independent unit each image comes from (the bootstrap's unit).
        build_datalist: the task's splits (:data:`DatalistBuilder`); ``counts``: entries per split (MRI) or per
            class and split (OCT, CXR), None: the paper's.
        mri: an MRI slice task (the MRI chain with augmentation and the inserted signal), else a 2D image chain.
        needs_dataset: reads a user's local copy (``dataset_dir``); else built offline, with test images inference
            can run on without a folder.
        paper_column: its column of the paper's Table II (:data:`PAPER_TABLE2`).
        modalities: the DICOM Modality codes of its images; a user's DICOM of another is analysed with a warning.
        signal: an MRI task's signal and background settings (keywords of
            :func:`scripts.transforms.mri_transforms`: the signal's classes, width, the lumpy background).
        units_made_of: what its independent units are, in prose, for the report (e.g. that the subjects are
            simulated); empty: the unit's name says it.
    """

    name: str
    class_names: Tuple[str, ...]
    unit_key: str
    build_datalist: DatalistBuilder
    mri: bool
    needs_dataset: bool
    paper_column: str
    modalities: Tuple[str, ...] = ("MR",)
    signal: Mapping[str, object] = field(default_factory=dict)
    units_made_of: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _per_class(counts: Optional[Sequence[int]]) -> dict:
    return {} if counts is None else {"per_class": tuple(counts)}


def _per_split(counts: Optional[Sequence[int]]) -> dict:
    return {} if counts is None else {"counts": tuple(counts)}


SIGNAL_CLASSES = ("signal absent", "signal present")
# The offline tasks' signal and background, fixed on the validation split before any test result was seen by
# tools/select_offline_background.py. Its rule: the first of 0, 2, 4, 8 lumps whose max-intensity AUROC (signal
# absent against present) has an upper 95 % bound of at most 0.65 on every offline task, over the 640 validation
# images of 40 subjects. Max-intensity AUROC, polarity / sksbks: 0 lumps 0.644 [0.602, 0.688] / 0.829 [0.793,
# 0.868]; 2 lumps 0.554 [0.514, 0.596] / 0.615 [0.576, 0.654]; 4 lumps 0.552 [0.517, 0.587] / 0.584 [0.542,
# 0.628] (chosen); 8 lumps 0.528 [0.482, 0.572] / 0.543 [0.498, 0.586]. So: a signal 1/16 of the image wide in the
# paper's amplitude range 0.1-0.35, over a lumpy background of 4 lumps twice as wide, of the same amplitudes and
# random sign, so that neither the brightest pixel nor the mean intensity finds the signal (the report's
# trivial-detector control). Intensities: the MRI chain's 0-99.5th percentile scaling; no added noise beyond the
# simulated subject's.
SIMULATED_BACKGROUND = {"signal_width": 1 / 16, "lumps": 4, "lump_width": 2.0}
SIMULATED_SUBJECTS = ("simulated subjects (scripts/subjects.py: the MNI152 2009 T1 and white-matter templates warped "
                      "together by a random smooth deformation, with a random bias field and contrast), "
                      "not scans of people")


def _simulated(root, cache, counts, seed, out) -> Dict[str, List[dict]]:
    return build_simulated_datalist(cache, seed=seed, output_json=out, **_per_split(counts))


TASKS: Dict[str, Task] = {task.name: task for task in (
    # the offline tasks' images come from simulated subjects, HCP's from subjects; OCT and CXR have several images
    # per patient
    Task("polarity", ("signal absent", "hyperintense signal", "hypointense signal"), "subject", _simulated,
         mri=True, needs_dataset=False, paper_column="mri",
         signal=dict(SIMULATED_BACKGROUND, shapes=(ROUND, HYPOINTENSE)), units_made_of=SIMULATED_SUBJECTS),
    Task("sksbks", SIGNAL_CLASSES, "subject", _simulated, mri=True, needs_dataset=False, paper_column="mri",
         signal=dict(SIMULATED_BACKGROUND, shapes=(ROUND,)), units_made_of=SIMULATED_SUBJECTS),
    Task("sksbks_hcp", SIGNAL_CLASSES, "subject", lambda root, cache, counts, seed, out: build_hcp_datalist(
        root, cache, seed=seed, output_json=out, **_per_split(counts)), mri=True, needs_dataset=True,
        paper_column="mri"),
    Task("oct", OCT_CLASSES, "patient", lambda root, cache, counts, seed, out: build_oct_datalist(
        root, seed=seed, output_json=out, **_per_class(counts)), mri=False, needs_dataset=True, paper_column="oct",
         modalities=("OPT", "OP")),
    Task("cxr", ("no cardiomegaly", "cardiomegaly"), "patient", lambda root, cache, counts, seed, out:
         build_cxr_datalist(root, seed=seed, output_json=out, **_per_class(counts)), mri=False, needs_dataset=True,
         paper_column="cxr", modalities=("CR", "DX")),
)}


def get_task(task: str) -> Task:
    """The record of ``task``; a clear error naming the choices otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}.")
    return TASKS[task]


def task_num_classes(task: str) -> int:
    return get_task(task).num_classes


def task_unit_key(task: str) -> str:
    """The datalist key of the independent unit an image of ``task`` comes from (slice, subject or patient)."""
    return get_task(task).unit_key


def task_class_names(task: str) -> List[str]:
    return list(get_task(task).class_names)


def split_composition(task: str, entries: Sequence[Mapping[str, object]]) -> str:
    """What a split of ``task`` is made of, in one sentence for the report: its images, their independent units,
    the distinct slices per unit where the entries name slices, and what the units are (:attr:`Task.units_made_of`).
    E.g. "640 images of 320 distinct slices (8 per subject) from 40 subjects: simulated subjects (...)"."""
    record = get_task(task)
    units = [str(e.get(record.unit_key, "")) for e in entries]
    counts = {u: units.count(u) for u in dict.fromkeys(units)}
    text = f"{len(entries)} images"
    if entries and all("slice" in e for e in entries):
        slices = {(str(e.get(record.unit_key, "")), e["slice"]) for e in entries}
        per_unit = sorted({sum(1 for s in slices if s[0] == u) for u in counts})
        each = str(per_unit[0]) if len(per_unit) == 1 else f"{per_unit[0]}-{per_unit[-1]}"
        text += f" of {len(slices)} distinct slices ({each} per {record.unit_key})"
    text += f" from {len(counts)} {record.unit_key}{'s' * (len(counts) != 1)}"
    return text + (f": {record.units_made_of}" if record.units_made_of else "")


def task_datalist(task: str, cache_dir: os.PathLike, dataset_dir: Optional[os.PathLike] = None,
                  counts: Optional[Sequence[int]] = None, seed: int = 0,
                  output_json: Optional[os.PathLike] = None) -> Dict[str, List[dict]]:
    """The task's datalist. ``counts`` are entries per split (MRI) or per class and split (OCT, CXR); None keeps
    the paper's. ``dataset_dir`` is the local copy of the dataset (not needed for an offline task)."""
    record = get_task(task)
    if record.needs_dataset and dataset_dir is None:
        raise ValueError(f"task {task!r} reads a local copy of its dataset: set dataset_dir.")
    return record.build_datalist(dataset_dir, cache_dir, counts, seed, output_json)


def require_splits(datalist: Dict[str, List[dict]], splits: Sequence[str], purpose: str) -> None:
    """Refuse, before any work, a datalist whose ``splits`` needed for ``purpose`` (training, evaluation) are empty,
    saying which and what to pass."""
    empty = [split for split in splits if not datalist.get(split)]
    if empty:
        sizes = ", ".join(f"{len(datalist.get(s, []))} {s}" for s in ("training", "validation", "test"))
        raise ValueError(f"{purpose} needs entries in the {' and '.join(empty)} split{'s' * (len(empty) > 1)}, and "
                         f"the datalist has {sizes}: give --counts at least one entry for each of "
                         f"{', '.join(splits)} (counts are training, validation, test; e.g. \"[64, 16, 16]\").")


def task_transforms(task: str, size: int, evaluation: bool = False, max_voxels: int = DEFAULT_MAX_VOXELS) -> Compose:
    """The task's chain at ``size^2``. ``evaluation=False``: what its splits are built with (for SKS/BKS, the
    augmentation and the signal drawn per entry). ``evaluation=True``: the deterministic chain for one ``image`` of
    any format, no augmentation, no signal, its MetaTensor record kept so maps can be put back on its grid.
    ``max_voxels``: files whose header claims more are refused before loading."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be a whole number of pixels, at least {MIN_IMAGE_SIZE}; got {size!r}.")
    record = get_task(task)
    if not evaluation:
        return mri_transforms(size=size, max_voxels=max_voxels, **record.signal) if record.mri else \
            image_transforms(size=size, max_voxels=max_voxels)
    chain = mri_transforms(size=size, augment=False, signal=False, track_meta=True, max_voxels=max_voxels) \
        if record.mri else image_transforms(size=size, track_meta=True, max_voxels=max_voxels)
    return Compose([WarnOffTaskModalityd("image", record.modalities, task), *chain.transforms])


def inference_datalist(task: str, dataset_dir: Optional[os.PathLike], cache_dir: os.PathLike, n_images: int = 16,
                       seed: int = 0, exclude: Sequence[os.PathLike] = ()) -> List[dict]:
    """What inference analyses, one entry per input with a unique ``name`` for its output files.

    With ``dataset_dir``: every image file under it (:func:`scripts.data.folder_datalist`; ``exclude`` keeps an
    output folder inside it out). Without: the first ``n_images`` test images of an offline task (the others read
    a user's copy, so point ``dataset_dir`` at its images).
    """
    record = get_task(task)
    if dataset_dir is not None:
        return folder_datalist(dataset_dir, exclude=exclude)
    if record.needs_dataset:
        raise ValueError(f"task {task!r} has no offline test images: set dataset_dir to a folder of its images.")
    entries = task_datalist(task, cache_dir, counts=(0, 0, n_images), seed=seed)["test"][:n_images]
    return [dict(e, name=f"{Path(e['image']).name.split('.')[0]}_seed{e['seed']}") for e in entries]


def inference_transforms(task: str, size: int, dataset_dir: Optional[os.PathLike],
                         max_voxels: int = DEFAULT_MAX_VOXELS) -> Compose:
    """The chain matching :func:`inference_datalist`: a user's files through the task's deterministic chain
    (:func:`task_transforms` with ``evaluation=True``), or the default's synthetic test images as built for
    evaluation, each presented as its own grid (it has no source file)."""
    if dataset_dir is not None:
        return task_transforms(task, size, evaluation=True, max_voxels=max_voxels)
    return Compose([task_transforms(task, size, max_voxels=max_voxels), AsOwnGridd("image")])
