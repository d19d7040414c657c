"""Speed of ROAD's noisy linear imputation (``scripts.metrics.NoisyLinearImputation.impute``) against the general
sparse solve of the same equations, on the masks the study imputes.

    python benchmarks/bench_road.py [--size 64] [--images 16] [--repeats 5]

Masks: the top-k and bottom-k pixels of smooth random maps (a Gaussian-filtered noise field per image, like a
saliency map) at the study's fractions, 1-3 % (Fig. 3) and 5-50 % (the deletion curves). Per fraction, the
seconds per image of:

* ``symmetric``: the engine: each equation multiplied by its weight sum, a symmetric positive definite matrix
  factored by SuperLU with the symmetric ordering (MMD on A^T + A);
* ``general``: the neighbour-mean equations as first written (rows normalised to weight 1, a non-symmetric
  matrix) through ``scipy.sparse.linalg.spsolve`` and its default COLAMD ordering.

Both alternate within each round; the largest difference of their solutions is printed as a check. Writes JSON
(default ``benchmarks/results/bench_road.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse
from scipy.ndimage import gaussian_filter
from scipy.sparse.linalg import spsolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from scripts.metrics import NoisyLinearImputation  # noqa: E402

FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def general_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The same imputation through the normalised, non-symmetric system and spsolve (the reference)."""
    spatial = removed.shape
    unknown = np.flatnonzero(removed)
    flat = image.reshape(image.shape[0], -1).astype(np.float64).copy()
    position = np.full(removed.size, -1, dtype=np.int64)
    position[unknown] = np.arange(unknown.size)
    coords = np.stack(np.unravel_index(unknown, spatial), 1)
    neighbours, weights = [], []
    for offset in itertools.product((-1, 0, 1), repeat=len(spatial)):
        if not any(offset):
            continue
        target = coords + np.asarray(offset)
        inside = np.all((target >= 0) & (target < np.asarray(spatial)), 1)
        index = np.full(unknown.size, -1, dtype=np.int64)
        index[inside] = np.ravel_multi_index(tuple(target[inside].T), spatial)
        neighbours.append(index)
        weights.append(np.where(inside, 2.0 if sum(map(abs, offset)) == 1 else 1.0, 0.0))
    weights = np.stack(weights, 1)
    weights /= weights.sum(1, keepdims=True)
    rows, cols, values = [np.arange(unknown.size)], [np.arange(unknown.size)], [np.ones(unknown.size)]
    rhs = np.zeros((unknown.size, flat.shape[0]))
    for index, weight in zip(np.stack(neighbours, 1).T, weights.T):
        valid = index >= 0
        known = valid & (position[np.where(valid, index, 0)] < 0)
        rhs[known] += weight[known, None] * flat[:, index[known]].T
        free = valid & ~known
        rows.append(np.flatnonzero(free))
        cols.append(position[index[free]])
        values.append(-weight[free])
    matrix = sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(unknown.size, unknown.size))
    flat[:, unknown] = np.asarray(spsolve(matrix, rhs)).reshape(unknown.size, -1).T
    return flat.reshape(image.shape)


def masks(size: int, n: int, fraction: float, seed: int = 0):
    """Top-k and bottom-k masks of ``n`` smooth random maps, with an image each."""
    rng = np.random.default_rng(seed)
    k = int(np.ceil(fraction * size * size))
    for _ in range(n):
        heat = gaussian_filter(rng.random((size, size)), 3).ravel()
        order = np.argsort(heat)
        image = rng.random((1, size, size))
        for chosen in (order[-k:], order[:k]):
            removed = np.zeros(size * size, dtype=bool)
            removed[chosen] = True
            yield image, removed.reshape(size, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_road.json"))
    args = parser.parse_args()
    methods = {"symmetric": NoisyLinearImputation.impute, "general": general_impute}
    rows = []
    print(f"{'fraction':>9}{'symmetric ms/img':>18}{'general ms/img':>16}{'general/symmetric':>19}{'max diff':>10}")
    for fraction in FRACTIONS:
        cases = list(masks(args.size, args.images, fraction))
        gap = max(float(np.abs(methods["symmetric"](i, m) - methods["general"](i, m)).max()) for i, m in cases)
        times = {name: [] for name in methods}
        for round_ in range(args.repeats):
            for name in (list(methods) if round_ % 2 == 0 else list(methods)[::-1]):
                start = time.perf_counter()
                for image, removed in cases:
                    methods[name](image, removed)
                times[name].append((time.perf_counter() - start) / args.images)
        ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
        rows.append({"fraction": fraction, "ms_per_image": ms, "general_over_symmetric": ms["general"] /
                     ms["symmetric"], "max_difference": gap})
        print(f"{fraction:>9g}{ms['symmetric']:>18.2f}{ms['general']:>16.2f}{ms['general'] / ms['symmetric']:>19.2f}"
              f"{gap:>10.1e}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": args.size, "images": args.images, "repeats": args.repeats,
                               "note": "ms per image = top-k and bottom-k masks of one image", "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
