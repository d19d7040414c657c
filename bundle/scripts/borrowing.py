# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Use a caller's model without side effects (floor 1 of DESIGN.md: pure torch): the engine, the maps and the
metrics all run a model that may be in the middle of training."""

from __future__ import annotations

import contextlib
import copy as copy_module
import itertools
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["borrowed"]


@contextlib.contextmanager
def borrowed(model: Callable, grad: bool = True, copy: bool = False) -> Iterator[Callable]:
    """Run ``model`` in eval mode with autograd on (``grad=True``) or off; yields the model to call.

    Afterwards every submodule's training flag and every parameter's ``.grad`` are what they were. Restoring per
    submodule (not ``model.train(flag)``) keeps mixed modes, e.g. a frozen, eval-mode backbone inside a training
    model. ``copy=True`` yields an eval-mode copy sharing the parameters and buffers (cheap), for code that leaves
    hooks on the module it is given (MONAI's CAMs). A plain callable only gets the autograd setting.
    """
    if not isinstance(model, nn.Module):
        with torch.inference_mode(False), torch.enable_grad() if grad else torch.no_grad():
            yield model
        return
    modes = {m: m.training for m in model.modules()}
    saved = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    if copy:
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        target = copy_module.deepcopy(model, memo=shared)
    else:
        target = model
    target.eval()
    try:
        # inference_mode(False): under a caller's torch.inference_mode() autograd records nothing, and every
        # gradient would silently be zero
        with torch.inference_mode(False), torch.enable_grad() if grad else torch.no_grad():
            yield target
    finally:
        for module, mode in modes.items():
            module.training = mode
        for param, saved_grad in saved:
            param.grad = saved_grad
