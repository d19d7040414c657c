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

import logging
import sys
from pathlib import Path
from typing import Dict

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

# the formats the bundle reads (scripts.sources); DICOM files need their .dcm suffix in a local datastore
IMAGE_EXTENSIONS = ["*.nii.gz", "*.nii", "*.png", "*.jpg", "*.jpeg", "*.bmp", "*.dcm"]


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

    def init_datastore(self) -> Datastore:
        return LocalDatastore(self.studies, extensions=IMAGE_EXTENSIONS,
                              auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD)

    def init_infers(self) -> Dict[str, InferTask]:
        from lib.infers import IFIMReview  # after the bundle is on sys.path

        task = IFIMReview(self.bundle_root, top_percent=float(self.conf.get("top_percent", 5)),
                          ckpt_path=self.conf.get("checkpoint"), device=self.conf.get("device", "cpu"))
        logger.info("+++ Adding Inferer:: ifim_review => %s", task.description)
        return {"ifim_review": task}


def _bundle_version(bundle_root: Path) -> str:
    import json

    return json.loads((bundle_root / "configs" / "metadata.json").read_text()).get("version", "0")
