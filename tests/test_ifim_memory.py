"""No d x d tensor: a 512^2 input at C = 2 (d = 262144, d^2 float32 = 256 GiB) costs memory linear in d."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A fresh process per measurement, so memory freed by earlier work cannot be silently reused.
CHILD = r"""
import json, sys, torch
sys.path[:0] = [sys.argv[1] + "/bundle", sys.argv[1] + "/benchmarks"]
from scripts.ifim import ifim_decompose
from scripts.networks import ShallowCNN
from profiling import PeakMemory
torch.manual_seed(0)
model = ShallowCNN(2, 1, 2, channels=(16, 32, 64))  # the width the bound below counts
size = int(sys.argv[2])
x = torch.randn(1, 1, size, size)
ifim_decompose(model, x[..., :16, :16])  # load kernels and libraries before the measurement
with PeakMemory() as peak:
    result = ifim_decompose(model, x)
print(json.dumps({"rise_bytes": peak.rise_bytes, "rank": int(result.rank[0])}))
"""


def _peak_rise(size: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(size)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_is_linear_in_d_not_quadratic():
    d = 512 * 512
    big = _peak_rise(512)
    assert big["rank"] == 1
    # d^2 float32 would be 256 GiB; the shallow CNN's own activations are ~100 d floats (16 channels, a few copies).
    assert big["rise_bytes"] < 256 * d * 4, big
    assert big["rise_bytes"] < 1e-3 * d * d * 4
    # Doubling the side (4x d) multiplies the peak by about 4, not 16.
    small = _peak_rise(256)
    assert big["rise_bytes"] < 6 * max(small["rise_bytes"], 16 * 2**20), (small, big)
