"""Fix the offline tasks' lumpy background on the validation split, before any test result is seen.

    python tools/select_offline_background.py [--candidates 0 2 4 8] [--bar 0.65] [--output F.json]

For each candidate number of lumps (in the order given, the plainest first) it builds every offline task's
validation images through the task's training chain (scripts.tasks.task_transforms, with that many lumps) and
prints the trivial detectors' AUROC for "signal absent against present" (scripts.detectors) with a 95 % bootstrap
interval over the validation subjects. The rule, fixed before it was run: the first candidate whose max-intensity
upper interval bound is at most --bar for every offline task. The test split is never built.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
sys.path.insert(0, str(BUNDLE))

from scripts.bootstrap import percentile_interval, unit_bootstrap_weights  # noqa: E402
from scripts.detectors import detector_scores, weighted_aurocs  # noqa: E402
from scripts.tasks import TASKS, task_datalist  # noqa: E402
from scripts.transforms import mri_transforms  # noqa: E402


def validation_aurocs(task: str, lumps: int, entries, size: int, resamples: int, seed: int) -> dict:
    """``{detector: [auroc, low, high]}`` on the validation ``entries`` of ``task`` with ``lumps`` lumps."""
    record = TASKS[task]
    chain = mri_transforms(size=size, **dict(record.signal, lumps=lumps))
    images, labels = [], []
    for entry in entries:
        sample = chain(entry)
        images.append(torch.as_tensor(sample["image"]))
        labels.append(int(sample["label"]))
    positive = np.asarray(labels) != 0
    weights = unit_bootstrap_weights([e["subject"] for e in entries], resamples, seed)
    return {name: [float(weighted_aurocs(scores, positive)[0]),
                   *percentile_interval(weighted_aurocs(scores, positive, weights))]
            for name, scores in detector_scores(torch.stack(images)).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--bar", type=float, default=0.65)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", default=str(BUNDLE / "cache" / "polarity"))
    parser.add_argument("--output", default=str(BUNDLE / "eval" / "offline_background.json"))
    args = parser.parse_args()
    tasks = [name for name, record in TASKS.items() if record.signal]  # the simulated-subject tasks
    entries = task_datalist(tasks[0], args.cache_dir, counts=(0, 640, 0), seed=0)["validation"]
    results, chosen = [], None
    for lumps in args.candidates:
        row = {"lumps": lumps,
               "tasks": {t: validation_aurocs(t, lumps, entries, args.size, args.resamples, args.seed) for t in tasks}}
        row["passes"] = all(r["max intensity"][2] <= args.bar for r in row["tasks"].values())
        results.append(row)
        for task, aurocs in row["tasks"].items():
            print(f"lumps {lumps:2d}  {task:10s} " + "  ".join(
                f"{name} {a:.3f} [{lo:.3f}, {hi:.3f}]" for name, (a, lo, hi) in aurocs.items()), flush=True)
        if row["passes"] and chosen is None:
            chosen = lumps
    print(f"rule: the first candidate whose max-intensity upper bound is <= {args.bar} on every offline task: "
          f"{chosen if chosen is not None else 'none passes'}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": "validation", "entries": len(entries),
                               "subjects": len({e["subject"] for e in entries}), "bar": args.bar,
                               "chosen_lumps": chosen, "candidates": results,
                               "signal": {t: {k: (v if not isinstance(v, tuple) else list(v))
                                              for k, v in TASKS[t].signal.items()} for t in tasks}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
