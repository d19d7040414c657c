# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Output files: atomic writes (a failure leaves no half-written file behind) and run folders (a run writes only
into a folder it created)."""

from __future__ import annotations

import atexit
import contextlib
import csv
import errno
import glob
import hashlib
import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Set

import nibabel as nib
import numpy as np

__all__ = ["atomic_write", "write_csv", "append_csv_rows", "save_nifti", "nifti_affine", "new_run_dir",
           "temporary_prefix", "remove_stale_temporaries", "format_suffix", "fit_name", "NAME_MAX", "is_run_dir_name",
           "require_writable_dir"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def temporary_prefix(prefix: str) -> str:
    """The name prefix of this process's temporaries: ``<prefix>-<pid>-``, so a later run can tell which ones a
    dead writer left behind (:func:`remove_stale_temporaries`)."""
    return f"{prefix}-{os.getpid()}-"


def remove_stale_temporaries(folder: os.PathLike, prefix: str) -> None:
    """Remove the temporary files or folders ``<prefix>-<pid>-*`` in ``folder`` whose writer died before it could
    rename or remove them (``kill -9``, power loss). Those of live processes are left alone."""
    for tmp in Path(folder).glob(f"{glob.escape(prefix)}-*-*"):
        pid = tmp.name[len(prefix) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()


NAME_MAX = 255  # bytes of one path component on the common file systems (ext4, XFS, Btrfs, APFS, NTFS)
# mkstemp's names: ".<target, cut to fit>-<pid>-<8 random characters><target's format suffix>"
_WRITE_TEMPORARY = re.compile(r"^\.(?P<target>.+)-(?P<pid>\d+)-[a-z0-9_]{8}(?P<suffix>(\.[A-Za-z0-9]+)?(\.gz)?)$")
_SCANNED_FOLDERS: Set[str] = set()


def format_suffix(name: str) -> str:
    """The extension a writer picks its format by: the last suffix, or the last two when the last is ``.gz``
    (``.nii.gz``). Never the dots inside a name (``1.2.840.10008.dcm_x_sens.nii.gz`` gives ``.nii.gz``)."""
    suffixes = Path(name).suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


def _cut(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` whose UTF-8 encoding fits ``max_bytes``."""
    return text.encode()[:max(0, max_bytes)].decode(errors="ignore")


def fit_name(base: os.PathLike, tail: str) -> Path:
    """The path ``<base><tail>`` (an output named after an input, ``tail`` e.g. ``_x_sens.nii.gz``), its last
    component within :data:`NAME_MAX` bytes: when too long (a DICOM UID, a long description), the input name is cut
    to its start, ``~`` and 10 hex digits of the SHA-1 of the whole input name, so the outputs of one input share one
    recognisable name and two long names never meet. Unchanged when it fits."""
    base = Path(base)
    if len((base.name + tail).encode()) <= NAME_MAX:
        return base.with_name(base.name + tail)
    digest = hashlib.sha1(base.name.encode()).hexdigest()[:10]
    start = _cut(base.name, NAME_MAX - len(tail.encode()) - len(digest) - 1)
    return base.with_name(f"{start}~{digest}{tail}")


def _remove_stale_writes_once(folder: Path) -> None:
    """Remove the temporaries of :func:`atomic_write` in ``folder`` whose writer died (:func:`_alive`), on this
    process's first write there: one listing per folder, not one per file written (a run writing thousands of maps
    into one folder would otherwise list it once per map)."""
    key = os.path.realpath(folder)
    if key in _SCANNED_FOLDERS:
        return
    for entry in os.scandir(folder):
        match = _WRITE_TEMPORARY.match(entry.name)
        if match and not _alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
    _SCANNED_FOLDERS.add(key)


@contextlib.contextmanager
def atomic_write(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same format suffix, so writers pick the right format, and a name that
    fits the file system's limit however long ``path``'s is); on success it is
    renamed onto ``path`` in one step, with the permissions the user's umask gives new files; on failure it is
    removed and ``path`` is untouched. Temporaries that a killed writer left behind in the folder are removed by
    this process's first write there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_writes_once(path.parent)
    suffix = format_suffix(path.name)
    room = NAME_MAX - len(temporary_prefix(".").encode()) - 8 - len(suffix.encode())  # 8: mkstemp's random part
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(f".{_cut(path.name, room)}"), suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: colleagues could not read a shared results folder
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):  # writers say "No space left on device" without the file
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}; free space there or choose "
                                     "another output folder") from err
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def require_writable_dir(path: os.PathLike, key: str) -> Path:
    """Refuse, before any work, an output folder (the config's ``key``) that is a file or cannot be written,
    naming both; create it when missing. Returns the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{key} {path} is a file, not a folder: pass --{key} a folder.")
    try:
        atexit.register(_remove_empty, _make_dirs(path))
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write into {key} {path}: {err.strerror or err}; pass --{key} a folder "
                              "you can write to.") from err
    return path


def write_csv(path: os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file with a header row, written atomically."""
    with atomic_write(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def append_csv_rows(path: os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Append ``rows`` to a CSV file, writing ``header`` first when the file is new. The rows go out in one write,
    flushed to disk, so a crash afterwards keeps them and a crash during it cuts at most this call's rows."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if not path.exists():
        writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())


def is_run_dir_name(name: str, prefix: str = "run") -> bool:
    """Whether ``name`` is one :func:`new_run_dir` gives: ``<prefix>-YYYYmmdd-HHMMSS`` or with ``-<n>``."""
    return re.fullmatch(rf"{re.escape(prefix)}-\d{{8}}-\d{{6}}(-\d+)?", name) is not None


def new_run_dir(output_dir: os.PathLike, prefix: str = "run") -> Path:
    """Create and return a new folder ``<output_dir>/<prefix>-YYYYmmdd-HHMMSS`` (``-2``, ``-3``, ... when taken) for
    one run's files: a run never writes into, deletes from or overwrites files of a folder it did not create, and
    the files of two runs never mix. Folders this created (the run folder, and ``output_dir`` when it was missing)
    are removed again at exit if they are still empty, so a run that fails before writing leaves nothing behind."""
    output_dir = Path(output_dir)
    created = _make_dirs(output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 10000):
        path = output_dir / (f"{prefix}-{stamp}" if attempt == 1 else f"{prefix}-{stamp}-{attempt}")
        try:
            path.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free run folder name under {output_dir}")
    atexit.register(_remove_empty, [path, *created])
    return path


def _make_dirs(path: Path) -> List[Path]:
    """``mkdir -p path``; returns the folders it created, innermost first (for :func:`_remove_empty`)."""
    created = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return created


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:  # innermost first
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


def nifti_affine(affine: Optional[np.ndarray] = None) -> np.ndarray:
    """The 4x4 voxel-to-world matrix a NIfTI file stores for ``affine``: 4x4 as given, a smaller one (e.g. 3x3 for
    a 2D image) embedded; None: identity."""
    full = np.eye(4)
    if affine is not None:
        affine = np.asarray(affine, dtype=np.float64)
        n = affine.shape[0] - 1
        full[:n, :n], full[:n, 3] = affine[:n, :n], affine[:n, n]
    return full


def save_nifti(array: np.ndarray, path: os.PathLike, affine: Optional[np.ndarray] = None) -> None:
    """A NIfTI file of exactly ``array``'s shape, written atomically; the suffix (``.nii`` / ``.nii.gz``) picks the
    format. ``affine``: voxel to world (:func:`nifti_affine`)."""
    with atomic_write(path) as tmp:
        nib.save(nib.Nifti1Image(array, nifti_affine(affine)), str(tmp))
