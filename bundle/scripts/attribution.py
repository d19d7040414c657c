# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""One call shape for every map the evaluation compares: ``attribute(method, model, x, target) -> (B, 1, *spatial)``.

Maps are non-negative magnitudes at input resolution, summed over input channels where the method works per
channel. Methods (:data:`METHODS`):

* ``ifim_sensitive`` / ``ifim_complement``: S(x) = |x_sens| and I(x) = |x_comp| (Sec. IV-E); target-free.
* ``gradcam`` / ``gradcampp``: ``monai.visualize.GradCAM`` / ``GradCAMpp``.
* ``xgradcam``, ``eigencam``, ``scorecam``: written here on MONAI's CAM hooks (``ModelWithHooks``), because
  pytorch-grad-cam imports torchvision, which installs here only with torch 2.14.1's 5.9 GB CUDA build; each is a
  few lines: XGrad-CAM (Fu et al. 2020) weights channels by sum(A * dY/dA) / sum(A); Eigen-CAM (Muhammad & Yeasin
  2020) projects the activations on their first principal component (target-free); Score-CAM (Wang et al. 2020)
  weights each channel by the target probability (softmax over classes) of the input masked by that channel,
  upsampled and scaled to [0, 1], as the authors' code does (a constant channel masks nothing and weighs 0).
