# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Input-dependent Fisher information (iFIM) of a classifier, through the Gram matrix (Sec. III of the paper).

This is the bottom floor of the bundle: pure torch, no MONAI engines, handlers or configs.

Notation (batch dimension omitted): ``x`` has ``d = C_in * prod(spatial)`` entries, the model returns ``C`` logits
``f(x)``, ``J = d f / d x`` is their ``C x d`` Jacobian.

* Softmax head, eq. 1-4: ``g_c = grad log p_c = J^T (e_c - p)``, ``F = sum_c p_c g_c g_c^T`` (eq. 4).
  Because ``sum_c p_c g_c = 0`` only logit *differences* matter: pick a reference class ``r`` (the predicted one)
  and let ``D = [grad(f_j - f_r)]_{j != r}`` (``d x (C-1)``, C-1 backward passes). Then
  ``F = D S D^T`` with ``S = diag(p~) - p~ p~^T`` over the non-reference classes ``p~``.
* Sigmoid head (multi-label, independent Bernoulli outputs): ``F = sum_c p_c (1 - p_c) grad f_c grad f_c^T``,
  i.e. ``D = [grad f_c]`` (C backward passes) and ``S = diag(p (1 - p))``.

Both are ``F = G G^T`` with ``G = D S^{1/2}`` (eq. 5-6 with a different, equivalent square-root factor: the paper's
``G = [sqrt(p_c) g_c]`` has C columns, one of them redundant since ``G sqrt(p) = sum_c p_c g_c = 0``). The Gram matrix
``K = G^T G = S^{1/2} (D^T D) S^{1/2}`` (eq. 7) is at most ``C x C``, so F (``d x d``) is never formed. Its eigenpairs
``K v_i = lambda_i v_i`` (eq. 8) give the non-zero spectrum of F and ``u_i = G v_i / sqrt(lambda_i)`` (eq. 9-11).
Working with the ``(C-1)``-column factor drops the eigenvalue of eq. 7's K that is zero by construction, so round-off
in it cannot be mistaken for information. ``K``, ``S`` and the eigendecomposition are computed in float64.

Numerical rank: the gradients carry the relative rounding error ``eps`` of the model's dtype, which perturbs K by
about ``eps * lambda_1``; so ``lambda_i`` counts as non-zero when ``lambda_i > rtol * lambda_1``, default
``rtol = C * eps(logits dtype)``. Small probabilities are no reason to drop a direction: they are computed in
float64 from the logits and are accurate relative to themselves, so a confident prediction (even one within
float32 rounding of certainty, ``p_2 = 1e-9``) keeps its small but exact eigenvalue and its direction. F is
numerically zero only when its information is lost to float64 underflow or the gradients vanish:
``lambda_1 <= sqrt(tiny_64) * ||D^T D||_2`` (about 1e-154 of the logit-gradient scale; for a binary softmax, logit
gaps beyond about 350). Then ``rank = 0``, ``k = 0``, ``x_sens = 0`` and ``x_comp = x``. Nothing divides by a
numerically zero eigenvalue, so saturated outputs give finite results everywhere.

