"""The bundle's configs through `python -m monai.bundle`, as users type them: a tiny train -> evaluate -> infer
on 64^2 images of the offline default task, the model-zoo checks, and the errors bad input gets."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fake_datasets import make_scan_folder
from zoo_checks import zoo_json_hooks_pass

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
EVALUATE = "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']"  # evaluate is an overlay on train


def bundle_cmd(*args, cwd=ROOT, check=True):
    run = subprocess.run([sys.executable, "-m", "monai.bundle", *map(str, args)], cwd=cwd, capture_output=True,
                         text=True, timeout=600)
    if check and run.returncode != 0:
        raise AssertionError(f"monai.bundle {' '.join(map(str, args))} failed:\n{run.stderr[-3000:]}")
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One epoch on 64 training images: enough to exercise every workflow, not to be accurate."""
    work = tmp_path_factory.mktemp("bundle_run")
    cache = work / "cache"
    bundle_cmd("run", "--config_file", "bundle/configs/train.yaml", "--counts", "[64, 16, 16]", "--max_epochs", 1,
               "--output_dir", work / "models", "--log_dir", work / "logs", "--cache_dir", cache)
    return work, cache, work / "models" / "model.pt"


def test_train_writes_the_best_checkpoint_and_tensorboard_logs(trained):
    work, _, ckpt = trained
    state = torch.load(ckpt, weights_only=True)  # ignite saves a single object's state_dict itself
    assert "classifier.weight" in state
    stamp = json.loads(ckpt.with_suffix(".json").read_text())  # what it was trained for, beside it
    assert stamp == {"task": "polarity", "network_name": "shallow_cnn", "image_size": 64, "num_classes": 3}
    shipped = json.loads((BUNDLE / "models" / "model.json").read_text())  # the shipped model's, same format
    assert shipped == stamp
    assert zoo_json_hooks_pass([ckpt.with_suffix(".json")], work / "hooks")  # as the zoo's pre-commit wants it
    assert list((work / "logs").glob("events.out.tfevents.*"))
    assert (work / "models" / "datalist.json").is_file()


def _bundle_copy(root: Path) -> Path:
    """configs, scripts and the shipped model of the bundle, copied: a run that writes to bundle_root/models cannot
    touch the repository's."""
    import shutil

    copy = root / "bundle"
    for part in ("configs", "scripts", "models"):
        shutil.copytree(BUNDLE / part, copy / part, ignore=shutil.ignore_patterns("__pycache__", "runs"))
    return copy


def test_training_never_replaces_the_default_model_unless_asked(tmp_path):
    """A finished training run writes its best checkpoint into a run folder of its own and leaves models/model.pt
    as it was; only --install_model true copies the run's checkpoint and stamp over it."""
    copy = _bundle_copy(tmp_path)
    shipped = (copy / "models" / "model.pt").read_bytes()
    args = ["run", "--config_file", copy / "configs" / "train.yaml", "--bundle_root", copy, "--counts", "[32, 8, 8]",
            "--max_epochs", 1, "--cache_dir", tmp_path / "cache", "--log_dir", tmp_path / "logs"]
    bundle_cmd(*args)
    assert (copy / "models" / "model.pt").read_bytes() == shipped
    (run,) = (copy / "models" / "runs").iterdir()
    assert run.name.startswith("train-") and (run / "model.pt").is_file() and (run / "model.json").is_file()
    bundle_cmd(*args, "--install_model", "true")
    runs = sorted((copy / "models" / "runs").iterdir())
    assert len(runs) == 2 and runs[0] == run
    assert (copy / "models" / "model.pt").read_bytes() == (runs[1] / "model.pt").read_bytes() != shipped
    assert (copy / "models" / "model.json").read_text() == (runs[1] / "model.json").read_text()