* ``deepshap``: DeepSHAP, captum's ``DeepLiftShap`` (DeepLIFT's rescale rule averaged over a background set): the
  attributions of an image sum to f_target(x) minus the background's mean f_target (completeness, the SHAP
  property), f the logits. captum's rescale rule is exact for element-wise activations but not for pooling: its
  max-pool rule falls back to the gradient where the input's winning value equals the reference's, and adaptive
  max pooling gets the plain gradient. So the network is explained through :func:`relu_max_pools`, a copy whose
  max pools are trees of ``max(a, b) = b + relu(a - b)``, the same function built from ReLUs alone, for which the
  rescale rule is exact. captum refuses an activation module called twice (MONAI's ResNet blocks reuse theirs):
  such networks get a clear error, and ``gradientshap`` instead.
* ``gradientshap``: captum's ``GradientShap`` (expected gradients), ``n_samples`` draws with Gaussian noise
  (``stdevs``), run image by image with each image's seed, so a map does not depend on the other images of its batch.
  Both SHAP methods take a fixed background set (``baselines``, e.g. training images; default one all-zero image).
* ``vanilla_gradient``: |grad_x log p_target(x)|.
* ``random``: uniform noise, seeded per image: the control every method should beat.

``seed`` is an integer, hashed with each image's values into per-image seeds
(``scripts.metrics.image_seeds``), or ``(B,)`` per-image seeds.

MONAI's CAMs (1.6.1) score ``logits[:, class_idx]``, which for a per-image ``class_idx`` tensor mixes the images'
targets: images are grouped by target and each group gets an integer class. Its GradCAM++ also multiplies the
``(B,)`` scores into ``(B, C, *spatial)`` gradients without reshaping (broadcast along the last spatial axis), right
only for one image: it runs image by image. The CAMs register hooks they never remove and zero the parameters'
``.grad``: they run here on a copy of the model that shares its parameters (cheap), and parameter gradients are
restored afterwards. Every CAM is scaled to [0, 1] by :func:`unit_range`, not MONAI's ``default_normalizer``,
which maps (min, max) to (1, 0) and so would rank a CAM's coldest pixels first.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from typing import Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from captum.attr import DeepLift, DeepLiftShap, GradientShap
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks, default_upsampler
from torch import nn

from .ifim import ifim_decompose
from .metrics import Seeds, per_image_seeds

__all__ = ["METHODS", "attribute", "default_cam_layer", "unit_range", "ReLUMaxPool", "relu_max_pools",
           "deeplift_shap"]

METHODS = ("ifim_sensitive", "ifim_complement", "gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam",
           "deepshap", "gradientshap", "vanilla_gradient", "random")
_CAM_METHODS = ("gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam")


def default_cam_layer(model: nn.Module) -> str:
    """The layer CAMs read: ``features`` (the shallow CNN and VGG16 convolutional trunks), ``layer4`` (ResNet),
    else the last convolution."""
    names = dict(model.named_modules())
    for name in ("layer4", "features"):
        if name in names:
            return name
    convs = [name for name, m in names.items() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise ValueError("no convolution found for a CAM; pass layer= the name of the module to read.")
    return convs[-1]


@contextlib.contextmanager
def _borrowed(model: nn.Module) -> Iterator[nn.Module]:
    """An eval-mode copy of ``model`` sharing its parameters and buffers; the parameters' ``.grad`` are restored."""
    shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    clone = copy.deepcopy(model, memo=shared).eval()
    saved = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    try:
        with torch.enable_grad():
            yield clone
    finally:
        for param, grad in saved:
            param.grad = grad


def _by_target(x: torch.Tensor, target: torch.Tensor, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn(sub_batch, class_index)`` to the images of each target class; reassemble in batch order."""
    out: Optional[torch.Tensor] = None
    for cls in target.unique().tolist():
        rows = (target == cls).nonzero()[:, 0]
        part = fn(x[rows], int(cls))
        out = part.new_zeros((x.shape[0], *part.shape[1:])) if out is None else out
        out[rows] = part
    return out


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, map (min, max) to (0, 1); a constant map becomes 0. ``(B, K, *spatial)``.

    The CAMs' post-processing. MONAI's ``default_normalizer`` maps (min, max) to (1, 0): it flips magnitudes (for
    display), so a CAM's coldest pixels would rank first and Score-CAM would mask with inverted activations.
    """
    flat = x.flatten(2)
    low = flat.min(-1, keepdim=True).values
    span = flat.max(-1, keepdim=True).values - low
    return torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(x.dtype).tiny), 0.0).view_as(x)


def _cam_from(acti: torch.Tensor, weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A_k), upsampled to the input and scaled to [0, 1] per image (:func:`unit_range`)."""
    cam = torch.relu((weights * acti).sum(1, keepdim=True))
    return unit_range(default_upsampler(x.shape[2:])(cam))


def _hooked(model: nn.Module, layer: str, backward: bool) -> ModelWithHooks:
    return ModelWithHooks(model, layer, register_forward=True, register_backward=backward)


def _xgradcam(model: nn.Module, layer: str, x: torch.Tensor, cls: int) -> torch.Tensor:
    _, (acti,), (grad,) = _hooked(model, layer, True)(x, class_idx=cls)
    dims = tuple(range(2, acti.ndim))
    weights = (grad * acti).sum(dims, keepdim=True) / (acti.sum(dims, keepdim=True) + 1e-7)
    return _cam_from(acti, weights, x)


def _eigencam(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    _, (acti,), _ = _hooked(model, layer, False)(x)
    flat = acti.detach().flatten(2).transpose(1, 2).double()  # (B, positions, channels)
    centred = flat - flat.mean(1, keepdim=True)
    component = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]  # (B, channels)
    projection = (flat @ component[:, :, None])[:, :, 0]  # (B, positions)
    # The principal direction's sign is arbitrary: orient it along the mean activation.
    sign = torch.sign((flat.mean(1) * component).sum(1, keepdim=True)).clamp_min(0) * 2 - 1
    cam = torch.relu(sign * projection).view(acti.shape[0], 1, *acti.shape[2:]).to(x.dtype)
    return unit_range(default_upsampler(x.shape[2:])(cam))


@torch.no_grad()
def _scorecam(model: nn.Module, layer: str, x: torch.Tensor, cls: int, chunk: int = 64) -> torch.Tensor:
    hooked = _hooked(model, layer, False)
    _, (acti,), _ = hooked(x)
    masks = unit_range(default_upsampler(x.shape[2:])(acti.detach()))  # (B, K, *spatial) in [0, 1]
    maps = []
    for image, image_masks, image_acti in zip(x, masks, acti.detach()):
        masked = image[None] * image_masks[:, None]  # (K, C_in, *spatial)
        probs = torch.cat([torch.softmax(model(masked[i:i + chunk]), 1)[:, cls] for i in range(0, len(masked), chunk)])
        flat = image_masks.flatten(1)
        constant = flat.max(1).values == flat.min(1).values  # masks nothing: no weight
        weights = torch.where(constant, 0.0, probs).view(1, -1, *[1] * (acti.ndim - 2))
        maps.append(_cam_from(image_acti[None], weights, image[None]))
    return torch.cat(maps)


class ReLUMaxPool(nn.Module):
    """Max pooling as a tree of pairwise maxima ``max(a, b) = b + relu(a - b)``, one ``nn.ReLU`` per tree level.

    The same function as ``nn.MaxPool{1,2,3}d`` (no dilation, floor mode) or, with ``kernel_size=None``, as global
    max pooling (``AdaptiveMaxPool*d(1)``), up to float round-off; built from linear maps and element-wise ReLUs
    only, so DeepLIFT's rescale rule on it keeps completeness exactly. Padding replicates the edge: a padded
    window still holds the edge value it copies, so its maximum is unchanged (max pooling pads with -inf).

    Shapes: ``(B, C, *spatial) -> (B, C, *pooled)``.
    """

    def __init__(self, spatial_dims: int, kernel_size=None, stride=None, padding=0, max_levels: int = 40):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        # one activation per level: captum's DeepLift refuses a module called twice
        self.levels = nn.ModuleList(nn.ReLU() for _ in range(max_levels))

    @staticmethod
    def _tuple(value, n: int) -> Tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n

    def _reduce_last(self, values: torch.Tensor, levels: Iterator[nn.Module]) -> torch.Tensor:
        """The maximum over the last axis, by pairs, each level with the next ReLU of ``levels``."""
        while values.shape[-1] > 1:
            size = values.shape[-1]
            relu = next(levels, None)
            if relu is None:
                raise ValueError(f"max pooling needs more than {len(self.levels)} levels of pairs.")
            a, b = values[..., 0:size - 1:2], values[..., 1:size:2]
            carried = values[..., size - 1:] if size % 2 else values[..., :0]  # an odd one out waits a level
            values = torch.cat([b + relu(a - b), carried], -1)
        return values[..., 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, levels = self.spatial_dims, iter(self.levels)
        if self.kernel_size is None:  # global
            return self._reduce_last(x.flatten(2), levels).view(*x.shape[:2], *[1] * n)
        kernel = self._tuple(self.kernel_size, n)
        stride = self._tuple(self.stride or self.kernel_size, n)
        padding = self._tuple(self.padding, n)
        if stride == kernel and not any(padding):
            # non-overlapping windows: one axis at a time on strided views, no copy of the windows
            for dim in range(n):
                axis, k = 2 + dim, kernel[dim]
                x = x.narrow(axis, 0, x.shape[axis] // k * k).unflatten(axis, (x.shape[axis] // k, k))
                x = self._reduce_last(x.movedim(axis + 1, -1), levels)
            return x
        if any(padding):
            x = nn.functional.pad(x, [p for p in reversed(padding) for _ in range(2)], mode="replicate")
        for dim in range(n):
            x = x.unfold(2 + dim, kernel[dim], stride[dim])
        pooled = x.shape[:2 + n]
        return self._reduce_last(x.flatten(2 + n), levels).view(pooled)


def relu_max_pools(model: nn.Module) -> nn.Module:
    """``model`` (changed in place, and returned) with every max pool swapped for the equal :class:`ReLUMaxPool`:
    ``MaxPool{1,2,3}d`` without dilation or ceil mode, and ``AdaptiveMaxPool{1,2,3}d`` with output size 1."""
    pools = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
    adaptive = {nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}
    for name, module in list(model.named_modules()):
        kind = type(module)
        if kind in pools:
            if module.dilation not in (1, (1,) * pools[kind]) or module.ceil_mode or module.return_indices:
                raise ValueError(f"{name}: max pooling with dilation, ceil_mode or return_indices is not supported.")
            swap = ReLUMaxPool(pools[kind], module.kernel_size, module.stride, module.padding)
        elif kind in adaptive:
            size = module.output_size
            if any(s != 1 for s in ((size,) if isinstance(size, int) else size)) or module.return_indices:
                raise ValueError(f"{name}: only global adaptive max pooling (output size 1) is supported.")
            swap = ReLUMaxPool(adaptive[kind])
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, swap)
    return model


def _background(x: torch.Tensor, baselines: Optional[torch.Tensor]) -> torch.Tensor:
    background = (torch.zeros_like(x[:1]) if baselines is None else baselines.to(x)).detach()
    if background.shape[1:] != x.shape[1:]:
        raise ValueError(f"baselines {tuple(background.shape)} do not match the images {tuple(x.shape)}.")
    return background


def deeplift_shap(model: nn.Module, x: torch.Tensor, target: torch.Tensor, baselines: Optional[torch.Tensor] = None,
                  chunk: int = 1) -> torch.Tensor:
    """Signed DeepSHAP attributions ``(B, C_in, *spatial)`` of the ``target`` ``(B,)`` logits: captum's
    ``DeepLiftShap`` on a copy of ``model`` (eval mode, sharing its parameters) whose max pools are
    :class:`ReLUMaxPool` s. Completeness: an image's attributions sum to f_target(x) minus the mean of f_target over
    ``baselines`` (``(N, C_in, *spatial)``, default one all-zero image). Run ``chunk`` images at a time (one was the
    fastest on 2 CPU cores: 4.4 s for 32 images against 8.4 s by fours); deterministic,
    so an image's attributions do not depend on its batch."""
    background = _background(x, baselines)
    target = torch.as_tensor(target, device=x.device).long().view(-1)
    with _borrowed(model) as clone:
        # DeepLiftShap averages DeepLift over two or more baselines; with one, it is DeepLift itself
        explainer = (DeepLiftShap if len(background) > 1 else DeepLift)(relu_max_pools(clone))
        parts = []
        for i in range(0, len(x), chunk):
            images = x[i:i + chunk].detach()
            baselines = background if len(background) > 1 else background.expand_as(images)
            try:
                parts.append(explainer.attribute(images, baselines=baselines, target=target[i:i + chunk]).detach())
            except RuntimeError as error:
                if "used more than once" not in str(error):
                    raise
                raise ValueError(f"deepshap: captum's DeepLiftShap needs every activation module called once per "
                                 f"forward pass, and {type(model).__name__} calls one twice (as MONAI's ResNet "
                                 "blocks do); use 'gradientshap' for this network.") from error
    return torch.cat(parts)


def _gradientshap(model: nn.Module, x: torch.Tensor, target: torch.Tensor, n_samples: int, stdevs: float,
                  seeds: torch.Tensor, baselines: Optional[torch.Tensor]) -> torch.Tensor:
    background = _background(x, baselines)
    explainer, maps = GradientShap(model), []
    for image, cls, seed in zip(x.detach(), target, seeds.tolist()):  # one seed per image: batch-independent
        with _seeded(seed):
            attributions = explainer.attribute(image[None], baselines=background, target=int(cls),
                                               n_samples=n_samples, stdevs=stdevs)
        maps.append(attributions.detach().abs().sum(1, keepdim=True))
    return torch.cat(maps)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch and numpy's global generator (captum draws from both), restoring both afterwards."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def _vanilla_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x_leaf = x.detach().requires_grad_(True)
    log_probs = torch.log_softmax(model(x_leaf), dim=1)
    (grad,) = torch.autograd.grad(log_probs.gather(1, target[:, None]).sum(), x_leaf)
    return grad.abs().sum(1, keepdim=True)


def attribute(method: str, model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor] = None, *,
              layer: Optional[str] = None, rho: float = 0.9, head: str = "softmax", n_samples: int = 16,
              stdevs: float = 0.1, seed: Seeds = 0, baselines: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ``(B, 1, *spatial)`` magnitude map of ``method`` for ``x`` ``(B, C_in, *spatial)``.

    Args:
        method: one of :data:`METHODS`.
        model: classifier returning ``(B, C)`` logits; used in eval mode, left as it was (mode, ``.grad``, hooks).
        x: images.
        target: ``(B,)`` classes to explain; default the predicted ones. Unused by the iFIM maps, Eigen-CAM and
            the random map.
        layer: module name a CAM reads (default :func:`default_cam_layer`).
        rho, head: the iFIM energy threshold and head (:func:`scripts.ifim.ifim_decompose`).
        n_samples, stdevs: GradientShap draws and baseline noise.
        seed: seeds the random map and GradientShap: an integer (hashed with each image) or ``(B,)`` seeds.
        baselines: the SHAP methods' background ``(N, C_in, *spatial)``; default one all-zero image.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}.")
    if method == "random":
        return torch.stack([torch.rand((1, *x.shape[2:]), generator=torch.Generator().manual_seed(s))
                            for s in per_image_seeds(x, seed).tolist()]).to(x)
    if method.startswith("ifim"):
        return ifim_decompose(model, x, rho=rho, head=head).maps()[0 if method == "ifim_sensitive" else 1]
    with _borrowed(model) as clone:
        if target is None:
            with torch.no_grad():
                target = clone(x).argmax(1)
        target = torch.as_tensor(target, device=x.device).long().view(-1)
        if method == "vanilla_gradient":
            return _vanilla_gradient(clone, x, target)
        if method == "deepshap":
            return deeplift_shap(clone, x, target, baselines).abs().sum(1, keepdim=True)
        if method == "gradientshap":
            return _gradientshap(clone, x, target, n_samples, stdevs, per_image_seeds(x, seed), baselines)
        layer = layer or default_cam_layer(clone)
        if method == "eigencam":
            return _eigencam(clone, layer, x).detach()
        cams: Dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
            "gradcam": lambda z, c: GradCAM(clone, layer, postprocessing=unit_range)(z, class_idx=c),
            "gradcampp": lambda z, c: torch.cat([GradCAMpp(clone, layer, postprocessing=unit_range)(
                z[i:i + 1], class_idx=c) for i in range(len(z))]),
            "xgradcam": lambda z, c: _xgradcam(clone, layer, z, c),
            "scorecam": lambda z, c: _scorecam(clone, layer, z, c),
        }
        return _by_target(x, target, cams[method]).detach()
