"""scripts.review without a server: the high-sensitivity label on the image's own grid, and the scoring of maps
against a reader's labels, its errors named by file."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fake_datasets import make_review_studies, source_grid, write_gray, write_nifti
from scripts.bootstrap import bootstrap_interval
from scripts.metrics import annotation_agreement
from scripts.review import ReviewModel, datastore_id, score_annotations

BUNDLE_ROOT = Path(__file__).resolve().parents[1] / "bundle"

METHODS = ("ifim_sensitive", "gradcam", "random")


@pytest.fixture(scope="module")
def model():
    return ReviewModel.from_bundle(BUNDLE_ROOT)


def test_the_label_marks_the_top_percent_on_the_images_own_grid(model, tmp_path):
    images = make_review_studies(tmp_path / "studies")
    for image_id, path in images.items():
        label_path, result = model.label(path, tmp_path / "out", top_percent=10)
        label = nib.load(label_path)
        shape, affine = source_grid(path)
        assert label.shape == shape and np.allclose(label.affine, affine, atol=1e-6)
        values = np.asarray(label.dataobj)
        assert values.sum() == math.ceil(0.10 * values.size - 1e-9)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
        assert result["top_percent"] == 10 and label_path.endswith(f"{image_id}_label.nii.gz")
    with pytest.raises(ValueError, match="top_percent"):
        model.label(images["gray"], tmp_path / "out", top_percent=0)


def test_scores_equal_the_metric_on_the_maps_and_errors_name_the_file(model, tmp_path):
    studies = tmp_path / "studies"
    images = make_review_studies(studies)
    with pytest.raises(FileNotFoundError, match="no labels tagged 'final'"):
        score_annotations(model, studies, tmp_path / "scores", methods=METHODS)
    labels = studies / "labels" / "final"
    shape, affine = source_grid(images["axial"])
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 8:16] = 1
    write_nifti(labels / "axial.nii.gz", mask, affine)
    result = score_annotations(model, studies, tmp_path / "scores", methods=METHODS)
    item = model.load(images["axial"])
    maps = model.to_source_grid(item, model.maps(item, METHODS))
    for row in result["rows"]:
        expected = annotation_agreement(maps[row["method"]].double()[None], torch.as_tensor(mask > 0)[None, None])
        assert row == pytest.approx({"image": "axial", "method": row["method"],
                                     **{k: v.item() for k, v in expected.items()}}, nan_ok=True)
    assert [r["method"] for r in result["rows"]] == list(METHODS) and result["n_images"] == 1
    assert (tmp_path / "scores" / "annotation_scores.csv").is_file()
    assert "| gradcam |" in (tmp_path / "scores" / "annotation_scores.md").read_text()

    write_nifti(labels / "axial.nii.gz", np.zeros(shape, np.uint8), affine)
    with pytest.raises(ValueError, match=r"axial\.nii\.gz marks no pixel"):
        score_annotations(model, studies, tmp_path / "scores", methods=METHODS)
    write_nifti(labels / "axial.nii.gz", np.ones((8, 8), np.uint8), affine)
    with pytest.raises(ValueError, match=r"axial\.nii\.gz has shape \(8, 8\)"):
        score_annotations(model, studies, tmp_path / "scores", methods=METHODS)
    (labels / "axial.nii.gz").unlink()
    write_gray(labels.parent / "ignored.png", np.zeros((4, 4)))  # not a label tag folder's NIfTI
    write_nifti(labels / "missing.nii.gz", mask, affine)
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz has no image missing\.\*"):
        score_annotations(model, studies, tmp_path / "scores", methods=METHODS)


def test_labels_off_the_grid_soft_full_or_of_an_ambiguous_image_are_refused(model, tmp_path):
    """A label of the image's shape but another affine (3 mm voxels, x flipped), a soft label, one marking every
    pixel, and two images with one datastore id: each refused naming the file; a label map using 2 is scored."""
    studies = tmp_path / "studies"
    images = make_review_studies(studies)
    labels = studies / "labels" / "final"
    shape, affine = source_grid(images["axial"])
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 8:16] = 1
    other = np.diag([-3.0, 3.0, 3.0, 1.0])
    cases = [(mask, other, r"axial\.nii\.gz has another affine than its image"),
             (mask * 0.3, affine, r"axial\.nii\.gz holds values that are not whole numbers \(from 0 to 0\.3\)"),
             (np.ones(shape, np.uint8), affine, r"axial\.nii\.gz marks every pixel")]
    for values, grid, message in cases:
        write_nifti(labels / "axial.nii.gz", values.astype(np.float32), grid)
        with pytest.raises(ValueError, match=message):
            score_annotations(model, studies, tmp_path / "scores", methods=METHODS)
    write_nifti(labels / "axial.nii.gz", 2 * mask, affine)
    twos = score_annotations(model, studies, tmp_path / "scores", methods=METHODS)["rows"]
    write_nifti(labels / "axial.nii.gz", mask, affine)
    assert twos == score_annotations(model, studies, tmp_path / "scores", methods=METHODS)["rows"]
    write_gray(studies / "other" / "axial.png", np.zeros((8, 8)))  # a second image with the id "axial"
    with pytest.raises(ValueError, match=r"have the same datastore id 'axial'"):
        score_annotations(model, studies, tmp_path / "scores", methods=METHODS)


def test_a_blank_image_gets_an_empty_label_and_a_note(model, tmp_path):
    import nibabel as nib

    path = write_gray(tmp_path / "blank.png", np.full((30, 40), 128))
    label, result = model.label(path, tmp_path / "out")
    assert np.asarray(nib.load(label).dataobj).sum() == 0 and "blank" in result["note"]


def test_bootstrap_interval_and_datastore_ids():
    assert bootstrap_interval([0.4] * 5) == (pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.4))
    mean, low, high = bootstrap_interval([0.0, 1.0] * 20, seed=1)
    assert mean == 0.5 and 0.3 < low < 0.5 < high < 0.7
    assert math.isnan(bootstrap_interval([0.7])[1]) and math.isnan(bootstrap_interval([math.nan])[0])
    assert [datastore_id(n) for n in ("a.nii.gz", "b.png", "c.d.jpg", "/x/y.nii")] == ["a", "b", "c.d", "y"]


def test_nih_boxes_become_labels_on_the_image_grid(tmp_path):
    """A box (x along columns, y down rows) on a non-square PNG becomes a label on the image's own grid: read back
    with nibabel and put in rows x columns, it is exactly the box; a box list's other findings are left out."""
    from scripts.review import boxes_to_labels, check_label

    picture = np.zeros((40, 60), np.uint8)  # 40 rows, 60 columns
    picture[5:15, 30:50] = 200
    write_gray(tmp_path / "nih" / "images_001" / "images" / "00000001_000.png", picture)
    write_gray(tmp_path / "nih" / "images_001" / "images" / "00000002_000.png", picture)
    box_list = tmp_path / "BBox_List_2017.csv"
    box_list.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                        "00000001_000.png,Cardiomegaly,30.0,5.0,20.0,10.0\n"
                        "00000002_000.png,Effusion,1.0,1.0,5.0,5.0\n"
                        "00000003_000.png,Cardiomegaly,1.0,1.0,5.0,5.0\n")
    studies = tmp_path / "studies"
    assert boxes_to_labels(box_list, tmp_path / "nih", studies) == ["00000001_000"]
    label_path = studies / "labels" / "final" / "00000001_000.nii.gz"
    label = np.asarray(nib.load(str(label_path)).dataobj)
    assert label.shape == (60, 40)  # the reader's (columns, rows)
    expected = np.zeros((40, 60), np.uint8)
    expected[5:15, 30:50] = 1
    np.testing.assert_array_equal(label.T, expected)
    check_label(label_path, studies / "00000001_000.png")  # on the image's grid, affine included
    assert not (studies / "labels" / "final" / "00000002_000.nii.gz").exists()


def test_the_real_nih_box_list():
    """The real BBox_List_2017.csv (torchxrayvision's wheel): 146 Cardiomegaly boxes of 128 patients, counted by an
    independent reading."""
    import csv
    import gzip
    import importlib.util

    from scripts.review import read_nih_boxes

    path = Path(list(importlib.util.find_spec("torchxrayvision").submodule_search_locations)[0]) / "data" / \
        "BBox_List_2017.csv.gz"
    with gzip.open(path, "rt", newline="") as f:
        rows = [r for r in csv.reader(f)][1:]
    cardiomegaly = [r for r in rows if r[1] == "Cardiomegaly"]
    boxes = read_nih_boxes(path)
    assert sum(len(v) for v in boxes.values()) == len(cardiomegaly) == 146
    assert len({name.split("_")[0] for name in boxes}) == 128
    first = cardiomegaly[0]
    assert tuple(float(v) for v in first[2:6]) in boxes[first[0]]
