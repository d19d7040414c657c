# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Every map the evaluation compares, in one registry: :data:`MAP_METHODS`, one :class:`MapMethod` record each.

A record says what its method needs (a target class, a CAM layer, a background set, seeds) and which maps it
returns: one, or iFIM's pair S(x) and I(x). Everything else is derived from it: :data:`MAPS` (every map
:func:`attribute` returns), :data:`DEFAULT_STUDY_METHODS` (what the evaluation and the review compare unless told
otherwise) and :func:`compute_maps` (every map of a set of methods, each method run once). Adding a method is one
record, plus its function if it is new.

``attribute(map_name, model, x, target) -> (B, 1, *spatial)``: maps are non-negative magnitudes at input resolution,
summed over input channels where the method works per channel. Methods:

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
* ``vanilla_gradient``: |grad_x log p_target(x)|, its coefficients in float64 so that it does not lose the target's
  own gradient on confident predictions in float32 (:func:`_vanilla_gradient`).
* ``random``: uniform noise, seeded per image: the control every method should beat.

``seed`` is an integer, hashed with each image's values into per-image seeds
(``scripts.seeding.image_seeds``), or ``(B,)`` per-image seeds.

MONAI's CAMs (1.6.1) score ``logits[:, class_idx]``, which for a per-image ``class_idx`` tensor mixes the images'
targets: images are grouped by target and each group gets an integer class. Its GradCAM++ also multiplies the
``(B,)`` scores into ``(B, C, *spatial)`` gradients without reshaping (broadcast along the last spatial axis), right
only for one image: it runs image by image. The CAMs register hooks they never remove and zero the parameters'
``.grad``: every method runs on a copy of the model that shares its parameters (``scripts.borrowing.borrowed``), and
parameter gradients are restored afterwards. Every CAM is scaled to [0, 1] by :func:`unit_range`, not MONAI's
``default_normalizer``, which maps (min, max) to (1, 0) and so would rank a CAM's coldest pixels first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from captum.attr import DeepLift, DeepLiftShap, GradientShap
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks, default_upsampler
from torch import nn

from .borrowing import borrowed
from .ifim import DEFAULT_RHO, ifim_decompose
from .seeding import Seeds, per_image_seeds, seeded

__all__ = ["MapMethod", "MapOptions", "MAP_METHODS", "MAPS", "IFIM", "DEFAULT_STUDY_METHODS", "CONTROL_MAPS",
           "DISPLAY_NAMES", "display_name", "select_methods",
           "map_names", "compute_maps", "attribute", "default_cam_layer", "unit_range", "ReLUMaxPool", "relu_max_pools",
           "deeplift_shap"]


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
    with borrowed(model, copy=True) as clone:
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
        with seeded(seed):
            attributions = explainer.attribute(image[None], baselines=background, target=int(cls),
                                               n_samples=n_samples, stdevs=stdevs)
        maps.append(attributions.detach().abs().sum(1, keepdim=True))
    return torch.cat(maps)


