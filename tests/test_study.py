"""The map comparison (scripts.study) against the plain metric functions, and the report it writes: its numbers,
its findings derived from them, valid JSON and an all-or-nothing folder. The outcome of a comparison between
methods is never asserted."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

import scripts.report as report_module
import scripts.verdicts as verdicts
from scripts.attribution import MAPS, attribute
from scripts.bootstrap import bootstrap_p_value, holm, percentile_interval, resampled_means, unit_bootstrap_weights
from scripts.controls import (
    ComplementVsImage,
    ContrastivePerturbation,
    Control,
    DeletionCurves,
    Detectability,
    FGSMResult,
    FGSMStability,
    LocalizationResult,
    ModelRandomization,
    PerturbationResult,
    RandomizationResult,
    Section,
    Sections,
    SignalLocalization,
    TopKOverlap,
    TopKOverlapResult,
)
from scripts.metrics import (
    GaussianFill,
    NoisyLinearImputation,
    contrastive_perturbation,
    f1,
    fgsm,
    pearson_per_image,
    perturbation_masks,
    signal_localization,
)
from scripts.networks import ShallowCNN
from scripts.report import findings, primary_endpoint, write_report
from scripts.seeding import image_seeds
from scripts.study import AttributionStudy, StudyResults

CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"

ALPHAS = (0.01, 0.05)
CURVE_ALPHAS = (0.1, 0.3)
FILLS = (GaussianFill(0.5, 0.25), NoisyLinearImputation(0.01))
AMPLITUDES = torch.tensor([0.12, 0.0, 0.31, 0.33, 0.0, 0.0])


def _controls():
    return [ContrastivePerturbation(FILLS), DeletionCurves(CURVE_ALPHAS, GaussianFill(0.0, 1.0)), FGSMStability(0.05),
            TopKOverlap(), ComplementVsImage(), Detectability((0.1, 0.2, 0.3, 0.35)), SignalLocalization(),
            ModelRandomization()]


def _study(methods=MAPS, **kwargs):
    options = dict(alphas=ALPHAS, seed=3, n_examples=2)
    return AttributionStudy(_controls(), methods, **{**options, **kwargs})


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = ShallowCNN(2, 1, 2).double()
    x = torch.rand(6, 1, 20, 20, dtype=torch.float64)
    y = torch.tensor([1, 0, 1, 1, 0, 0])
    centers = torch.tensor([[5.0, 6.0], [-1, -1], [10.0, 12.0], [14.0, 3.0], [-1, -1], [-1, -1]])
    sigmas = torch.tensor([2.0, 0.0, 1.5, 2.5, 0.0, 0.0])
    return model, x, y, centers, sigmas


@pytest.fixture(scope="module")
def studied(batch):
    model, x, y, centers, sigmas = batch
    study = _study()
    study.update(model, x, y, centers, sigmas, signal_amplitude=AMPLITUDES)
    return study, study.compute().to_dict()


def test_study_numbers_equal_the_plain_metric_functions(batch, studied):
    model, x, y, centers, sigmas = batch
    _, results = studied
    assert results["n_images"] == 6 and results["num_classes"] == 2
    sens, comp = attribute("ifim_sensitive", model, x), attribute("ifim_complement", model, x)
    gradcam = attribute("gradcam", model, x)
    assert [m["tag"] for m in results["noise_models"]] == ["gauss_0.5_0.25", "road"]
    for fill in FILLS:
        expected = contrastive_perturbation(model, x, y, sens, comp, ALPHAS, seed=3, fill=fill)
        measured = results["perturbation"][fill.tag]
        for alpha in ALPHAS:
            assert measured["ifim"][f"{alpha:g}"] == pytest.approx(expected[alpha], nan_ok=True)
        expected = contrastive_perturbation(model, x, y, gradcam, None, ALPHAS, seed=3, fill=fill)
        assert measured["gradcam"][f"{ALPHAS[0]:g}"] == pytest.approx(expected[ALPHAS[0]], nan_ok=True)
    x_adv = fgsm(model, x, y, 0.05)
    target = model(x).argmax(1)
    pearson = pearson_per_image(sens, attribute("ifim_sensitive", model, x_adv))
    assert results["fgsm"]["pearson"]["ifim_sensitive"]["mean"] == pytest.approx(pearson.mean().item())
    flips = (model(x_adv).argmax(1) != target).double().mean().item()
    assert results["fgsm"]["flip_rate"] == pytest.approx(flips)
    # the random-sign control: +-epsilon in every entry, signs drawn per image in the test, not by the code under test
    signs = torch.stack([torch.randint(0, 2, x.shape[1:], generator=torch.Generator().manual_seed(int(s) + (1 << 21)))
                         for s in image_seeds(x, 3)])
    x_sign = x + 0.05 * (2 * signs.double() - 1)
    control = results["fgsm"]["random_sign"]
    assert control["pearson"]["ifim_sensitive"]["mean"] == pytest.approx(
        pearson_per_image(sens, attribute("ifim_sensitive", model, x_sign)).mean().item())
    assert control["flip_rate"] == pytest.approx((model(x_sign).argmax(1) != target).double().mean().item())
    gap = results["intervals"]["fgsm_minus_random_sign_pearson"]["ifim_sensitive"]
    assert gap[0] <= results["fgsm"]["pearson"]["ifim_sensitive"]["mean"] - control["pearson"]["ifim_sensitive"][
        "mean"] <= gap[1]
    known = torch.tensor([True, False, True, True, False, False])
    loc = signal_localization(sens[known], centers[known].double(), sigmas[known].double())
    assert results["localization"]["ifim_sensitive"]["energy_fraction"] == pytest.approx(
        loc["energy_fraction"].mean().item())
    assert results["localization"]["ifim_sensitive"]["n"] == 3
    assert results["complement_vs_image"]["mean"] == pytest.approx(pearson_per_image(comp, x.abs()).mean().item())


def test_deletion_curves_by_hand(batch, studied):
    """Every point of a MoRF / LeRF curve: the map's top (bottom) alpha of pixels filled, F1 and the mean probability
    of the true class; iFIM's MoRF ranks by S and its LeRF by I; the AUC is the trapezoid mean over alpha."""
    model, x, y, _, _ = batch
    _, results = studied
    curves = results["curves"]
    assert curves["alphas"] == [0.0, *sorted(set(ALPHAS) | set(CURVE_ALPHAS))] and curves["fill"] == "N(0, 1^2)"
    seeds = image_seeds(x, 3)
    fill = GaussianFill(0.0, 1.0)
    maps = {"ifim": (attribute("ifim_sensitive", model, x), attribute("ifim_complement", model, x)),
            "gradcam": (attribute("gradcam", model, x),) * 2}
    with torch.no_grad():
        clean = torch.softmax(model(x), 1)
    for method, (high, low) in maps.items():
        for order in ("morf", "lerf"):
            f1s, probs = [f1(y.tolist(), clean.argmax(1).tolist(), 2)], [clean[torch.arange(6), y].mean().item()]
            for alpha in curves["alphas"][1:]:
                top, bottom = perturbation_masks(high, low, alpha, seeds)
                with torch.no_grad():
                    p = torch.softmax(model(fill(x, top if order == "morf" else bottom, seeds)), 1)
                f1s.append(f1(y.tolist(), p.argmax(1).tolist(), 2))
                probs.append(p[torch.arange(6), y].mean().item())
            measured = curves["methods"][method]
            assert measured[f"{order}_f1"] == pytest.approx(f1s) and measured[f"{order}_prob"] == pytest.approx(probs)
            span = curves["alphas"][-1]
            assert measured["auc"][f"{order}_prob"] == pytest.approx(np.trapezoid(probs, curves["alphas"]) / span)
        auc = curves["methods"][method]["auc"]
        assert auc["delta_f1"] == pytest.approx(auc["lerf_f1"] - auc["morf_f1"])


