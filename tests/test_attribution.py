"""Every map method: one call shape, the model left as it was, batch = single images, and known relations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scripts.attribution import MAPS, ReLUMaxPool, attribute, deeplift_shap, default_cam_layer, relu_max_pools
from scripts.networks import VGG16, ShallowCNN, get_network

TARGETS = torch.tensor([0, 2, 1, 2])


@pytest.fixture(scope="module")
def shallow():
    torch.manual_seed(0)
    return ShallowCNN(2, 1, 3), torch.randn(4, 1, 24, 24)


def _no_hooks(model):
    return all(not (m._forward_hooks or m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method", MAPS)
def test_one_call_shape_and_model_left_as_it_was(shallow, method):
    model, x = shallow
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    out = attribute(method, model, x, TARGETS)
    assert out.shape == (4, 1, 24, 24) and out.dtype == x.dtype
    assert torch.isfinite(out).all() and out.min() >= 0
    assert model.training and _no_hooks(model)
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "scorecam", "vanilla_gradient", "eigencam",
                                    "ifim_sensitive", "deepshap", "gradientshap", "random"])
def test_batch_with_mixed_targets_equals_single_images(shallow, method):
    """MONAI's CAMs mix a batch's targets (and its GradCAM++ its scores); the wrapper must not. The seeded maps draw
    per image, so an image's map does not depend on the other images of its batch either."""
    model, x = shallow
    batched = attribute(method, model, x, TARGETS)
    for i in range(4):
        single = attribute(method, model, x[i:i + 1], TARGETS[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], single, rtol=1e-4, atol=1e-5)
    if method not in ("eigencam", "ifim_sensitive", "random"):  # these ignore the target
        assert not torch.allclose(batched, attribute(method, model, x, torch.zeros(4, dtype=torch.long)))


def test_binary_ifim_sensitive_map_ranks_pixels_as_the_logit_difference_gradient():
    """C = 2: x_sens = (u_1^T x) u_1 with u_1 = +-grad s / |grad s| (eq. 12), so S(x) is |grad s| up to a per-image
    factor and its top-k pixels are those of |grad s|."""
    torch.manual_seed(1)
    model = ShallowCNN(2, 1, 2).double()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    sensitive = attribute("ifim_sensitive", model, x)
    x_leaf = x.clone().requires_grad_(True)
    logits = model(x_leaf)
    (grad_s,) = torch.autograd.grad((logits[:, 0] - logits[:, 1]).sum(), x_leaf)
    for b in range(3):
        s, g = sensitive[b].flatten(), grad_s[b].abs().flatten()
        torch.testing.assert_close(s / s.max(), g / g.max(), rtol=1e-9, atol=1e-12)


def test_vanilla_gradient_is_the_log_probability_gradient(shallow):
    model, x = shallow
    out = attribute("vanilla_gradient", model, x, TARGETS)
    x_leaf = x.clone().requires_grad_(True)
    log_p = torch.log_softmax(model.eval()(x_leaf), 1)
    (grad,) = torch.autograd.grad(log_p[torch.arange(4), TARGETS].sum(), x_leaf)
    torch.testing.assert_close(out, grad.abs())


def test_xgradcam_equals_gradcam_under_global_average_pooling():
    """With global average pooling and a linear head, dY/dA_k = w_k / HW everywhere, so XGrad-CAM's weights
    sum(A_k dY/dA_k) / sum(A_k) and Grad-CAM's mean gradient coincide."""
    torch.manual_seed(2)
    model = ShallowCNN(2, 1, 3, global_pool="avg")
    x = torch.randn(3, 1, 16, 16)
    torch.testing.assert_close(attribute("xgradcam", model, x, TARGETS[:3]),
                               attribute("gradcam", model, x, TARGETS[:3]), rtol=1e-4, atol=1e-5)


def test_random_and_gradientshap_are_seeded(shallow):
    model, x = shallow
    for method in ("random", "gradientshap"):
        a, b = attribute(method, model, x, TARGETS, seed=3), attribute(method, model, x, TARGETS, seed=3)
        assert torch.equal(a, b) and not torch.equal(a, attribute(method, model, x, TARGETS, seed=4))


@pytest.mark.parametrize("method", ["deepshap", "gradientshap"])
def test_shap_background_is_the_given_set(shallow, method):
    """The SHAP baselines are the fixed background (default one all-zero image), never the batch."""
    model, x = shallow
    zeros = attribute(method, model, x, TARGETS, seed=3)
    torch.testing.assert_close(attribute(method, model, x, TARGETS, seed=3, baselines=torch.zeros(1, 1, 24, 24)),
                               zeros)
    background = torch.rand(5, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(attribute(method, model, x, TARGETS, seed=3, baselines=background), zeros)
    with pytest.raises(ValueError, match="baselines"):
        attribute(method, model, x, TARGETS, baselines=torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), (3, 1, 1), (None, None, 0)])
