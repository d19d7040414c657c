# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""The iFIM decomposition as a MONAI ``Inferer`` (engine glue, floor 3 of DESIGN.md), so an inference config reads
preprocessing -> inferer -> postprocessing like any model-zoo bundle, and MONAI Label or a user's own evaluator can
reuse it::

    inferer = IFIMInferer()          # rho: scripts.ifim.DEFAULT_RHO
    out = inferer(images, network)   # images: (B, C_in, *spatial)
    out["logits"], out["x_sens"], out["eigenvalues"], ...

In a ``SupervisedEvaluator`` the dict lands under ``pred``; ``FlattenSubKeysd(keys="pred")`` as the first
postprocessing step puts its entries at the top level of each decollated item.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

import torch
from monai.inferers import Inferer
from torch import nn

from .ifim import DEFAULT_RHO, ifim_decompose

__all__ = ["IFIMInferer", "SelectOutput"]


class SelectOutput(nn.Module):
    """A network whose forward returns only its logits: ``output[key]`` of a tuple / list (an index) or a dict (a
    key), e.g. ``SelectOutput(vit, 0)`` for MONAI's ``ViT``, which returns ``(logits, hidden_states)``. ``key=None``
    passes a plain tensor through and refuses anything else, naming the choices."""

    def __init__(self, network: nn.Module, key: Optional[Union[int, str]] = None):
        super().__init__()
        self.network, self.key = network, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.network(x)
        if self.key is None:
            if isinstance(output, torch.Tensor):
                return output
            choices = list(output) if isinstance(output, dict) else list(range(len(output)))
            raise TypeError(f"the network returns a {type(output).__name__}, not one logits tensor: set the "
                            f"inferer's output_key to the entry holding the logits, one of {choices}.")
        try:
            return output[self.key]
        except (KeyError, IndexError, TypeError) as err:
            raise KeyError(f"output_key {self.key!r} is not in the network's {type(output).__name__} output") from err


class IFIMInferer(Inferer):
    """Run the network and decompose each input (:func:`scripts.ifim.ifim_decompose`): one forward pass and C-1
    backward passes per batch (C for ``head="sigmoid"``), with gradients on even inside an evaluator's
    ``torch.no_grad()``.

    Args:
        rho: energy threshold of eq. 13; None: :data:`scripts.ifim.DEFAULT_RHO`.
        head: ``"softmax"`` or ``"sigmoid"`` (multi-label).
        rtol: relative tolerance of the numerical rank; default ``C * eps``.
        output_key: which entry of a tuple / dict network output holds the logits (:class:`SelectOutput`); None for
            a network that returns one tensor.

    Returns from ``__call__(inputs, network)`` a dict of batch-first tensors: ``logits (B, C)`` (the network's
    output, float32), ``probs (B, C)`` and ``eigenvalues (B, C)`` (float64), ``rank (B,)``, ``k (B,)``, ``x_sens``
    and ``x_comp`` shaped like ``inputs`` (plain tensors: the inputs' meta stays with the inputs).
    """

    def __init__(self, rho: Optional[float] = None, head: str = "softmax", rtol: Optional[float] = None,
                 output_key: Optional[Union[int, str]] = None):
        super().__init__()
        self.rho = DEFAULT_RHO if rho is None else rho
        self.head, self.rtol, self.output_key = head, rtol, output_key

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
                 ) -> Dict[str, torch.Tensor]:
        if args or kwargs:
            raise TypeError("IFIMInferer takes the network's input only; wrap extra arguments into the network.")
        model = SelectOutput(network, self.output_key)
        x = inputs.as_tensor() if hasattr(inputs, "as_tensor") else inputs
        result = ifim_decompose(model, x, rho=self.rho, head=self.head, rtol=self.rtol)
        return {"logits": result.logits, "probs": result.probs, "eigenvalues": result.eigenvalues,
                "rank": result.rank, "k": result.k, "x_sens": result.x_sens, "x_comp": result.x_comp}