def test_evaluate_writes_the_report_with_table_ii_over_seeds(trained):
    work, cache, ckpt = trained
    args = ["run", "--config_file", EVALUATE, "--counts", "[64, 16, 16]", "--ckpt_path", ckpt,
            "--output_dir", work / "eval", "--cache_dir", cache, "--table2_seeds", "[1]", "--table2_max_epochs", 1]
    bundle_cmd(*args)
    metrics = dict(row for row in csv.reader((work / "eval" / "metrics.csv").open()))
    for key in ("test_accuracy", "test_precision", "test_recall", "test_f1", "study_ratio_gauss_0_1_ifim_1",
                "study_ratio_road_scorecam_3", "study_ratio_gauss_0.5_0.25_deepshap_2",
                "study_deletion_delta_auc_f1_ifim", "study_fgsm_pearson_ifim_sensitive", "study_fgsm_flip_rate"):
        assert key in metrics, key
    assert 0.0 <= float(metrics["test_accuracy"]) <= 1.0
    report = work / "eval" / "report"
    results = json.loads((report / "results.json").read_text())
    assert results["study"]["n_images"] == 16
    assert set(results["study"]["perturbation"]) == {"gauss_0_1", "gauss_0.5_0.25", "road"}
    for per_method in results["study"]["perturbation"].values():
        assert set(per_method) == {"ifim", "gradcam", "gradcampp", "xgradcam", "eigencam", "scorecam", "deepshap",
                                   "vanilla_gradient", "random"}
    assert results["study"]["curves"]["alphas"] == [0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5]
    seeds = results["table2"]["seeds"]
    assert [r["seed"] for r in seeds] == [0, 1] and seeds[0]["checkpoint"] == str(ckpt)
    assert results["table2"]["precision"]["n"] == 2
    # the checkpoint under evaluation scores in Table II what the evaluator measured
    assert seeds[0]["accuracy"] == pytest.approx(float(metrics["test_accuracy"]))
    for name in ("report.md", "fig3_perturbation_ratio.png", "fig4_fgsm_correlation.png", "fig1_overlays.png",
                 "table2.csv", "fig_deletion_curves.png", "curves.csv", "fig_detectability.png"):
        assert (report / name).is_file(), name
    seed_ckpt = work / "eval" / "seeds" / "seed1" / "model.pt"
    stamp = seed_ckpt.stat().st_mtime_ns
    bundle_cmd(*args, "--study_methods", "[gradcam]")  # a second report reuses the trained seed
    assert seed_ckpt.stat().st_mtime_ns == stamp
    assert set(json.loads((report / "results.json").read_text())["study"]["perturbation"]["road"]) == {"gradcam"}


def run_folder(stdout: str) -> Path:
    """The run folder an inference run printed."""
    line = [line for line in stdout.splitlines() if line.startswith("iFIM maps and ifim.csv go to ")][-1]
    return Path(line.rsplit(" ", 1)[-1])


@pytest.mark.parametrize("form", ["run inference", "run", "bundle_root", "meta_file", "inside bundle"])
def test_inference_forms_users_type(trained, tmp_path, form):
    """Without --dataset_dir: the offline default's synthetic test images, each written beside its maps."""
    _, cache, ckpt = trained
    out = tmp_path / "inference"
    common = ["--ckpt_path", ckpt, "--output_dir", out, "--cache_dir", cache, "--n_images", 3]
    if form == "run inference":
        run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", *common)
    elif form == "run":
        run = bundle_cmd("run", "--config_file", "bundle/configs/inference.yaml", *common)
    elif form == "bundle_root":
        run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--bundle_root",
                         BUNDLE, *common)
    elif form == "meta_file":
        run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--meta_file",
                         "bundle/configs/metadata.json", *common)
    else:
        run = bundle_cmd("run", "inference", "--config_file", "configs/inference.yaml", *common, cwd=BUNDLE)
    folder = run_folder(run.stdout)
    assert folder.parent == out.resolve() and [p.name for p in out.iterdir()] == [folder.name]
    rows = list(csv.DictReader((folder / "ifim.csv").open()))
    assert len(rows) == 3 and all(r["name"].startswith("sim") and "_seed" in r["name"] for r in rows)
    assert all(r["label"] in ("0", "1", "2") for r in rows)  # the synthetic images' truth, beside the prediction
    name = rows[0]["name"]
    image, sens, comp = (nib.load(str(folder / f"{name}_{key}.nii.gz")).get_fdata()
                         for key in ("image", "x_sens", "x_comp"))
    assert image.shape == sens.shape == (64, 64) and (folder / f"{name}_ifim.png").is_file()
    np.testing.assert_allclose(sens + comp, image, rtol=0, atol=1e-5)


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    _, _, ckpt = trained
    bundle_cmd("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file",
               "configs/inference.yaml", cwd=BUNDLE)
    exported = tmp_path / "model.ts"
    bundle_cmd("ckpt_export", "network_def", "--filepath", exported, "--ckpt_file", ckpt, "--meta_file",
               "configs/metadata.json", "--config_file", "configs/inference.yaml", cwd=BUNDLE)
    sys.path.insert(0, str(BUNDLE))
    from scripts.networks import get_network

    network = get_network("shallow_cnn", num_classes=3).eval()  # the default task's three classes
    state = torch.load(ckpt, weights_only=True)
    network.load_state_dict(state)
    scripted = torch.jit.load(str(exported)).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x))


