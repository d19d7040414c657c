# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The ``ifim_review`` infer task: the bundle's ``scripts.review.ReviewModel`` behind MONAI Label's infer API.

Not a ``BasicInferTask``: that one runs its inferer under ``torch.no_grad()`` and writes labels through its own
writer, while the label here must be on the image's own grid (shape and affine as MONAI's reader gives the file),
which the bundle's inverse preprocessing and writer already do.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from scripts.review import LABEL_NAME, ReviewModel


class IFIMReview(InferTask):
    """Segmentation-type task: request ``{"image": path}`` (the datastore resolves ids), optional
    ``top_percent``; returns ``(label file, result)``, the result holding ``predicted_class``, ``class_names``,
    ``probabilities``, ``eigenvalues``, ``k``, ``rank`` and ``top_percent``."""

    def __init__(self, bundle_root: os.PathLike, top_percent: float = 5.0, ckpt_path: Optional[str] = None,
                 device: str = "cpu"):
        self.model = ReviewModel.from_bundle(bundle_root, ckpt_path=ckpt_path, top_percent=top_percent,
                                             device=device)
        super().__init__(type=InferType.SEGMENTATION, labels={LABEL_NAME: 1}, dimension=2,
                         description=f"iFIM high-sensitivity region: the top {top_percent:g} % of |x_sens| "
                                     f"({', '.join(self.model.class_names)} classifier)",
                         config={"top_percent": top_percent})

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
        image = request.get("image")
        if not isinstance(image, str) or not Path(image).is_file():
            raise FileNotFoundError(f"ifim_review: image not found: {image!r}")
        work = tempfile.mkdtemp(prefix="ifim-review-")
        try:
            label, result = self.model.label(image, work, top_percent=request.get("top_percent"))
            # MONAI Label sends this file and then deletes it; the working folder goes now
            handle, path = tempfile.mkstemp(suffix=".nii.gz", prefix="ifim-review-")
            os.close(handle)
            shutil.move(label, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return path, result
