# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Multi-process runs with ``torchrun`` (engine glue, floor 3): what the ``multi_gpu_*.yaml`` overlays and the
handlers need to share work and results between processes.

One process per device: ``torchrun --nproc_per_node N -m monai.bundle run ... --config_file "['base','overlay']"``
sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the overlay's ``initialize`` joins the process group (NCCL on
CUDA, gloo on CPU) with plain torch, since ``scripts`` is importable only once MONAI runs the workflow. Outside
torchrun (no process group) every helper behaves as a world of one, so the same code runs in one process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence

import torch.distributed as dist
from monai.utils import optional_import

from .atomic import new_run_dir

__all__ = ["rank", "world_size", "is_main", "shard", "broadcast_object", "shared_run_dir", "gather_objects", "barrier",
           "handlers_for_rank"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(entries: Sequence[Any]) -> List[Any]:
    """This process's share of ``entries``: every ``world_size``-th one from its rank on."""
    return list(entries)[rank()::world_size()]


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run folder rank 0 created)."""
    if not _active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shared_run_dir(output_dir: os.PathLike, prefix: str = "run") -> Path:
    """A new run folder (:func:`scripts.atomic.new_run_dir`) created by rank 0, the same path on every rank."""
    return broadcast_object(new_run_dir(output_dir, prefix) if is_main() else None)


def gather_objects(value: Any) -> List[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not _active():
        return [value]
    gathered: List[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def barrier() -> None:
    if _active():
        dist.barrier()


def handlers_for_rank(handlers: Sequence[Any], every_rank: Sequence[str]) -> List[Any]:
    """The handlers this process attaches: all of them on rank 0; elsewhere those of the classes ``every_rank``
    names by dotted path (``scripts.handlers.AttributionStudyHandler``), which must run on every rank (they load
    weights or take part in a gathering). A path that names no class, or a class none of ``handlers`` is, is an
    error: a renamed or removed handler fails here, on every rank, not silently under ``torchrun``."""
    kinds = []
    for path in every_rank:
        module, _, name = str(path).rpartition(".")
        kind, found = optional_import(module, name=name)
        if not found or not isinstance(kind, type):
            raise ValueError(f"every_rank: {path!r} names no class.")
        if not any(isinstance(h, kind) for h in handlers):
            raise ValueError(f"every_rank: none of the handlers is a {path} ({[type(h).__name__ for h in handlers]}).")
        kinds.append(kind)
    return list(handlers) if is_main() else [h for h in handlers if isinstance(h, tuple(kinds))]
