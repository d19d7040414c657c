"""Brute-force references for the iFIM tests: tiny float64 models and the full d x d Fisher matrix of eq. 2."""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Smooth (tanh) conv net, float64, small enough for a full Jacobian: ``(B, C_in, *spatial) -> (B, C)``."""

    def __init__(self, in_channels: int, n_classes: int, spatial_dims: int = 2, batch_norm: bool = False,
                 logit_scale: float = 1.0):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        pool = nn.AdaptiveAvgPool2d(2) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(2)
        layers = [conv(in_channels, 4, 3, padding=1)]
        if batch_norm:
            layers.append(norm(4))
        layers += [nn.Tanh(), conv(4, 4, 3, padding=1), nn.Tanh(), pool, nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * 2**spatial_dims, n_classes)
        self.logit_scale = logit_scale
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.head(self.features(x))


def _flat_jacobian(fn, x1: torch.Tensor) -> torch.Tensor:
    """Jacobian of ``fn`` at one image ``(1, *shape)``, flattened to ``(outputs, d)``."""
    jac = torch.autograd.functional.jacobian(fn, x1)
    return jac.reshape(jac.shape[1], -1)


def brute_force_fisher(model: nn.Module, x1: torch.Tensor, head: str = "softmax") -> torch.Tensor:
    """The full ``d x d`` iFIM of one image, literally eq. 2: E_y[grad log p(y|x) grad log p(y|x)^T]."""
    model.eval()
    x1 = x1.double()
    logits = model(x1)[0].detach()
    if head == "softmax":
        probs = torch.softmax(logits, 0)
        score = _flat_jacobian(lambda z: torch.log_softmax(model(z), dim=1), x1)  # rows: grad log p_c
        return score.T @ (probs[:, None] * score)
    # Independent Bernoulli outputs: expectation over y_c in {0, 1} for every output c.
    probs = torch.sigmoid(logits)
    score_1 = _flat_jacobian(lambda z: nn.functional.logsigmoid(model(z)), x1)  # grad log p_c
    score_0 = _flat_jacobian(lambda z: nn.functional.logsigmoid(-model(z)), x1)  # grad log (1 - p_c)
    return score_1.T @ (probs[:, None] * score_1) + score_0.T @ ((1 - probs)[:, None] * score_0)


def top_eigen(fisher: torch.Tensor, n: int):
    """Leading ``n`` eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix."""
    evals, evecs = torch.linalg.eigh(fisher)
    return evals.flip(0)[:n], evecs.flip(1)[:, :n]


def kl_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row for categorical distributions ``(B, C)``."""
    return (p * (p.log() - q.log())).sum(dim=1)