The decomposition, eq. 13-17: ``k`` is the smallest K whose leading eigenvalues hold a fraction ``rho`` of the total,
``x_sens = U_K U_K^T x`` and ``x_comp = x - x_sens``.
"""

from __future__ import annotations

import math
import numbers
import weakref
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from .borrowing import borrowed

__all__ = ["DEFAULT_RHO", "IFIMResult", "ifim_decompose", "energy_k", "fisher_quadratic", "predictive_probs", "HEADS",
           "auto_chunk_size", "activation_bytes", "last_level_cache_bytes"]

HEADS = ("softmax", "sigmoid")
DEFAULT_RHO = 0.9  # the energy threshold of eq. 13 unless a caller or config sets one


@dataclass
class IFIMResult:
    """The iFIM decomposition of a batch. Every field is batch first.

    Attributes:
        logits: ``(B, C)`` the model's outputs at x, in their own dtype (what a classifier reports; no extra
            forward pass needed).
        probs: ``(B, C)`` float64 predictive probabilities (softmax, or per-output sigmoid).
        eigenvalues: ``(B, C)`` float64 non-zero iFIM eigenvalues, descending, exactly zero past ``rank``.
        eigenvectors: ``(B, C, C_in, *spatial)`` in ``x``'s dtype; row ``i`` is the unit-norm ``u_i`` for
            ``i < rank`` and zero otherwise.
        rank: ``(B,)`` long, numerical rank of F(x) (at most C - 1 for softmax, C for sigmoid).
        k: ``(B,)`` long, number of leading eigenvectors spanning the sensitive subspace (eq. 13).
        x_sens: ``(B, C_in, *spatial)``, projection of x onto the leading k eigenvectors (eq. 14, 16).
        x_comp: ``(B, C_in, *spatial)``, ``x - x_sens`` (eq. 15-17).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    rank: torch.Tensor
    k: torch.Tensor
    x_sens: torch.Tensor
    x_comp: torch.Tensor

    def to_dict(self) -> Dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def maps(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The task-sensitive and task-insensitive iFIM maps S(x) = |x_sens| and I(x) = |x_comp|, summed over
        input channels, ``(B, 1, *spatial)`` each."""
        return self.x_sens.abs().sum(1, keepdim=True), self.x_comp.abs().sum(1, keepdim=True)

    def at_rho(self, rho: float) -> "IFIMResult":
        """The same decomposition split at another energy threshold ``rho`` (eq. 13-17): K, x_sens and x_comp
        recomputed from the eigenpairs, with no pass through the model. ``x`` is recovered as x_sens + x_comp."""
        _check_settings(rho, None)
        k = energy_k(self.eigenvalues, self.rank, rho)
        x = self.x_sens + self.x_comp
        x_sens = _sensitive_part(x, self.eigenvectors.reshape(*self.eigenvectors.shape[:2], -1), k)
        return replace(self, k=k, x_sens=x_sens, x_comp=x - x_sens)

    def __getitem__(self, index) -> "IFIMResult":
        """Select images of the batch, e.g. ``result[0:1]``; integer indices keep the batch dimension."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return IFIMResult(**{name: value[index] for name, value in self.to_dict().items()})


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}.")


def _check_input(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim < 3:
        raise ValueError(f"{name} must be batch first with a channel axis, (B, C_in, *spatial); got shape "
                         f"{tuple(x.shape)}.")
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} holds no image: shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values; the iFIM is only defined at finite inputs.")


def _check_settings(rho: float, rtol: Optional[float]) -> None:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real):
        raise TypeError(f"rho must be a number in (0, 1], got {rho!r} ({type(rho).__name__}).")
    if not 0.0 < float(rho) <= 1.0:
        raise ValueError(f"rho must lie in (0, 1], got {rho}.")
    if rtol is not None:
        if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real):
            raise TypeError(f"rtol must be a number in [0, 1) or None, got {rtol!r} ({type(rtol).__name__}).")
        if not 0.0 <= float(rtol) < 1.0:  # also refuses NaN, which would make every eigenvalue zero
            raise ValueError(f"rtol must lie in [0, 1), got {rtol}.")


def _autograd_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached as a tensor autograd can use: a tensor made under ``torch.inference_mode()`` is copied."""
    return x.detach().clone() if x.is_inference() else x.detach()


def _check_logits(logits: torch.Tensor, batch: int, head: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return one logits tensor of shape (B, C) with B={batch}; got {shape}.")
    if head == "softmax" and logits.shape[1] < 2:
        raise ValueError("a softmax head needs at least 2 outputs; use head='sigmoid' for a single-logit model.")
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or Inf logits; the iFIM is undefined there.")


def predictive_probs(logits: torch.Tensor, head: str = "softmax") -> torch.Tensor:
    """Predictive probabilities in float64, ``(B, C)``: softmax (eq. 1) or per-output sigmoid."""
    _check_head(head)
    logits = logits.detach().double()
    return torch.softmax(logits, dim=1) if head == "softmax" else torch.sigmoid(logits)


def _outer_weights(logits: torch.Tensor, head: str) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The float64 ``S`` of ``F = D S D^T`` and which logit combinations make the columns of ``D``.

    Returns:
        probs: ``(B, C)``.
        weights: ``(B, m, m)`` with ``m = C - 1`` (softmax) or ``C`` (sigmoid).
        others: ``(B, C - 1, 2)`` long, the (class, reference) pair of each column for softmax; None for sigmoid.
    """
    probs = predictive_probs(logits, head)
    batch, n_out = probs.shape
    if head == "sigmoid":
        # p (1 - p) as sigma(f) sigma(-f): no cancellation when p is close to 1.
        var = probs * torch.sigmoid(-logits.detach().double())
        return probs, torch.diag_embed(var), None
    reference = probs.argmax(dim=1)  # the predicted class: its p is >= 1/C, so S stays well conditioned
    classes = torch.arange(n_out, device=probs.device).expand(batch, n_out)
    others = classes[classes != reference[:, None]].view(batch, n_out - 1)
    p_other = probs.gather(1, others)  # each <= 1/2, so diag(p~) - p~ p~^T has no cancellation
    weights = torch.diag_embed(p_other) - p_other[:, :, None] * p_other[:, None, :]
    pairs = torch.stack([others, reference[:, None].expand_as(others)], dim=2)
    return probs, weights, pairs


