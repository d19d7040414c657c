# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The paper's three tasks by name, so a bundle config picks one with a top-level ``task`` key.

``sksbks`` (default, offline: MNI152 templates inside nilearn's wheel), ``sksbks_hcp`` (HCP subjects under
``data_root``), ``oct`` (Kermany layout under ``data_root``), ``cxr`` (NIH ChestX-ray14 under ``data_root``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

from monai.transforms import Compose

from .data import build_cxr_datalist, build_hcp_datalist, build_oct_datalist, build_sksbks_datalist
from .transforms import cxr_transforms, mri_transforms, oct_transforms

__all__ = ["TASKS", "task_num_classes", "task_datalist", "task_transforms"]

TASKS = {"sksbks": 2, "sksbks_hcp": 2, "oct": 3, "cxr": 2}  # task -> number of classes


def _check(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}.")


def task_num_classes(task: str) -> int:
    _check(task)
    return TASKS[task]


def task_datalist(task: str, cache_dir: os.PathLike, data_root: Optional[os.PathLike] = None,
                  counts: Optional[Sequence[int]] = None, seed: int = 0,
                  output_json: Optional[os.PathLike] = None) -> Dict[str, List[dict]]:
    """The task's datalist. ``counts`` are entries per split (MRI) or per class and split (OCT, CXR); None keeps
    the paper's. ``data_root`` is the local copy of the dataset (not needed for ``sksbks``)."""
    _check(task)
    kwargs = {} if counts is None else ({"counts": tuple(counts)} if task.startswith("sksbks")
                                        else {"per_class": tuple(counts)})
    if task == "sksbks":
        return build_sksbks_datalist(cache_dir, seed=seed, output_json=output_json, **kwargs)
    if data_root is None:
        raise ValueError(f"task {task!r} reads a local copy of its dataset: set data_root.")
    if task == "sksbks_hcp":
        return build_hcp_datalist(data_root, cache_dir, seed=seed, output_json=output_json, **kwargs)
    builder = build_oct_datalist if task == "oct" else build_cxr_datalist
    return builder(data_root, seed=seed, output_json=output_json, **kwargs)


def task_transforms(task: str, size: int) -> Compose:
    """The task's preprocessing chain at ``size^2``."""
    _check(task)
    if task.startswith("sksbks"):
        return mri_transforms(size=size)
    return oct_transforms(size=size) if task == "oct" else cxr_transforms(size=size)
