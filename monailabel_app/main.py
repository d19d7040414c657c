# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""MONAI Label app serving the bundle's iFIM analysis for review: model ``ifim_review`` (type segmentation) returns
the high-sensitivity region of an image, the top ``top_percent`` % of S(x) = |x_sens|, as a 0/1 label on the
image's own grid, with the prediction, the probabilities and the iFIM spectrum in the result JSON. A reader
accepts or corrects it and saves it (tag ``final``); ``configs/review.yaml`` scores every map against those labels.

Runs in its own environment (``tools/setup_monailabel.sh``) and imports the bundle's ``scripts``; the bundle never
imports it. Start it with ``tools/monailabel.sh STUDIES_DIR`` or::

    monailabel start_server --app monailabel_app --studies STUDIES_DIR --host 127.0.0.1 --conf top_percent 5

``--conf`` keys: ``top_percent`` (default 5), ``bundle`` (default ``../bundle``), ``checkpoint`` (default the
bundle's ``models/model.pt``), ``device`` (default ``cpu``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Dict

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

# the formats the bundle reads (scripts.sources); DICOM files need their .dcm suffix in a local datastore
IMAGE_EXTENSIONS = ["*.nii.gz", "*.nii", "*.png", "*.jpg", "*.jpeg", "*.bmp", "*.dcm"]


LABEL_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a folder name under labels/, never a path


class ReviewDatastore(LocalDatastore):
    """MONAI Label's local datastore, with the labels a reader saves checked by the app first: the tag is a plain
    name (``final``, ``reader_2``; no ``..`` or ``/`` that would write outside the studies folder), and the file is
    a NIfTI on its image's grid holding whole numbers (``scripts.review.check_label``; other formats, which the
    scoring does not read, pass as MONAI Label takes them). A bad one is answered with a 4xx and a one-line reason,
    and nothing is written."""

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        if not isinstance(label_tag, str) or not LABEL_TAG.fullmatch(label_tag):
            raise HTTPException(400, f"label tag {label_tag!r}: use letters, digits, '_' or '-' (e.g. final).")
        image = self.get_image_uri(image_id) if image_id in self.list_images() else ""
        if not image:
            raise HTTPException(404, f"no image {image_id!r} in the datastore.")
        if str(label_filename).endswith((".nii", ".nii.gz")):  # what configs/review.yaml scores
            from scripts.review import check_label  # the bundle is on sys.path once the app is built

            try:
                check_label(label_filename, image)
            except ValueError as err:
                raise HTTPException(422, str(err).replace(str(label_filename), f"the label for {image_id}")) from err
        return super().save_label(image_id, label_filename, label_tag, label_info)


class IFIMReviewApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]):
        self.bundle_root = Path(conf.get("bundle", Path(app_dir).resolve().parent / "bundle")).resolve()
        if not (self.bundle_root / "configs" / "inference.yaml").is_file():
            raise FileNotFoundError(f"no MONAI bundle at {self.bundle_root} (configs/inference.yaml); pass --conf "
                                    "bundle PATH.")
        for path in (str(Path(app_dir).resolve()), str(self.bundle_root)):  # lib/, and the bundle's scripts
            if path not in sys.path:  # monailabel loads main.py by its path, without its folder on sys.path
                sys.path.insert(0, path)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="iFIM review",
                         description="Input-dependent Fisher information: review the high-sensitivity region",
                         version=_bundle_version(self.bundle_root))

    def on_init_complete(self) -> None:
        super().on_init_complete()
        _answer_malformed_json_with_400()

    def init_datastore(self) -> Datastore:
        return ReviewDatastore(self.studies, extensions=IMAGE_EXTENSIONS,
                               auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD)

    def init_infers(self) -> Dict[str, InferTask]:
        from lib.infers import IFIMReview  # after the bundle is on sys.path

        task = IFIMReview(self.bundle_root, top_percent=float(self.conf.get("top_percent", 5)),
                          ckpt_path=self.conf.get("checkpoint"), device=self.conf.get("device", "cpu"),
                          studies=self.studies)
        logger.info("+++ Adding Inferer:: ifim_review => %s", task.description)
        return {"ifim_review": task}


async def _malformed_json(request: Request, err: json.JSONDecodeError) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": (
        f"{request.url.path}: the form field params is not JSON ({err.msg} at column {err.colno}); pass a JSON "
        'object, e.g. {"top_percent": 5}.')})


def _answer_malformed_json_with_400() -> None:
    """MONAI Label's endpoints read the form field ``params`` with ``json.loads`` before the app sees the request,
    so malformed JSON would be a bare HTTP 500 with the reason only in the server log. The server's FastAPI app is
    already serving (this runs in its startup), and Starlette copies the exception handlers into its middleware
    stack when it first builds it: so the handler is added and the stack dropped, to be rebuilt on the next
    request."""
    from monailabel.app import app  # the server's app: uvicorn has imported it to start this one

    app.add_exception_handler(json.JSONDecodeError, _malformed_json)
    app.middleware_stack = None


def _bundle_version(bundle_root: Path) -> str:
    return json.loads((bundle_root / "configs" / "metadata.json").read_text()).get("version", "0")
