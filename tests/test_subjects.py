"""Simulated subjects from the MNI152 templates, the lumpy background and the polarity task's signal: checked
against hand computations, numpy statistics and scikit-learn's AUROC."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from scripts.data import SPLITS, _load_volume, build_simulated_datalist, mni152_template_paths
from scripts.subjects import SimulateSubject, SubjectSettings
from scripts.tasks import get_task, split_composition, task_transforms
from scripts.transforms import HYPOINTENSE, InsertGaussianSignal, InsertLumpsd, mri_transforms

SMALL = dict(subjects=(3, 2, 2), slices_per_subject=3)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sim_cache")
    return build_simulated_datalist(cache, counts=(12, 6, 6), seed=0, **SMALL), cache


def _voxels(entry: dict) -> np.ndarray:
    return np.asarray(nib.load(entry["image"]).dataobj)


def test_splits_hold_disjoint_subjects_with_slices_across_the_brain(simulated):
    datalist, _ = simulated
    assert [len(datalist[s]) for s in SPLITS] == [12, 6, 6]
    subjects = [{e["subject"] for e in datalist[s]} for s in SPLITS]
    assert [len(s) for s in subjects] == [3, 2, 2]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    for split in SPLITS:
        for subject in subjects[SPLITS.index(split)]:
            slices = sorted({e["slice"] for e in datalist[split] if e["subject"] == subject})
            assert len(slices) == 3 and slices[-1] - slices[0] >= 10  # spread over 2 cm or more (2 mm slices)
    # two subjects are two anatomies: their slices at the same height differ
    a, b = (next(e for e in datalist["test"] if e["subject"] == s) for s in sorted(subjects[2]))
    first, second = _voxels(a), _voxels(b)
    assert first.shape == second.shape and np.abs(first - second).mean() > 0.01


def test_a_seeded_rebuild_gives_the_same_datalists_and_images(simulated, tmp_path):
    datalist, cache = simulated
    again = build_simulated_datalist(tmp_path / "fresh", counts=(12, 6, 6), seed=0, **SMALL)
    strip = lambda d: [[(e["subject"], e["slice"], e["seed"]) for e in d[s]] for s in SPLITS]  # noqa: E731
    assert strip(again) == strip(datalist)
    for old, new in zip(datalist["test"], again["test"]):
        np.testing.assert_array_equal(_voxels(old), _voxels(new))
    other = build_simulated_datalist(tmp_path / "other", counts=(0, 0, 6), seed=1, **SMALL)
    assert not np.array_equal(_voxels(other["test"][0]), _voxels(datalist["test"][0]))
    with pytest.raises(ValueError, match="test subject"):
        build_simulated_datalist(cache, counts=(1, 1, 1), subjects=(1, 1, 0))


def test_small_counts_simulate_only_the_subjects_they_need_and_the_same_ones(simulated, tmp_path):
    datalist, _ = simulated
    small = build_simulated_datalist(tmp_path / "small", counts=(4, 0, 3), seed=0, **SMALL)
    # ceil(4 / 3) = 2 of the 3 training subjects, none of validation, ceil(3 / 3) = 1 of the 2 test subjects: each
    # the first of its split's block, so the same anatomy (and split) as in the full build
    assert sorted({e["subject"] for e in small["training"]}) == ["sim0000", "sim0001"]
    assert not small["validation"] and {e["subject"] for e in small["test"]} == {"sim0005"}
    full = {(e["subject"], e["slice"]): e for s in SPLITS for e in datalist[s]}
    for entry in small["training"] + small["test"]:
        np.testing.assert_array_equal(_voxels(entry), _voxels(full[(entry["subject"], entry["slice"])]))
    assert len(list((tmp_path / "small").rglob("*_t1.nii.gz"))) == 3 * 3  # 3 subjects x 3 slices were written
    with pytest.raises(ValueError, match="slices_per_subject"):
        build_simulated_datalist(tmp_path / "small", counts=(1, 0, 0), subjects=(1, 0, 0), slices_per_subject=0)


def test_the_report_says_what_the_test_split_is_made_of(simulated):
    datalist, _ = simulated
    test = datalist["test"]  # 6 entries cycling over 2 subjects x 3 slices: each slice once
    text = split_composition("polarity", test)
    assert text.startswith("6 images of 6 distinct slices (3 per subject) from 2 subjects: simulated subjects")
    doubled = test + [dict(e, seed=e["seed"] + 1) for e in test[:3]]  # the same slices again: no new slice
    uneven = {(e["subject"], e["slice"]) for e in doubled}
    assert split_composition("sksbks", doubled).startswith(f"9 images of {len(uneven)} distinct slices (3 per "
                                                           "subject) from 2 subjects")
    assert split_composition("oct", [{"patient": "p1"}, {"patient": "p1"}]) == "2 images from 1 patient"


def test_t1_and_white_matter_are_warped_together():
    """The warped T1 follows the warped white matter more closely than the template's own white matter: one
    deformation moved both."""
    t1_path, wm_path = mni152_template_paths()
    t1 = _load_volume(t1_path).astype(np.float32)
    wm = _load_volume(wm_path).astype(np.float32) / 255.0
    settings = SubjectSettings(deform=0.08, scale=0.1)
    t1_sim, wm_sim = SimulateSubject(settings)(t1, wm, seed=3)
    unwarped = SimulateSubject(SubjectSettings(scale=0.0, rotate=0.0, deform=0.0, bias=0.0, gamma=(1.0, 1.0)))
    _, wm_plain = unwarped(t1, wm, seed=3)
    brain = t1_sim > 0.05
    corr = lambda a, b: np.corrcoef(a[brain], b[brain])[0, 1]  # noqa: E731
    assert corr(t1_sim, wm_sim) > corr(t1_sim, wm_plain) + 0.05
    assert 0.0 <= wm_sim.min() and wm_sim.max() <= 1.0 and t1_sim.min() >= 0.0


def test_a_lump_is_the_gaussian_written_out_by_hand():
    size, sigma = 24, 3.0
    mask = torch.zeros(1, size, size)
    mask[0, 7, 15] = 1
    lumps = InsertLumpsd("image", number=1, amplitude_range=(0.2, 0.3), sigma=sigma).set_random_state(4)
    out = lumps({"image": torch.zeros(1, size, size), "mask": mask})["image"][0].double().numpy()
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    shape = np.exp(-((rows - 7) ** 2 + (cols - 15) ** 2) / (2 * sigma**2))
    amplitude = out[7, 15]
    assert 0.2 <= abs(amplitude) <= 0.3
    np.testing.assert_allclose(out, amplitude * shape, atol=1e-6)
    signs = {np.sign(InsertLumpsd("image", number=1, sigma=sigma).set_random_state(s)(
        {"image": torch.zeros(1, size, size), "mask": mask})["image"][0, 7, 15].item()) for s in range(20)}
    assert signs == {-1.0, 1.0}


def test_a_hypointense_signal_is_subtracted():
    mask = torch.zeros(1, 32, 32)
    mask[0, 16, 16] = 1
    t = InsertGaussianSignal(prob=1.0, amplitude_range=0.25, sigma=2.0, shapes=(HYPOINTENSE,)).set_random_state(0)
    out = t(torch.ones(1, 32, 32), mask)
    assert t.label == 1 and out.min().item() == pytest.approx(0.75) and out[0, 16, 16].item() == pytest.approx(0.75)
    assert out.max().item() <= 1.0
    with pytest.raises(ValueError, match="polarity"):
        InsertGaussianSignal(shapes=((1.0, 1.0, 0.5),))


def test_the_brightest_pixel_cannot_find_the_polarity_signal(simulated):
    """On a few hundred of the polarity task's images the max-intensity detector's AUROC (signal absent against
    present, scikit-learn) is at most 0.65; without the lumpy background, bright signals alone, it is far above."""
    datalist, _ = simulated
    entries = [dict(e, seed=int(s)) for e, s in zip(datalist["training"] * 25, np.arange(300) * 7919 + 11)]

    def max_auroc(chain) -> float:
        samples = [chain(e) for e in entries]
        labels = np.array([int(s["label"]) for s in samples])
        return roc_auc_score(labels != 0, [float(s["image"].max()) for s in samples])

    assert get_task("polarity").num_classes == 3
    assert max_auroc(task_transforms("polarity", 64)) <= 0.65
    assert max_auroc(mri_transforms(size=64, signal_width=1 / 16)) > 0.75


def test_the_shipped_polarity_model_has_rank_two_on_most_test_images(tmp_path):
    """F(x) of the shipped three-class model has two directions on most of 8 test images: its non-zero eigenvalues,
    those of diag(sqrt p) S S^T diag(sqrt p) with S the score Jacobian (C x d, autograd), the second above 1e-6 of
    the first; the engine's rank says the same."""
    from pathlib import Path

    from scripts.checkpoints import load_checkpoint, shipped_models_dir
    from scripts.ifim import ifim_decompose
    from scripts.networks import get_network
    from scripts.tasks import inference_datalist, inference_transforms

    bundle = Path(__file__).resolve().parents[1] / "bundle"
    checkpoint = Path(shipped_models_dir(bundle, "polarity", "polarity")) / "model.pt"
    network = get_network("shallow_cnn", spatial_dims=2, in_channels=1, num_classes=3)
    load_checkpoint(network, checkpoint, expected={"task": "polarity", "network_name": "shallow_cnn"})
    network.eval()
    chain = inference_transforms("polarity", 64, None)
    x = torch.stack([torch.as_tensor(chain(e)["image"]) for e in inference_datalist("polarity", None, tmp_path, 8)])
    engine_rank = ifim_decompose(network, x).rank
    second_over_first = []
    model = network.double()
    for x1 in x.double().split(1):
        probs = torch.softmax(model(x1)[0], 0).detach()
        jac = torch.autograd.functional.jacobian(lambda z: torch.log_softmax(model(z), dim=1), x1)
        score = jac.reshape(3, -1)
        gram = probs.sqrt()[:, None] * (score @ score.T) * probs.sqrt()[None, :]
        eigenvalues = torch.linalg.eigvalsh(gram).flip(0)
        second_over_first.append(float(eigenvalues[1] / eigenvalues[0]))
    two = np.asarray(second_over_first) > 1e-6
    assert two.sum() >= 5, second_over_first
    assert ((engine_rank >= 2).numpy() == two).all()