def _logit_gradients(logits: torch.Tensor, x: torch.Tensor, pairs: Optional[torch.Tensor]) -> torch.Tensor:
    """Columns of ``D`` for the whole batch at once: one backward pass per column, ``(B, m, *x.shape[1:])``.

    Images in an eval-mode model do not interact, so the gradient of the batch sum of a per-image scalar gives each
    image's own gradient.
    """
    batch = x.shape[0]
    rows = torch.arange(batch, device=logits.device)
    if pairs is None:
        scalars = [logits[:, c].sum() for c in range(logits.shape[1])]
    else:
        scalars = [(logits[rows, pairs[:, j, 0]] - logits[rows, pairs[:, j, 1]]).sum() for j in range(pairs.shape[1])]
    grads = []
    for j, scalar in enumerate(scalars):
        grad = None
        if scalar.requires_grad:  # False for a model whose output ignores its input
            (grad,) = torch.autograd.grad(scalar, x, retain_graph=j < len(scalars) - 1, allow_unused=True)
        grads.append(torch.zeros_like(x) if grad is None else grad)
    return grads[0].unsqueeze(1) if len(grads) == 1 else torch.stack(grads, dim=1)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a batch of float64 PSD matrices, ``(B, m, m)``; round-off negatives clamp to 0."""
    evals, evecs = torch.linalg.eigh(matrix)
    return (evecs * evals.clamp_min(0).sqrt()[:, None, :]) @ evecs.transpose(1, 2)


def energy_k(eigenvalues: torch.Tensor, rank: torch.Tensor, rho: float) -> torch.Tensor:
    """Smallest K with sum_{i<=K} lambda_i >= rho * sum_i lambda_i (eq. 13); 0 where the rank is 0. ``(B,)``."""
    cumulative = eigenvalues.cumsum(dim=1)
    total = cumulative[:, -1:]  # eigenvalues past the rank are exactly 0, so this is the last partial sum itself
    fraction = torch.where(total > 0, cumulative / total.clamp_min(torch.finfo(total.dtype).tiny), 1.0)
    k = (fraction < rho).sum(dim=1) + 1
    return torch.minimum(k, rank)


def _sensitive_part(x: torch.Tensor, u_flat: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """x_sens (eq. 14, 16): the projection of ``x`` ``(B, C_in, *spatial)`` onto the leading ``k`` ``(B,)`` rows of
    ``u_flat`` ``(B, C, d)``, in ``x``'s shape and dtype."""
    keep = torch.arange(u_flat.shape[1], device=k.device)[None, :] < k[:, None]
    proj = (u_flat @ x.reshape(x.shape[0], -1, 1).to(u_flat.dtype)) * keep[:, :, None].to(u_flat.dtype)
    return (proj.transpose(1, 2) @ u_flat).reshape(x.shape).to(x.dtype)


def ifim_decompose(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    rho: float = DEFAULT_RHO,
    head: str = "softmax",
    rtol: Optional[float] = None,
    chunk_size: Optional[int] = None,
) -> IFIMResult:
    """Exact iFIM eigendecomposition and sensitive / complementary split of a batch of images.

    Args:
        model: classifier returning one logits tensor ``(B, C)``. Evaluated in eval mode; its (and every
            submodule's) training flag and every parameter's ``.grad`` are as before afterwards.
        x: ``(B, C_in, *spatial)`` images, 2D or 3D spatial, any number of channels. Works under ``torch.no_grad()``
            and ``torch.inference_mode()``.
        rho: energy threshold of eq. 13, in ``(0, 1]``.
        head: ``"softmax"`` (eq. 1-2, C-1 backward passes) or ``"sigmoid"`` (multi-label, C backward passes).
        rtol: relative tolerance of the numerical rank, ``lambda_i > rtol * lambda_1`` (see the module docstring);
            default ``C * eps`` of the logits' dtype.
        chunk_size: images per forward / backward pass. Default: the whole batch on GPUs; on CPU
            :func:`auto_chunk_size`, since there a batch whose activations overflow the caches is slower than the
            same images in smaller chunks. Images do not interact in eval mode, so the result does not depend on it
            beyond float round-off.

    Returns:
        An :class:`IFIMResult`. Peak memory is O(chunk * C * d) for the passes and O(B * C * d) for the result: F
        (``d x d``) is never formed.
    """
    _check_head(head)
    _check_settings(rho, rtol)
    _check_input(x)
    chunk = auto_chunk_size(model, x) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be a positive number of images, got {chunk_size}.")
    parts = [_decompose(model, x[start:start + chunk], rho, head, rtol) for start in range(0, x.shape[0], chunk)]
    if len(parts) == 1:
        return parts[0]
    return IFIMResult(**{f.name: torch.cat([getattr(part, f.name) for part in parts]) for f in fields(IFIMResult)})