def test_detectability_and_timing(studied):
    _, results = studied
    # positives: amplitudes 0.12 (predicted?), 0.31, 0.33; bins [0.1, 0.2), [0.2, 0.3), [0.3, 0.35]
    bins = results["detectability"]["bins"]
    assert [b["n"] for b in bins] == [1, 0, 2] and results["detectability"]["n_positives"] == 3
    assert all(b["recall"] in (0.0, 0.5, 1.0) for b in bins if b["n"])
    assert math.isnan(bins[1]["recall"])
    assert results["seconds"] and all(v >= 0 for v in results["seconds"].values())
    assert {"maps: ifim", "maps: deepshap", "perturbation: ROAD imputation (+N(0, 0.01^2))"} <= set(results["seconds"])


def test_known_answers_random_map_and_binary_topk(studied):
    _, results = studied
    # the random map does not depend on the model: identical for the trained and randomized copies of one image
    assert results["randomization"]["random"]["mean"] == pytest.approx(1.0)
    # x_adv is another image with draws of its own: fresh noise, as a random map of it would be, not a copy
    assert abs(results["fgsm"]["pearson"]["random"]["mean"]) < 0.2
    # C = 2 in float64: S(x) and the vanilla gradient are multiples of |grad(z_1 - z_0)|, so their top-k agree
    assert results["topk_overlap_ifim_sensitive_vs_gradient"] == {f"{a:g}": 1.0 for a in ALPHAS}
    # a map's ranking against itself in a batch where top and bottom sets are the same pixels moves F1 alike
    assert set(results["perturbation"]["road"]) == {"ifim"} | set(MAPS[2:])


