"""torchrun with 2 CPU processes (gloo) gives what one process gives: the multi_gpu_*.yaml overlays."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fake_datasets import make_scan_folder

ROOT = Path(__file__).resolve().parents[1]
INFERENCE = "['bundle/configs/inference.yaml','bundle/configs/multi_gpu_inference.yaml']"
TRAIN = "['bundle/configs/train.yaml','bundle/configs/multi_gpu_train.yaml']"
EVALUATE = "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml']"
EVALUATE_DDP = "['bundle/configs/train.yaml','bundle/configs/evaluate.yaml','bundle/configs/multi_gpu_evaluate.yaml']"


def _run(args, processes=1):
    """``python -m monai.bundle ...`` in one process, or under ``torchrun --nproc_per_node processes``."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "monai.bundle", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two processes on two cores
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, f"{' '.join(command)} failed:\n{run.stderr[-3000:]}"
    return run


def _run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def _rows(folder: Path, name: str = "ifim.csv"):
    return list(csv.DictReader((folder / name).open()))


def test_inference_with_two_processes_writes_what_one_process_writes(tmp_path):
    scans = tmp_path / "scans"
    make_scan_folder(scans)
    common = ["run", "inference", "--dataset_dir", scans, "--batch_size", 2]
    _run([*common, "--config_file", "bundle/configs/inference.yaml", "--output_dir", tmp_path / "one"])
    _run([*common, "--config_file", INFERENCE, "--output_dir", tmp_path / "two"], processes=2)
    one, two = _run_folder(tmp_path / "one"), _run_folder(tmp_path / "two")
    rows_one, rows_two = _rows(one), _rows(two)
    assert [r["name"] for r in rows_two] == [r["name"] for r in rows_one] and len(rows_one) == 8
    for a, b in zip(rows_one, rows_two):
        assert {k: v for k, v in a.items() if not k.startswith(("p_", "lambda_"))} == \
               {k: v for k, v in b.items() if not k.startswith(("p_", "lambda_"))}
        for key in (k for k in a if k.startswith(("p_", "lambda_"))):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-5, abs=1e-12), (a["name"], key)
    assert _rows(one, "skipped.csv") == _rows(two, "skipped.csv")
    files_one = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file()) == files_one  # no part files left
    for path in (p for p in files_one if p.name.endswith(".nii.gz")):
        a, b = nib.load(str(one / path)), nib.load(str(two / path))
        assert a.shape == b.shape and np.allclose(a.affine, b.affine)
        np.testing.assert_allclose(b.get_fdata(), a.get_fdata(), rtol=1e-5, atol=1e-6)
    summary_one, summary_two = (json.loads((f / "run.json").read_text()) for f in (one, two))
    assert (summary_two["analysed"], summary_two["skipped"], summary_two["processes"]) == (8, 2, 2)
    assert (summary_one["analysed"], summary_one["skipped"], summary_one["processes"]) == (8, 2, 1)


def test_one_ddp_epoch_equals_one_process_with_the_global_batch(tmp_path):
    """2 processes x 8 images per step, gradients averaged by DDP, give the parameters of one process taking the
    same 16 images per step (DistributedSampler's shares, unshuffled, are the global batch's halves)."""
    common = ["run", "--counts", "[32, 8, 8]", "--max_epochs", 1, "--cache_dir", tmp_path / "cache"]
    _run([*common, "--config_file", "bundle/configs/train.yaml", "--batch_size", 16,
          "--train#dataloader#shuffle", "False", "--output_dir", tmp_path / "one", "--log_dir", tmp_path / "logs1"])
    _run([*common, "--config_file", TRAIN, "--batch_size", 8, "--train#sampler#shuffle", "False",
          "--output_dir", tmp_path / "two", "--log_dir", tmp_path / "logs2"], processes=2)
    one = torch.load(tmp_path / "one" / "model.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "model.pt", weights_only=True)
    assert set(two) == set(one)  # saved without DDP's "module." prefix
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "two" / "model.json").read_text())["task"] == "polarity"


def _assert_close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            if key == "seconds":  # wall-clock times: the same stages, not the same figures
                assert set(a[key]) == set(b[key]), path
                continue
            _assert_close(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_close(u, v, f"{path}/{i}")
    elif isinstance(a, float):
        # float32 maps: a correlation, or a difference of two near-equal ones, agrees to float32 round-off (~1e-7)
        assert b == pytest.approx(a, rel=1e-6, abs=1e-6), path
    else:
        assert a == b, path


def test_evaluation_with_two_processes_reports_what_one_process_reports(tmp_path):
    """The shipped model on 13 test images (shares of 7 and 6): the test metrics, the whole study and Table II of
    two processes equal one process's. Table II's extra seed is trained by the two processes together (DDP), then
    reused by the one-process run."""
    common = ["run", "--counts", "[32, 8, 13]", "--cache_dir", tmp_path / "cache", "--output_dir", tmp_path / "eval",
              "--table2_seeds", "[1]", "--table2_max_epochs", 1, "--shap_background_size", 4, "--batch_size", 4,
              "--study_methods", "['ifim_sensitive','gradcam','deepshap','vanilla_gradient','random']"]
    _run([*common, "--config_file", EVALUATE_DDP, "--report_dir", tmp_path / "two"], processes=2)
    metrics_two = dict(csv.reader((tmp_path / "eval" / "metrics.csv").open()))
    seed_checkpoint = tmp_path / "eval" / "seeds" / "seed1" / "model.pt"
    trained = seed_checkpoint.stat().st_mtime_ns
    _run([*common, "--config_file", EVALUATE, "--report_dir", tmp_path / "one"])
    assert seed_checkpoint.stat().st_mtime_ns == trained  # reused, not retrained
    metrics_one = dict(csv.reader((tmp_path / "eval" / "metrics.csv").open()))
    assert set(metrics_two) == set(metrics_one) and "test_f1" in metrics_one
    for key, value in metrics_one.items():
        assert float(metrics_two[key]) == pytest.approx(float(value), rel=1e-6, nan_ok=True), key
    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two"))
    assert one["study"]["n_images"] == 13 and [r["seed"] for r in one["table2"]["seeds"]] == [0, 1]
    _assert_close(one, two)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_ranks_keep_every_rank_handlers_and_a_renamed_one_fails_loudly():
    """Off rank 0 only the handlers named by class survive; a name that matches no class (a renamed handler) or no
    handler in the list (a removed one) is an error, not a rank that silently skips its part."""
    from unittest import mock

    from monai.handlers import MetricsSaver, StatsHandler

    from scripts import distributed
    from scripts.handlers import CheckedCheckpointLoader

    loader = object.__new__(CheckedCheckpointLoader)
    saver, stats = object.__new__(MetricsSaver), object.__new__(StatsHandler)
    handlers = [loader, stats, saver]
    every = ["scripts.handlers.CheckedCheckpointLoader", "monai.handlers.MetricsSaver"]
    assert distributed.handlers_for_rank(handlers, every) == handlers  # rank 0 of a world of one
    with mock.patch.object(distributed, "rank", return_value=1):
        assert distributed.handlers_for_rank(handlers, every) == [loader, saver]
    with pytest.raises(ValueError, match="names no class"):
        distributed.handlers_for_rank(handlers, ["scripts.handlers.CheckpointLoaderRenamed"])
    with pytest.raises(ValueError, match="none of the handlers is a monai.handlers.MetricsSaver"):
        distributed.handlers_for_rank([loader, stats], every)
