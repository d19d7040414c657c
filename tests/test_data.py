"""Datalist builders on small copies of the public layouts, and the modality chains on every format."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset

from fake_datasets import make_hcp, make_kermany_oct, make_nih_cxr, write_dicom, write_gray, write_nifti
from scripts.data import (
    SPLITS,
    build_cxr_datalist,
    build_hcp_datalist,
    build_oct_datalist,
    build_simulated_datalist,
    split_by_group,
)
from scripts.transforms import PerSampleSeedd, image_transforms, mri_transforms


def _chain_text(err: BaseException) -> str:
    """Every message of an exception chain (MONAI's Compose wraps errors as 'applying transform ...')."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__
    return " | ".join(parts)


def _patients(entries):
    return {e["patient"] for e in entries}


# ---- OCT ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kermany(tmp_path_factory):
    root = tmp_path_factory.mktemp("OCT2017")
    counts = {"train": {"NORMAL": 24, "DRUSEN": 24, "CNV": 24, "DME": 5},
              "test": {"NORMAL": 6, "DRUSEN": 6, "CNV": 6, "DME": 2}}
    return make_kermany_oct(root, counts, patients_per_class=10)


def test_oct_datalist_counts_labels_and_disjoint_patients(kermany, tmp_path):
    out = tmp_path / "oct.json"
    datalist = build_oct_datalist(kermany, per_class=(6, 2, 3), seed=1, output_json=out)
    assert json.loads(out.read_text()) == datalist
    for split, n in zip(SPLITS, (6, 2, 3)):
        labels = [e["label"] for e in datalist[split]]
        assert sorted(set(labels)) == [0, 1, 2] and all(labels.count(c) == n for c in range(3))
        assert all("DME" not in e["image"] for e in datalist[split])
        for e in datalist[split]:
            assert e["class"] == ("NORMAL", "DRUSEN", "CNV")[e["label"]] and f"/{e['class']}/" in e["image"]
    assert all("/test/" in e["image"] for e in datalist["test"])
    assert all("/train/" in e["image"] for split in SPLITS[:2] for e in datalist[split])
    assert not _patients(datalist["training"]) & _patients(datalist["validation"])
    assert not (_patients(datalist["training"]) | _patients(datalist["validation"])) & _patients(datalist["test"])
    assert build_oct_datalist(kermany, per_class=(6, 2, 3), seed=1) == datalist
    assert build_oct_datalist(kermany, per_class=(6, 2, 3), seed=2) != datalist


def test_oct_errors_name_what_is_missing(kermany, tmp_path):
    with pytest.raises(FileNotFoundError, match="OCT2017_missing"):
        build_oct_datalist(tmp_path / "OCT2017_missing")
    with pytest.raises(ValueError, match="label 0 for the training split: need 2000"):
        build_oct_datalist(kermany)  # the paper's 2000 per class cannot come from a 24-image copy


def test_oct_chain(kermany):
    path = sorted((kermany / "train" / "CNV").iterdir())[0]  # written as RGB (i % 3 == 0)
    out = image_transforms(size=32)({"image": str(path)})["image"]
    assert out.shape == (1, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


# ---- CXR ------------------------------------------------------------------------------------------------------


def _nih_rows():
    rows = []
    for p in range(12):  # each patient has cardiomegaly images, clean images and other findings
        for i, labels in enumerate(["Cardiomegaly", "Cardiomegaly|Effusion", "No Finding", "No Finding",
                                    "Effusion"]):
            rows.append({"Image Index": f"{p:08d}_{i:03d}.png", "Finding Labels": labels, "Patient ID": str(p)})
    rows.append({"Image Index": "00000099_000.png", "Finding Labels": "Cardiomegaly", "Patient ID": "99",
                 "missing": True})
    return rows


def test_cxr_datalist_labels_negatives_and_patient_disjoint(tmp_path, caplog):
    root = make_nih_cxr(tmp_path / "nih", _nih_rows())
    with caplog.at_level(logging.WARNING):
        datalist = build_cxr_datalist(root, per_class=(8, 2, 4), seed=0, output_json=tmp_path / "cxr.json")
    assert "1 images listed" in caplog.text  # the missing file is reported, not fatal
    for split, n in zip(SPLITS, (8, 2, 4)):
        labels = [e["label"] for e in datalist[split]]
        assert labels.count(0) == n and labels.count(1) == n
    patient_sets = [_patients(datalist[s]) for s in SPLITS]
    assert not (patient_sets[0] & patient_sets[1] or patient_sets[0] & patient_sets[2]
                or patient_sets[1] & patient_sets[2])
    all_images = [e["image"] for s in SPLITS for e in datalist[s]]
    assert not any(name.endswith(("_004.png",)) for name in all_images)  # "Effusion" only: not a negative
    assert {"images_001", "images_002"} <= {p.split("/")[-3] for p in all_images}  # found across folders
    any_negative = build_cxr_datalist(root, per_class=(8, 2, 4), seed=0, negative="any")
    assert any(e["image"].endswith("_004.png") and e["label"] == 0 for s in SPLITS for e in any_negative[s])


def test_cxr_csv_saved_with_a_byte_order_mark(tmp_path):
    root = make_nih_cxr(tmp_path / "nih", _nih_rows())
    csv_path = root / "Data_Entry_2017.csv"
    csv_path.write_bytes(b"\xef\xbb\xbf" + csv_path.read_bytes())  # as spreadsheet programs save UTF-8
    with_bom = build_cxr_datalist(root, per_class=(8, 2, 4), seed=0)
    csv_path.write_bytes(csv_path.read_bytes()[3:])
    assert with_bom == build_cxr_datalist(root, per_class=(8, 2, 4), seed=0)


def test_cxr_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017.csv"):
        build_cxr_datalist(tmp_path / "empty")
    root = make_nih_cxr(tmp_path / "nih", _nih_rows())
    with pytest.raises(ValueError, match="negative"):
        build_cxr_datalist(root, negative="Effusion")


def test_cxr_chain_png_and_dicom(tmp_path):
    ramp = np.tile(np.arange(40), (30, 1)) * 6  # brighter to the right
    chain = image_transforms(size=16)
    cases = {
        "png": (write_gray(tmp_path / "a.png", ramp), "right"),
        "monochrome2": (write_dicom(tmp_path / "m2.dcm", ramp * 10), "right"),
        "monochrome1": (write_dicom(tmp_path / "m1.dcm", ramp * 10, monochrome1=True), "left"),
        # a negative slope flips intensities: proof the reader applied it; MONOCHROME1 flips them back
        "slope": (write_dicom(tmp_path / "s.dcm", ramp * 10, slope=-2.0, intercept=5000.0), "left"),
        "slope+monochrome1": (write_dicom(tmp_path / "s1.dcm", ramp * 10, monochrome1=True, slope=-2.0,
                                          intercept=5000.0), "right"),
    }
    for name, (path, bright) in cases.items():
        out = chain({"image": str(path)})["image"]
        assert out.shape == (1, 16, 16) and out.dtype == torch.float32, name
        left, right = float(out[0, :, 0].mean()), float(out[0, :, -1].mean())
        assert (right > left) == (bright == "right"), name
        assert float(out.min()) == 0.0 and float(out.max()) == 1.0, name


@pytest.mark.parametrize("name,content,error", [("missing.png", None, FileNotFoundError),
                                                ("corrupt.png", b"not a png", ValueError),
                                                ("corrupt.dcm", b"DICM but not really", ValueError)])
def test_missing_or_corrupt_file_names_the_file(tmp_path, name, content, error):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RuntimeError) as info:
        image_transforms(size=8)({"image": str(path)})
    text = _chain_text(info.value)
    assert str(path) in text and any(isinstance(e, error) for e in _causes(info.value))


def _causes(err):
    while err is not None:
        yield err
        err = err.__cause__


# ---- MRI: HCP layout and the MNI152 default ----------------------------------------------------------------------


@pytest.mark.parametrize("aseg", [True, False])
def test_hcp_datalist_subject_disjoint_slices_with_white_matter(tmp_path, aseg):
    root = make_hcp(tmp_path / "hcp", [f"1000{i}" for i in range(5)], aseg=aseg)
    kwargs = {} if aseg else {"wm_prob_pattern": "T1w/wm_prob.nii.gz"}
    datalist = build_hcp_datalist(root, tmp_path / "cache", counts=(20, 6, 6), min_wm_voxels=50,
                                  output_json=tmp_path / "hcp.json", **kwargs)
    assert [len(datalist[s]) for s in SPLITS] == [20, 6, 6]
    subjects = [{e["subject"] for e in datalist[s]} for s in SPLITS]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])
    assert len({e["seed"] for s in SPLITS for e in datalist[s]}) == 32
    entry = datalist["training"][0]
    import nibabel as nib
    mask = np.asarray(nib.load(entry["mask"]).dataobj)
    assert mask.ndim == 2 and mask.sum() >= 50 and set(np.unique(mask)) <= {0, 1}
    assert 4 <= entry["slice"] < 16  # the fake white matter spans z = 4 .. 15