def test_examples_prefer_known_signals_and_max_images_truncates(batch, studied):
    study, _ = studied
    assert [e["signal"] is not None for e in study.examples] == [True, True]
    assert set(study.examples[0]["maps"]) == set(MAPS)
    model, x, y, centers, sigmas = batch
    small = _study(("gradcam", "ifim_sensitive"), alphas=(0.05,), max_images=4)
    small.update(model, x[:3], y[:3], centers[:3], sigmas[:3])
    small.update(model, x[3:], y[3:], centers[3:], sigmas[3:])
    small.update(model, x, y, centers, sigmas)  # full: ignored
    assert small.n_images == 4 and small.full
    assert small.maps == ["ifim_sensitive", "ifim_complement", "gradcam"]  # both iFIM parts come together
    gradcam = small.compute().to_dict()["fgsm"]["pearson"]["gradcam"]
    assert gradcam["n"] + gradcam["n_undefined"] == 4
    with pytest.raises(ValueError, match="unknown"):
        AttributionStudy(_controls(), ("gradcam", "lime"))
    with pytest.raises(RuntimeError, match="no images"):
        AttributionStudy(_controls(), ("gradcam",)).compute()


def _assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_close(u, v, f"{path}/{i}")
    elif a is None or isinstance(a, str):
        assert a == b, path
    else:
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12, nan_ok=True), path


def test_shares_merged_equal_the_whole_whatever_the_batches(batch, studied):
    """Strided shares (as torchrun's DistributedSampler deals them), studied one image per batch, sent through
    pickle (as gathered from other processes) and merged, give the study of the whole batch: the same results and
    the same figure examples."""
    model, x, y, centers, sigmas = batch
    whole_study, whole = studied
    shares = []
    for rows in ([0, 2, 4], [1, 3, 5]):
        share = _study()
        for i in rows:
            share.update(model, x[i:i + 1], y[i:i + 1], centers[i:i + 1], sigmas[i:i + 1],
                         signal_amplitude=AMPLITUDES[i:i + 1])
        shares.append(pickle.loads(pickle.dumps(share)))
    shares[0].merge(shares[1:])
    merged = shares[0].compute().to_dict()
    assert set(merged.pop("seconds")) == set(whole["seconds"])  # wall-clock times differ run to run
    _assert_close(merged, {k: v for k, v in whole.items() if k != "seconds"})
    assert [e["order"] for e in shares[0].examples] == [e["order"] for e in whole_study.examples]
    for a, b in zip(shares[0].examples, whole_study.examples):
        np.testing.assert_allclose(a["maps"]["ifim_sensitive"], b["maps"]["ifim_sensitive"], rtol=1e-9)


