"""What the MONAI model zoo's CI does with a submitted bundle: check the bundle properties of each workflow type and
run train (1 epoch), evaluate and infer on tiny data through ``ConfigWorkflow``."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from zoo_checks import zoo_json_hooks_pass

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"
TRAIN, EVALUATE, INFERENCE = (str(CONFIGS / f"{name}.yaml") for name in ("train", "evaluate", "inference"))
META, LOGGING = str(CONFIGS / "metadata.json"), str(CONFIGS / "logging.conf")


def test_the_bundle_json_files_pass_the_zoo_hooks(tmp_path):
    """metadata.json and the shipped checkpoints' stamps, as the zoo's pre-commit checks every JSON file."""
    paths = [CONFIGS / "metadata.json", *sorted((ROOT / "bundle" / "models").glob("**/model.json"))]
    assert len(paths) >= 3 and zoo_json_hooks_pass(paths, tmp_path)


def _workflow(config_file, workflow_type, **override):
    workflow = ConfigWorkflow(config_file=config_file, workflow_type=workflow_type, meta_file=META,
                              logging_file=LOGGING, **override)
    workflow.initialize()
    return workflow


def _tiny(tmp_path) -> dict:
    """Overrides that keep a workflow's data tiny and its files in tmp_path (check_properties instantiates the
    properties, datasets included)."""
    return {"counts": [8, 4, 4], "n_images": 2, "cache_dir": str(tmp_path / "cache"),
            "output_dir": str(tmp_path / "out"), "log_dir": str(tmp_path / "logs")}


@pytest.mark.parametrize("config_file,workflow_type", [(TRAIN, "train"), (INFERENCE, "infer"),
                                                       ([TRAIN, EVALUATE], "train"), ([TRAIN, EVALUATE], "infer")])
def test_bundle_properties_are_complete(tmp_path, config_file, workflow_type):
    """check_properties lists required properties that are missing and optional ones defined under another ID."""
    assert _workflow(config_file, workflow_type, **_tiny(tmp_path)).check_properties() == []


def test_a_property_defined_under_another_id_is_reported(tmp_path):
    broken = tmp_path / "inference.yaml"
    text = Path(INFERENCE).read_text()
    assert '  postprocessing: "@postprocessing"\n' in text
    broken.write_text(text.replace('  postprocessing: "@postprocessing"\n', '  postprocessing: "@post"\n')
                      + "post: null\n")
    workflow = ConfigWorkflow(config_file=str(broken), workflow_type="infer", meta_file=META, **_tiny(tmp_path))
    workflow.initialize()
    assert workflow.check_properties() == ["postprocessing"]


def test_train_evaluate_infer_through_config_workflow(tmp_path):
    work = tmp_path / "zoo"
    common = {"cache_dir": str(work / "cache")}
    trainer = _workflow(TRAIN, "train", counts=[32, 8, 8], max_epochs=1, output_dir=str(work / "models"),
                        log_dir=str(work / "logs"), **common)
    assert trainer.check_properties() == []
    trainer.run()
    trainer.finalize()
    ckpt = work / "models" / "model.pt"
    assert "classifier.weight" in torch.load(ckpt, weights_only=True)

    evaluator = _workflow([TRAIN, EVALUATE], "train", counts=[32, 8, 8], ckpt_path=str(ckpt), table2_seeds=[],
                          study_methods=["gradcam"], output_dir=str(work / "eval"), **common)
    assert evaluator.check_properties() == []
    evaluator.run()
    evaluator.finalize()
    metrics = dict(row for row in csv.reader((work / "eval" / "metrics.csv").open()))
    assert 0.0 <= float(metrics["test_accuracy"]) <= 1.0 and (work / "eval" / "report" / "report.md").is_file()

    inferer = _workflow(INFERENCE, "infer", ckpt_path=str(ckpt), n_images=4, output_dir=str(work / "inference"),
                        **common)
    assert inferer.check_properties() == []
    inferer.run()
    inferer.finalize()
    (run,) = (work / "inference").iterdir()
    assert len(list(csv.DictReader((run / "ifim.csv").open()))) == 4


def test_training_is_deterministic_on_a_gpu_too(tmp_path):
    """train.yaml's initialize leaves cuDNN deterministic: benchmark mode would pick kernels by timing."""
    torch.backends.cudnn.benchmark = True
    _workflow(TRAIN, "train", **_tiny(tmp_path))
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


@pytest.mark.parametrize("config_file", [INFERENCE, [TRAIN, EVALUATE]])
def test_another_offline_task_reads_its_own_shipped_model(tmp_path, config_file):
    """The default task's model is models/model.pt; --task sksbks reads (and train.yaml installs) models/sksbks/."""
    for task, expected in (("polarity", ROOT / "bundle" / "models" / "model.pt"),
                           ("sksbks", ROOT / "bundle" / "models" / "sksbks" / "model.pt")):
        workflow = ConfigWorkflow(config_file=config_file, workflow_type="infer", meta_file=META, task=task,
                                  bundle_root=str(ROOT / "bundle"), **_tiny(tmp_path))
        workflow.parser.parse()
        assert Path(workflow.parser.get_parsed_content("ckpt_path")) == expected
