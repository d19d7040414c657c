"""Throughput of the default SKS/BKS data pipeline against shallow-CNN training, at 128^2 and 256^2.

    python benchmarks/bench_data.py [--n 256] [--sizes 128 256]

For each size, samples/s of:
* ``chain``: ``mri_transforms`` applied in this process, one sample at a time (load, resize, normalize, augment,
  signal);
* ``loader x2``: the same through a ``DataLoader`` with 2 worker processes, batch 32;
* ``cached``: a ``CacheDataset`` (the chain is deterministic per entry, so it caches whole samples) read through a
  ``DataLoader``, after its build (build time reported);
* ``train``: one shallow-CNN training step (forward, backward, Adam) per batch of 32, on tensors already in memory.
Data loading limits training when its samples/s is below ``train``. Prints a table and writes JSON
(default ``benchmarks/results/bench_data.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.data import build_simulated_datalist  # noqa: E402
from scripts.networks import ShallowCNN  # noqa: E402
from scripts.transforms import mri_transforms  # noqa: E402


def samples_per_s(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def drain(loader) -> None:
    for _ in loader:
        pass


def train_rate(size: int, batch: int = 32, steps: int = 8) -> float:
    torch.manual_seed(0)
    model = ShallowCNN(2, 1, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 2, (batch,))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    return samples_per_s(batch * steps, lambda: [step() for _ in range(steps)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256, help="samples per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_data.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        entries = build_simulated_datalist(cache, counts=(args.n, 0, 0), subjects=(max(1, args.n // 8), 0, 0))[
            "training"]
        rows = []
        print(f"{'size':>6}{'chain/s':>10}{'loader x2/s':>13}{'cached/s':>10}{'cache build s':>15}{'train/s':>10}")
        for size in args.sizes:
            chain = mri_transforms(size=size)
            row = {"size": size, "n": args.n}
            row["chain"] = samples_per_s(args.n, lambda: [chain(e) for e in entries])
            loader = DataLoader(Dataset(entries, chain), batch_size=32, num_workers=2)
            row["loader_2_workers"] = samples_per_s(args.n, lambda: drain(loader))
            start = time.perf_counter()
            cached = CacheDataset(entries, chain, num_workers=2, progress=False)
            row["cache_build_s"] = time.perf_counter() - start
            row["cached"] = samples_per_s(args.n, lambda: drain(DataLoader(cached, batch_size=32, num_workers=0)))
            row["train"] = train_rate(size)
            rows.append(row)
            print(f"{size:>6}{row['chain']:>10.1f}{row['loader_2_workers']:>13.1f}{row['cached']:>10.1f}"
                  f"{row['cache_build_s']:>15.1f}{row['train']:>10.1f}", flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows},
                                 indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
