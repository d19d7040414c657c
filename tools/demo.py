"""The main job until the bundle workflows exist: iFIM decompositions on an offline SKS/BKS task.

    python tools/demo.py [--task phantom|sksbks] [--output_dir outputs/demo] [--size 64] [--train 2048]
                         [--epochs 10] [--samples 8]

1. Builds an SKS/BKS set (Gaussian signal of amplitude 0.1-0.35 in white matter, about half the images): the
   procedural phantom (``phantom``, default, seconds) or the offline default task on the MNI152 templates
   (``sksbks``: slices cut once into ``--cache_dir``, then about 40 ms per image to build; it learns more slowly,
   so give it ``--epochs 20``).
2. Trains the paper's shallow CNN briefly (about a minute on 2 CPU cores) and reports held-out accuracy.
3. Decomposes a few test images with ``ifim_decompose`` and writes, under ``--output_dir``:
   ``sample_XX.png`` (image, |x_sens|, |x_comp| in contrast-adjusted jet; red box: the true signal, half-width 2 sigma)
   and ``eigenvalues.csv`` (one row per image: label, prediction, probabilities, eigenvalues, rank, k).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.atomic import write_csv  # noqa: E402
from scripts.data import SPLITS, build_sksbks_datalist, phantom_dataset  # noqa: E402
from scripts.ifim import ifim_decompose  # noqa: E402
from scripts.networks import ShallowCNN  # noqa: E402
from scripts.transforms import mri_transforms  # noqa: E402
from scripts.visualize import decomposition_figure, save_figure_atomic  # noqa: E402


def build_sets(args):
    """(training, validation, test) lists of sample dicts with image, label and the signal keys."""
    counts = (args.train, args.val, args.samples)
    if args.task == "phantom":
        return [phantom_dataset(n, args.size, seed=args.seed + 1000 * i) for i, n in enumerate(counts)]
    datalist = build_sksbks_datalist(args.cache_dir, counts=counts, seed=args.seed)
    chain = mri_transforms(size=args.size)
    return [list(CacheDataset(datalist[split], chain, num_workers=2, progress=False)) for split in SPLITS]


def stack(samples, key):
    return torch.stack([torch.as_tensor(s[key]) for s in samples])


def train(model, images, labels, epochs, batch_size, lr, seed):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        losses = []
        bar = tqdm(range(0, len(images), batch_size), desc=f"train epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None)  # bars on a terminal only
        for start in bar:
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        print(f"epoch {epoch + 1}/{epochs}: mean training loss {np.mean(losses):.3f}")
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="phantom", choices=("phantom", "sksbks"))
    parser.add_argument("--cache_dir", default="outputs/cache/sksbks_slices", help="slice cache of --task sksbks")
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=2048, help="training images")
    parser.add_argument("--val", type=int, default=512, help="held-out images for the accuracy")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8, help="test images to decompose")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--rho", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    print(f"building {args.train} + {args.val} + {args.samples} {args.task} images of {args.size}^2 ...")
    train_set, val_set, test_set = build_sets(args)

    model = ShallowCNN(spatial_dims=2, in_channels=1, num_classes=2)
    train(model, stack(train_set, "image"), torch.tensor([s["label"] for s in train_set]), args.epochs,
          batch_size=64, lr=args.lr, seed=args.seed)
    with torch.no_grad():
        val_pred = model(stack(val_set, "image")).argmax(1)
    val_acc = (val_pred == torch.tensor([s["label"] for s in val_set])).float().mean().item()
    print(f"held-out accuracy on {args.val} {args.task} images: {val_acc:.3f}")

    images = stack(test_set, "image")
    result = ifim_decompose(model, images, rho=args.rho)
    n_classes = result.probs.shape[1]
    header = (["file", "label", "predicted"] + [f"p_{c}" for c in range(n_classes)]
              + [f"lambda_{i + 1}" for i in range(n_classes)] + ["rank", "k"])
    rows = []
    for i, sample in enumerate(tqdm(test_set, desc="figures", leave=False, disable=None)):
        name = f"sample_{i:02d}.png"
        box = None
        if sample["label"]:
            box = (sample["signal_center"].tolist(), 2 * sample["signal_sigma"])
        title = (f"label {sample['label']}, predicted {int(result.probs[i].argmax())} "
                 f"(p = {float(result.probs[i].max()):.3f}), rank {int(result.rank[i])}, k {int(result.k[i])}")
        fig = decomposition_figure(images[i, 0].numpy(), result.x_sens[i].abs().sum(0).numpy(),
                                   result.x_comp[i].abs().sum(0).numpy(), title=title, box=box)
        save_figure_atomic(fig, out / name)
        rows.append([name, sample["label"], int(result.probs[i].argmax())]
                    + [f"{p:.6g}" for p in result.probs[i].tolist()]
                    + [f"{v:.6g}" for v in result.eigenvalues[i].tolist()]
                    + [int(result.rank[i]), int(result.k[i])])
    write_csv(out / "eigenvalues.csv", header, rows)
    print(f"wrote {len(rows)} decompositions to {out.resolve()} (sample_XX.png, eigenvalues.csv) "
          f"in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
