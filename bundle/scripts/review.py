# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""A reader's review of iFIM maps (engine glue, floor 3): the high-sensitivity region of an image as a label on the
image's own grid, to accept or correct in MONAI Label (``monailabel_app/``) or any viewer, and the loop back, where
the corrected labels become the reference standard every map of the evaluation is scored against.

* :class:`ReviewModel`: the bundle's network, checkpoint, preprocessing and inferer as ``configs/inference.yaml``
  builds them (``ReviewModel.from_bundle`` reads it); ``label(image, output_dir)`` writes the top
  ``top_percent`` % of S(x) = |x_sens| as a 0/1 NIfTI with the shape and affine MONAI's reader gives the image, and
  returns the prediction, probabilities and iFIM spectrum.
* :func:`boxes_to_labels`: radiologists' boxes (NIH ChestX-ray14's ``BBox_List_2017.csv``) as labels of such a
  datastore, an independent reference standard for the CXR task.
* :func:`score_annotations`: every map of the evaluation (``scripts.attribution.DEFAULT_STUDY_METHODS`` unless told
  otherwise) against the labels of a MONAI Label datastore
  (``<studies>/labels/<tag>/<image id>.nii.gz``): energy inside the annotation, pointing game and AUROC per image
  (``scripts.metrics.annotation_agreement``), summarised with bootstrap intervals over images.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from .atomic import atomic_write, save_nifti, write_csv
from .attribution import compute_maps, map_names, select_methods
from .bootstrap import bootstrap_interval
from .checkpoints import load_checkpoint
from .data import read_nih_boxes
from .metrics import annotation_agreement, perturbation_masks
from .seeding import image_seeds
from .sources import (
    InvertToSourced,
    LoadImageCheckedd,
    SaveOnSourceGridd,
    decode_shape,
    find_image_files,
    source_affine,
)

__all__ = ["boxes_to_labels", "ReviewModel", "score_annotations", "datastore_id", "check_percent",
           "check_label", "source_grid", "LABEL_NAME"]

logger = logging.getLogger(__name__)
LABEL_NAME = "high_sensitivity"  # the label's one foreground class


