"""The bundle's configs through `python -m monai.bundle`, as users type them: a tiny train -> evaluate -> infer
on 64^2 images of the offline default task, the model-zoo checks, and the errors bad input gets."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"


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
    assert list((work / "logs").glob("events.out.tfevents.*"))
    assert (work / "models" / "datalist.json").is_file()


def test_evaluate_writes_the_report_with_table_ii_over_seeds(trained):
    work, cache, ckpt = trained
    args = ["run", "--config_file", "bundle/configs/evaluate.yaml", "--counts", "[64, 16, 16]", "--ckpt_path", ckpt,
            "--output_dir", work / "eval", "--cache_dir", cache, "--table2_seeds", "[1]", "--table2_max_epochs", 1]
    bundle_cmd(*args)
    metrics = dict(row for row in csv.reader((work / "eval" / "metrics.csv").open()))
    for key in ("test_accuracy", "test_precision", "test_recall", "test_f1", "study_ratio_ifim_1",
                "study_ratio_scorecam_3", "study_fgsm_pearson_ifim_sensitive", "study_fgsm_flip_rate"):
        assert key in metrics, key
    assert 0.0 <= float(metrics["test_accuracy"]) <= 1.0
    report = work / "eval" / "report"
    results = json.loads((report / "results.json").read_text())
    assert results["study"]["n_images"] == 16
    assert set(results["study"]["perturbation"]) == {"ifim", "gradcam", "gradcampp", "xgradcam", "eigencam",
                                                     "scorecam", "deepshap", "vanilla_gradient", "random"}
    seeds = results["table2"]["seeds"]
    assert [r["seed"] for r in seeds] == [0, 1] and seeds[0]["checkpoint"] == str(ckpt)
    assert results["table2"]["precision"]["n"] == 2
    # the checkpoint under evaluation scores in Table II what the evaluator measured
    assert seeds[0]["accuracy"] == pytest.approx(float(metrics["test_accuracy"]))
    for name in ("report.md", "fig3_perturbation_ratio.png", "fig4_fgsm_correlation.png", "fig1_overlays.png",
                 "table2.csv"):
        assert (report / name).is_file(), name
    seed_ckpt = work / "eval" / "seeds" / "seed1" / "model.pt"
    stamp = seed_ckpt.stat().st_mtime_ns
    bundle_cmd(*args, "--study_methods", "[gradcam]")  # a second report reuses the trained seed
    assert seed_ckpt.stat().st_mtime_ns == stamp
    assert set(json.loads((report / "results.json").read_text())["study"]["perturbation"]) == {"gradcam"}


@pytest.mark.parametrize("form", ["run inference", "run", "bundle_root", "meta_file", "inside bundle"])
def test_inference_forms_users_type(trained, tmp_path, form):
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
    assert str(out.resolve()) in run.stdout
    rows = list(csv.DictReader((out / "ifim.csv").open()))
    assert len(rows) == 3 and all(r["file"].startswith("mni152_z") for r in rows)
    name = rows[0]["file"]
    sens, comp = np.load(out / f"{name}_x_sens.npy"), np.load(out / f"{name}_x_comp.npy")
    assert sens.shape == comp.shape == (1, 64, 64) and (out / f"{name}_ifim.png").is_file()


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    _, _, ckpt = trained
    bundle_cmd("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json", "--config_file",
               "configs/inference.yaml", cwd=BUNDLE)
    exported = tmp_path / "model.ts"
    bundle_cmd("ckpt_export", "network_def", "--filepath", exported, "--ckpt_file", ckpt, "--meta_file",
               "configs/metadata.json", "--config_file", "configs/inference.yaml", cwd=BUNDLE)
    sys.path.insert(0, str(BUNDLE))
    from scripts.networks import get_network

    network = get_network("shallow_cnn", num_classes=2).eval()
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


def test_checkpoint_of_another_network_is_named(trained, tmp_path):
    _, cache, _ = trained
    sys.path.insert(0, str(BUNDLE))
    from scripts.networks import get_network

    other = tmp_path / "resnet.pt"
    torch.save(get_network("resnet18", num_classes=2).state_dict(), other)
    run = bundle_cmd("run", "inference", "--config_file", "bundle/configs/inference.yaml", "--ckpt_path", other,
                     "--output_dir", tmp_path / "out", "--cache_dir", cache, "--n_images", 2, check=False)
    assert run.returncode != 0 and f"checkpoint {other} does not fit the network (ShallowCNN)" in run.stderr
    assert not (tmp_path / "out" / "ifim.csv").exists()


def test_seed_stamp_changes_with_the_recipe_and_the_architecture(tmp_path, monkeypatch):
    """A seed checkpoint is reused only for the same train.yaml, overrides and network shapes."""
    import scripts.workflows as workflows
    from scripts.networks import ShallowCNN

    config = tmp_path / "train.yaml"
    config.write_text("max_epochs: 40\n")
    stamp = workflows.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2)
    assert stamp == workflows.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2)
    assert stamp != workflows.seed_stamp(config, {"image_size": 96}, "shallow_cnn", 2)
    config.write_text("max_epochs: 20\n")
    changed_recipe = workflows.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2)
    assert changed_recipe != stamp
    # a new width default in networks.py, with train.yaml and overrides unchanged
    monkeypatch.setattr(workflows, "get_network", lambda name, **kw: ShallowCNN(channels=(8, 16, 32), **kw))
    assert workflows.seed_stamp(config, {"image_size": 64}, "shallow_cnn", 2) != changed_recipe
