# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Public names of the iFIM bundle, so configs can say ``scripts.ifim_decompose`` or ``scripts.ShallowCNN``."""

from .data import phantom_dataset, phantom_slice
from .ifim import IFIMResult, fisher_quadratic, ifim_decompose, predictive_probs
from .networks import ShallowCNN
from .transforms import InsertGaussianSignal, InsertGaussianSignald, gaussian_blob