def test_intervals_resample_units_not_images(batch):
    """Six images of one unit (one slice, augmented): every resample would be the whole set, so no interval is
    drawn; six units: the intervals open around each estimate."""
    model, x, y, centers, sigmas = batch
    methods = ("ifim_sensitive", "gradcam")
    one = _study(methods, n_bootstrap=200)
    one.update(model, x, y, centers, sigmas, units=["slice 40"] * 6)
    results = one.compute().to_dict()
    assert results["units"] == {"n": 1, "images_per_unit": [6, 6]}
    assert results["intervals"]["perturbation"] == {tag: {} for tag in results["perturbation"]}
    assert "fgsm_pearson" not in results["intervals"] and results["intervals"]["localization"] == {}
    separate = _study(methods, n_bootstrap=200)
    separate.update(model, x, y, centers, sigmas)
    results = separate.compute().to_dict()
    assert results["units"] == {"n": 6, "images_per_unit": [1, 1]}
    low, high = results["intervals"]["fgsm_pearson"]["gradcam"]
    assert low < results["fgsm"]["pearson"]["gradcam"]["mean"] < high
    low, high = results["intervals"]["localization"]["gradcam"]["energy_fraction"]
    assert low < results["localization"]["gradcam"]["energy_fraction"] < high
    with pytest.raises(ValueError, match="2 units for 6 images"):
        separate.update(model, x, y, units=["a", "b"])


def test_unit_bootstrap_weights_draw_whole_units():
    units = ["s1", "s2", "s1", "s3", "s2", "s1"]
    weights = unit_bootstrap_weights(units, 500, seed=0)
    assert weights.shape == (500, 6)
    assert (weights[:, 0] == weights[:, 2]).all() and (weights[:, 0] == weights[:, 5]).all()  # a unit's images
    assert (weights[:, 1] == weights[:, 4]).all()                                             # move together
    assert (weights[:, [0, 1, 3]].sum(1) == 3).all()  # three units drawn per resample
    assert (unit_bootstrap_weights(units, 500, seed=0) == weights).all()


def _hand_study(ifim_ratio, gradcam_ratio, ifim_pearson=0.1, gradcam_pearson=0.5):
    def scores(ratio, drop_high, drop_random):
        return {"0.01": {"f1_clean": 0.9, "f1_high": 0.5, "f1_low": 0.5 * ratio, "f1_random": 0.9 - drop_random,
                         "ratio": ratio, "drop_high": drop_high, "drop_low": 0.0, "drop_random": drop_random}}
    stat = {"std": 0.0, "n": 4, "n_undefined": 0}
    sections = Sections([
        PerturbationResult([0.01], [{"tag": "g", "name": "N(0.5, 0.25^2)"}], 0,
                           {"g": {"ifim": scores(ifim_ratio, 0.4, 0.1), "gradcam": scores(gradcam_ratio, 0.05, 0.1)}}),
        FGSMResult({"epsilon": 0.01, "flip_rate": 0.25, "pearson": {"ifim_sensitive": {"mean": ifim_pearson, **stat},
                                                                    "gradcam": {"mean": gradcam_pearson, **stat}}}),
        TopKOverlapResult({"0.01": 1.0}),
        LocalizationResult({"ifim_sensitive": {"energy_fraction": 0.3, "area_fraction": 0.1, "pointing_hit": 1.0,
                                               "n": 2},
                            "gradcam": {"energy_fraction": 0.2, "area_fraction": 0.1, "pointing_hit": 0.5, "n": 2}}),
        RandomizationResult({"ifim_sensitive": {"mean": 0.2, **stat}, "gradcam": {"mean": 0.9, **stat}},
                            {"ifim_sensitive": [0.1, 0.3], "gradcam": [0.8, 0.95]})])
    return StudyResults(4, 2, [0.01], 4, [1, 1], 0.95, 1000, 0.9, sections)