def test_missing_checkpoint_is_named(trained, tmp_path):
    _, cache, _ = trained
    missing = tmp_path / "nowhere" / "model.pt"
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", missing,
                     "--output_dir", tmp_path / "out", "--cache_dir", cache, check=False)
    assert run.returncode != 0 and f"checkpoint not found: {missing}" in run.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_unreadable_checkpoint_is_one_line_naming_it(trained, tmp_path, damage):
    """An empty or truncated model.pt: one error line naming the file and what is wrong, the traceback in the log,
    a non-zero exit and no output."""
    _, cache, ckpt = trained
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"" if damage == "empty" else ckpt.read_bytes()[:4000])
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", bad,
                     "--output_dir", tmp_path / "out", "--cache_dir", cache, "--bundle_root", BUNDLE, check=False)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(errors) == 1 and f"checkpoint {bad} cannot be read" in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "does not fit" not in run.stderr
    log = BUNDLE / "logs" / "last_error.log"
    assert "Traceback" in log.read_text() and str(bad) in log.read_text()
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_task_is_refused(tmp_path):
    """An SKS/BKS model has 2 classes like CXR: only its stamp tells the tasks apart."""
    ckpt = BUNDLE / "models" / "sksbks" / "model.pt"
    image = tmp_path / "scans" / "a.png"
    image.parent.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", ckpt,
                     "--task", "cxr", "--dataset_dir", image.parent, "--output_dir", tmp_path / "out", check=False)
    assert run.returncode != 0
    assert f"checkpoint {ckpt} was trained for task 'sksbks' (this run: 'cxr')" in run.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_network_is_named(trained, tmp_path):
    _, cache, _ = trained
    sys.path.insert(0, str(BUNDLE))
    from scripts.networks import get_network

    other = tmp_path / "resnet.pt"
    torch.save(get_network("resnet18", num_classes=2).state_dict(), other)
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", other,
                     "--output_dir", tmp_path / "out", "--cache_dir", cache, "--n_images", 2, check=False)
    assert run.returncode != 0 and f"checkpoint {other} does not fit the network (ShallowCNN)" in run.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_seed_stamp_changes_with_the_recipe_and_the_architecture(tmp_path, monkeypatch):
    """A seed checkpoint is reused only for the same train.yaml, overrides and network shapes."""
    import scripts.table2 as table2
    from scripts.networks import ShallowCNN

    config = tmp_path / "train.yaml"
    config.write_text("max_epochs: 40\n")
    stamp = table2.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2)
    assert stamp == table2.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2)
    assert stamp != table2.seed_stamp(config, {"image_size": 96}, "shallow_cnn", 2)
    config.write_text("max_epochs: 20\n")
    changed_recipe = table2.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2)
    assert changed_recipe != stamp
    # a new width default in networks.py, with train.yaml and overrides unchanged
    monkeypatch.setattr(table2, "get_network", lambda name, **kw: ShallowCNN(channels=(8, 16, 32), **kw))
    assert table2.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2) != changed_recipe


