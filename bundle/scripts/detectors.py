# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Trivial detectors and their AUROC (floor 1 of DESIGN.md: numpy and scikit-learn): a benchmark whose signal the
brightest pixel or the mean intensity finds cannot tell maps apart, since a map pointing at the brightest pixel
would "localise" the signal for free. Each detector scores an image by one number; its AUROC for "the first class
against the others" (signal absent against present) is compared with the classifier's, under the cluster
bootstrap's weights (:mod:`scripts.bootstrap`), so the interval rests on the independent units.

AUROC is scikit-learn's ``roc_auc_score`` with the resample's image weights as ``sample_weight``; tied scores count
one half, the expectation of breaking ties at random.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

__all__ = ["TRIVIAL_DETECTORS", "detector_scores", "weighted_aurocs"]

# name -> (B, C, *spatial) images -> (B,) scores, higher: more likely signal present
TRIVIAL_DETECTORS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max intensity": lambda x: x.flatten(1).max(1).values,
    "mean intensity": lambda x: x.flatten(1).mean(1),
}


def detector_scores(x: torch.Tensor) -> Dict[str, np.ndarray]:
    """``{detector: (B,) float64 scores}`` of every trivial detector on images ``x (B, C, *spatial)``."""
    x = x.detach().double().cpu()
    return {name: detector(x).numpy() for name, detector in TRIVIAL_DETECTORS.items()}


def weighted_aurocs(scores, positive, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """AUROC of ``scores (N,)`` for the boolean ``positive (N,)``, once per row of ``weights (R, N)`` (image weights
    of a bootstrap resample; None: one row of ones). ``(R,)``; NaN for a row without a positive or a negative."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    weights = np.ones((1, len(scores))) if weights is None else np.atleast_2d(np.asarray(weights, np.float64))
    if weights.shape[1] != len(scores) or len(positive) != len(scores):
        raise ValueError(f"{len(scores)} scores, {len(positive)} labels and weights of shape {weights.shape} differ.")
    out = np.full(len(weights), math.nan)
    for r, w in enumerate(weights):
        if w[positive].sum() > 0 and w[~positive].sum() > 0:
            out[r] = roc_auc_score(positive, scores, sample_weight=w)
    return out