def test_findings_follow_the_numbers():
    text = "\n".join(findings(_hand_study(1.8, 1.2)))
    assert "Pixels replaced by N(0.5, 0.25^2) (exploratory): iFIM's ratio at 1 % 1.800 (the highest" in text
    assert "lowest clean/adversarial correlation holds" in text
    assert "3.0 times a uniform map" in text and "Grad-CAM keep a rank correlation above 0.5" in text
    text = "\n".join(findings(_hand_study(1.2, math.inf, ifim_pearson=0.7)))
    # a top-k perturbation that drives F1 to 0 gives the best possible ratio, not one to leave out
    assert "at 1 % 1.200 (Grad-CAM is higher (inf)" in text and "1 % 1.200 (the highest" not in text
    text = "\n".join(findings(_hand_study(math.inf, math.inf)))
    assert "at 1 % inf (tied with Grad-CAM (inf))" in text
    text = "\n".join(findings(_hand_study(1.2, 1.5, ifim_pearson=0.7)))
    assert "at 1 % 1.200 (Grad-CAM is higher (1.500)" in text
    assert "correlation does not hold: Grad-CAM is lower (0.500)" in text
    text = "\n".join(findings(_hand_study(1.2, 1.2005, ifim_pearson=0.5, gradcam_pearson=0.4999)))
    assert "at 1 % 1.200 (tied with Grad-CAM (1.200))" in text
    assert "correlation holds only as a tie with Grad-CAM" in text
    study = _hand_study(1.8, 1.2)
    assert "uninformative" not in "\n".join(findings(study))  # iFIM's top set (0.4) does more than random (0.1)
    stat = {"std": 0.0, "n": 4, "n_undefined": 0}
    study.sections.find(FGSMResult).fgsm["pearson"]["random"] = {"mean": 0.001, **stat}  # fresh noise for x_adv
    text = "\n".join(findings(study))  # a control is the floor of Fig. 4's claim, not the map that wins it
    assert "lowest clean/adversarial correlation holds (the random map, a control, correlates 0.001)" in text
    study.sections.find(PerturbationResult).scores["g"]["ifim"]["0.01"]["drop_high"] = 0.05  # below random's 0.1
    text = "\n".join(findings(study))
    assert "no more than replacing random pixels" in text
    assert ("uninformative: at every fraction replacing random pixels lowers F1 as much as replacing any map's top "
            "pixels (random 0.100; the largest top-set drop 0.050)") in text


def test_an_exact_tie_is_a_tie_whatever_the_order():
    """Equal ratios are a tie, not a win for whichever method comes first, and a tie is no primary "yes" even with
    an interval clear of 0."""
    for order in (("ifim", "gradcam"), ("gradcam", "ifim")):
        study = _hand_study(1.5, 1.5)
        perturbation = study.sections.find(PerturbationResult)
        perturbation.scores["g"] = {m: perturbation.scores["g"][m] for m in order}
        text = "\n".join(findings(study))
        assert "at 1 % 1.500 (tied with Grad-CAM (1.500))" in text and "1 % 1.500 (the highest" not in text
        for fmt_value, expected in ((1.5, "1.500"), (math.inf, "inf"), (-math.inf, "-inf"), (math.nan, "n/a")):
            assert verdicts.fmt(fmt_value) == expected


def _with_primary(study, difference):
    perturbation = study.sections.find(PerturbationResult)
    perturbation.primary = {"fill": "g", "alpha": "0.01", "provenance": "before any result was seen"}
    perturbation.differences = {"g": {"0.01": {"gradcam": difference}}}
    return study


