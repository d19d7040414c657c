"""Images/s of every map method of ``scripts.attribution`` on the shallow CNN at 128^2.

    python benchmarks/bench_methods.py [--size 128] [--batch 16] [--classes 2] [--repeats 3] [--device cpu]

Methods alternate within each timing round (medians over ``--repeats`` rounds after a warm-up), so a noisy
machine slows them alike. Prints a table sorted by speed, with each method's time relative to the vanilla gradient
(one saliency map), and writes JSON (default ``benchmarks/results/bench_methods.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.attribution import METHODS, attribute  # noqa: E402
from scripts.networks import ShallowCNN  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_methods.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ShallowCNN(2, 1, args.classes).to(device).eval()
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    target = torch.arange(args.batch, device=device) % args.classes

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for method in METHODS:  # warm-up
        attribute(method, model, x, target)
    times = {method: [] for method in METHODS}
    for _ in range(args.repeats):
        for method in METHODS:
            sync()
            start = time.perf_counter()
            attribute(method, model, x, target)
            sync()
            times[method].append(time.perf_counter() - start)
    seconds = {method: statistics.median(t) for method, t in times.items()}
    rows = [{"method": m, "seconds": s, "images_per_s": args.batch / s, "over_vanilla": s / seconds["vanilla_gradient"]}
            for m, s in sorted(seconds.items(), key=lambda item: item[1])]
    print(f"shallow CNN, {args.size}^2, batch {args.batch}, C = {args.classes}, {device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<18}{'images/s':>10}{'x vanilla':>11}")
    for row in rows:
        print(f"{row['method']:<18}{row['images_per_s']:>10.1f}{row['over_vanilla']:>11.2f}")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "rows": rows}, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