def test_relu_max_pool_is_max_pooling(dims, kernel, stride, padding):
    """The ReLU tree computes max pooling (overlapping and padded windows, odd sizes, global) to float64 round-off."""
    x = torch.randn(2, 3, *[9] * dims, dtype=torch.float64, generator=torch.Generator().manual_seed(dims))
    if kernel is None:
        expected = x.flatten(2).max(-1).values.view(2, 3, *[1] * dims)
    else:
        expected = [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d][dims - 1](kernel, stride, padding)(x)
    torch.testing.assert_close(ReLUMaxPool(dims, kernel, stride, padding)(x), expected, rtol=0, atol=1e-14)


def _completeness_gap(model, x, target, background, attributions):
    """Largest |sum of an image's attributions - (f_t(x) - mean_b f_t(b))| over the batch."""
    with torch.no_grad():
        explained = model(x).gather(1, target[:, None])[:, 0] - model(background)[:, target].mean(0)
    return (attributions.flatten(1).sum(1) - explained).abs().max().item()


@pytest.mark.parametrize("name", ["shallow_max", "shallow_avg", "shallow_3d", "vgg16"])
def test_deepshap_attributions_are_complete(name):
    """SHAP's completeness: the attributions of an image sum to f_t(x) - E_b f_t(b), exactly in float64, for the
    networks the study uses: max pools inside and at the head (where captum's own max-pool rule breaks it), average
    pooling, 3D, and VGG16 (dropout, adaptive average pooling, fully connected ReLUs). The map is their magnitude."""
    torch.manual_seed(3)
    dims = 3 if name == "shallow_3d" else 2
    model = {"shallow_max": lambda: ShallowCNN(2, 1, 3, (4, 8, 8)),
             "shallow_avg": lambda: ShallowCNN(2, 1, 3, (4, 8, 8), global_pool="avg"),
             "shallow_3d": lambda: ShallowCNN(3, 1, 3, (2, 4, 4)),
             "vgg16": lambda: VGG16(1, 3, hidden=8)}[name]().double().eval()
    size = 32 if name == "vgg16" else 12
    x = torch.rand(3, 1, *[size] * dims, dtype=torch.float64)
    background = torch.rand(4, 1, *[size] * dims, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    attributions = deeplift_shap(model, x, target, background)
    assert attributions.shape == x.shape
    assert _completeness_gap(model, x, target, background, attributions) < 1e-10
    one = background[:1]  # one baseline: DeepLift itself
    assert _completeness_gap(model, x, target, one, deeplift_shap(model, x, target, one)) < 1e-10
    torch.testing.assert_close(attribute("deepshap", model, x, target, baselines=background),
                               attributions.abs().sum(1, keepdim=True))


def test_captum_max_pool_rule_alone_breaks_completeness():
    """Why the max pools are swapped: captum's DeepLiftShap on the plain network misses completeness by far more
    than round-off (its max-pool rule falls back to the gradient, and adaptive max pooling gets only the gradient)."""
    from captum.attr import DeepLiftShap

    torch.manual_seed(3)
    model = ShallowCNN(2, 1, 3, (4, 8, 8)).double().eval()
    x, background = torch.rand(3, 1, 12, 12, dtype=torch.float64), torch.rand(4, 1, 12, 12, dtype=torch.float64)
    target = torch.tensor([0, 1, 2])
    plain = DeepLiftShap(model).attribute(x, baselines=background, target=target)
    assert _completeness_gap(model, x, target, background, plain) > 1e-3
    swapped = DeepLiftShap(relu_max_pools(model)).attribute(x, baselines=background, target=target)
    assert _completeness_gap(model, x, target, background, swapped) < 1e-10


def test_deepshap_names_gradientshap_for_networks_that_reuse_an_activation():
    model = get_network("resnet18", num_classes=2).eval()
    with pytest.raises(ValueError, match="gradientshap"):
        attribute("deepshap", model, torch.rand(1, 1, 32, 32), torch.tensor([1]))


def test_scorecam_weights_are_the_masked_inputs_target_probabilities():
    """A network whose CAM layer sits at input resolution, so every step can be done by hand: channel k's mask is
    its activation scaled to [0, 1]; its weight the softmax probability of the target for the image times that
    mask (a constant channel masks nothing and weighs 0); the map ReLU(sum_k w_k A_k) scaled to [0, 1]."""
    import numpy as np
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.ReLU())
            self.features[0].weight.data = torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1, 1)
            self.classifier = nn.Linear(3, 2)
            self.classifier.weight.data = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 3.0, 0.0]])
            self.classifier.bias.data = torch.tensor([0.125, -0.25])  # exact in float32, as every weight here

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    image = np.array([[0.5, -1.0, 2.0], [1.5, -0.5, 0.0], [-2.0, 1.0, 0.25]])
    model = Tiny().double()
    acti = [np.maximum(w * image, 0) for w in (1.0, -1.0, 0.0)]  # channel 3 is constant (zero)
    weights = []
    for a in acti:
        if a.max() == a.min():
            weights.append(0.0)
            continue
        masked = image * (a - a.min()) / (a.max() - a.min())
        features = [np.maximum(w * masked, 0).mean() for w in (1.0, -1.0, 0.0)]
        logits = np.array([[1.0, -2.0, 0.5], [-1.0, 3.0, 0.0]]) @ features + np.array([0.125, -0.25])
        weights.append(np.exp(logits[1]) / np.exp(logits).sum())  # target class 1
    cam = np.maximum(sum(w * a for w, a in zip(weights, acti)), 0)
    expected = (cam - cam.min()) / (cam.max() - cam.min())
    got = attribute("scorecam", model, torch.tensor(image)[None, None], torch.tensor([1]))
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-9, atol=1e-12)


