# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Public names of the iFIM bundle, so configs can say ``scripts.ifim_decompose`` or ``scripts.ShallowCNN``."""

from .attribution import METHODS, attribute
from .data import (
    build_cxr_datalist,
    build_hcp_datalist,
    build_oct_datalist,
    build_sksbks_datalist,
    phantom_dataset,
    phantom_slice,
    write_datalist,
)
from .handlers import AttributionStudyHandler, IFIMHandler, PerturbationMetricsHandler
from .ifim import IFIMResult, fisher_quadratic, ifim_decompose, predictive_probs
from .networks import VGG16, ShallowCNN, get_network, resnet18
from .report import write_report
from .study import AttributionStudy
from .transforms import (
    EnsureGrayscaled,
    InsertGaussianSignal,
    InsertGaussianSignald,
    InvertMonochrome1d,
    LoadImageCheckedd,
    PerSampleSeedd,
    cxr_transforms,
    gaussian_blob,
    mri_transforms,
    oct_transforms,
)