def test_inference_on_a_folder_of_a_users_scans(trained, tmp_path):
    """--dataset_dir: one row and one map set per readable file, each map on its file's own grid; unreadable files
    skipped with their reason; nothing already in OUT touched; a rerun writes a new run folder."""
    from monai.transforms import LoadImage

    sys.path.insert(0, str(BUNDLE))
    from scripts.sources import image_format, image_readers

    _, _, ckpt = trained
    scans, out = tmp_path / "scans", tmp_path / "out"
    expected = make_scan_folder(scans)
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    args = ["run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", ckpt,
            "--dataset_dir", scans, "--output_dir", out, "--batch_size", 3]
    first = run_folder(bundle_cmd(*args).stdout)
    rows = list(csv.DictReader((first / "ifim.csv").open()))
    good = sorted(name for name, reason in expected.items() if reason is None)
    assert sorted(r["name"] for r in rows) == good
    skipped = {r["name"]: r["reason"] for r in csv.DictReader((first / "skipped.csv").open())}
    assert set(skipped) == set(expected) - set(good)
    for name, reason in skipped.items():
        assert str(scans / name) in reason and expected[name] in reason
    for row in rows:
        source = scans / row["name"]
        assert row["source"] == str(source)
        assert sum(float(v) for k, v in row.items() if k.startswith("p_")) == pytest.approx(1, abs=1e-5)
        loaded = LoadImage(image_only=True, ensure_channel_first=True,
                           reader=image_readers()[image_format(source)])(str(source))  # (channels, *spatial)
        for key in ("x_sens", "x_comp"):
            written = nib.load(str(first / f"{row['name']}_{key}.nii.gz"))
            assert written.shape == tuple(loaded.shape[1:]), row["name"]
            np.testing.assert_allclose(written.affine, np.asarray(loaded.meta["affine"]), atol=1e-6)
        comp = nib.load(str(first / f"{row['name']}_x_comp.nii.gz")).get_fdata()
        pixels = loaded.numpy()
        gray = pixels[0] if len(pixels) == 1 else np.tensordot([0.299, 0.587, 0.114], pixels[:3], axes=1)  # luma
        sign = -1 if row["name"] == "dicom/IM0001" else 1  # MONOCHROME1: the model sees it inverted
        assert np.corrcoef(comp.ravel(), sign * gray.ravel())[0, 1] > 0.9, row["name"]  # overlays its scan
        assert (first / f"{row['name']}_ifim.png").is_file()
    summary = json.loads((first / "run.json").read_text())
    assert summary["analysed"] == len(good) and summary["skipped"] == 2
    assert summary["dataset_dir"] == str(scans.resolve()) and summary["checkpoint"] == str(Path(ckpt).resolve())
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    second = run_folder(bundle_cmd(*args).stdout)  # a rerun into the same OUT
    assert second != first and second.parent == first.parent
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == before
    assert (out / "thesis.tex").read_text() == "mine"
    inside = run_folder(bundle_cmd(*args[:-4], "--output_dir", scans / "results").stdout)  # OUT inside DIR
    assert sorted(r["name"] for r in csv.DictReader((inside / "ifim.csv").open())) == good


def test_a_folder_without_readable_images_fails_naming_it(trained, tmp_path):
    _, _, ckpt = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", ckpt,
                     "--dataset_dir", empty, "--output_dir", tmp_path / "out", check=False)
    assert run.returncode != 0 and f"no image file under {empty}" in run.stderr
    assert not (tmp_path / "out").exists()
    (empty / "bad.png").write_bytes(b"not a png")
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", ckpt,
                     "--dataset_dir", empty, "--output_dir", tmp_path / "out", check=False)
    assert run.returncode != 0 and "none of the 1 inputs could be analysed" in run.stderr
    skipped = list(csv.DictReader(next((tmp_path / "out").glob("run-*/skipped.csv")).open()))
    assert [r["name"] for r in skipped] == ["bad.png"] and str(empty / "bad.png") in skipped[0]["reason"]


@pytest.mark.parametrize("config, counts, expected", [
    ("bundle/configs/train.yaml", "[16, 0, 8]", "training needs entries in the validation split, and the datalist "
                                                "has 16 training, 0 validation, 8 test"),
    ("bundle/configs/train.yaml", "[0, 8, 8]", "training needs entries in the training split"),
    (EVALUATE, "[16, 8, 0]", "evaluation needs entries in the test split"),
    (EVALUATE, "[0, 0, 16]", "--shap_background_size 0"),
])
def test_an_empty_split_is_refused_up_front_saying_what_to_pass(trained, tmp_path, config, counts, expected):
    """Counts that leave a needed split empty: one error line naming the split and what to pass, before any
    training or study, and no model written."""
    _, cache, ckpt = trained
    run = bundle_cmd("run", "--config_file", config, "--counts", counts, "--ckpt_path", ckpt, "--cache_dir", cache,
                     "--output_dir", tmp_path / "out", "--log_dir", tmp_path / "logs", check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR ")]
    assert run.returncode != 0 and len(errors) == 1 and expected in errors[0], run.stderr[-2000:]
    assert "--counts" in errors[0] and not list(tmp_path.rglob("model.pt"))


def test_an_image_size_too_small_is_refused_naming_the_key(trained, tmp_path):
    _, cache, _ = trained
    run = bundle_cmd("run", "--config_file", "bundle/configs/train.yaml", "--counts", "[16, 8, 8]", "--image_size", 7,
                     "--cache_dir", cache, "--output_dir", tmp_path / "out", "--log_dir", tmp_path / "logs",
                     check=False)
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR ")]
    assert run.returncode != 0 and len(errors) == 1, run.stderr[-2000:]
    assert "image_size must be a whole number of pixels, at least 16; got 7" in errors[0]
