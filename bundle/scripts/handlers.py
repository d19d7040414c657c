# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Ignite handlers that run the iFIM analysis inside any MONAI / ignite evaluator (floor 3 of DESIGN.md).

* :class:`IFIMCSVSaver`: the table of an iFIM inference run (``scripts.inferers.IFIMInferer``): one ``ifim.csv`` row
  per input, appended as each batch finishes; at the end ``skipped.csv`` (inputs that could not be read, and why)
  and ``run.json`` (what ran, counts, time).
* :class:`InputProgressBar`: a bar of inputs done out of all (``n / N``, skipped ones counted), with the time left.
* :class:`IFIMHandler`: each batch's decomposition on ``engine.state.ifim``, for evaluators whose inferer must
  return plain logits (validation with metrics).
* :class:`AttributionStudyHandler`: the paper's comparison of iFIM with every baseline map and the controls
  (:class:`scripts.study.AttributionStudy`), written as a report (:func:`scripts.report.write_report`).

MONAI evaluators run under ``torch.no_grad()``; the engine turns gradients back on for itself. Batches are read
from ``engine.state.batch``, collated (a dict) or decollated (a list of dicts, MONAI's default). In a config, list
these handlers before ``StatsHandler`` so their metrics exist when it logs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .atomic import append_csv_rows, atomic_write, write_csv
from .checkpoints import misfit_error, model_stamp_path, read_checkpoint
from .ifim import DEFAULT_RHO, ifim_decompose
from .report import write_report
from .study import AttributionStudy

__all__ = ["IFIMCSVSaver", "InputProgressBar", "IFIMHandler", "AttributionStudyHandler",
           "CheckedCheckpointLoader", "StampedCheckpointSaver", "InstallCheckpoint", "batch_images"]

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s`` or ``1 h 02 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _batch_items(engine: Engine) -> List[dict]:
    """The engine's current batch as one dict per input, whether MONAI decollated it (a list) or not (a dict)."""
    batch = engine.state.batch
    return batch if isinstance(batch, list) else [dict(zip(batch, values)) for values in zip(*batch.values())]


def _batch_labels(items: Sequence[dict], label_key: str) -> torch.Tensor:
    """The ``(B,)`` integer labels of a batch's items."""
    return torch.as_tensor(np.asarray([np.asarray(item[label_key]) for item in items])).view(-1).long()


def batch_images(engine: Engine, image_key: str = "image") -> torch.Tensor:
    """The images ``(B, C_in, *spatial)`` of the engine's current batch."""
    items = _batch_items(engine)
    if not items or image_key not in items[0]:
        raise KeyError(f"the engine's batch has no {image_key!r} key.")
    return torch.stack([torch.as_tensor(item[image_key]) for item in items])


def _model_of(engine: Engine, model: Optional[nn.Module]) -> nn.Module:
    model = model if model is not None else getattr(engine, "network", None)
    if model is None:
        raise ValueError("no model: pass model= or attach to a MONAI workflow, which carries engine.network.")
    return model


def _device_of(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(0)).device


def _values(value: Any) -> List[float]:
    return torch.as_tensor(value).detach().cpu().reshape(-1).tolist()


class IFIMCSVSaver:
    """The table of an iFIM inference run, for an evaluator whose inferer is ``IFIMInferer`` and whose
    postprocessing flattened its output (``FlattenSubKeysd(keys="pred")``).

    * ``ifim.csv``: one row per input: ``name``, ``source`` (the file read), ``label`` when the data carry one,
      ``predicted`` (index) and ``predicted_class``, ``p_<c>`` per output, ``lambda_<i>`` (descending iFIM
      eigenvalues), ``rank`` and ``k``. Rows are appended as each batch finishes (a crash keeps the rows done); at
      the end the file is rewritten in ``datalist`` order, so it does not depend on loader workers or processes.
      Under ``torchrun`` each rank appends to ``ifim.rank<r>.csv`` and rank 0 writes ``ifim.csv`` from all of
      them at the end (the part files are then removed): the same file one process writes.
    * ``skipped.csv`` at the end, when some input of ``datalist`` was not analysed (the ``SkippingDataset`` left it
      out): ``name``, ``source``, ``reason``.
    * ``run.json`` at the end: ``context`` (what ran), counts and seconds. Its presence marks a finished run.

    The run fails at its end, naming the reasons' file, when no input could be analysed.

    Args:
        output_dir: the run's folder.
        class_names: output names for ``predicted_class``; default the indices.
        datalist: every input of the run (all ranks), in the order of the final table; default the engine's
            dataset's ``data``.
        context: settings recorded in ``run.json``.
        name_key, source_key, label_key: keys of each input's name, source path and (optional) label.
    """

    def __init__(self, output_dir: os.PathLike, class_names: Optional[Sequence[str]] = None,
                 datalist: Optional[Sequence[Mapping]] = None, context: Optional[Mapping[str, Any]] = None,
                 name_key: str = "name", source_key: str = "image_path", label_key: str = "label",
                 csv_name: str = "ifim.csv"):
        self.output_dir = Path(output_dir)
        self.class_names = None if class_names is None else list(class_names)
        self.datalist = None if datalist is None else list(datalist)
        self.context = dict(context or {})
        self.name_key, self.source_key, self.label_key, self.csv_name = name_key, source_key, label_key, csv_name
        self.header: Optional[List[str]] = None
        self.names: List[str] = []
        self.has_label = False
        self.rows: Dict[str, list] = {}
        self.started = 0.0

    @property
    def part_path(self) -> Path:
        """Where this process appends its rows during the run."""
        if distributed.world_size() == 1:
            return self.output_dir / self.csv_name
        return self.output_dir / f"{Path(self.csv_name).stem}.rank{distributed.rank()}.csv"

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine: Engine) -> None:
        self.header, self.rows, self.started = None, {}, time.time()

    def _items(self, engine: Engine) -> List[dict]:
        outputs = engine.state.output
        if not isinstance(outputs, list):
            raise TypeError("IFIMCSVSaver reads decollated outputs: run the evaluator with decollate=True.")
        return [{**batch, **output} for batch, output in zip(_batch_items(engine), outputs)]

    def __call__(self, engine: Engine) -> None:
        items = self._items(engine)
        if not items:
            return
        if self.header is None:
            n_out = len(_values(items[0]["probs"]))
            self.names = self.class_names or [str(c) for c in range(n_out)]
            self.has_label = items[0].get(self.label_key) is not None
            self.header = (["name", "source"] + (["label"] if self.has_label else []) + ["predicted", "predicted_class"]
                           + [f"p_{c}" for c in range(n_out)] + [f"lambda_{i + 1}" for i in range(n_out)]
                           + ["rank", "k"])
        rows = []
        for item in items:
            probs = _values(item["probs"])
            predicted = int(np.argmax(probs))
            row = ([item[self.name_key], item.get(self.source_key, "")]
                   + ([int(_values(item[self.label_key])[0])] if self.has_label else [])
                   + [predicted, self.names[predicted]] + [f"{p:.6g}" for p in probs]
                   + [f"{v:.6g}" for v in _values(item["eigenvalues"])]
                   + [int(_values(item["rank"])[0]), int(_values(item["k"])[0])])
            self.rows[str(item[self.name_key])] = row
            rows.append(row)
        append_csv_rows(self.part_path, self.header, rows)

    def _finish(self, engine: Engine) -> None:
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        datalist = self.datalist if self.datalist is not None else list(getattr(dataset, "data", []))
        parts = distributed.gather_objects((self.header, self.rows))
        header = next((h for h, _ in parts if h is not None), None)
        rows = {name: row for _, part in parts for name, row in part.items()}
        if distributed.is_main():
            self._write(header, rows, datalist, dataset)
        distributed.barrier()
        if distributed.world_size() > 1:
            self.part_path.unlink(missing_ok=True)  # now in ifim.csv
        if not rows:
            raise RuntimeError(f"none of the {len(datalist)} inputs could be analysed; reasons in "
                               f"{self.output_dir / 'skipped.csv'}")

    def _write(self, header: Optional[List[str]], rows: Mapping[str, list], datalist: Sequence[Mapping],
               dataset: Any) -> None:
        order = [str(entry.get(self.name_key)) for entry in datalist]
        if header is not None:
            listed = set(order)
            ordered = [rows[name] for name in order if name in rows] + [r for n, r in rows.items() if n not in listed]
            write_csv(self.output_dir / self.csv_name, header, ordered)
        skipped = [entry for entry in datalist if str(entry.get(self.name_key)) not in rows]
        if skipped:
            failure = getattr(dataset, "failure", lambda entry: None)
            reasons = [[e.get(self.name_key), e.get("image", ""), failure(e) or "not analysed"] for e in skipped]
            write_csv(self.output_dir / "skipped.csv", ["name", "source", "reason"], reasons)
            logger.warning("%d of %d inputs were skipped; reasons in %s", len(skipped), len(datalist),
                           self.output_dir / "skipped.csv")
        summary = {**self.context, "analysed": len(rows), "skipped": len(skipped), "processes":
                   distributed.world_size(), "seconds": round(time.time() - self.started, 3)}
        with atomic_write(self.output_dir / "run.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2, default=str))


class InputProgressBar:
    """A tqdm bar of the inputs of a ``SkippingDataset`` run: ``n / N`` with N the entries of the dataset (this
    process's share under DDP), n the entries handled so far, analysed or skipped (read from each item's
    ``entry_index``), the time left and the skips so far. Only the main process draws it; ``done`` and
    ``skipped`` hold the counts.

    Args:
        desc: the bar's label.
    """

    def __init__(self, desc: str = "inputs"):
        self.desc = desc
        self.bar: Optional[tqdm] = None
        self.total = self.done = self.analysed = 0

    @property
    def skipped(self) -> int:
        return self.done - self.analysed

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._close)

    def _start(self, engine: Engine) -> None:
        dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
        self.total, self.done, self.analysed = len(getattr(dataset, "data", ())), 0, 0
        self.bar = tqdm(total=self.total or None, desc=self.desc, unit="input", disable=not distributed.is_main(),
                        dynamic_ncols=True)

    def _advance(self, done: int) -> None:
        self.done = max(self.done, done)
        if self.bar is not None:
            self.bar.update(self.done - self.bar.n)
            self.bar.set_postfix(skipped=self.skipped, refresh=False)

    def __call__(self, engine: Engine) -> None:
        items = _batch_items(engine)
        self.analysed += len(items)
        positions = [int(_values(item["entry_index"])[0]) + 1 for item in items if "entry_index" in item]
        self._advance(max(positions, default=self.analysed))

    def _close(self, engine: Engine) -> None:
        self._advance(self.total)  # skips after the last analysed input
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class IFIMHandler:
    """Decompose every batch an engine runs into ``engine.state.<state_key>`` (an
    :class:`~scripts.ifim.IFIMResult`), for evaluators whose inferer returns plain logits (validation with
    metrics) and handlers that read the decomposition. For maps and tables per input, run inference with
    ``scripts.inferers.IFIMInferer`` and :class:`IFIMCSVSaver` instead (``configs/inference.yaml``).

    Args:
        rho, head: as in :func:`scripts.ifim.ifim_decompose`.
        model: the classifier; default ``engine.network``.
        image_key: batch key of the images.
        state_key: attribute of ``engine.state`` that receives the batch's result.
    """

    def __init__(self, rho: float = DEFAULT_RHO, head: str = "softmax", model: Optional[nn.Module] = None,
                 image_key: str = "image", state_key: str = "ifim"):
        self.rho, self.head, self.model = rho, head, model
        self.image_key, self.state_key = image_key, state_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        images = batch_images(engine, self.image_key)
        model = _model_of(engine, self.model)
        result = ifim_decompose(model, images.to(_device_of(model)), rho=self.rho, head=self.head)
        setattr(engine.state, self.state_key, result)


