"""SKS/BKS signal insertion and the procedural phantom."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.data import phantom_dataset, phantom_slice
from scripts.transforms import InsertGaussianSignal, InsertGaussianSignald, gaussian_blob


def _image_and_mask(shape=(32, 32)):
    image = torch.zeros(1, *shape)
    mask = torch.zeros(1, *shape, dtype=torch.uint8)
    region = tuple(slice(n // 4, n // 2) for n in shape)
    mask[(0, *region)] = 1
    return image, mask


def test_blob_peak_and_width():
    blob = gaussian_blob((21, 21), (10, 10), sigma=2.0, amplitude=0.3, dtype=torch.float64)
    assert blob.max() == pytest.approx(0.3) and blob[10, 10] == pytest.approx(0.3)
    assert blob[10, 12] == pytest.approx(0.3 * np.exp(-4 / 8))  # 2 voxels away: exp(-r^2 / (2 sigma^2))
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blob((4, 4), (1, 1), sigma=0.0, amplitude=1.0)


@pytest.mark.parametrize("shape", [(32, 32), (12, 14, 10)])
def test_present_signal_is_one_blob_centred_in_the_mask(shape):
    image, mask = _image_and_mask(shape)
    t = InsertGaussianSignal(prob=1.0, amplitude_range=(0.1, 0.35), sigma=(1.5, 2.5)).set_random_state(0)
    out = t(image, mask)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert t.present and mask[(0, *t.center)] == 1
    assert 0.1 <= t.amplitude <= 0.35 and 1.5 <= t.sigma <= 2.5
    peak = tuple(int(i) for i in np.unravel_index(int(out[0].argmax()), shape))
    assert peak == t.center and float(out.max()) == pytest.approx(t.amplitude, rel=1e-6)
    expected = gaussian_blob(shape, t.center, t.sigma, t.amplitude)
    torch.testing.assert_close(out[0], expected)


def test_absent_signal_leaves_image_unchanged():
    image, mask = _image_and_mask()
    image = torch.rand_like(image)
    t = InsertGaussianSignal(prob=0.0).set_random_state(0)
    assert torch.equal(t(image, mask), image) and not t.present


def test_present_fraction_and_amplitudes_over_many_draws():
    image, mask = _image_and_mask()
    d = InsertGaussianSignald(keys="image", prob=0.3, amplitude_range=(0.1, 0.35)).set_random_state(1)
    draws = [d({"image": image, "mask": mask}) for _ in range(2000)]
    labels = np.array([s["label"] for s in draws])
    assert abs(labels.mean() - 0.3) < 0.035  # about 3.5 standard errors
    amps = np.array([s["signal_amplitude"] for s in draws if s["label"]])
    assert amps.min() >= 0.1 and amps.max() <= 0.35 and amps.std() > 0.05  # uniform over the range
    for s in draws[:200]:
        if s["label"]:
            assert mask[(0, *s["signal_center"].long().tolist())] == 1
        else:
            assert s["signal_center"].tolist() == [-1, -1] and s["signal_amplitude"] == 0 and s["signal_sigma"] == 0
            assert torch.equal(s["image"], image)


def test_dict_transform_is_reproducible_and_shares_one_draw_across_keys():
    image, mask = _image_and_mask()
    data = {"image": image, "image2": image.clone() + 1, "mask": mask}
    a = InsertGaussianSignald(keys=["image", "image2"], prob=1.0).set_random_state(7)(data)
    b = InsertGaussianSignald(keys=["image", "image2"], prob=1.0).set_random_state(7)(data)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["signal_center"], b["signal_center"])
    torch.testing.assert_close(a["image2"] - 1, a["image"])
    assert a["label"] == 1


def test_empty_mask_and_bad_shapes_raise():
    image, mask = _image_and_mask()
    with pytest.raises(ValueError, match="empty"):
        InsertGaussianSignal(prob=1.0)(image, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="spatial shape"):
        InsertGaussianSignal(prob=1.0)(image, mask[:, :10])
    with pytest.raises(KeyError, match="mask"):
        InsertGaussianSignald(keys="image")({"image": image})
    with pytest.raises(ValueError, match="amplitude_range"):
        InsertGaussianSignal(amplitude_range=(0.3, 0.1))


def test_phantom_slice_and_dataset():
    image, mask = phantom_slice(64, np.random.RandomState(0))
    assert image.shape == (1, 64, 64) and image.dtype == np.float32 and mask.sum() > 100
    assert image[0, 0, 0] == pytest.approx(0, abs=0.1) and 0.5 < image[mask.astype(bool)].mean() < 1.0
    a, b = phantom_dataset(20, 32, seed=3), phantom_dataset(20, 32, seed=3)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b))
    assert {s["label"] for s in a} == {0, 1}
    for s in a:
        if s["label"]:
            assert s["mask"][(0, *s["signal_center"].long().tolist())] == 1


def test_signal_shapes_have_their_widths_along_a_random_direction_and_their_own_label():
    """An elongated signal's second moments (computed from the blob's pixels) are major^2 sigma^2 along one direction
    and minor^2 sigma^2 across it; labels are 0 absent, 1 + the shape's index, about equally often with prob=None."""
    shapes = ((1.0, 1.0), (2.0, 0.6))
    t = InsertGaussianSignal(prob=None, amplitude_range=0.3, sigma=3.0, shapes=shapes).set_random_state(5)
    size = 96
    mask = torch.zeros(1, size, size)
    mask[0, 40:56, 40:56] = 1
    labels, directions = [], []
    for _ in range(300):
        out = t(torch.zeros(1, size, size), mask)
        labels.append(t.label)
        if not t.present:
            assert t.label == 0 and torch.count_nonzero(out) == 0
            continue
        weights = out[0].double() / out[0].double().sum()
        grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float64)] * 2, indexing="ij"), -1)
        mean = (weights[..., None] * grid).sum((0, 1))
        centred = grid - mean
        covariance = torch.einsum("ij,ijk,ijl->kl", weights, centred, centred).numpy()
        variances = np.sort(np.linalg.eigvalsh(covariance))[::-1]
        major, minor = shapes[t.label - 1]
        np.testing.assert_allclose(variances, [(major * 3.0) ** 2, (minor * 3.0) ** 2], rtol=0.02)
        np.testing.assert_allclose(mean.numpy(), t.center, atol=1e-6)
        assert t.sigma == pytest.approx(max(major, minor) * 3.0)
        if t.label == 2:
            direction = np.linalg.eigh(covariance)[1][:, -1]
            directions.append(abs(np.arctan2(direction[1], direction[0])) % np.pi)
    counts = np.bincount(labels, minlength=3)
    assert counts.min() > 70  # each of 3 classes expected 100 times
    assert np.ptp(directions) > 2.0  # orientations drawn over the half circle, not one axis