def datastore_id(path: os.PathLike) -> str:
    """The id MONAI Label's local datastore gives an image file: its name without the extension (``.nii.gz``
    counts as one)."""
    name = Path(path).name
    for suffix in (".nii.gz", ".seg.nrrd"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return Path(name).stem


class ReviewModel:
    """The bundle's classifier and iFIM inferer, one image at a time, as inference.yaml builds them.

    Args:
        network: the classifier (its weights are loaded here from ``checkpoint``).
        checkpoint: inference.yaml's ``CheckedCheckpointLoader``: built, it has refused a missing, unreadable or
            other-task checkpoint, naming the file.
        preprocessing: the chain for a user's files (inference.yaml's ``preprocessing`` with a ``dataset_dir``).
        inferer: ``scripts.inferers.IFIMInferer``.
        class_names: the model's outputs.
        top_percent: the share of the image's pixels the label marks.
        device: where the network runs.
        seed: breaks ties between equal map values at the threshold (per image, ``scripts.seeding.image_seeds``).
    """

    def __init__(self, network: torch.nn.Module, checkpoint: Any, preprocessing: Any, inferer: Any,
                 class_names: Sequence[str], top_percent: float = 5.0, device: Any = "cpu", seed: int = 0):
        self.top_percent = check_percent(top_percent)
        self.device, self.seed = torch.device(device), seed
        self.checkpoint = str(checkpoint.load_path)
        self.network = load_checkpoint(network.to(self.device), self.checkpoint, checkpoint.expected, self.device)
        self.network.eval()
        self.preprocessing, self.inferer, self.class_names = preprocessing, inferer, list(class_names)

    @classmethod
    def from_bundle(cls, bundle_root: os.PathLike, ckpt_path: Optional[os.PathLike] = None,
                    top_percent: float = 5.0, device: str = "cpu", seed: int = 0) -> "ReviewModel":
        """Read ``configs/metadata.json`` and ``configs/inference.yaml`` of ``bundle_root`` (``scripts`` must be
        importable: ``bundle_root`` on ``sys.path``); ``ckpt_path`` default the config's ``models/model.pt``."""
        root = Path(bundle_root).resolve()
        parser = ConfigParser()
        parser.read_meta(str(root / "configs" / "metadata.json"))
        parser.read_config(str(root / "configs" / "inference.yaml"))
        overrides: Dict[str, Any] = {"bundle_root": str(root), "dataset_dir": str(root),  # a user's files' chain
                                     "device": f"$torch.device({str(device)!r})"}
        if ckpt_path is not None:
            overrides["ckpt_path"] = str(ckpt_path)
        parser.update(overrides)
        return cls(parser.get_parsed_content("network"), parser.get_parsed_content("handlers#0"),
                   parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer"),
                   parser.get_parsed_content("class_names"), top_percent, device, seed)

    def load(self, image_path: os.PathLike) -> dict:
        """The preprocessed image (``{"image": (C_in, *spatial) MetaTensor, "name": ...}``), its meta recording
        how to go back to the file's grid."""
        return self.preprocessing({"image": str(image_path), "name": datastore_id(image_path)})

    def to_source_grid(self, item: dict, maps: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``(1, *model grid)`` maps of ``item`` on the grid of its source file (``(1, *source spatial)``)."""
        keys = list(maps)
        inverted = InvertToSourced(keys=keys, transform=self.preprocessing, orig_keys=["image"] * len(keys))(
            {**item, **{k: MetaTensor(v.detach().cpu().float()) for k, v in maps.items()}})
        return {k: inverted[k] for k in keys}

    def label(self, image_path: os.PathLike, output_dir: os.PathLike, top_percent: Optional[float] = None) -> tuple:
        """Write ``<output_dir>/<id>_label.nii.gz``, 1 on the top ``top_percent`` % (default the model's) of S(x) on
        the image's own grid (ties broken at random), and return ``(label path, result)``: ``predicted_class``,
        ``class_names``, ``probabilities``, ``eigenvalues``, ``k``, ``rank`` and ``top_percent``. A blank image (one
        value everywhere in the file) gets an empty label and a ``note`` saying so."""
        top_percent = self.top_percent if top_percent is None else check_percent(top_percent)
        item = self.load(image_path)
        out = self.inferer(item["image"][None].to(self.device), self.network)
        sensitivity = out["x_sens"][0].abs().sum(0, keepdim=True)  # S(x), (1, *model grid)
        on_source = self.to_source_grid(item, {"sensitivity": sensitivity})["sensitivity"]
        values = torch.as_tensor(on_source).double()[None]  # (1, 1, *source spatial)
        pixels = LoadImageCheckedd(keys="image")({"image": str(image_path)})["image"].as_tensor()  # as stored
        blank = bool((pixels == pixels.flatten()[0]).all())  # nothing in it to be sensitive to
        if blank:
            mask = torch.zeros_like(values, dtype=torch.bool)
        else:
            mask, _ = perturbation_masks(values, values, top_percent / 100, image_seeds(values, self.seed))
        item["label"] = MetaTensor(mask[0].to(torch.uint8), meta=dict(on_source.meta))
        SaveOnSourceGridd(keys="label", output_dir=output_dir, dtype=np.uint8)(item)
        probs = out["probs"][0].tolist()
        result = {"predicted_class": self.class_names[int(np.argmax(probs))], "class_names": self.class_names,
                  "probabilities": dict(zip(self.class_names, probs)), "eigenvalues": out["eigenvalues"][0].tolist(),
                  "k": int(out["k"][0]), "rank": int(out["rank"][0]), "top_percent": top_percent,
                  "label_name": LABEL_NAME}
        if blank:
            result["note"] = "the image is blank (one value everywhere): no region is marked."
        return str(Path(output_dir) / f"{item['name']}_label.nii.gz"), result

    def maps(self, item: dict, methods: Optional[Sequence[str]] = None, background: Optional[torch.Tensor] = None
             ) -> Dict[str, torch.Tensor]:
        """Every map ``methods`` stand for (``scripts.attribution.map_names``: maps, or methods for all their maps;
        default those of ``DEFAULT_STUDY_METHODS``) for one preprocessed image, ``(1, *model grid)`` each, explaining
        the predicted class (seeded maps draw from the image's own seed, as in the study)."""
        methods = map_names(methods)
        x = item["image"][None].to(self.device)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        with torch.no_grad():
            target = self.network(x).argmax(1)
        maps = compute_maps(select_methods(methods), self.network, x, target, image_seeds(x, self.seed),
                            baselines=background)
        return {m: maps[m][0] for m in methods}


def check_percent(value: float) -> float:
    if not 0 < float(value) <= 100:
        raise ValueError(f"top_percent must lie in (0, 100], got {value}.")
    return float(value)


def source_grid(image_path: os.PathLike) -> tuple:
    """``(spatial shape, 4x4 affine)`` of an image file as the bundle's reader gives it: the grid its labels and
    maps are written on."""
    image = LoadImageCheckedd(keys="image")({"image": str(image_path)})["image"]
    return decode_shape(image.meta["source_shape"]), source_affine(image)


def check_label(label_path: os.PathLike, image_path: os.PathLike) -> None:
    """Refuse, naming the file, a label to be saved for ``image_path`` that is not on its grid or holds values
    other than whole numbers (:func:`_read_label`; an empty label is a reader's valid answer)."""
    shape, affine = source_grid(image_path)
    _read_label(Path(label_path), shape, affine, scored=False)


def _read_label(path: Path, shape: Sequence[int], affine: np.ndarray, scored: bool = True) -> torch.Tensor:
    """A reviewed label as a boolean mask on its image's grid. Refused, naming the file: another shape or another
    affine than the image's (a label of another grid would score the wrong pixels), values that are not whole
    numbers (a soft label: save a binary one), NaN, and a label that marks no pixel or every pixel (nothing to
    compare inside or outside it). Any nonzero whole number counts as annotated (label maps may use 1, 2, ...)."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        array = np.asarray(image.dataobj)
    except Exception as err:
        raise ValueError(f"label {path} cannot be read: {err}") from err
    squeezed = tuple(s for s in array.shape if s != 1)
    if array.size != int(np.prod(shape)) or squeezed != tuple(s for s in shape if s != 1):
        raise ValueError(f"label {path} has shape {array.shape}, its image {tuple(shape)}: not on the image's grid.")
    if not np.allclose(image.affine, affine, atol=1e-4):
        raise ValueError(f"label {path} has another affine than its image (voxel sizes, orientation or origin "
                         f"differ): {np.round(image.affine, 4).tolist()} against {np.round(affine, 4).tolist()}; "
                         "save it on the image's grid.")
    if not np.isfinite(array).all():
        raise ValueError(f"label {path} holds NaN or Inf values.")
    if not np.array_equal(array, np.round(array)):
        raise ValueError(f"label {path} holds values that are not whole numbers (from {array.min():g} to "
                         f"{array.max():g}): a soft label; save a binary one (0 outside, 1 inside).")
    mask = torch.as_tensor(array.reshape(shape) != 0)
    if not scored:
        return mask
    if not mask.any():
        raise ValueError(f"label {path} marks no pixel: an empty annotation cannot be scored against.")
    if mask.all():
        raise ValueError(f"label {path} marks every pixel: with nothing outside the annotation it cannot be scored "
                         "against.")
    return mask


SCORE_COLUMNS = ("image", "method", "energy_fraction", "area_fraction", "pointing_hit", "auroc")


def score_annotations(model: ReviewModel, studies_dir: os.PathLike, output_dir: os.PathLike, tag: str = "final",
                      methods: Optional[Sequence[str]] = None, background: Optional[torch.Tensor] = None,
                      seed: int = 0) -> Dict[str, Any]:
    """Score every map of ``methods`` (map methods or maps, ``scripts.attribution.select_methods``; default
    ``DEFAULT_STUDY_METHODS``) against the labels a reader saved in a MONAI Label local datastore.

    For each ``<studies_dir>/labels/<tag>/<id>.nii.gz`` whose image ``<studies_dir>/<id>.<ext>`` exists, every map
    is computed on the model's grid, put back on the image's own grid (as inference does) and compared with the
    label there (``scripts.metrics.annotation_agreement``). Writes ``annotation_scores.csv`` (one row per image and
    map) and ``annotation_scores.md`` (per map: mean and bootstrap 95 % interval over images) into ``output_dir``,
    and returns ``{"rows": [...], "summary": {method: {metric: (mean, low, high)}}, "n_images": n}``.
    """
    studies, out = Path(studies_dir), Path(output_dir)
    methods = map_names(methods)
    label_dir = studies / "labels" / tag
    labels = sorted(label_dir.glob("*.nii.gz")) if label_dir.is_dir() else []
    if not labels:
        raise FileNotFoundError(f"no labels tagged {tag!r} in {label_dir}: save the reviewed labels first.")
    images: Dict[str, Path] = {}
    for path in find_image_files(studies, exclude=[studies / "labels"])[0]:
        other = images.setdefault(datastore_id(path), path)
        if other != path:
            raise ValueError(f"{other} and {path} have the same datastore id {datastore_id(path)!r}: a label could "
                             "belong to either; give each image a name of its own.")
    rows: List[Dict[str, Any]] = []
    for label_path in labels:
        image_id = datastore_id(label_path)
        if image_id not in images:
            raise FileNotFoundError(f"label {label_path} has no image {image_id}.* in {studies}.")
        item = model.load(images[image_id])
        on_source = model.to_source_grid(item, model.maps(item, methods, background))
        shape = tuple(on_source[methods[0]].shape[1:])
        mask = _read_label(label_path, shape, source_affine(on_source[methods[0]]))
        stacked = torch.stack([on_source[m] for m in methods]).double()  # (M, 1, *source spatial)
        scores = annotation_agreement(stacked, mask[None, None].expand_as(stacked))
        for i, method in enumerate(methods):
            rows.append({"image": image_id, "method": method,
                         **{key: float(values[i]) for key, values in scores.items()}})
    summary = {m: {key: bootstrap_interval([r[key] for r in rows if r["method"] == m], seed=seed)
                   for key in SCORE_COLUMNS[2:]} for m in methods}
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "annotation_scores.csv", list(SCORE_COLUMNS), [[r[c] for c in SCORE_COLUMNS] for r in rows])
    with atomic_write(out / "annotation_scores.md") as tmp:
        tmp.write_text(_summary_markdown(summary, len(labels), tag))
    return {"rows": rows, "summary": summary, "n_images": len(labels)}


def _summary_markdown(summary: Dict[str, Dict[str, tuple]], n_images: int, tag: str) -> str:
    def cell(values: tuple) -> str:
        mean, low, high = values
        if math.isnan(mean):
            return "n/a"
        return f"{mean:.3f}" + ("" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]")

    lines = [f"# Maps against the reviewed labels (tag `{tag}`, {n_images} image{'s' * (n_images != 1)})", "",
             "Mean over images with a 95 % bootstrap interval over images. Energy: the share of the map's total "
             "inside the annotation (a uniform map scores the annotation's area fraction); pointing: the share of "
             "images whose map peaks inside it; AUROC: how well the map's values separate annotated from other "
             "pixels (0.5: no better than chance).", "",
             "| map | energy in annotation | annotation area | pointing game | AUROC |", "|---|---|---|---|---|"]
    for method, values in summary.items():
        lines.append(f"| {method} | " + " | ".join(cell(values[k]) for k in SCORE_COLUMNS[2:]) + " |")
    return "\n".join(lines) + "\n"


def boxes_to_labels(bbox_csv: os.PathLike, images_root: os.PathLike, studies_dir: os.PathLike,
                    finding: str = "Cardiomegaly", tag: str = "final") -> List[str]:
    """Radiologists' boxes of ``finding`` as review labels: every boxed image found under ``images_root`` is copied
    into ``studies_dir`` and its boxes written as ``labels/<tag>/<image id>.nii.gz``, 1 inside a box, on the image's
    own grid (:func:`source_grid`: shape and affine as the bundle's reader gives the file), so that
    :func:`score_annotations` scores every map against them. Returns the image ids written; boxed images not on
    disk are counted in a warning."""
    import shutil

    boxes = read_nih_boxes(bbox_csv, finding)
    if not boxes:
        raise ValueError(f"{bbox_csv} has no {finding!r} box.")
    on_disk = {p.name: p for p in Path(images_root).rglob("*") if p.name in boxes}
    studies = Path(studies_dir)
    (studies / "labels" / tag).mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(set(boxes) & set(on_disk)):
        shape, affine = source_grid(on_disk[name])
        if len(shape) != 2:
            raise ValueError(f"{on_disk[name]} is not a 2D image (shape {shape}); boxes are drawn on 2D images.")
        mask = np.zeros(shape, dtype=np.uint8)  # the reader's (columns, rows) order
        for x, y, w, h in boxes[name]:
            c0, c1 = max(0, int(math.floor(x))), min(shape[0], int(math.ceil(x + w)))
            r0, r1 = max(0, int(math.floor(y))), min(shape[1], int(math.ceil(y + h)))
            mask[c0:c1, r0:r1] = 1
        image_id = name.rsplit(".", 1)[0]
        with atomic_write(studies / name) as tmp:
            shutil.copyfile(on_disk[name], tmp)
        save_nifti(mask, studies / "labels" / tag / f"{image_id}.nii.gz", affine)
        written.append(image_id)
    missing = len(boxes) - len(written)
    if missing:
        logger.warning("%d of %d images with a %s box are not under %s and were left out.", missing, len(boxes),
                       finding, images_root)
    return written
