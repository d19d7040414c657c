"""The bundle's metadata validates against the stored MONAI schema, offline (no schema download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from monai.bundle import verify_metadata

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
META = ROOT / "bundle" / "configs" / "metadata.json"


@pytest.fixture
def local_schema(tmp_path):
    if not SCHEMA.is_file():
        pytest.fail(f"the stored schema is missing: {SCHEMA} (CI lays shared/ beside the clone)")
    # verify_metadata downloads the schema unless the file is already there: give it the stored copy
    return shutil.copy(SCHEMA, tmp_path / "schema.json")


def test_metadata_validates_against_the_stored_schema(local_schema):
    verify_metadata(meta_file=str(META), filepath=str(local_schema))
    metadata = json.loads(META.read_text())
    assert metadata["monai_version"] == "1.6.1" and metadata["pytorch_version"] == "2.13.0"


def test_an_invalid_metadata_is_rejected(local_schema, tmp_path):
    broken = json.loads(META.read_text())
    broken["network_data_format"]["inputs"]["image"]["num_channels"] = "one"
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Failed validating"):
        verify_metadata(meta_file=str(path), filepath=str(local_schema))


def test_metadata_versions_are_the_pinned_ones():
    """metadata.json repeats setup.cfg's pins (the model zoo reads them there): they must not drift apart."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pins = dict(line.split("==") for line in config["options"]["install_requires"].split() if "==" in line)
    metadata = json.loads(META.read_text())
    assert metadata["monai_version"] == pins["monai"]
    assert metadata["pytorch_version"] == pins["torch"]
    assert metadata["numpy_version"] == pins["numpy"]
    for package, version in metadata["required_packages_version"].items():
        assert pins.get(package) == version, package


def test_metadata_describes_the_model_its_task_record_defines():
    """The model's classes live in one place, its task's record (scripts.tasks.TASKS); metadata.json's description
    of the output must say the same, class by class and in label order."""
    from scripts.tasks import TASKS

    metadata = json.loads(META.read_text())
    task = TASKS[metadata["ifim_model"]["task"]]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(task.class_names)
    assert pred["channel_def"] == {str(i): name for i, name in enumerate(task.class_names)}
    assert metadata["label_classes"].startswith(", ".join(f"{i}: {n}" for i, n in enumerate(task.class_names)))


def test_the_bundle_folder_carries_the_license_it_points_to():
    """The model zoo downloads the bundle folder alone and its CI requires a LICENSE there: the same text as the
    repository's (a copy, so a downloaded bundle has it; this keeps the two from drifting apart)."""
    assert (ROOT / "bundle" / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()
    metadata = json.loads(META.read_text())
    for package in ("pyyaml", "fire"):  # verify_net_in_out needs them (MONAI's bundle CLI and config parser)
        assert package in metadata["required_packages_version"], package