def test_the_primary_endpoint_comes_first_and_needs_every_interval_clear():
    """The declared endpoint is answered first, from the paired interval against every other method (not the
    runner-up): 'yes' only when each is clear of 0; otherwise the methods it is not clear against, and which way."""
    study = _with_primary(_hand_study(1.8, 1.2), [-0.1, 1.2])
    assert findings(study)[0].startswith("Primary endpoint (stated above): No.")
    text = "\n".join(primary_endpoint(study))
    assert text.startswith("Primary endpoint: under N(0.5, 0.25^2) at 1 % of pixels, is iFIM's F1 ratio above every "
                           "other method's, each paired 95 % interval of the difference clear of 0? Declared before "
                           "any result was seen. Answer: No.")
    assert "clear of 0 against 0 of 1 methods; includes 0: Grad-CAM 1.200 [-0.100, 1.200]." in text
    text = "\n".join(primary_endpoint(_with_primary(_hand_study(1.8, 1.2), [0.2, 1.0])))
    assert "Answer: Yes. iFIM's ratio is 1.800; clear of 0 against 1 of 1 methods." in text
    study = _with_primary(_hand_study(1.2, 1.5), [-0.5, -0.1])
    text = "\n".join(primary_endpoint(study))
    assert "Answer: No." in text and "other way: Grad-CAM 1.500 [-0.500, -0.100]" in text
    assert "(holds the primary endpoint; the rest is secondary)" in "\n".join(findings(study))
    out = write_report(Path(tempfile.mkdtemp()), _with_primary(_hand_study(1.8, 1.2), [0.2, 1.0]))
    markdown = (out / "report.md").read_text()
    assert markdown.index("## Primary endpoint") < markdown.index("test images")  # before any other number


def test_the_secondary_family_is_holm_adjusted_against_each_method():
    """Holm by hand on four p-values; a comparison counts only when its adjusted p-value is below 5 %; the FGSM
    claim keeps its paired interval against the runner-up."""
    adjusted = holm([0.01, 0.04, 0.03, 0.2, math.nan])
    assert adjusted[:4] == pytest.approx([0.04, 0.09, 0.09, 0.2]) and math.isnan(adjusted[4])
    assert bootstrap_p_value(np.array([-1.0, 0.5, 2.0, np.nan])) == pytest.approx((1 + 1) / (1 + 3))
    study = _hand_study(1.8, 1.2)
    perturbation, stability = study.sections.find(PerturbationResult), study.sections.find(FGSMResult)
    perturbation.tests = {"g": {"0.01": {"gradcam": {"p": 0.004, "p_holm": 0.012}}}}
    stability.stability_intervals = {"fgsm_pearson_ifim_sensitive_minus": {"gradcam": [-0.6, -0.2]}}
    text = "\n".join(findings(study))
    assert "At family-wise 5 % (Holm over 1 comparisons) it is above 1 of 1 other methods at 1 %." in text
    assert "iFIM's ratio is above every other method's at family-wise 5 % (Holm) at 1 of 1 under N(0.5, 0.25^2)" in text
    assert ("lowest clean/adversarial correlation holds, and the 95 % interval of the difference stays clear of 0 "
            "(iFIM S(x) minus Grad-CAM: [-0.600, -0.200])") in text
    perturbation.tests["g"]["0.01"]["gradcam"]["p_holm"] = 0.2
    text = "\n".join(findings(study))
    assert "it is above 0 of 1 other methods" in text and "at 0 of 1 under N(0.5, 0.25^2)" in text
    stability.stability_intervals["fgsm_pearson_ifim_sensitive_minus"]["gradcam"] = [1e-8, 1.2e-8]  # same ranking
    assert "the 95 % interval of the difference stays within +-0.001" in "\n".join(findings(study))


def _examples(n=2, size=12):
    rng = np.random.default_rng(0)
    return [{"image": rng.random((1, size, size)), "label": 1, "predicted": 1,
             "maps": {"ifim_sensitive": rng.random((size, size)), "gradcam": rng.random((size, size))},
             "signal": ([5.0, 6.0], 1.5)} for _ in range(n)]


