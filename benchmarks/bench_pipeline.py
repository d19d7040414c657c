"""Throughput of folder inference as a user runs it, against its compute and the floor of its writes.

    python benchmarks/bench_pipeline.py                # 240 images of 256^2, half PNG, half DICOM
    python benchmarks/bench_pipeline.py --n 48 --size 128

On a generated folder (a stated number and size of 8-bit PNG and 16-bit DICOM files), with the shipped model and
``bundle/configs/inference.yaml`` as the bundle runs it, images/s of:

* ``classify`` (a): the config's ``dataloader`` and ``network``, plain forward passes: what any MONAI
  classification over the same files costs;
* ``ifim`` (b): the same ``dataloader`` through the config's ``inferer`` (iFIM), nothing written;
* ``inference`` (c): the whole ``evaluator`` run: maps on the source grid, figures, ``ifim.csv``, ``run.json``;
  the share of (c) each postprocessing step takes is timed inside the same run;
* ``nifti floor``: writing the maps (c) wrote, the same arrays and affines, with nibabel alone.

Ratios: (c) / (a), and (c) / ((b) + floor), the overhead of everything around the compute and the unavoidable
writes (target <= 1.5). Each measurement runs ``--repeats`` times after one warm-up run on a few images; the median
is reported. Prints a table and writes JSON (default ``benchmarks/results/bench_pipeline.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, List

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundle"
sys.path[:0] = [str(BUNDLE), str(ROOT / "tests")]

from fake_datasets import write_dicom  # noqa: E402  (the tests' minimal 16-bit DICOM writer)


def make_folder(root: Path, n: int, size: int, seed: int = 0) -> Dict[str, int]:
    """``n`` smooth random images of ``size^2``: the first half PNG, the rest DICOM."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    counts = {"png": 0, "dcm": 0}
    for i in range(n):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05) + 0.1 * rng.random((size, size))
        if i < n // 2:
            Image.fromarray((255 * blob / blob.max()).astype(np.uint8)).save(root / f"case{i:04d}.png")
            counts["png"] += 1
        else:
            write_dicom(root / f"case{i:04d}.dcm", 4000 * blob / blob.max())
            counts["dcm"] += 1
    return counts


def parser_for(dataset_dir: Path, output_dir: Path, figures: bool = True) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir),
                   "figures": figures})
    return parser


def _load_model(parser: ConfigParser) -> torch.nn.Module:
    network = parser.get_parsed_content("network")
    state = torch.load(parser.get_parsed_content("ckpt_path"), map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    return network.eval()


def time_compute(parser: ConfigParser, with_ifim: bool) -> float:
    """Seconds to read every input through the config's dataloader and classify it (or decompose it)."""
    network, loader = _load_model(parser), parser.get_parsed_content("dataloader")
    inferer = parser.get_parsed_content("inferer")
    start = time.perf_counter()
    for batch in loader:
        if with_ifim:
            inferer(batch["image"], network)
        else:
            with torch.no_grad():
                network(batch["image"])
    return time.perf_counter() - start


class _Timed:
    """A postprocessing step or handler call with its time added to ``spent[name]``."""

    def __init__(self, step: Callable, name: str, spent: Dict[str, float]):
        self.step, self.name, self.spent = step, name, spent

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.step(*args, **kwargs)
        finally:
            self.spent[self.name] += time.perf_counter() - start


def time_inference(parser: ConfigParser) -> Dict[str, object]:
    """The whole evaluator run: its seconds, the seconds of each postprocessing step, and the run folder it wrote."""
    spent: Dict[str, float] = defaultdict(float)
    post = parser.get_parsed_content("postprocessing")
    post.transforms = tuple(_Timed(t, type(t).__name__, spent) for t in post.transforms)
    evaluator = parser.get_parsed_content("evaluator")
    start = time.perf_counter()
    evaluator.run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "steps": dict(spent), "run_dir": Path(parser.get_parsed_content("run_dir"))}


def time_nifti_floor(run_dir: Path, scratch: Path) -> float:
    """Seconds to write, with nibabel alone, the same map arrays and affines the run wrote."""
    maps = [nib.load(str(p)) for p in sorted(run_dir.rglob("*_x_*.nii.gz"))]
    arrays = [(np.asarray(m.dataobj), m.affine) for m in maps]
    start = time.perf_counter()
    for i, (array, affine) in enumerate(arrays):
        nib.save(nib.Nifti1Image(array, affine), str(scratch / f"map{i}.nii.gz"))
    return time.perf_counter() - start


def measure(n: int, size: int, repeats: int, figures: bool) -> Dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, warm, out, scratch = tmp / "scans", tmp / "warm", tmp / "out", tmp / "floor"
        for folder in (data, warm, out, scratch):
            folder.mkdir()
        counts = make_folder(data, n, size)
        make_folder(warm, 4, size)
        time_inference(parser_for(warm, out, figures))  # warm-up: imports, first allocations
        rounds: Dict[str, List[float]] = defaultdict(list)
        steps: Dict[str, List[float]] = defaultdict(list)
        for _ in range(repeats):
            rounds["classify"].append(time_compute(parser_for(data, out, figures), with_ifim=False))
            rounds["ifim"].append(time_compute(parser_for(data, out, figures), with_ifim=True))
            run = time_inference(parser_for(data, out, figures))
            rounds["inference"].append(run["seconds"])
            for name, seconds in run["steps"].items():
                steps[name].append(seconds)
            rounds["nifti floor"].append(time_nifti_floor(run["run_dir"], scratch))
        seconds = {k: statistics.median(v) for k, v in rounds.items()}
        inference = seconds["inference"]
        shares = {k: statistics.median(v) / inference for k, v in steps.items()}
        shares["reading, iFIM and the rest"] = 1.0 - sum(shares.values())
        return {"n": n, "size": size, "files": counts, "figures": figures, "repeats": repeats,
                "seconds": seconds, "images_per_s": {k: n / v for k, v in seconds.items() if k != "nifti floor"},
                "share_of_inference": shares,
                "ratio_inference_over_classify": inference / seconds["classify"],
                "ratio_inference_over_ifim_plus_floor": inference / (seconds["ifim"] + seconds["nifti floor"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-figures", action="store_true", help="also measure with figures: false")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_pipeline.json"))
    args = parser.parse_args()
    results = [measure(args.n, args.size, args.repeats, figures=True)]
    if args.no_figures:
        results.append(measure(args.n, args.size, args.repeats, figures=False))
    for result in results:
        print(f"\n{result['n']} images of {result['size']}^2 ({result['files']}), figures {result['figures']}, "
              f"median of {result['repeats']}:")
        print(f"{'measure':<30}{'seconds':>10}{'images/s':>10}")
        for name, seconds in result["seconds"].items():
            rate = result["images_per_s"].get(name)
            print(f"{name:<30}{seconds:>10.2f}{'' if rate is None else f'{rate:>10.1f}'}")
        print("share of the inference run:")
        for name, share in sorted(result["share_of_inference"].items(), key=lambda kv: -kv[1]):
            print(f"  {name:<28}{100 * share:>6.1f} %")
        print(f"(c) / (a) = {result['ratio_inference_over_classify']:.2f}; "
              f"(c) / ((b) + nifti floor) = {result['ratio_inference_over_ifim_plus_floor']:.2f} (target <= 1.5)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                                           "torch": torch.__version__}, "results": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
