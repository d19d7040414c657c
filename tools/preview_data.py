"""Look at an offline task: a grid of samples with their true signal boxed in red.

    python tools/preview_data.py [--task polarity] [--output outputs/preview/polarity.png] [--size 256] [--n 12]
        [--split test]

Builds the task's datalist (simulated subjects warped from the MNI152 templates inside nilearn's wheel; slices cut
once into --cache_dir), runs the task's chain on the first --n entries of --split and saves the grid. Box
half-width: 2 sigma.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.tasks import TASKS, task_class_names, task_datalist, task_transforms  # noqa: E402
from scripts.visualize import sample_grid_figure, save_figure_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    offline = [name for name, record in TASKS.items() if not record.needs_dataset]
    parser.add_argument("--task", default=offline[0], choices=offline)
    parser.add_argument("--output", default=None, help="default: outputs/preview/<task>.png")
    parser.add_argument("--cache_dir", default="outputs/cache/preview")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--split", default="test", choices=("training", "validation", "test"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts = [args.n if split == args.split else 0 for split in ("training", "validation", "test")]
    datalist = task_datalist(args.task, Path(args.cache_dir) / args.task, counts=counts, seed=args.seed)
    chain = task_transforms(args.task, args.size)
    classes = task_class_names(args.task)
    images, titles, boxes = [], [], []
    for entry in datalist[args.split][:args.n]:
        sample = chain(entry)
        images.append(sample["image"][0].numpy())
        present = bool(sample["label"])
        titles.append(f"{entry['subject']} slice {entry['slice']}\n{classes[int(sample['label'])]}"
                      + (f" {sample['signal_amplitude']:.2f}" if present else ""))
        boxes.append((sample["signal_center"].tolist(), 2 * sample["signal_sigma"]) if present else None)
    output = args.output or f"outputs/preview/{args.task}.png"
    path = save_figure_atomic(sample_grid_figure(images, titles, boxes), output)
    print(f"wrote {path.resolve()} ({len(images)} {args.split} samples, {sum(b is not None for b in boxes)} "
          "with a signal)")


if __name__ == "__main__":
    main()