class AttributionStudyHandler:
    """Compare iFIM with every baseline map over an evaluator's epoch and write the report (Sec. IV-E/F, Fig. 1-4).

    Per batch (until the study's ``max_images``): :meth:`scripts.study.AttributionStudy.update` with the batch's
    images, labels and, when the batch carries them, the known signal's ``center_key`` / ``sigma_key`` /
    ``amplitude_key`` and each image's ``unit_key``. At the end of the epoch: the results
    (:class:`scripts.study.StudyResults`) on ``engine.state.<state_key>``, every section's headline numbers in
    ``engine.state.metrics`` (``<prefix>_ratio_<fill>_<method>_<a>``, ``<prefix>_fgsm_pearson_<map>``, ...), and
    the report in ``report_dir`` with the evaluator's other metrics and the optional Table II (``seed_table``).

    Under ``torchrun`` (the evaluator's data shared out by a strided ``DistributedSampler``, as
    ``multi_gpu_evaluate.yaml`` does), every process studies its share, the studies are gathered and merged at the
    end of the epoch, and rank 0 writes the report: the report one process writes. ``max_images`` then counts the
    first images of the whole dataset, as in one process.

    Args:
        study: the :class:`scripts.study.AttributionStudy` with its controls (``configs/evaluate.yaml`` builds it).
        report_dir: where the report goes (its own files replaced at each epoch end, nothing else touched); None
            computes only.
        model: the classifier; default ``engine.network``.
        unit_key: batch key of each image's independent unit (``scripts.tasks.Task.unit_key``: slice, subject or
            patient), the unit the report's bootstrap intervals resample; None: each image its own unit.
        seed_table: Table II (:func:`scripts.table2.seed_table`), shown in the report.
        context: run settings shown at the top of the report.
    """

    def __init__(self, study: AttributionStudy, report_dir: Optional[os.PathLike] = None,
                 model: Optional[nn.Module] = None, image_key: str = "image", label_key: str = "label",
                 center_key: str = "signal_center", sigma_key: str = "signal_sigma",
                 amplitude_key: str = "signal_amplitude", unit_key: Optional[str] = None,
                 seed_table: Optional[dict] = None, context: Optional[Mapping[str, Any]] = None,
                 state_key: str = "study", prefix: str = "study"):
        self.study = study
        self.report_dir = None if report_dir is None else Path(report_dir)
        self.max_images, self.unit_key = study.max_images, unit_key
        self.model, self.image_key, self.label_key = model, image_key, label_key
        self.center_key, self.sigma_key, self.amplitude_key = center_key, sigma_key, amplitude_key
        self.seed_table, self.context = seed_table, dict(context or {})
        self.state_key, self.prefix = state_key, prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._finish)

    def _start(self, engine: Engine) -> None:
        self.study.reset()
        if self.max_images is not None:  # this rank's images among the first max_images of a strided sharing-out
            self.study.max_images = len(range(distributed.rank(), self.max_images, distributed.world_size()))

    def __call__(self, engine: Engine) -> None:
        if self.study.full:
            return
        images = batch_images(engine, self.image_key)
        items = _batch_items(engine)
        model = _model_of(engine, self.model)
        device = _device_of(model)
        labels = _batch_labels(items, self.label_key)
        known = all(self.center_key in item and self.sigma_key in item for item in items)
        centers = torch.stack([torch.as_tensor(item[self.center_key]).view(-1) for item in items]) if known else None
        sigmas = torch.stack([torch.as_tensor(item[self.sigma_key]).view(()) for item in items]) if known else None
        if self.unit_key is not None and not all(self.unit_key in item for item in items):
            raise KeyError(f"the batch items carry no {self.unit_key!r} (the unit_key of the study's intervals).")
        units = None if self.unit_key is None else [_values(item[self.unit_key])[0] if isinstance(
            item[self.unit_key], torch.Tensor) else item[self.unit_key] for item in items]
        amplitudes = (torch.stack([torch.as_tensor(item[self.amplitude_key]).view(()) for item in items])
                      if all(self.amplitude_key in item for item in items) else None)
        self.study.update(model, images.to(device), labels, centers, sigmas, units, amplitudes)
        total = self.study.max_images or len(getattr(getattr(engine, "data_loader", None), "dataset", []) or [])
        slowest = max(self.study.seconds.items(), key=lambda item: item[1], default=("", 0.0))
        spent, done = sum(self.study.seconds.values()), self.study.n_images
        left = f", about {_duration(spent / done * (total - done))} left" if total and done and total > done else ""
        logger.info("study: %d%s images, %s so far%s (most in %r: %.0f s)", done, f" of {total}" if total else "",
                    _duration(spent), left, *slowest)

    def _finish(self, engine: Engine) -> None:
        if distributed.world_size() > 1:  # every rank merges the same studies in rank order: the same results
            studies = distributed.gather_objects(self.study)
            self.study = studies[0]
            self.study.merge(studies[1:])
        if not self.study.labels:
            return
        results = self.study.compute()
        results.unit_key = self.unit_key
        setattr(engine.state, self.state_key, results)
        metrics = engine.state.metrics
        test_metrics = {k: v for k, v in metrics.items() if not k.startswith(self.prefix)}
        metrics.update(results.metrics(self.prefix))
        if self.report_dir is not None and distributed.is_main():
            out = write_report(self.report_dir, results, self.study.examples, test_metrics, self.seed_table,
                               self.context)
            logger.info("evaluation report written: %s", (out / "report.md").resolve())


class StampedCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` that also writes, beside the key-metric checkpoint, ``<name>.json``: what the model
    was trained for (``stamp``: task, network, image size, classes), so :class:`CheckedCheckpointLoader` can refuse a
    checkpoint of another task even when its class count fits. Written after every epoch in which the checkpoint
    exists, i.e. from the run's first saved checkpoint on."""

    def __init__(self, save_dir: str, save_dict: Dict, stamp: Mapping[str, Any], **kwargs):
        super().__init__(save_dir, save_dict, **kwargs)
        plain = (int, float, str, bool, type(None))
        self.stamp = {k: (v if isinstance(v, plain) else str(v)) for k, v in stamp.items()}
        self.checkpoint = Path(save_dir) / kwargs.get("key_metric_filename", "model.pt")

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write_stamp)  # after the save of the same event

    def _write_stamp(self, engine: Engine) -> None:
        path = model_stamp_path(self.checkpoint)
        if self.checkpoint.is_file() and not (path.is_file() and json.loads(path.read_text()) == self.stamp):
            with atomic_write(path) as tmp:
                tmp.write_text(json.dumps(self.stamp, indent=4) + "\n")  # as the model zoo's pre-commit wants JSON


class InstallCheckpoint:
    """At the end of a finished training run, and only when ``enabled``, copy its best checkpoint and the stamp beside
    it (``model.pt``, ``model.json``) into ``target_dir``, each file atomically: the model that inference and
    evaluation load by default is replaced only when the user asks for it. A run that is killed or fails never gets
    here, so its checkpoint stays in its own run folder. Attach it to the trainer, on the main process only.

    Args:
        run_dir: the run's folder, where the checkpoint saver wrote ``name``.
        target_dir: the folder of the default model (``bundle/models``).
        enabled: copy (True) or only say where the checkpoint is (False).
        name: the checkpoint's file name.
    """

    def __init__(self, run_dir: os.PathLike, target_dir: os.PathLike, enabled: bool = False, name: str = "model.pt"):
        self.source, self.target_dir, self.enabled = Path(run_dir) / name, Path(target_dir), bool(enabled)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.source.is_file():
            raise FileNotFoundError(f"training finished without a checkpoint in {self.source.parent}: no validation "
                                    "epoch improved on the first (see the logs); nothing was installed.")
        if not self.enabled:
            logger.info("best checkpoint: %s; %s is unchanged (install_model true replaces it)", self.source,
                        self.target_dir / self.source.name)
            return
        for source in (self.source, model_stamp_path(self.source)):
            if source.is_file():
                with atomic_write(self.target_dir / source.name) as tmp:
                    shutil.copyfile(source, tmp)
        logger.info("installed %s as %s", self.source, self.target_dir / self.source.name)


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` (``torch.load(..., weights_only=True)``) whose errors name the checkpoint and say
    what is wrong, when the config is instantiated (before any output is written) where they can be told then
    (``scripts.checkpoints.read_checkpoint``):

    * a missing file;
    * a file that is not a readable PyTorch checkpoint (empty, truncated, or not weights only);
    * a checkpoint stamped (:class:`StampedCheckpointSaver`) for another task, network or image size than
      ``expected``;
    * and, when loaded, weights of another network or configuration.
    """

    def __init__(self, load_path: str, load_dict: Dict, expected: Optional[Mapping[str, Any]] = None, **kwargs):
        read_checkpoint(load_path, expected)
        super().__init__(load_path, load_dict, **kwargs)
        self.expected = dict(expected or {})

    def __call__(self, engine: Engine) -> None:
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError) as err:
            raise misfit_error(self.load_path, list(self.load_dict.values()), err) from err
