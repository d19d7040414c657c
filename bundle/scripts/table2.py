# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Table II over training seeds (engine glue, floor 3): :func:`seed_table` trains extra seeds through train.yaml's
own ``SupervisedTrainer`` and scores every checkpoint on the test set with a ``SupervisedEvaluator``.

The training and validation datasets are built once and shared by every seed (``CacheDataset`` costs minutes on
CPU; the seeds differ only in weights and shuffling, ``data_seed`` stays). A seed's checkpoint is reused when its
folder holds one trained with the same train.yaml and overrides, so a second report costs no training.

Under ``torchrun`` (``multi_gpu_evaluate.yaml``) every process takes part in each step: a missing seed is trained
with DDP through train.yaml plus the ``train_overlays`` (``multi_gpu_train.yaml``), rank 0 saving the checkpoint,
and each checkpoint is scored on the processes' shares of the test set, its metrics summed over them. A seed's
stamp records train.yaml and the overrides, not the overlay: a seed trained by several processes (global batch
nproc x batch_size) is reused by a one-process run and the other way round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from ignite.metrics import Accuracy
from monai.bundle import ConfigParser
from monai.data import DataLoader, DistributedSampler
from monai.engines import SupervisedEvaluator
from torch.utils.data import Dataset

from . import distributed
from .atomic import atomic_write
from .checkpoints import load_checkpoint
from .metrics import classification_metric, mean_std
from .networks import get_network

__all__ = ["seed_table", "checkpoint_scores", "seed_stamp"]

logger = logging.getLogger(__name__)
SCORES = ("precision", "recall", "f1", "accuracy")


def checkpoint_scores(network: torch.nn.Module, dataset: Dataset, num_classes: int, device: torch.device,
                      batch_size: int = 64) -> Dict[str, float]:
    """Precision, recall, F1 (as Table II: class 1 for C = 2, macro otherwise) and accuracy of ``network`` on
    ``dataset``, through a ``SupervisedEvaluator``; under ``torchrun`` each process scores its share and the
    metrics' counts are summed over all."""
    metrics = {name: classification_metric(name, num_classes) for name in SCORES[:3]}
    metrics["accuracy"] = Accuracy(output_transform=lambda output: (output["pred"], output["label"]))
    sampler = DistributedSampler(dataset, even_divisible=False, shuffle=False) if distributed.world_size() > 1 else None
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
    evaluator = SupervisedEvaluator(device=device, val_data_loader=loader,
                                    network=network.to(device), key_val_metric={"accuracy": metrics.pop("accuracy")},
                                    additional_metrics=metrics, decollate=False)
    evaluator.run()
    return {name: float(evaluator.state.metrics[name]) for name in SCORES}


def seed_stamp(train_config: os.PathLike, overrides: Mapping[str, Any], network_name: str, num_classes: int,
               spatial_dims: int = 2, in_channels: int = 1) -> str:
    """What a seed's checkpoint was trained with: train.yaml's text, the overrides and the network's parameter
    shapes. The config text catches a changed recipe (e.g. max_epochs), the shapes a changed architecture default in
    networks.py; either must retrain the seed rather than reuse (or fail to load) its old checkpoint."""
    network = get_network(network_name, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes)
    shapes = [(name, list(value.shape)) for name, value in network.state_dict().items()]
    return json.dumps({"train_config": hashlib.sha256(Path(train_config).read_bytes()).hexdigest(),
                       "network": hashlib.sha256(json.dumps(shapes).encode()).hexdigest(),
                       **{k: str(v) for k, v in sorted(overrides.items())}})


