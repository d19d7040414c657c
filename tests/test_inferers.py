"""IFIMInferer and the inference pipeline of configs/inference.yaml inside a real MONAI SupervisedEvaluator."""

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
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.transforms import Compose, FlattenSubKeysd
from torch import nn

from scripts.data import SkippingDataset
from scripts.handlers import IFIMCSVSaver
from scripts.ifim import ifim_decompose
from scripts.inferers import IFIMInferer
from scripts.networks import ShallowCNN
from scripts.sources import AsOwnGridd, InvertToSourced, SaveOnSourceGridd
from scripts.visualize import SaveDecompositionFigured

ROOT = Path(__file__).resolve().parents[1]


class _Tupled(nn.Module):
    """A network returning (logits, features), as MONAI's ViT does; or a dict."""

    def __init__(self, net, as_dict=False):
        super().__init__()
        self.net, self.as_dict = net, as_dict

    def forward(self, x):
        logits = self.net(x)
        return {"class_logits": logits, "features": x.mean()} if self.as_dict else (logits, x.mean())


def test_inferer_returns_the_decomposition_and_selects_the_logits():
    torch.manual_seed(0)
    net, x = ShallowCNN(2, 1, 3, channels=(4, 8, 8)).double(), torch.randn(3, 1, 16, 16, dtype=torch.float64)
    direct = ifim_decompose(net, x, rho=0.8)
    for network, key in ((net, None), (_Tupled(net), 0), (_Tupled(net, as_dict=True), "class_logits")):
        with torch.no_grad():  # as an evaluator runs it
            out = IFIMInferer(rho=0.8, output_key=key)(x, network)
        assert set(out) == {"logits", "probs", "eigenvalues", "rank", "k", "x_sens", "x_comp"}
        torch.testing.assert_close(out["logits"], net(x).detach())
        for name in ("probs", "eigenvalues", "rank", "k", "x_sens", "x_comp"):
            torch.testing.assert_close(out[name], getattr(direct, name), rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match=r"set the inferer's output_key .* one of \[0, 1\]"):
        IFIMInferer()(x, _Tupled(net))
    with pytest.raises(KeyError, match="'logits' is not in the network's dict output"):
        IFIMInferer(output_key="logits")(x, _Tupled(net, as_dict=True))


class _FailsOnMarkedImage(nn.Module):
    """Fails on a batch holding an image marked by a first pixel of -1: a crash in the middle of a run."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if bool((x.reshape(len(x), -1)[:, 0] == -1).any()):
            raise RuntimeError("simulated crash")
        return self.net(x)


def _pipeline(network, images, out: Path, batch_size=2, names=None):
    """configs/inference.yaml's pipeline on in-memory images (each its own grid)."""
    preprocessing = Compose([AsOwnGridd("image")])
    names = names or [f"sub/img{i}" for i in range(len(images))]
    data = [{"image": image, "image_path": f"mem{i}", "name": name}
            for i, (image, name) in enumerate(zip(images, names))]
    postprocessing = Compose([
        FlattenSubKeysd(keys="pred"),
        SaveDecompositionFigured(output_dir=out, class_names=["absent", "present"]),
        InvertToSourced(["x_sens", "x_comp"], transform=preprocessing),
        SaveOnSourceGridd(["x_sens", "x_comp"], output_dir=out),
    ])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), network=network, inferer=IFIMInferer(),
        val_data_loader=DataLoader(SkippingDataset(data, preprocessing), batch_size=batch_size),
        postprocessing=postprocessing, val_handlers=[IFIMCSVSaver(out, class_names=["absent", "present"],
                                                                  context={"what": "test"})])
    return evaluator


