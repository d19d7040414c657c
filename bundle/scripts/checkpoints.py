# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""One way to read a checkpoint (floor 1 of DESIGN.md: plain torch): weights only, its stamp checked, every error
naming the file.

A checkpoint ``model.pt`` may carry a stamp ``model.json`` beside it (written by
``scripts.handlers.StampedCheckpointSaver``): what the model was trained for (task, network, image size, classes).
:func:`read_checkpoint` refuses a missing or unreadable file and one stamped for another run than ``expected``;
:func:`load_checkpoint` also puts the weights into a network, naming the file when they do not fit.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch import nn

__all__ = ["shipped_models_dir", "model_stamp_path", "check_stamp", "read_checkpoint", "load_checkpoint",
           "misfit_error"]

logger = logging.getLogger(__name__)


def shipped_models_dir(bundle_root: os.PathLike, task: str, default_task: str) -> str:
    """Where the bundle keeps a task's shipped ``model.pt`` and its stamp: ``models/`` for the default task (the
    zoo's place for a bundle's model), ``models/<task>/`` for every other offline task."""
    models = Path(bundle_root) / "models"
    return str(models if task == default_task else models / task)


def model_stamp_path(checkpoint: os.PathLike) -> Path:
    """The stamp beside a checkpoint: ``model.pt`` -> ``model.json``."""
    return Path(checkpoint).with_suffix(".json")


def check_stamp(checkpoint: os.PathLike, expected: Optional[Mapping[str, Any]]) -> None:
    """Refuse a checkpoint whose stamp records other values than ``expected`` for any key both name; a checkpoint
    without a stamp is only warned about."""
    if not expected:
        return
    path = model_stamp_path(checkpoint)
    if not path.is_file():
        logger.warning("checkpoint %s has no stamp %s: cannot check it was trained for %s.", checkpoint, path.name,
                       dict(expected))
        return
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"checkpoint stamp {path} cannot be read: {err}") from err
    wrong = {k: (stamp[k], v) for k, v in expected.items() if k in stamp and str(stamp[k]) != str(v)}
    if wrong:
        said = ", ".join(f"{k} {old!r} (this run: {new!r})" for k, (old, new) in wrong.items())
        raise ValueError(f"checkpoint {checkpoint} was trained for {said}, as {path.name} records; run with the "
                         "checkpoint's settings or pass --ckpt_path of a model trained for this run's.")


def read_checkpoint(path: os.PathLike, expected: Optional[Mapping[str, Any]] = None,
                    map_location: Any = "cpu") -> Dict[str, Any]:
    """The state dict in ``path`` (``torch.load(..., weights_only=True)``), after checking its stamp against
    ``expected``. Errors name the file: missing, unreadable (empty, truncated, not weights only), another run's."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train first with configs/train.yaml, or set "
                                "ckpt_path).")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        text = str(err).strip().splitlines()
        raise ValueError(f"checkpoint {path} cannot be read: {type(err).__name__}{': ' + text[0] if text else ''} "
                         "(an empty or truncated file, or not a PyTorch weights file).") from err
    check_stamp(path, expected)
    return state


def load_checkpoint(network: nn.Module, path: os.PathLike, expected: Optional[Mapping[str, Any]] = None,
                    map_location: Any = "cpu") -> nn.Module:
    """``network`` with the weights of ``path`` (:func:`read_checkpoint`); an error names the file and the network
    when the weights were saved from another network or configuration."""
    state = read_checkpoint(path, expected, map_location)
    try:
        network.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        raise misfit_error(path, [network], err) from err
    return network


def misfit_error(path: os.PathLike, objects: Sequence[Any], err: BaseException) -> RuntimeError:
    """The error for weights that do not fit ``objects`` (the networks they were loaded into), naming the file."""
    names = ", ".join(type(obj).__name__ for obj in objects)
    return RuntimeError(f"checkpoint {path} does not fit the network ({names}): it was saved from another network "
                        f"or configuration. {str(err).splitlines()[0]}")