def test_report_files_json_and_table(tmp_path):
    study = _hand_study(float("nan"), 1.2)
    table = {"seeds": [{"seed": 0, "checkpoint": "a.pt", "precision": 0.9, "recall": 0.8, "f1": 0.85,
                        "accuracy": 0.86},
                       {"seed": 1, "checkpoint": "b.pt", "precision": 0.7, "recall": 1.0, "f1": 0.82,
                        "accuracy": 0.8}],
             **{k: {"mean": 0.5, "std": 0.1, "n": 2} for k in ("precision", "recall", "f1", "accuracy")}}
    out = write_report(tmp_path / "report", study, _examples(), {"test_accuracy": 0.875}, table, {"task": "sksbks"})
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "results.json", "perturbation.csv", "fgsm.csv", "randomization.csv", "localization.csv",
            "table2.csv", "fig3_perturbation_ratio.png", "fig3_f1_drops.png", "fig4_fgsm_correlation.png",
            "fig_randomization.png", "fig_localization.png", "fig1_overlays.png"} <= names
    results = json.loads((out / "results.json").read_text())  # strict JSON: NaN became null
    assert results["study"]["perturbation"]["g"]["ifim"]["0.01"]["ratio"] is None
    assert results["test_metrics"] == {"test_accuracy": 0.875}
    markdown = (out / "report.md").read_text()
    assert "| 1 | `b.pt` | 0.700 | 1.000 |" in markdown and "| test_accuracy | 0.875 |" in markdown
    assert "precision 0.500 +- 0.100" in markdown and "n/a" in markdown


def test_a_failing_report_leaves_the_previous_one(tmp_path, monkeypatch):
    out = write_report(tmp_path / "report", _hand_study(1.5, 1.2), _examples())
    before = (out / "report.md").read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "_overlay_figure", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path / "report", _hand_study(0.5, 1.2), _examples())
    assert (out / "report.md").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_a_report_touches_only_its_own_files(tmp_path):
    """--report_dir pointed at a folder of one's own work: the report adds its files and deletes nothing else."""
    mine = tmp_path / "mine"
    (mine / "thesis").mkdir(parents=True)
    (mine / "thesis" / "a.tex").write_text("work")
    (mine / "notes.md").write_text("more work")
    table = {"seeds": [{"seed": 0, "checkpoint": "a.pt", "precision": 0.9, "recall": 0.8, "f1": 0.85,
                        "accuracy": 0.86}], **{k: {"mean": 0.5, "std": None, "n": 1}
                                               for k in ("precision", "recall", "f1", "accuracy")}}
    write_report(mine, _hand_study(1.5, 1.2), _examples(), seed_table=table)
    assert (mine / "thesis" / "a.tex").read_text() == "work" and (mine / "notes.md").read_text() == "more work"
    assert (mine / "table2.csv").is_file()
    write_report(mine, _hand_study(1.5, 1.2), _examples())  # no Table II this time: its old table must go
    assert not (mine / "table2.csv").exists() and (mine / "report.md").is_file()
    assert (mine / "thesis" / "a.tex").read_text() == "work" and (mine / "notes.md").read_text() == "more work"
    assert {p.name for p in mine.iterdir()} - set(report_module.REPORT_FILES) == {"thesis", "notes.md"}


@dataclasses.dataclass
class _MeanMapResult(Section):
    """The new control's typed result: its number, its interval and its report section."""

    mean: float
    interval: list

    def results(self):
        return {"mean_sensitive": self.mean}

    def intervals(self):
        return {"mean_sensitive": self.interval}

    def findings(self, sections):
        return [f"The mean of S(x) is {self.mean:.6f}."]

    def render(self, out):
        return ["## Mean sensitivity", "", f"{self.mean:.6f} [{self.interval[0]:.6f}, {self.interval[1]:.6f}]", ""]


class _MeanMapControl(Control):
    """A new control is one class: the mean of each image's S(x), its results and interval."""

    accumulators = ("means",)

    def reset(self):
        self.means = []

    def update(self, batch):
        self.means += batch.maps["ifim_sensitive"].flatten(1).mean(1).tolist()

    def compute(self, totals):
        return _MeanMapResult(float(np.mean(self.means)),
                              percentile_interval(resampled_means(self.means, totals.weights)))


