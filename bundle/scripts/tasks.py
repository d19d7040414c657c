# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's three tasks by name, so a bundle config picks one with a top-level ``task`` key.

``sksbks`` (default, offline: MNI152 templates inside nilearn's wheel), ``sksbks_hcp`` (HCP subjects under
``dataset_dir``), ``oct`` (Kermany layout under ``dataset_dir``), ``cxr`` (NIH ChestX-ray14 under ``dataset_dir``).

Training and evaluation read a task's splits (:func:`task_datalist`, :func:`task_transforms`); inference reads a
folder of any images through the task's deterministic chain, or, without a folder, the offline default's test
images (:func:`inference_datalist`, :func:`inference_transforms`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from monai.transforms import Compose

from .data import build_cxr_datalist, build_hcp_datalist, build_oct_datalist, build_sksbks_datalist, folder_datalist
from .sources import DEFAULT_MAX_VOXELS, AsOwnGridd
from .transforms import image_transforms, mri_transforms

__all__ = ["TASKS", "TASK_CLASSES", "TASK_UNIT_KEYS", "task_unit_key", "task_num_classes", "task_class_names",
           "task_datalist", "task_transforms", "inference_datalist", "inference_transforms"]

TASK_CLASSES = {  # task -> class names, in label order
    "sksbks": ("signal absent", "signal present"),
    "sksbks_hcp": ("signal absent", "signal present"),
    "oct": ("NORMAL", "DRUSEN", "CNV"),
    "cxr": ("no cardiomegaly", "cardiomegaly"),
}
TASKS = {task: len(names) for task, names in TASK_CLASSES.items()}  # task -> number of classes
# task -> datalist key of each image's independent unit: the default task's images are augmented copies of slices
# of one brain; HCP has subjects; OCT and CXR have several images per patient
TASK_UNIT_KEYS = {"sksbks": "slice", "sksbks_hcp": "subject", "oct": "patient", "cxr": "patient"}


def _check(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}.")


def task_num_classes(task: str) -> int:
    _check(task)
    return TASKS[task]


def task_unit_key(task: str) -> str:
    """The datalist key of the independent unit an image of ``task`` comes from (slice, subject or patient)."""
    _check(task)
    return TASK_UNIT_KEYS[task]


def task_class_names(task: str) -> List[str]:
    _check(task)
    return list(TASK_CLASSES[task])


def task_datalist(task: str, cache_dir: os.PathLike, dataset_dir: Optional[os.PathLike] = None,
                  counts: Optional[Sequence[int]] = None, seed: int = 0,
                  output_json: Optional[os.PathLike] = None) -> Dict[str, List[dict]]:
    """The task's datalist. ``counts`` are entries per split (MRI) or per class and split (OCT, CXR); None keeps
    the paper's. ``dataset_dir`` is the local copy of the dataset (not needed for ``sksbks``)."""
    _check(task)
    kwargs = {} if counts is None else ({"counts": tuple(counts)} if task.startswith("sksbks")
                                        else {"per_class": tuple(counts)})
    if task == "sksbks":
        return build_sksbks_datalist(cache_dir, seed=seed, output_json=output_json, **kwargs)
    if dataset_dir is None:
        raise ValueError(f"task {task!r} reads a local copy of its dataset: set dataset_dir.")
    if task == "sksbks_hcp":
        return build_hcp_datalist(dataset_dir, cache_dir, seed=seed, output_json=output_json, **kwargs)
    builder = build_oct_datalist if task == "oct" else build_cxr_datalist
    return builder(dataset_dir, seed=seed, output_json=output_json, **kwargs)


def task_transforms(task: str, size: int, evaluation: bool = False, max_voxels: int = DEFAULT_MAX_VOXELS) -> Compose:
    """The task's chain at ``size^2``. ``evaluation=False``: what its splits are built with (for SKS/BKS, the
    augmentation and the signal drawn per entry). ``evaluation=True``: the deterministic chain for one ``image`` of
    any format, no augmentation, no signal, its MetaTensor record kept so maps can be put back on its grid.
    ``max_voxels``: files whose header claims more are refused before loading."""
    _check(task)
    if task.startswith("sksbks"):
        if evaluation:
            return mri_transforms(size=size, augment=False, signal=False, track_meta=True, max_voxels=max_voxels)
        return mri_transforms(size=size, max_voxels=max_voxels)
    return image_transforms(size=size, track_meta=evaluation, max_voxels=max_voxels)


def inference_datalist(task: str, dataset_dir: Optional[os.PathLike], cache_dir: os.PathLike, n_images: int = 16,
                       seed: int = 0, exclude: Sequence[os.PathLike] = ()) -> List[dict]:
    """What inference analyses, one entry per input with a unique ``name`` for its output files.

    With ``dataset_dir``: every image file under it (:func:`scripts.data.folder_datalist`; ``exclude`` keeps an
    output folder inside it out). Without: the first ``n_images`` test images of the offline default task
    (``sksbks`` only: the other tasks read a user's copy, so point ``dataset_dir`` at its images).
    """
    _check(task)
    if dataset_dir is not None:
        return folder_datalist(dataset_dir, exclude=exclude)
    if task != "sksbks":
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