def _vanilla_gradient(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|grad_x log p_t| as one vector-Jacobian product of the logits, ``sum_c w_c grad z_c`` with ``w = e_t - p``
    computed in float64 from the logits (``w_t`` as the sum of the other classes' probabilities). Autograd through
    ``log_softmax`` in float32 rounds ``1 - p_t`` to 0 on a confident prediction and so drops the target's own
    gradient; here it is kept until the other classes' probabilities underflow float32 (logit gaps beyond ~87)."""
    x_leaf = x.detach().requires_grad_(True)
    logits = model(x_leaf)
    probs = torch.softmax(logits.detach().double(), dim=1)
    weights = -probs
    others = probs.scatter(1, target[:, None], 0.0).sum(1)  # 1 - p_t without the cancellation
    weights = weights.scatter(1, target[:, None], others[:, None])
    (grad,) = torch.autograd.grad(logits, x_leaf, grad_outputs=weights.to(logits.dtype))
    return grad.abs().sum(1, keepdim=True)


@dataclass(frozen=True)
class MapOptions:
    """What a method may need besides the model, the images and the target: the CAM ``layer``, iFIM's ``rho`` and
    ``head``, GradientShap's ``n_samples`` / ``stdevs``, per-image ``seeds`` ``(B,)`` and the SHAP ``baselines``."""

    layer: Optional[str] = None
    rho: float = DEFAULT_RHO
    head: str = "softmax"
    n_samples: int = 16
    stdevs: float = 0.1
    seeds: Optional[torch.Tensor] = None
    baselines: Optional[torch.Tensor] = None


MapFunction = Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor], MapOptions], Tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class MapMethod:
    """One map method of the comparison.

    Attributes:
        name: what configs, results and the perturbation study call the method.
        display: its name in prose.
        function: ``(model, x, target, options) -> maps``, one ``(B, 1, *spatial)`` map per entry of ``maps``.
        maps: the names of the maps it returns; default ``(name,)``. iFIM returns its pair (S, I): the
            perturbation study ranks the top pixels by the first and the bottom pixels by the last.
        needs_target: explains a class (default the predicted one); else target-free.
        needs_layer: reads a convolutional layer (:func:`default_cam_layer` unless one is given).
        needs_background: takes a background set (``baselines``).
        needs_seed: draws at random, from each image's seed.
        in_default_study: among :data:`DEFAULT_STUDY_METHODS`.
        control: a control every map should beat (the random map), not a competitor in claims of the form
            "iFIM's map changes most" that noise wins trivially.
    """

    name: str
    display: str
    function: MapFunction
    maps: Tuple[str, ...] = ()
    needs_target: bool = True
    needs_layer: bool = False
    needs_background: bool = False
    needs_seed: bool = False
    in_default_study: bool = True
    control: bool = False

    def __post_init__(self):
        if not self.maps:
            object.__setattr__(self, "maps", (self.name,))

    def ranked(self, maps: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The maps whose highest and lowest pixels the perturbation study replaces: (S, I) for iFIM, the one map
        twice otherwise."""
        return maps[self.maps[0]], maps[self.maps[-1]]


def _ifim(model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
    return ifim_decompose(model, x, rho=options.rho, head=options.head).maps()


class _PerTarget:
    """A CAM of one target class for a sub-batch, ``cam(model, layer, x, class)``, run for every target class of
    the batch. A class, not a closure: the registry's records travel between processes (pickled)."""

    def __init__(self, cam: Callable[[nn.Module, str, torch.Tensor, int], torch.Tensor]):
        self.cam = cam

    def __call__(self, model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
        return (_by_target(x, target, lambda z, c: self.cam(model, options.layer, z, c)).detach(),)


def _gradcam(model: nn.Module, layer: str, x: torch.Tensor, cls: int) -> torch.Tensor:
    return GradCAM(model, layer, postprocessing=unit_range)(x, class_idx=cls)


def _gradcampp(model: nn.Module, layer: str, x: torch.Tensor, cls: int) -> torch.Tensor:
    cam = GradCAMpp(model, layer, postprocessing=unit_range)
    return torch.cat([cam(x[i:i + 1], class_idx=cls) for i in range(len(x))])


def _eigencam_map(model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
    return (_eigencam(model, options.layer, x).detach(),)


def _deepshap_map(model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
    return (deeplift_shap(model, x, target, options.baselines).abs().sum(1, keepdim=True),)


def _gradientshap_map(model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
    return (_gradientshap(model, x, target, options.n_samples, options.stdevs, options.seeds, options.baselines),)


def _vanilla_gradient_map(model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
    return (_vanilla_gradient(model, x, target),)


def _random(model, x, target, options: MapOptions) -> Tuple[torch.Tensor, ...]:
    return (torch.stack([torch.rand((1, *x.shape[2:]), generator=torch.Generator().manual_seed(s))
                         for s in options.seeds.tolist()]).to(x),)


MAP_METHODS: Dict[str, MapMethod] = {m.name: m for m in (
    MapMethod("ifim", "iFIM", _ifim, maps=("ifim_sensitive", "ifim_complement"), needs_target=False),
    MapMethod("gradcam", "Grad-CAM", _PerTarget(_gradcam), needs_layer=True),
    MapMethod("gradcampp", "Grad-CAM++", _PerTarget(_gradcampp), needs_layer=True),
    MapMethod("xgradcam", "XGrad-CAM", _PerTarget(_xgradcam), needs_layer=True),
    MapMethod("eigencam", "Eigen-CAM", _eigencam_map, needs_target=False, needs_layer=True),
    MapMethod("scorecam", "Score-CAM", _PerTarget(_scorecam), needs_layer=True),
    MapMethod("deepshap", "DeepSHAP", _deepshap_map, needs_background=True),
    # the slowest map: left out of the default study for time
    MapMethod("gradientshap", "GradientShap", _gradientshap_map, needs_background=True, needs_seed=True,
              in_default_study=False),
    MapMethod("vanilla_gradient", "vanilla gradient", _vanilla_gradient_map),
    MapMethod("random", "random map", _random, needs_target=False, needs_seed=True, control=True),
)}
IFIM = MAP_METHODS["ifim"]  # the method the paper's claims are about
MAPS = tuple(name for method in MAP_METHODS.values() for name in method.maps)  # every map attribute() returns
DEFAULT_STUDY_METHODS = tuple(name for name, method in MAP_METHODS.items() if method.in_default_study)
CONTROL_MAPS = tuple(name for method in MAP_METHODS.values() if method.control for name in method.maps)
_METHOD_OF = {name: method for method in MAP_METHODS.values() for name in method.maps}
# what a reader calls each method and map in figures and tables (results and CSVs keep the names above)
DISPLAY_NAMES = {**{name: method.display for name, method in MAP_METHODS.items()},
                 **{name: method.display for method in MAP_METHODS.values() for name in method.maps
                    if len(method.maps) == 1},
                 IFIM.maps[0]: f"{IFIM.display} S(x)", IFIM.maps[1]: f"{IFIM.display} I(x)",
                 IFIM.name: f"{IFIM.display} (S vs I)"}


def display_name(name: str) -> str:
    """A method's or map's name as a reader knows it (``Grad-CAM++``, ``iFIM S(x)``); unknown names as given."""
    return DISPLAY_NAMES.get(name, name)


def select_methods(names: Optional[Sequence[str]] = None) -> List[MapMethod]:
    """The records of ``names`` (method names, or map names: a map selects the method that returns it), in
    registry order; None: :data:`DEFAULT_STUDY_METHODS`."""
    names = DEFAULT_STUDY_METHODS if names is None else names
    unknown = sorted(set(names) - set(MAP_METHODS) - set(_METHOD_OF))
    if unknown or not names:
        raise ValueError(f"methods must be one or more of {tuple(MAP_METHODS)} or maps of {MAPS}; unknown: "
                         f"{unknown}.")
    wanted = {MAP_METHODS[n].name if n in MAP_METHODS else _METHOD_OF[n].name for n in names}
    return [method for name, method in MAP_METHODS.items() if name in wanted]


def map_names(names: Optional[Sequence[str]] = None) -> List[str]:
    """The maps ``names`` stand for, in the order given: a map itself, a method its maps; None: every map of
    :data:`DEFAULT_STUDY_METHODS`."""
    names = [n for method in select_methods(None) for n in method.maps] if names is None else list(names)
    select_methods(names)  # refuses unknown names
    return [m for n in names for m in (MAP_METHODS[n].maps if n in MAP_METHODS else (n,))]


def compute_maps(methods: Sequence[MapMethod], model: nn.Module, x: torch.Tensor,
                 target: Optional[torch.Tensor] = None, seed: Seeds = 0, **options) -> Dict[str, torch.Tensor]:
    """Every map of ``methods`` for ``x`` ``(B, C_in, *spatial)``: ``{map name: (B, 1, *spatial)}``, detached,
    each method run once, in eval mode (the model is left as it was: mode, ``.grad``, hooks; the CAMs, which leave
    hooks on the module they are given, run on a copy sharing its parameters).

    Args:
        target: ``(B,)`` classes to explain; default the predicted ones (for the methods that take one).
        seed: an integer (hashed with each image) or ``(B,)`` per-image seeds, for the methods that draw.
        options: :class:`MapOptions` fields (``layer``, ``rho``, ``head``, ``n_samples``, ``stdevs``,
            ``baselines``).
    """
    maps: Dict[str, torch.Tensor] = {}
    with borrowed(model, copy=any(m.needs_layer for m in methods)) as clone:
        settings = MapOptions(**options)
        if any(m.needs_seed for m in methods):
            settings = _with(settings, seeds=per_image_seeds(x, seed))
        if any(m.needs_layer for m in methods) and settings.layer is None:
            settings = _with(settings, layer=default_cam_layer(clone))
        if any(m.needs_target for m in methods):
            if target is None:
                with torch.no_grad():
                    target = clone(x).argmax(1)
            target = torch.as_tensor(target, device=x.device).long().view(-1)
        for method in methods:
            parts = method.function(clone, x, target if method.needs_target else None, settings)
            maps.update(zip(method.maps, (part.detach() for part in parts)))
    return maps


def _with(options: MapOptions, **changes) -> MapOptions:
    return MapOptions(**{**options.__dict__, **changes})


def attribute(method: str, model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor] = None, *,
              layer: Optional[str] = None, rho: float = DEFAULT_RHO, head: str = "softmax", n_samples: int = 16,
              stdevs: float = 0.1, seed: Seeds = 0, baselines: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The ``(B, 1, *spatial)`` magnitude map ``method`` (one of :data:`MAPS`) for ``x`` ``(B, C_in, *spatial)``.

    Args:
        method: a map name (``ifim_sensitive``, ``gradcam``, ...) or a method with one map.
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
    record = _METHOD_OF.get(method)
    if record is None:
        raise ValueError(f"unknown method {method!r}; choose one of the maps {MAPS}.")
    return compute_maps([record], model, x, target, seed, layer=layer, rho=rho, head=head, n_samples=n_samples,
                        stdevs=stdevs, baselines=baselines)[method]