def test_default_layers_and_errors():
    assert default_cam_layer(ShallowCNN()) == "features"
    assert default_cam_layer(get_network("resnet18")) == "layer4"
    assert default_cam_layer(get_network("vgg16", hidden=8)) == "features"
    with pytest.raises(ValueError, match="unknown method"):
        attribute("lime", ShallowCNN(), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="no convolution"):
        default_cam_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam"])
def test_cams_on_resnet18_in_3d(method):
    torch.manual_seed(3)
    model = get_network("resnet18", spatial_dims=3, num_classes=2)
    x = torch.randn(2, 1, 16, 16, 16)
    out = attribute(method, model, x, torch.tensor([0, 1]))
    assert out.shape == (2, 1, 16, 16, 16) and torch.isfinite(out).all() and _no_hooks(model)


class BrightPixelNet(torch.nn.Module):
    """features: two 1x1 ReLU channels proportional to the image; class-1 logit = their global mean. Every CAM of
    class 1 is then proportional to the image itself, so it must peak on the image's brightest pixel."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.copy_(torch.tensor([1.0, 0.5]).view(2, 1, 1, 1))
            self.classifier.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam"])
def test_cams_peak_on_the_pixel_that_drives_the_class(method):
    x = torch.full((2, 1, 12, 12), 0.1)
    x[0, 0, 3, 7], x[1, 0, 9, 2] = 1.0, 1.0
    x[:, :, :, :6] += 0.05  # a second, weaker level, so the map is not two-valued
    maps = attribute(method, BrightPixelNet(), x, torch.tensor([1, 1]))
    assert maps.shape == (2, 1, 12, 12) and maps.min() >= 0 and maps.max() <= 1
    assert maps[0, 0].argmax().item() == 3 * 12 + 7 and maps[1, 0].argmax().item() == 9 * 12 + 2
    assert maps[0, 0, 3, 7] == 1.0 and maps[0, 0, 0, 11] < maps[0, 0, 0, 0]  # ordered as the image, not flipped


def test_eigencam_of_rank_one_activations_is_their_spatial_pattern():
    """Activations v_c * x_p (a 1x1 convolution of a non-negative image, then ReLU) have one principal component,
    v; projected on it, oriented along the mean activation and scaled to [0, 1], they give the image itself."""
    from torch import nn

    class RankOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 4, 1, bias=False), nn.ReLU())
            self.features[0].weight.data = torch.tensor([0.5, 2.0, -1.0, 1.5]).view(4, 1, 1, 1)
            self.classifier = nn.Linear(4, 2)

        def forward(self, x):
            return self.classifier(self.features(x).mean((2, 3)))

    x = torch.rand(2, 1, 6, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = (x - x.amin((2, 3), keepdim=True)) / (x.amax((2, 3), keepdim=True) - x.amin((2, 3), keepdim=True))
    torch.testing.assert_close(attribute("eigencam", RankOne().double(), x), expected, rtol=1e-9, atol=1e-12)


def test_vanilla_gradient_keeps_the_target_gradient_on_a_confident_float32_prediction():
    """A logit gap of about 21 (p_other ~ 1e-9): float32 autograd through log_softmax rounds 1 - p_t to 0. The map
    must still be |grad log p_t| as a float64 computation of the same network gives it."""
    torch.manual_seed(3)
    model = ShallowCNN(2, 1, 2)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([12.0, -12.0]))  # confident for class 0 whatever the image
    reference_model = copy.deepcopy(model).double().eval()
    x64 = x.double().requires_grad_(True)
    log_p = torch.log_softmax(reference_model(x64), 1)[:, 0]
    assert (log_p.detach().exp() > 1 - 1e-8).all()  # confident: 1 - p_0 is below float32's resolution of 1
    (reference,) = torch.autograd.grad(log_p.sum(), x64)
    out = attribute("vanilla_gradient", model, x, torch.zeros(3, dtype=torch.long))
    scale = reference.abs().max().item()  # ~1e-12: tolerances relative to the map's own size
    torch.testing.assert_close(out.double(), reference.abs(), rtol=1e-3, atol=1e-4 * scale)
