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

from fastapi import HTTPException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from scripts.review import LABEL_NAME, ReviewModel, check_percent


class IFIMReview(InferTask):
    """Segmentation-type task: request ``{"image": path}`` (the datastore resolves ids), optional
    ``top_percent``; returns ``(label file, result)``, the result holding ``predicted_class``, ``class_names``,
    ``probabilities``, ``eigenvalues``, ``k``, ``rank`` and ``top_percent``. A bad request is answered with a 4xx
    and a one-line reason (FastAPI's ``HTTPException``, which MONAI Label passes through): 404 an unknown image,
    403 a path outside the datastore (``studies``), 400 a ``top_percent`` that is not a number in (0, 100], 422 an
    image the bundle cannot read."""

    def __init__(self, bundle_root: os.PathLike, top_percent: float = 5.0, ckpt_path: Optional[str] = None,
                 device: str = "cpu", studies: Optional[os.PathLike] = None):
        self.model = ReviewModel.from_bundle(bundle_root, ckpt_path=ckpt_path, top_percent=top_percent,
                                             device=device)
        self.studies = None if studies is None else Path(studies).resolve()
        super().__init__(type=InferType.SEGMENTATION, labels={LABEL_NAME: 1}, dimension=2,
                         description=f"iFIM high-sensitivity region: the top {top_percent:g} % of |x_sens| "
                                     f"({', '.join(self.model.class_names)} classifier)",
                         config={"top_percent": top_percent})

    def is_valid(self) -> bool:
        return True

    def _image(self, request: Dict[str, Any]) -> str:
        """The image file of a request: in the datastore's studies folder, or a file MONAI Label saved from an
        upload; anything else is a 404 (an id the datastore does not know) or a 403 (a path outside)."""
        image = request.get("image")
        if not isinstance(image, str) or not image or not Path(image).is_file():
            raise HTTPException(404, f"ifim_review: no image {image!r} in the datastore.")
        path = Path(image).resolve()
        uploaded = path.parent == Path(tempfile.gettempdir()).resolve() and path.name.startswith("tmp")
        if self.studies is not None and not uploaded and self.studies not in path.parents:
            raise HTTPException(403, f"ifim_review: {image} is outside the datastore; ask for an image by its id.")
        return str(path)

    @staticmethod
    def _top_percent(request: Dict[str, Any]) -> Optional[float]:
        value = request.get("top_percent")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise HTTPException(400, f"ifim_review: top_percent must be a number in (0, 100], got {value!r}.")
        try:
            return check_percent(float(value))
        except ValueError:
            raise HTTPException(400, f"ifim_review: top_percent must be a number in (0, 100], got {value!r}.")

    def __call__(self, request: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
        image, top_percent = self._image(request), self._top_percent(request)
        work = tempfile.mkdtemp(prefix="ifim-review-")
        try:
            try:
                label, result = self.model.label(image, work, top_percent=top_percent)
            except ValueError as err:  # the bundle's reader refused the file: say why, as the client's error
                raise HTTPException(422, f"ifim_review: {err}") from err
            # MONAI Label sends this file and then deletes it; the working folder goes now
            handle, path = tempfile.mkstemp(suffix=".nii.gz", prefix="ifim-review-")
            os.close(handle)
            shutil.move(label, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return path, result
