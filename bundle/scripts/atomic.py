# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Atomic file writes: a failure leaves no half-written output behind."""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import nibabel as nib
import numpy as np

__all__ = ["atomic_write", "write_csv", "save_nifti"]


@contextlib.contextmanager
def atomic_write(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes, so writers pick the right format); on success it is
    renamed onto ``path`` in one step, on failure it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix="".join(path.suffixes))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_csv(path: os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file with a header row, written atomically."""
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def save_nifti(array: np.ndarray, path: os.PathLike) -> None:
    """A NIfTI file (identity affine), written atomically; the suffix (``.nii`` / ``.nii.gz``) picks the format."""
    with atomic_write(path) as tmp:
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp))