# On CPU a batched pass is bound by memory traffic once the chunk's activations overflow the last-level cache.
# Measured on 2 cores of an AMD EPYC (32 MiB L3), shallow CNN, one input gradient of 32 images (medians of 7):
# 64^2 (1.9 MiB of activations per image) 0.100 s image by image, 0.069 s in chunks of 16, 0.066 s at once;
# 128^2 (7.8 MiB) 0.261 s in chunks of 1 to 4, 0.313 s in chunks of 8, 0.409 s at once; 256^2 (31 MiB) 1.1 s
# image by image, 3.4 s at once. So a chunk holds at most CPU_CHUNK_CACHE_FACTOR x the last-level cache of
# activations. Small volumes are the exception: oneDNN's 3D convolution of one image runs at about half the speed
# per image of two, so there 3D chunks hold MIN_3D_CHUNK images, as long as those images' activations stay within
# MIN_3D_CHUNK_CACHE_FACTOR x the cache. ifim_decompose of 4 volumes, chunks of 1 / 2 (medians of 5): 32^3 (11 MiB
# per image) 0.109 / 0.077 s; 40^3 0.194 / 0.132 s; 48^3 (38 MiB) 0.433 / 0.256 s; 56^3 (60 MiB) 0.429 / 0.494 s;
# 64^3 (89 MiB) 0.615 / 0.753 s; 72^3 0.764 / 1.08 s. Two images of 48^3 hold 2.3 x the cache, two of 56^3 3.7 x.
CPU_CHUNK_CACHE_FACTOR = 1
MIN_3D_CHUNK = 2
MIN_3D_CHUNK_CACHE_FACTOR = 3
_FALLBACK_CACHE_BYTES = 32 * 2**20
_ACTIVATION_BYTES: "weakref.WeakKeyDictionary[nn.Module, Dict[tuple, int]]" = weakref.WeakKeyDictionary()


