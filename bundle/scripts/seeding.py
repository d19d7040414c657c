# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Per-image seeds (floor 1 of DESIGN.md: pure torch / numpy): every random draw for an image (noise, random pixels,
tie-breaking, the random map, GradientShap samples) comes from a seed derived from the study seed and the image's
own values, so an image's results do not depend on its batch, the order of the data or the number of processes."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Union

import numpy as np
import torch

__all__ = ["Seeds", "image_seeds", "per_image_seeds", "seeded"]

Seeds = Union[int, torch.Tensor]


def image_seeds(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """One seed per image, ``(B,)`` int64 in [0, 2^62): a hash of ``seed`` and the image's values (dtype included).

    The same image gets the same draws whatever batch, position or process it is in, so a study sharded over
    ``torchrun`` processes, or run with another batch size, perturbs every image exactly as one process does.
    """
    data = x.detach().cpu().contiguous()
    seeds = []
    for image in data:
        digest = hashlib.blake2b(str(seed).encode(), digest_size=8)
        digest.update(str(image.dtype).encode())
        digest.update(image.numpy().tobytes())
        seeds.append(int.from_bytes(digest.digest(), "little") & ((1 << 62) - 1))
    return torch.tensor(seeds, dtype=torch.int64)


def per_image_seeds(x: torch.Tensor, seed: Seeds) -> torch.Tensor:
    """``(B,)`` per-image seeds: given, or :func:`image_seeds` of ``x`` and an integer study seed."""
    if isinstance(seed, torch.Tensor) and seed.ndim == 1:
        if len(seed) != len(x):
            raise ValueError(f"{len(seed)} seeds for {len(x)} images.")
        return seed.to(torch.int64).cpu()
    return image_seeds(x, int(seed))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch and numpy's global generator (libraries such as captum draw from both), restoring both
    afterwards."""
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