def _configured_study(extra_controls=()):
    """The study exactly as configs/evaluate.yaml builds it, with ``extra_controls`` appended to its ``controls``
    entry (the SHAP background off, so no data is built, and one map method for time)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")])
    parser["shap_background"] = None
    parser["study_methods"] = ["ifim"]
    parser["study#n_bootstrap"] = 50
    parser["study#controls"] = parser["study#controls"] + list(extra_controls)
    return parser.get_parsed_content("study")


def test_localization_weighs_energy_auroc_and_pointing_with_paired_intervals(studied):
    """Each score ranks the maps on its own; the finding says by how many of the three S leads clear of 0, and the
    paired intervals bracket the difference of the point estimates."""
    _, results = studied
    loc, paired = results["localization"], results["intervals"]["localization_ifim_sensitive_minus"]
    for key in ("energy_fraction", "auroc", "pointing_hit"):
        low, high = paired[key]["gradcam"]
        assert low - 1e-12 <= loc["ifim_sensitive"][key] - loc["gradcam"][key] <= high + 1e-12
    stat = {"n": 2, "area_fraction": 0.1}
    study = _hand_study(1.8, 1.2)
    study.sections[3] = LocalizationResult(
        {"ifim_sensitive": {"energy_fraction": 0.3, "auroc": 0.90, "pointing_hit": 1.0, **stat},
         "eigencam": {"energy_fraction": 0.2, "auroc": 0.98, "pointing_hit": 0.5, **stat}}, {}, 2.0,
        {"energy_fraction": {"eigencam": [0.05, 0.15]}, "auroc": {"eigencam": [-0.12, -0.04]},
         "pointing_hit": {"eigencam": [-0.1, 0.9]}})
    text = "\n".join(findings(study))
    assert "by AUROC 0.900 (Eigen-CAM is higher (0.980), clear of 0)" in text
    assert "by energy on the signal 0.300 (the highest, clear of 0 against Eigen-CAM)" in text
    assert "It leads with an interval clear of 0 by 1 of 3 scores (energy on the signal)." in text


def test_a_new_control_is_one_class_and_one_config_entry(batch, tmp_path):
    """A control class plus one entry in evaluate.yaml's study: it sees every batch, merges over shares in their
    order, reports with the rest (results.json, findings, its report section) and the built-in ones are unchanged."""
    model, x, y, centers, sigmas = batch
    entry = {"_target_": f"{__name__}._MeanMapControl"}
    studies = []
    for rows in ([0, 1, 2], [3, 4, 5]):
        study = _configured_study([entry])
        assert isinstance(study.controls[-1], _MeanMapControl)
        study.update(model, x[rows], y[rows], centers[rows], sigmas[rows])
        studies.append(study)
    studies[0].merge(studies[1:])
    results = studies[0].compute()
    sensitive = attribute("ifim_sensitive", model, x)
    expected = sensitive.flatten(1).mean(1).mean().item()
    study_dict = results.to_dict()
    assert study_dict["mean_sensitive"] == pytest.approx(expected)
    low, high = study_dict["intervals"]["mean_sensitive"]
    assert low <= study_dict["mean_sensitive"] <= high
    out = write_report(tmp_path / "report", results)
    assert f"- The mean of S(x) is {expected:.6f}." in (out / "report.md").read_text()
    assert "## Mean sensitivity" in (out / "report.md").read_text()
    plain = _configured_study()
    plain.update(model, x, y, centers, sigmas)
    without = plain.compute().to_dict()
    assert "mean_sensitive" not in without and without["perturbation"].keys() == study_dict["perturbation"].keys()
    assert [type(c).__name__ for c in plain.controls] == [type(c).__name__ for c in studies[0].controls[:-1]]


def test_one_unit_gives_no_interval_and_no_claim_clear_of_zero(batch, tmp_path):
    """Six images of one slice: every bootstrap resample is the same data, so the report says there is no interval
    instead of printing a zero-width one "clear of 0"."""
    model, x, y, centers, sigmas = batch
    study = _study()
    study.update(model, x, y, centers, sigmas, units=["slice 60"] * 6, signal_amplitude=AMPLITUDES)
    results = study.compute()

    def leaves(value):
        if isinstance(value, dict):
            return [leaf for v in value.values() for leaf in leaves(v)]
        return [value] if isinstance(value, list) else []

    assert leaves(results.to_dict()["intervals"]) == []  # no interval anywhere
    text = "\n".join(findings(results))
    assert "95 % interval" not in text and ", clear of 0" not in text and "clear of 0 by 0 of" in text
    markdown = (write_report(tmp_path, results) / "report.md").read_text()
    assert "one unit, no interval" in markdown