def _train_seed(train_config: os.PathLike, seed: int, seed_dir: Path, overrides: Mapping[str, Any],
                shared: Dict[str, Any], overlays: Sequence[os.PathLike] = ()) -> Path:
    """Run train.yaml's trainer (with ``overlays``) for ``seed`` into ``seed_dir``; datasets built by the first
    seed are reused."""
    parser = ConfigParser()
    parser.read_config([str(train_config), *map(str, overlays)])
    parser.update({**overrides, "seed": seed, "output_dir": str(seed_dir), "log_dir": str(seed_dir / "logs")})
    for key, dataset in shared.items():
        parser[key] = dataset  # a plain object in a config is passed through as it is
    parser.parse(reset=True)
    parser.get_parsed_content("initialize")  # set_determinism(seed) before the network is built
    for key in ("train#dataset", "validate#dataset"):
        shared.setdefault(key, parser.get_parsed_content(key))
    parser.get_parsed_content("train#trainer").run()
    return seed_dir / "model.pt"


def seed_table(train_config: os.PathLike, seeds: Sequence[int], test_dataset: Dataset, num_classes: int,
               output_dir: os.PathLike, network_name: str = "shallow_cnn",
               checkpoints: Optional[Mapping[int, os.PathLike]] = None,
               train_overrides: Optional[Mapping[str, Any]] = None, device: Optional[torch.device] = None,
               batch_size: int = 64, train_overlays: Sequence[os.PathLike] = (), spatial_dims: int = 2,
               in_channels: int = 1) -> Dict[str, Any]:
    """Table II: precision / recall / F1 / accuracy on ``test_dataset`` for one checkpoint per training seed, and
    their mean +- std (ddof 1).

    Args:
        train_config: the bundle's ``train.yaml``.
        seeds: seeds to train (``--seed`` of train.yaml) unless ``checkpoints`` has them.
        test_dataset: the evaluator's test dataset (shared, not rebuilt).
        output_dir: ``seed<k>/model.pt`` per trained seed, with the overrides it was trained with.
        checkpoints: seeds already trained, e.g. ``{0: the shipped model}``.
        train_overrides: train.yaml keys to set (task, counts, image_size, max_epochs, cache_dir, ...): the same
            data and network as the evaluated checkpoint; a None value keeps train.yaml's.
        train_overlays: configs read after train.yaml to train a seed (``multi_gpu_train.yaml`` under torchrun).
        spatial_dims, in_channels: the network's, as train.yaml's ``network_def`` builds it.
    """
    device = device or torch.device("cpu")
    overrides = {k: v for k, v in (train_overrides or {}).items() if v is not None}  # None: train.yaml's own
    known = {int(k): Path(v) for k, v in (checkpoints or {}).items()}
    rows: List[Dict[str, Any]] = []
    shared: Dict[str, Any] = {}
    for seed in sorted(set(known) | {int(s) for s in seeds}):
        checkpoint = known.get(seed)
        if checkpoint is None:
            seed_dir = Path(output_dir) / f"seed{seed}"
            stamp = seed_dir / "train_overrides.json"
            wanted = seed_stamp(train_config, overrides, network_name, num_classes, spatial_dims, in_channels)
            checkpoint = seed_dir / "model.pt"
            reuse = checkpoint.is_file() and stamp.is_file() and stamp.read_text() == wanted
            if not distributed.broadcast_object(reuse):  # rank 0's view decides for all
                logger.info(f"Table II: training seed {seed} into {seed_dir}")
                if distributed.is_main():
                    checkpoint.unlink(missing_ok=True)
                distributed.barrier()
                _train_seed(train_config, seed, seed_dir, overrides, shared, train_overlays)
                if distributed.is_main():
                    with atomic_write(stamp) as tmp:
                        tmp.write_text(wanted)
                distributed.barrier()  # the checkpoint exists before any rank loads it
        network = load_checkpoint(get_network(network_name, spatial_dims=spatial_dims, in_channels=in_channels,
                                              num_classes=num_classes), checkpoint)
        rows.append({"seed": seed, "checkpoint": str(checkpoint),
                     **checkpoint_scores(network, test_dataset, num_classes, device, batch_size)})
    if not rows:
        raise ValueError("seed_table needs at least one seed or checkpoint.")
    return {"seeds": rows, **{name: mean_std([r[name] for r in rows]) for name in SCORES}}
