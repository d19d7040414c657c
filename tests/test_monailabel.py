"""The MONAI Label review loop on a real server: `monailabel start_server` from .venv-monailabel with the app of
monailabel_app/ on 127.0.0.1, a studies folder of a 2D NIfTI and a PNG, /info/, /infer/ifim_review, a corrected
label saved back with tag `final`, and the scoring command of configs/review.yaml on it.

This test fails, never skips, when .venv-monailabel is missing: `bash tools/setup_monailabel.sh` builds it (the
README's test command and .ci/run do)."""

from __future__ import annotations

import csv
import email.parser
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from fake_datasets import make_review_studies, source_grid

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / os.environ.get("IFIM_MONAILABEL_VENV", ".venv-monailabel")
REVIEW = "['bundle/configs/inference.yaml','bundle/configs/review.yaml']"
TOP_PERCENT = 7  # not the default 5: the --conf value must reach the task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(response: requests.Response) -> dict:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n" + response.content)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    monailabel = VENV / "bin" / "monailabel"
    if not monailabel.is_file():
        pytest.fail(f"{monailabel} not found: run `bash tools/setup_monailabel.sh` (the MONAI Label app's own "
                    "environment) before the tests.")
    studies = tmp_path_factory.mktemp("studies")
    images = make_review_studies(studies)
    port = _free_port()
    log = (studies.parent / "server.log").open("w")
    env = dict(os.environ, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    started = time.perf_counter()
    process = subprocess.Popen([str(monailabel), "start_server", "--app", "monailabel_app", "--studies", str(studies),
                                "--host", "127.0.0.1", "--port", str(port), "--conf", "top_percent",
                                str(TOP_PERCENT)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"monailabel start_server exited with {process.returncode}:\n"
                            f"{(studies.parent / 'server.log').read_text()[-4000:]}")
            try:
                info = requests.get(f"{url}/info/", timeout=5)
                if info.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.perf_counter() - started > 300:
                pytest.fail("the MONAI Label server did not answer within 300 s")
            time.sleep(1)
        print(f"server answered /info/ after {time.perf_counter() - started:.1f} s")
        yield url, studies, images, info.json()
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # stop the server by its PID (its process group)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_info_lists_the_review_model(server):
    _, _, _, info = server
    model = info["models"]["ifim_review"]
    assert model["type"] == "segmentation" and model["dimension"] == 2
    assert model["labels"] == {"high_sensitivity": 1} and model["config"]["top_percent"] == TOP_PERCENT


@pytest.mark.parametrize("image_id", ["axial", "gray"])
def test_infer_returns_the_high_sensitivity_region_on_the_images_grid(server, image_id, tmp_path):
    url, _, images, _ = server
    for attempt in ("first", "later"):
        started = time.perf_counter()
        response = requests.post(f"{url}/infer/ifim_review", params={"image": image_id, "output": "all"},
                                 data={"params": "{}"}, timeout=300)
        print(f"{attempt} /infer/ifim_review of {image_id}: {time.perf_counter() - started:.2f} s")
        assert response.status_code == 200, response.text[-2000:]
    parts = _multipart(response)
    result = json.loads(parts["params"])
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert result["predicted_class"] in result["class_names"] and len(result["eigenvalues"]) == len(
        result["class_names"])
    assert 1 <= result["k"] <= result["rank"] <= len(result["class_names"]) - 1
    (tmp_path / "label.nii.gz").write_bytes(parts["image"])
    label = nib.load(str(tmp_path / "label.nii.gz"))
    shape, affine = source_grid(images[image_id])
    assert label.shape == shape
    np.testing.assert_allclose(label.affine, affine, atol=1e-6)
    values = np.asarray(label.dataobj)
    assert set(np.unique(values).tolist()) == {0, 1}
    assert values.sum() == int(np.ceil(TOP_PERCENT / 100 * values.size - 1e-9))  # k = ceil(7 % of the pixels)


def test_a_corrected_label_is_saved_read_back_and_scored(server, tmp_path):
    """The reader's correction, PUT with tag final, reads back byte for byte; the scoring command on it gives
    what annotation_agreement gives when called on the maps directly."""
    url, studies, images, _ = server
    response = requests.post(f"{url}/infer/ifim_review", params={"image": "axial", "output": "image"},
                             data={"params": "{}"}, timeout=300)
    assert response.status_code == 200
    proposed = tmp_path / "proposed.nii.gz"
    proposed.write_bytes(response.content)
    image = nib.load(str(proposed))
    corrected = np.asarray(image.dataobj).copy()
    corrected[20:30, 5:15] = 1  # the reader adds a region and removes another
    corrected[:5] = 0
    path = tmp_path / "axial.nii.gz"
    nib.save(nib.Nifti1Image(corrected.astype(np.uint8), image.affine), str(path))
    saved = requests.put(f"{url}/datastore/label", params={"image": "axial", "tag": "final"},
                         files={"label": ("axial.nii.gz", path.read_bytes())}, data={"params": "{}"}, timeout=60)
    assert saved.status_code == 200, saved.text
    back = requests.get(f"{url}/datastore/label", params={"label": "axial", "tag": "final"}, timeout=60)
    assert back.status_code == 200 and back.content == path.read_bytes()

    out = tmp_path / "scores"
    run = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "score", "--config_file", REVIEW,
                          "--studies_dir", str(studies), "--output_dir", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    rows = list(csv.DictReader((folder / "annotation_scores.csv").open()))
    assert {r["image"] for r in rows} == {"axial"}  # only the image with a final label

    from scripts.metrics import annotation_agreement
    from scripts.review import ReviewModel

    model = ReviewModel.from_bundle(ROOT / "bundle")
    item = model.load(images["axial"])
    maps = model.to_source_grid(item, model.maps(item))
    mask = torch.as_tensor(corrected > 0)
    for row in rows:
        values = maps[row["method"]].double()[None]
        expected = annotation_agreement(values, mask[None, None])
        for key, value in expected.items():
            assert float(row[key]) == pytest.approx(value.item(), rel=1e-6, abs=1e-9, nan_ok=True), (row, key)
    table = (folder / "annotation_scores.md").read_text()
    assert "| ifim_sensitive |" in table and "1 image)" in table


@pytest.mark.parametrize("params, status, reason", [
    ({"image": "no_such_image"}, 404, "no image"),
    ({"image": "/etc/passwd"}, 403, "outside the datastore"),
    ({"image": "axial", "top_percent": -1}, 400, "top_percent must be a number in (0, 100]"),
    ({"image": "axial", "top_percent": 0}, 400, "got 0"),
    ({"image": "axial", "top_percent": 1000}, 400, "got 1000"),
    ({"image": "axial", "top_percent": "abc"}, 400, "got 'abc'"),
    ({"image": "axial", "top_percent": True}, 400, "got True"),
])
def test_a_bad_infer_request_is_a_4xx_with_its_reason(server, params, status, reason):
    url = server[0]
    extra = {k: v for k, v in params.items() if k != "image"}
    response = requests.post(f"{url}/infer/ifim_review", params={"image": params["image"], "output": "json"},
                             data={"params": json.dumps(extra)}, timeout=300)
    assert response.status_code == status and reason in response.json()["detail"], response.text[-500:]


@pytest.mark.parametrize("params", ["{top_percent: 5}", "not json", "{\"top_percent\": 5"])
def test_params_that_are_not_json_are_a_400_naming_the_field(server, params):
    """MONAI Label parses the form field itself, before the app sees the request."""
    response = requests.post(f"{server[0]}/infer/ifim_review", params={"image": "axial", "output": "json"},
                             data={"params": params}, timeout=300)
    assert response.status_code == 400, response.text[-500:]
    assert "the form field params is not JSON" in response.json()["detail"], response.text[-500:]


def test_a_bad_label_upload_is_refused_and_writes_nothing(server, tmp_path):
    """A tag that climbs out of the studies folder, and a label of another shape: 400 and 422 with their reasons,
    no file written anywhere."""
    url, studies, images, _ = server
    shape, affine = source_grid(images["axial"])
    good = tmp_path / "axial.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.uint8), affine), str(good))
    before = sorted(p for p in studies.rglob("*") if p.is_file())
    evil = requests.put(f"{url}/datastore/label", params={"image": "axial", "tag": "../../../../evil_tag"},
                        files={"label": ("axial.nii.gz", good.read_bytes())}, data={"params": "{}"}, timeout=60)
    assert evil.status_code == 400 and "label tag" in evil.json()["detail"]
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.uint8), affine), str(wrong))
    shaped = requests.put(f"{url}/datastore/label", params={"image": "axial", "tag": "final"},
                          files={"label": ("axial.nii.gz", wrong.read_bytes())}, data={"params": "{}"}, timeout=60)
    assert shaped.status_code == 422 and "has shape (8, 8)" in shaped.json()["detail"]
    after = sorted(p for p in studies.rglob("*") if p.is_file())
    assert after == before and not (studies / "labels" / "../../../../evil_tag").resolve().exists()