def last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (Linux sysfs), or 32 MiB where it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=_FALLBACK_CACHE_BYTES)


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module in one forward pass of one image like ``x[0]`` (cached per model,
    input shape and dtype)."""
    key = (tuple(x.shape[1:]), x.dtype, x.device.type)
    known = _ACTIVATION_BYTES.setdefault(model, {})
    if key not in known:
        total = [0]

        def count(module, inputs, output):
            for out in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(out, torch.Tensor):
                    total[0] += out.numel() * out.element_size()

        handles = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
        try:
            with borrowed(model, grad=False):
                model(_autograd_input(x[:1]))
        finally:
            for handle in handles:
                handle.remove()
        known[key] = max(1, total[0])
    return known[key]


def auto_chunk_size(model: Callable, x: torch.Tensor) -> int:
    """Images per pass: the whole batch off the CPU (or for a plain callable, whose activations cannot be seen); on
    CPU as many as keep one chunk's activations within ``CPU_CHUNK_CACHE_FACTOR`` x the last-level cache, at least
    one (``MIN_3D_CHUNK`` for volumes whose ``MIN_3D_CHUNK`` images' activations fit
    ``MIN_3D_CHUNK_CACHE_FACTOR`` x the cache)."""
    batch = x.shape[0]
    if x.device.type != "cpu" or batch == 1 or not isinstance(model, nn.Module):
        return batch
    cache, per_image = last_level_cache_bytes(), activation_bytes(model, x)
    floor = 1
    if x.ndim == 5 and MIN_3D_CHUNK * per_image <= MIN_3D_CHUNK_CACHE_FACTOR * cache:
        floor = MIN_3D_CHUNK
    return max(1, min(batch, max(floor, CPU_CHUNK_CACHE_FACTOR * cache // per_image)))


def _decompose(model: Callable, x: torch.Tensor, rho: float, head: str, rtol: Optional[float]) -> IFIMResult:
    """:func:`ifim_decompose` of one chunk, its inputs already checked."""
    batch = x.shape[0]
    with borrowed(model):
        x_leaf = _autograd_input(x).requires_grad_(True)
        logits = model(x_leaf)
        _check_logits(logits, batch, head)
        probs, weights, pairs = _outer_weights(logits, head)
        d_cols = _logit_gradients(logits, x_leaf, pairs)  # (B, m, C_in, *spatial)
    n_out = probs.shape[1]
    d_flat = d_cols.reshape(batch, d_cols.shape[1], -1)
    d64 = d_flat.double()
    gram_d = d64 @ d64.transpose(1, 2)  # D^T D, (B, m, m)
    root = _psd_sqrt(weights)
    gram = root @ gram_d @ root  # K = G^T G with G = D S^{1/2} (eq. 7)
    evals, evecs = torch.linalg.eigh(gram)  # ascending (eq. 8)
    evals, evecs = evals.flip(-1), evecs.flip(-1)

    if rtol is None:
        rtol = n_out * torch.finfo(logits.dtype).eps
    # Rank relative to lambda_1; an absolute floor against float64 underflow (see the module docstring).
    gradient_scale = torch.linalg.eigvalsh(gram_d)[:, -1:].clamp_min(0)  # ||D^T D||_2
    floor = math.sqrt(torch.finfo(torch.float64).tiny) * gradient_scale
    nonzero = (evals > rtol * evals[:, :1]) & (evals > floor)
    rank = nonzero.sum(dim=1)
    evals = torch.where(nonzero, evals, 0.0)

    # u_i = G v_i / sqrt(lambda_i) = D (S^{1/2} v_i) / sqrt(lambda_i)  (eq. 9-10), only where lambda_i is non-zero.
    # ||u_i||^2 = c_i^T (D^T D) c_i = 1 exactly in float64, so only float32 round-off of the product remains (~1e-7).
    inv_sqrt = torch.where(nonzero, evals.clamp_min(torch.finfo(evals.dtype).tiny).rsqrt(), 0.0)
    coeffs = ((root @ evecs) * inv_sqrt[:, None, :]).transpose(1, 2)  # (B, m, m): row i builds u_i
    # Softmax: a zero row for the contract's C-th eigenvector (its eigenvalue is zero by construction), so one
    # matmul writes the whole (B, C, d) result.
    coeffs = nn.functional.pad(coeffs, (0, 0, 0, n_out - coeffs.shape[1])).to(d_flat.dtype)
    u_flat = coeffs @ d_flat  # (B, C, d)
    eigenvalues = nn.functional.pad(evals, (0, n_out - evals.shape[1]))

    k = energy_k(eigenvalues, rank, rho)
    x_sens = _sensitive_part(x.detach(), u_flat, k)
    x_comp = x.detach() - x_sens  # eq. 17
    eigenvectors = u_flat.reshape(batch, n_out, *x.shape[1:])
    return IFIMResult(logits=logits.detach(), probs=probs, eigenvalues=eigenvalues, eigenvectors=eigenvectors,
                      rank=rank, k=k, x_sens=x_sens, x_comp=x_comp)


def fisher_quadratic(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    delta: torch.Tensor,
    head: str = "softmax",
) -> torch.Tensor:
    """``delta^T F(x) delta`` per image without forming F, ``(B,)`` float64 (the quadratic form of eq. 18, 21).

    One forward-mode pass gives ``J delta`` (``(B, C)``); then for softmax ``delta^T F delta = Var_p[J delta]``
    (``sum_c p_c (g_c^T delta)^2`` with ``g_c^T delta = (J delta)_c - p^T J delta``) and for sigmoid
    ``sum_c p_c (1 - p_c) (J delta)_c^2``.

    Args:
        model: classifier returning ``(B, C)`` logits, evaluated in eval mode (restored afterwards).
        x: ``(B, C_in, *spatial)``.
        delta: perturbation shaped like ``x``.
        head: ``"softmax"`` or ``"sigmoid"``.
    """
    _check_head(head)
    _check_input(x)
    _check_input(delta, "delta")
    if delta.shape != x.shape:
        raise ValueError(f"delta must be shaped like x {tuple(x.shape)}, got {tuple(delta.shape)}.")
    with borrowed(model):
        logits, directional = torch.func.jvp(model, (_autograd_input(x),), (_autograd_input(delta).to(x.dtype),))
    _check_logits(logits, x.shape[0], head)
    probs = predictive_probs(logits, head)
    directional = directional.detach().double()
    if head == "sigmoid":
        return (probs * torch.sigmoid(-logits.detach().double()) * directional**2).sum(dim=1)
    centred = directional - (probs * directional).sum(dim=1, keepdim=True)
    return (probs * centred**2).sum(dim=1)
