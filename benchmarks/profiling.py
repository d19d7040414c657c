# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Peak memory of a block of code, for benchmarks and memory tests.

PyTorch keeps allocator statistics for CUDA only. On CPU this reads the process's resident-set high-water mark
(``VmHWM``) after resetting it through ``/proc/self/clear_refs`` (Linux >= 4.0), so imports or earlier work do not
mask the block's own peak. Memory freed earlier but still resident can be reused without raising the mark: measure
in a fresh process (after a small warm-up call) when the figure matters.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

__all__ = ["PeakMemory"]

_STATUS = Path("/proc/self/status")


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", _STATUS.read_text(), flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{key} not found in {_STATUS}; CPU peak memory needs Linux.")
    return int(match.group(1))


class PeakMemory:
    """Context manager; after the block, ``rise_bytes`` is the peak memory above the level at entry.

    Args:
        device: ``"cpu"`` (resident set of this process) or a CUDA device (allocator statistics).

    Example::

        with PeakMemory() as peak:
            ifim_decompose(model, x)
        print(peak.rise_bytes / 2**20, "MiB")
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.rise_bytes: Optional[int] = None
        self._base = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
            self._base = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.rise_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.rise_bytes = _status_kib("VmHWM") * 1024 - self._base
