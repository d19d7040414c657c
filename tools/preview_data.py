"""Look at the offline default SKS/BKS task: a grid of samples with their true signal boxed in red.

    python tools/preview_data.py [--output outputs/preview/sksbks.png] [--size 256] [--n 12] [--split test]

Builds the default datalist (MNI152 templates inside nilearn's wheel; slices cut once into --cache_dir), runs the
MRI chain on the first --n entries of --split and saves the grid. Box half-width: 2 sigma.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.data import build_sksbks_datalist  # noqa: E402
from scripts.transforms import mri_transforms  # noqa: E402
from scripts.visualize import sample_grid_figure, save_figure_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="outputs/preview/sksbks.png")
    parser.add_argument("--cache_dir", default="outputs/cache/sksbks_slices")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--split", default="test", choices=("training", "validation", "test"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    datalist = build_sksbks_datalist(args.cache_dir, seed=args.seed)
    chain = mri_transforms(size=args.size)
    images, titles, boxes = [], [], []
    for entry in datalist[args.split][:args.n]:
        sample = chain(entry)
        images.append(sample["image"][0].numpy())
        present = bool(sample["label"])
        titles.append(f"slice {entry['slice']}: " + (f"signal, amplitude {sample['signal_amplitude']:.2f}"
                                                     if present else "no signal"))
        boxes.append((sample["signal_center"].tolist(), 2 * sample["signal_sigma"]) if present else None)
    path = save_figure_atomic(sample_grid_figure(images, titles, boxes), args.output)
    print(f"wrote {path.resolve()} ({len(images)} {args.split} samples, {sum(b is not None for b in boxes)} "
          "with a signal)")


if __name__ == "__main__":
    main()
