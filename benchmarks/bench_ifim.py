"""Speed and memory of ``ifim_decompose`` against the fastest saliency map and a naive per-image, per-class loop.

    python benchmarks/bench_ifim.py                  # full table (about 15 minutes on 2 CPU cores)
    python benchmarks/bench_ifim.py --quick          # smaller, for a smoke run
    python benchmarks/bench_ifim.py --device cuda

Prints a table and writes JSON (default ``benchmarks/results/bench_ifim.json``). Times are medians over
``--repeats`` rounds after one warm-up; the ratios are also given from each method's fastest round (in
parentheses), the figure least disturbed by other work on a shared machine. Within a round the methods alternate,
in an order rotated each round, so the ratios compare like with like. The target: ifim time <= 1.10 x (C - 1) x
the fastest way to compute one saliency map, and never slower than the naive loop.

* ``vanilla``, ``vanilla_1``, ``vanilla_auto``: one saliency map, the gradient of log p_predicted w.r.t. the
  images (1 forward + 1 backward), for the whole batch at once, image by image, and in the chunks
  ``scripts.ifim.auto_chunk_size`` picks. The fastest of the three is the reference.
* ``ifim``: ``ifim_decompose`` on the batch (1 forward + C - 1 backward + Gram, eigendecomposition, projection), in
  its default chunks.
* ``naive``: a direct reading of Sec. III: for every image and every class a forward and a backward pass for
  g_c = grad log p_c, then G, K = G^T G, its eigendecomposition, u_i and x_sens for that image.
* ``func``: the idiom an expert writes with ``torch.func``: ``vmap(jacrev(log_softmax o model))`` for every
  image's C x d Jacobian at once, then the same Gram matrix, eigendecomposition and projection. The table gives
  ``func / ifim`` and the largest difference of their eigenvalues relative to the largest eigenvalue.
* ``saliency``: captum's ``Saliency`` (the absolute gradient of the predicted logit), the library saliency map a
  user would reach for.

Why chunks: on CPU a batched pass is bound by memory traffic once the batch's activations overflow the caches, so
32 images of 256^2 at once are slower than one by one (the engine's comment at ``CPU_CHUNK_CACHE_FACTOR``); on a
GPU the whole batch is one pass.

Peak memory (``benchmarks/profiling.py``): each (case, method) runs once more in a fresh child process, after a
warm-up on a tiny input, and the rise of the peak above the level before the call is reported: allocator
statistics on CUDA, the resident-set high-water mark on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from captum.attr import Saliency
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))

from profiling import PeakMemory  # noqa: E402  (beside this script)

from scripts.ifim import auto_chunk_size, ifim_decompose  # noqa: E402
from scripts.networks import ShallowCNN  # noqa: E402

METHODS = ("ifim", "vanilla", "vanilla_1", "vanilla_auto", "naive", "func", "saliency")
VANILLA = ("vanilla", "vanilla_1", "vanilla_auto")
MEMORY_METHODS = ("ifim", "vanilla", "naive")


def full_cases() -> List[Dict]:
    cases = [dict(dims=2, classes=c, size=s, batch=32) for s in (128, 256) for c in (2, 3)]
    cases += [dict(dims=2, classes=c, size=s, batch=8) for s in (512, 1024) for c in (2, 3)]
    cases += [dict(dims=3, classes=2, size=s, batch=4) for s in (48, 64)]
    return cases


def quick_cases() -> List[Dict]:
    return [dict(dims=2, classes=c, size=64, batch=8) for c in (2, 3)] + [dict(dims=3, classes=2, size=16, batch=2)]


def case_name(case: Dict) -> str:
    spatial = "x".join([str(case["size"])] * case["dims"])
    return f"{case['dims']}D C={case['classes']} {spatial} B={case['batch']}"


def build(case: Dict, device: torch.device):
    torch.manual_seed(0)
    model = ShallowCNN(case["dims"], 1, case["classes"]).to(device).eval()
    x = torch.randn(case["batch"], 1, *[case["size"]] * case["dims"], device=device)
    return model, x


def vanilla_gradient(model: torch.nn.Module, x: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """|grad_x log p_predicted|, one backward pass per chunk of ``chunk`` images (0: the whole batch): the cost of a
    saliency map."""
    if chunk and chunk < len(x):
        return torch.cat([vanilla_gradient(model, x[i:i + chunk]) for i in range(0, len(x), chunk)])
    x = x.detach().requires_grad_(True)
    log_probs = torch.log_softmax(model(x), dim=1)
    (grad,) = torch.autograd.grad(log_probs.max(dim=1).values.sum(), x)
    return grad.abs()


def naive_ifim(model: torch.nn.Module, x: torch.Tensor, rho: float = 0.9) -> torch.Tensor:
    """Per image, per class: g_c from its own forward/backward, then eq. 5-17 for that image. Returns x_sens."""
    out = []
    for image in x:
        image = image[None]
        n_classes = model(image).shape[1]
        cols = []
        for c in range(n_classes):
            z = image.detach().requires_grad_(True)
            log_p = torch.log_softmax(model(z), dim=1)
            (grad,) = torch.autograd.grad(log_p[0, c], z)
            cols.append(log_p[0, c].exp().detach().sqrt() * grad.reshape(-1))
        g = torch.stack(cols, dim=1).double()  # (d, C), eq. 5
        evals, evecs = torch.linalg.eigh(g.T @ g)  # eq. 7-8
        evals, evecs = evals.flip(0), evecs.flip(1)
        positive = evals > evals[0] * 1e-7
        evals, evecs = evals[positive], evecs[:, positive]
        k = int((evals.cumsum(0) / evals.sum() < rho).sum()) + 1  # eq. 13
        u = (g @ evecs[:, :k]) / evals[:k].sqrt()  # eq. 9
        out.append((u @ (u.T @ image.reshape(-1).double())).reshape(image.shape).float())  # eq. 14
    return torch.cat(out)


def func_ifim(model: torch.nn.Module, x: torch.Tensor, rho: float = 0.9) -> Dict[str, torch.Tensor]:
    """iFIM through ``torch.func``: the Jacobian of log p for the whole batch by ``vmap(jacrev(...))``, then eq. 5-17
    per image. Returns ``{"eigenvalues": (B, C) descending, "x_sens": like x}``."""
    params = {name: value.detach() for name, value in model.named_parameters()}
    buffers = {name: value.detach() for name, value in model.named_buffers()}

    def log_probs(image: torch.Tensor) -> torch.Tensor:  # (C_in, *spatial) -> (C,)
        return torch.log_softmax(functional_call(model, (params, buffers), (image[None],))[0], 0)

    x = x.detach()
    jacobian = vmap(jacrev(log_probs))(x).flatten(2)  # (B, C, d)
    g = (vmap(log_probs)(x).exp().sqrt()[..., None] * jacobian).double()  # rows sqrt(p_c) grad log p_c, eq. 5
    evals, evecs = torch.linalg.eigh(g @ g.transpose(1, 2))  # eq. 7-8
    evals, evecs = evals.flip(1), evecs.flip(2)
    sens = []
    for image, values, vectors, grads in zip(x, evals, evecs, g):
        positive = values > values[0] * 1e-7
        values, vectors = values[positive], vectors[:, positive]
        k = int((values.cumsum(0) / values.sum() < rho).sum()) + 1  # eq. 13
        u = (grads.T @ vectors[:, :k]) / values[:k].sqrt()  # eq. 9
        sens.append((u @ (u.T @ image.reshape(-1).double())).reshape(image.shape).float())  # eq. 14
    return {"eigenvalues": evals, "x_sens": torch.stack(sens)}


def captum_saliency(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        target = model(x).argmax(1)
    return Saliency(model).attribute(x.detach(), target=target, abs=True)


def eigenvalue_gap(model: torch.nn.Module, x: torch.Tensor) -> float:
    """The largest |eigenvalue of ifim_decompose - eigenvalue of func_ifim| over the batch, relative to the batch's
    largest eigenvalue."""
    ours, theirs = ifim_decompose(model, x).eigenvalues, func_ifim(model, x)["eigenvalues"]
    return float((ours - theirs).abs().max() / theirs.abs().max())


def run_method(method: str, model, x) -> Callable[[], object]:
    if method == "ifim":
        return lambda: ifim_decompose(model, x)
    if method == "vanilla":
        return lambda: vanilla_gradient(model, x)
    if method == "vanilla_1":
        return lambda: vanilla_gradient(model, x, chunk=1)
    if method == "vanilla_auto":
        return lambda: vanilla_gradient(model, x, chunk=auto_chunk_size(model, x))
    if method == "func":
        return lambda: func_ifim(model, x)
    if method == "saliency":
        return lambda: captum_saliency(model, x)
    return lambda: naive_ifim(model, x)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_methods(fns: Dict[str, Callable[[], object]], repeats: int,
                 device: torch.device) -> Dict[str, Dict[str, float]]:
    """Median and fastest seconds per call (``{"median": {name: s}, "min": {name: s}}``). Methods alternate within
    each round, in an order rotated from round to round, so drift of a noisy machine and the after-effects of one
    method on the next hit all alike; the minimum is the run least disturbed by other work on the machine."""
    for fn in fns.values():  # warm-up
        fn()
    sync(device)
    times: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_ in range(repeats):
        # rotate the order each round: no method always runs right after the allocation-heavy naive loop
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return dict(median={name: statistics.median(t) for name, t in times.items()},
                min={name: min(t) for name, t in times.items()})


def peak_memory_mib(case: Dict, method: str, device: torch.device) -> float:
    child = subprocess.run([sys.executable, __file__, "--child", json.dumps(case), method, str(device)],
                           capture_output=True, text=True, check=True)
    return float(child.stdout.strip().splitlines()[-1])


def child_main(case_json: str, method: str, device: str) -> None:
    """Peak memory rise of one call in this fresh process, after a warm-up on a tiny input loads every kernel."""
    case, device = json.loads(case_json), torch.device(device)
    model, x = build(case, device)
    run_method(method, model, x[:1, ..., :8, :8])()
    with PeakMemory(device) as peak:
        run_method(method, model, x)()
    print(peak.rise_bytes / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small cases, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_ifim.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(*args.child)
        return
    device = torch.device(args.device)
    rows = []
    header = (f"{'case':<24}{'chunk':>6}{'ifim img/s':>11}{'best vanilla img/s':>19}{'naive img/s':>12}"
              f"{'ifim/((C-1)*van) (min)':>23}{'naive/ifim (min)':>17}{'func/ifim (min)':>16}{'eig gap':>9}"
              f"{'saliency/ifim':>14}{'peak MiB ifim/van/naive':>25}")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    print(header)
    for case in quick_cases() if args.quick else full_cases():
        model, x = build(case, device)
        timed = time_methods({m: run_method(m, model, x) for m in METHODS}, args.repeats, device)
        seconds, fastest = timed["median"], timed["min"]
        memory = {m: None if args.no_memory else peak_memory_mib(case, m, device) for m in MEMORY_METHODS}
        best_vanilla = min(VANILLA, key=lambda m: seconds[m])
        ratio = seconds["ifim"] / ((case["classes"] - 1) * seconds[best_vanilla])
        ratio_min = fastest["ifim"] / ((case["classes"] - 1) * min(fastest[m] for m in VANILLA))
        chunk = auto_chunk_size(model, x)
        row = dict(case=case_name(case), **case, chunk=chunk, seconds=seconds, fastest_seconds=fastest,
                   images_per_s={m: case["batch"] / s for m, s in seconds.items()}, best_vanilla=best_vanilla,
                   ifim_over_cm1_vanilla=ratio, ifim_over_cm1_vanilla_min=ratio_min,
                   naive_over_ifim=seconds["naive"] / seconds["ifim"],
                   naive_over_ifim_min=fastest["naive"] / fastest["ifim"],
                   func_over_ifim=seconds["func"] / seconds["ifim"],
                   func_over_ifim_min=fastest["func"] / fastest["ifim"],
                   func_eigenvalue_gap=eigenvalue_gap(model, x),
                   saliency_over_ifim=seconds["saliency"] / seconds["ifim"], peak_mib=memory)
        rows.append(row)
        mem = "/".join("-" if memory[m] is None else f"{memory[m]:.0f}" for m in MEMORY_METHODS)
        ips = row["images_per_s"]
        print(f"{row['case']:<24}{chunk:>6}{ips['ifim']:>11.1f}{ips[best_vanilla]:>12.1f} ({best_vanilla[8:] or 'B'})"
              f"{ips['naive']:>12.1f}{ratio:>11.3f} ({ratio_min:.3f}){row['naive_over_ifim']:>7.2f} "
              f"({row['naive_over_ifim_min']:.2f}){row['func_over_ifim']:>8.2f} ({row['func_over_ifim_min']:.2f})"
              f"{row['func_eigenvalue_gap']:>9.1e}{row['saliency_over_ifim']:>14.2f}{mem:>25}", flush=True)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, device=str(device), threads=torch.get_num_threads(),
                machine=platform.machine(), processor=platform.processor(), repeats=args.repeats)
    output.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