def test_pipeline_writes_maps_rows_and_figures_that_match_the_engine(tmp_path):
    torch.manual_seed(1)
    net = ShallowCNN(2, 1, 2, channels=(4, 8, 8))
    images = [torch.rand(1, 16, 12) for _ in range(5)]
    _pipeline(net, images, tmp_path).run()
    direct = ifim_decompose(net, torch.stack(images))
    rows = list(csv.DictReader((tmp_path / "ifim.csv").open()))
    assert [r["name"] for r in rows] == [f"sub/img{i}" for i in range(5)]
    assert [r["source"] for r in rows] == [f"mem{i}" for i in range(5)]
    for i, row in enumerate(rows):
        predicted = int(direct.probs[i].argmax())
        assert int(row["predicted"]) == predicted and row["predicted_class"] == ["absent", "present"][predicted]
        assert float(row["p_1"]) == pytest.approx(float(direct.probs[i, 1]), rel=1e-5)
        assert float(row["lambda_1"]) == pytest.approx(float(direct.eigenvalues[i, 0]), rel=1e-5)
        assert int(row["rank"]) == int(direct.rank[i]) and int(row["k"]) == int(direct.k[i])
        sens = nib.load(str(tmp_path / "sub" / f"img{i}_x_sens.nii.gz")).get_fdata()
        comp = nib.load(str(tmp_path / "sub" / f"img{i}_x_comp.nii.gz")).get_fdata()
        np.testing.assert_allclose(sens, direct.x_sens[i, 0].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sens + comp, images[i][0].numpy(), rtol=0, atol=1e-6)
        assert (tmp_path / "sub" / f"img{i}_ifim.png").stat().st_size > 0
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["what"] == "test" and summary["analysed"] == 5 and summary["skipped"] == 0
    assert not (tmp_path / "skipped.csv").exists()
    assert not list(tmp_path.rglob(".*"))  # no temporary leftovers


def test_inputs_with_names_too_long_for_their_outputs_are_analysed(tmp_path):
    """DICOM-UID-style names (dots early on) and a 250-character name: every input gets its row and its three files,
    each name within the file system's 255 bytes, two long names never share a file, nothing left behind."""
    uid = ".".join(["1.2.840.113619.2.55.3.604688119.868.1234567890.123"] * 3) + ".dcm"
    names = [f"sub/{uid}", f"sub/{uid[:-4]}9.dcm", "sub/" + "é" * 125 + ".png"]
    images = [torch.rand(1, 16, 12) for _ in names]
    _pipeline(ShallowCNN(2, 1, 2, channels=(4, 8, 8)), images, tmp_path, names=names).run()
    rows = list(csv.DictReader((tmp_path / "ifim.csv").open()))
    assert [r["name"] for r in rows] == names
    written = sorted(p.name for p in (tmp_path / "sub").iterdir())
    assert len(written) == 9 and all(len(n.encode()) <= 255 for n in written)
    assert sum(n.endswith("_x_sens.nii.gz") for n in written) == 3
    assert sum(n.endswith("_ifim.png") for n in written) == 3
    shortened = [n for n in written if "~" in n]  # only the 250-character name's outputs need it
    assert len(shortened) == 3 and len({n.split("~")[-1].split("_")[0] for n in shortened}) == 1
    assert f"{uid}_x_sens.nii.gz" in written and f"{uid}_ifim.png" in written  # the UID names fit as they are
    assert not list(tmp_path.rglob(".*"))


def test_a_crash_keeps_the_rows_of_finished_batches(tmp_path):
    torch.manual_seed(2)
    net = _FailsOnMarkedImage(ShallowCNN(2, 1, 2, channels=(4, 8, 8)))
    images = [torch.rand(1, 16, 16) for _ in range(7)]
    images[4][0, 0, 0] = -1  # in the third batch of two
    with pytest.raises(RuntimeError, match="simulated crash"):
        _pipeline(net, images, tmp_path).run()
    rows = list(csv.DictReader((tmp_path / "ifim.csv").open()))
    assert [r["name"] for r in rows] == ["sub/img0", "sub/img1", "sub/img2", "sub/img3"]  # batches 1 and 2
    assert not (tmp_path / "run.json").exists()  # an unfinished run is marked by its missing summary


def test_importing_the_engine_loads_no_engines_or_captum():
    code = ("import sys; sys.path.insert(0, 'bundle'); import scripts.ifim; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'monai', 'ignite', 'captum', 'matplotlib'}))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_progress_bar_counts_every_input_skipped_or_not(tmp_path):
    """With 7 inputs of which the 2nd and the last two cannot be read, the bar ends at 7 / 7 with 3 skipped, and
    after the first batch it already counts the skipped input before it."""
    from scripts.handlers import InputProgressBar

    net = ShallowCNN(2, 1, 2, channels=(4, 8, 8))
    data = [{"image": torch.rand(1, 16, 12), "name": f"img{i}"} for i in range(7)]
    for i in (1, 5, 6):
        data[i]["image"] = "not an image"  # the chain below fails on it
    chain = Compose([AsOwnGridd("image")])
    progress, seen = InputProgressBar(), []
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), network=net,
                                    val_data_loader=DataLoader(SkippingDataset(data, chain), batch_size=2))
    progress.attach(evaluator)
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((progress.done, progress.skipped)))
    evaluator.run()
    assert seen[0] == (3, 1)  # img0, img2 analysed; img1 skipped on the way
    assert (progress.total, progress.done, progress.skipped) == (7, 7, 3)