def test_slice_cache_follows_the_volume_and_the_white_matter_threshold(tmp_path):
    """Cached slices are reused only for the same volume and mask: a new threshold or new voxels cut new slices."""
    import nibabel as nib

    root = make_hcp(tmp_path / "hcp", ["a", "b", "c"], aseg=False)  # white matter as a 0.9 probability map
    for subject in ("a", "b", "c"):  # lower the probability of one hemisphere to 0.6
        prob_path = root / subject / "T1w" / "wm_prob.nii.gz"
        prob = np.asarray(nib.load(str(prob_path)).dataobj).copy()
        prob[prob.shape[0] // 2:] *= 0.6 / 0.9
        nib.save(nib.Nifti1Image(prob, np.eye(4)), str(prob_path))
    build = dict(counts=(4, 2, 2), min_wm_voxels=30, wm_prob_pattern="T1w/wm_prob.nii.gz")
    first = build_hcp_datalist(root, tmp_path / "cache", wm_threshold=0.5, **build)
    assert build_hcp_datalist(root, tmp_path / "cache", wm_threshold=0.5, **build) == first  # reused
    stricter = build_hcp_datalist(root, tmp_path / "cache", wm_threshold=0.7, **build)
    for loose, strict in zip(first["training"], stricter["training"]):
        loose_mask = np.asarray(nib.load(loose["mask"]).dataobj)
        strict_mask = np.asarray(nib.load(strict["mask"]).dataobj)
        assert strict_mask.sum() < loose_mask.sum()  # the new threshold's mask, not the cached one
    t1_path = root / "a" / "T1w" / "T1w_acpc_dc_restore_brain.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(nib.load(str(t1_path)).dataobj) * 2, np.eye(4)), str(t1_path))
    second = build_hcp_datalist(root, tmp_path / "cache", wm_threshold=0.5, **build)
    old = {e["image"] for s in SPLITS for e in first[s] if e["subject"] == "a"}
    new = {e["image"] for s in SPLITS for e in second[s] if e["subject"] == "a"}
    assert new and old and not old & new  # subject a's slices were cut again from the new voxels
    for entry in (e for s in SPLITS for e in second[s] if e["subject"] == "a"):
        twice = np.asarray(nib.load(entry["image"]).dataobj)
        once = [np.asarray(nib.load(e["image"]).dataobj) for s in SPLITS for e in first[s]
                if e["subject"] == "a" and e["slice"] == entry["slice"]]
        if once:
            np.testing.assert_allclose(twice, 2 * once[0])


def test_hcp_errors_name_the_file(tmp_path):
    root = make_hcp(tmp_path / "hcp", ["a", "b", "c"])
    (root / "b" / "T1w" / "T1w_acpc_dc_restore_brain.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="b/T1w/T1w_acpc_dc_restore_brain.nii.gz"):
        build_hcp_datalist(root, tmp_path / "cache", counts=(2, 1, 1))
    (root / "b" / "T1w" / "T1w_acpc_dc_restore_brain.nii.gz").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="T1w_acpc_dc_restore_brain.nii.gz"):
        build_hcp_datalist(root, tmp_path / "cache", counts=(2, 1, 1), min_wm_voxels=50)


@pytest.fixture(scope="module")
def sksbks(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sks_cache")
    return build_simulated_datalist(cache, counts=(24, 0, 0), subjects=(3, 0, 0), slices_per_subject=4), cache


def test_mri_chain_outputs_signal_metadata_and_is_reproducible(sksbks):
    datalist, _ = sksbks
    chain = mri_transforms(size=64)
    entries = datalist["training"][:24]
    first = [chain(e) for e in entries]
    for out in first:
        assert out["image"].shape == (1, 64, 64) and out["image"].dtype == torch.float32
        assert -0.2 < float(out["image"].min()) and float(out["image"].max()) < 1.6
        assert out["label"] in (0, 1)
        if out["label"]:
            assert 0.1 <= out["signal_amplitude"] <= 0.35 and out["signal_sigma"] == pytest.approx(64 / 24)
            assert out["mask"][(0, *out["signal_center"].long().tolist())] > 0
        else:
            assert out["signal_amplitude"] == 0
    assert {o["label"] for o in first} == {0, 1}
    for out, again in zip(first, (chain(e) for e in reversed(entries[::-1]))):  # same entry -> same image
        assert torch.equal(out["image"], again["image"])
    assert not torch.equal(first[0]["image"], first[1]["image"])
    # Deterministic, so fully cacheable: no top-level step may count as random (CacheDataset stops there) ...
    from monai.transforms.transform import RandomizableTrait
    assert not any(isinstance(t, RandomizableTrait) for t in chain.transforms)
    # ... and threaded caching (a shared, reseeded transform) must give the same images.
    cached = CacheDataset(entries, transform=chain, num_workers=2, progress=False)
    for i in range(len(entries)):
        assert torch.equal(cached[i]["image"], first[i]["image"])


def test_mri_chain_in_3d(tmp_path):
    volume = np.random.RandomState(0).uniform(0, 1, (20, 18, 16)).astype(np.float32)
    mask = np.zeros((20, 18, 16), np.uint8)
    mask[6:14, 6:12, 5:11] = 1
    entry = {"image": str(write_nifti(tmp_path / "t1.nii.gz", volume)),
             "mask": str(write_nifti(tmp_path / "wm.nii.gz", mask)), "seed": 3}
    chain = mri_transforms(size=16, spatial_dims=3, prob=1.0)
    out = chain(entry)
    assert out["image"].shape == (1, 16, 16, 16) and out["label"] == 1
    assert out["mask"][(0, *out["signal_center"].long().tolist())] > 0


def test_per_sample_seed_is_required():
    with pytest.raises(KeyError, match="seed"):
        PerSampleSeedd([], seed_key="seed")({"image": torch.zeros(1, 2, 2)})


def test_split_by_group_reports_shortfall():
    items = [{"label": 0, "patient": "a"}, {"label": 0, "patient": "a"}, {"label": 1, "patient": "b"}]
    with pytest.raises(ValueError, match="not enough images with label [01] for the (training|test) split"):
        split_by_group(items, {"training": {0: 1, 1: 1}, "test": {0: 1, 1: 1}})


def test_config_snippets_instantiate(tmp_path):
    """The docs' config snippets: the factories are reachable by ``_target_`` from a MONAI bundle config."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser({
        "bundle_root": str(tmp_path),
        "datalist": {"_target_": "scripts.data.build_simulated_datalist",
                     "cache_dir": "$@bundle_root + '/cache/sksbks'", "counts": [2, 1, 1], "subjects": [1, 1, 1],
                     "slices_per_subject": 2},
        "train_transforms": {"_target_": "scripts.transforms.mri_transforms", "size": 32},
        "oct_transforms": {"_target_": "scripts.transforms.image_transforms", "size": 32},
    })
    datalist = parser.get_parsed_content("datalist")
    chain = parser.get_parsed_content("train_transforms")
    assert isinstance(chain, Compose) and isinstance(parser.get_parsed_content("oct_transforms"), Compose)
    assert chain(datalist["training"][0])["image"].shape == (1, 32, 32)


def _torchxrayvision_data(name: str) -> Path:
    """A label file inside the torchxrayvision wheel (a pinned test dependency, installed without its
    dependencies by tools/setup.sh): located, never imported."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None, "torchxrayvision (test data) is missing: run tools/setup.sh"
    return Path(list(spec.submodule_search_locations)[0]) / "data" / name


def test_cxr_builder_on_the_real_nih_label_file(tmp_path):
    """The real Data_Entry_2017_v2020.csv (112,120 rows), gzipped under its current name: a subset of its patients
    laid out with placeholder PNGs; labels and the patient split checked against an independent reading."""
    import csv
    import gzip
    import shutil

    source = _torchxrayvision_data("Data_Entry_2017_v2020.csv.gz")
    with gzip.open(source, "rt", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 112120
    patients = sorted({r["Patient ID"] for r in rows if "Cardiomegaly" in r["Finding Labels"].split("|")})[:150]
    patients += sorted({r["Patient ID"] for r in rows if r["Finding Labels"] == "No Finding"} - set(patients))[:150]
    chosen = set(patients)
    root = tmp_path / "nih"
    root.mkdir(parents=True)
    shutil.copy(source, root / "Data_Entry_2017_v2020.csv.gz")
    expected = {}
    for i, row in enumerate(r for r in rows if r["Patient ID"] in chosen):
        labels = row["Finding Labels"].split("|")
        if "Cardiomegaly" in labels or labels == ["No Finding"]:
            expected[row["Image Index"]] = (int("Cardiomegaly" in labels), row["Patient ID"])
        write_gray(root / f"images_{i % 3 + 1:03d}" / "images" / row["Image Index"], np.zeros((4, 4), np.uint8))
    counts = [sum(v[0] == c for v in expected.values()) for c in (0, 1)]
    per_class = (min(counts) // 2, min(counts) // 8, min(counts) // 8)
    datalist = build_cxr_datalist(root, per_class=per_class, seed=0)
    mismatches = [e for s in SPLITS for e in datalist[s]
                  if expected[Path(e["image"]).name] != (e["label"], e["patient"])]
    assert not mismatches
    for split in SPLITS:
        assert [sum(e["label"] == c for e in datalist[split]) for c in (0, 1)] == [per_class[SPLITS.index(split)]] * 2
    groups = [{e["patient"] for e in datalist[s]} for s in SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_cxr_boxed_patients_go_to_the_test_split(tmp_path):
    """Patients with a radiologist's Cardiomegaly box are all in the test split (so maps can be scored against the
    boxes); the splits stay patient-disjoint with their per-class counts; too many boxed images say what to raise."""
    root = make_nih_cxr(tmp_path / "nih", _nih_rows())
    boxes = tmp_path / "BBox_List_2017.csv"
    boxes.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                     "00000003_000.png,Cardiomegaly,1,2,3,4\n00000007_001.png,Cardiomegaly,1,2,3,4\n"
                     "00000005_000.png,Effusion,1,2,3,4\n00000099_000.png,Cardiomegaly,1,2,3,4\n")
    datalist = build_cxr_datalist(root, per_class=(8, 2, 4), seed=0, boxed_in_test=boxes)
    assert {"3", "7"} <= {e["patient"] for e in datalist["test"]}
    boxed_images = [e for s in SPLITS for e in datalist[s] if e["patient"] in ("3", "7")]
    assert boxed_images and all(e in datalist["test"] for e in boxed_images)
    assert len([e for e in datalist["test"] if e["patient"] in ("3", "7")]) == 8  # 2 patients x (2 + 2) images
    for split, n in zip(SPLITS, (8, 2, 4)):
        assert [sum(e["label"] == c for e in datalist[split]) for c in (0, 1)] == [n, n]
    groups = [{e["patient"] for e in datalist[s]} for s in SPLITS]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    with pytest.raises(ValueError, match="raise its count in per_class"):
        build_cxr_datalist(root, per_class=(8, 2, 3), seed=0, boxed_in_test=boxes)


def test_cxr_official_split_lists(tmp_path):
    """official_split: the test split only from test_list.txt, training and validation only from
    train_val_list.txt, patient-disjoint; a missing list is named."""
    rows = _nih_rows()
    root = make_nih_cxr(tmp_path / "nih", rows)
    with pytest.raises(FileNotFoundError, match="train_val_list.txt"):
        build_cxr_datalist(root, per_class=(4, 2, 2), official_split=True)
    test_patients = {"0", "1", "2", "3"}
    names = {p: [r["Image Index"] for r in rows if r["Patient ID"] == p and not r.get("missing")] for p in
             {r["Patient ID"] for r in rows}}
    (root / "test_list.txt").write_text("\n".join(n for p in test_patients for n in names[p]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for p in names if p not in test_patients
                                                       for n in names[p]) + "\n")
    datalist = build_cxr_datalist(root, per_class=(6, 2, 4), seed=0, official_split=True)
    assert {e["patient"] for e in datalist["test"]} <= test_patients
    assert not {e["patient"] for s in ("training", "validation") for e in datalist[s]} & test_patients
    for split, n in zip(SPLITS, (6, 2, 4)):
        assert [sum(e["label"] == c for e in datalist[split]) for c in (0, 1)] == [n, n]
    assert not ({e["patient"] for e in datalist["training"]} & {e["patient"] for e in datalist["validation"]})
    with pytest.raises(ValueError, match="pass one of them"):
        build_cxr_datalist(root, per_class=(6, 2, 4), official_split=True, boxed_in_test=root / "test_list.txt")
