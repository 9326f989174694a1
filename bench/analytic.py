"""Benchmark of the analytical scores (issue 2): Empirical and NoiseAgnostic vs the matmul rate.

B queries against N training points of dimension d (float32): achieved GFLOP/s of ``Empirical``
(counting ``2 B N d`` for the distance product + ``2 B N d`` for the weighted sum), the rate of the
two plain ``torch.mm`` of the same shapes measured in the same run, their ratio, a naive
``cdist -> softmax -> matmul`` implementation, ``NoiseAgnostic`` with a geometric grid of levels
(and the log-uniform quadrature), and the peak extra memory of each call, measured in a fresh
subprocess per variant as the growth of the resident-set high-water mark (``VmHWM`` reset through
``/proc/self/clear_refs``; torch CPU allocations are invisible to tracemalloc) or, on CUDA, with
``torch.cuda.max_memory_allocated``. Times are medians of ``--repeats`` calls after one warm-up.

    python bench/analytic.py --n 6000 --repeats 3          # quick
    python bench/analytic.py                               # N=60000, d=784, B=256
    python bench/analytic.py --mnist                       # MNIST training images as data
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from _common import PeakMemory, machine, publish, run_child, timed

VARIANTS = ("mm", "empirical", "naive", "noise_agnostic_levels", "noise_agnostic_quad")


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    if args.mnist:
        from scoredyn import data as sdata

        data = sdata.load("mnist", n=args.n).reshape(args.n, -1)[:, : args.d].contiguous()
    else:
        data = torch.rand(args.n, args.d, generator=g) * 2 - 1
    x = torch.rand(args.b, args.d, generator=g) * 2 - 1
    return data.to(dev), x.to(dev)


def build(name: str, data: torch.Tensor, x: torch.Tensor, args: argparse.Namespace) -> Callable[[], torch.Tensor]:
    from scoredyn.analytic import Empirical, NoiseAgnostic

    sigma = args.sigma
    if name == "mm":
        w = torch.rand(x.shape[0], data.shape[0], device=x.device)

        def run() -> torch.Tensor:
            torch.mm(x, data.T)
            return torch.mm(w, data)

        return run
    if name == "empirical":
        model = Empirical(data, chunk_size=args.chunk)
        return lambda: model(x, sigma)
    if name == "naive":

        def naive() -> torch.Tensor:
            r2 = torch.cdist(x, data).square_()
            return torch.softmax(r2.mul_(-0.5 / sigma**2), dim=1) @ data

        return naive
    if name == "noise_agnostic_levels":
        levels = torch.exp(torch.linspace(math.log(args.sigma_min), math.log(args.sigma_max), args.levels, dtype=torch.float64))
        model = NoiseAgnostic(data, conditioning="multiplicative", levels=levels, chunk_size=args.chunk)
        return lambda: model.field(x)
    if name == "noise_agnostic_quad":
        model = NoiseAgnostic(data, sigma_min=args.sigma_min, sigma_max=args.sigma_max, chunk_size=args.chunk)
        return lambda: model.field(x)
    raise ValueError(name)


def time_variant(name: str, data: torch.Tensor, x: torch.Tensor, args: argparse.Namespace) -> float:
    return timed(build(name, data, x, args), args.repeats, device=x.device).median


def memory_child(name: str, args: argparse.Namespace) -> None:
    """Run in a subprocess: print the peak extra memory (MiB) of one call of ``name``."""
    data, x = make_data(args)
    fn = build(name, data, x, args)
    if x.device.type == "cuda":
        fn()
    # no warm-up on CPU: the allocator would keep the first call's blocks and hide the peak
    with PeakMemory(x.device) as mem:
        fn()
    print(json.dumps({"extra_mib": mem.extra_mib, "how": mem.how}))


def memory(name: str, args: argparse.Namespace) -> tuple[float, str]:
    rec = run_child([__file__, "--child", name] + [a for a in sys.argv[1:] if a != "--no-memory"])
    return rec["extra_mib"], rec["how"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--b", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk", type=int, default=None, help="chunk size (default: automatic)")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--sigma-min", type=float, default=0.01)
    p.add_argument("--sigma-max", type=float, default=50.0)
    p.add_argument("--levels", type=int, default=64)
    p.add_argument("--mnist", action="store_true", help="use MNIST training images (needs the data folder)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md (## Analytical scores)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        memory_child(args.child, args)
        return
    data, x = make_data(args)
    flops = 4.0 * args.b * args.n * args.d
    times = {v: time_variant(v, data, x, args) for v in VARIANTS}
    mem = {v: (math.nan, "skipped") if args.no_memory else memory(v, args) for v in VARIANTS}
    rate_mm = flops / times["mm"] / 1e9
    lines = []
    lines.append(f"# machine: {machine()}; device {args.device}")
    lines.append(f"# B={args.b} N={args.n} d={args.d} float32, sigma={args.sigma}, median of {args.repeats}; "
          f"NoiseAgnostic: {args.levels} geometric levels / log-uniform quadrature on [{args.sigma_min}, {args.sigma_max}]")
    lines.append(f"# memory: peak extra per call via {mem['empirical'][1]}, fresh subprocess per variant")
    lines.append(f"{'variant':<24}{'time_s':>10}{'GFLOP/s':>10}{'vs_mm':>8}{'vs_empirical':>14}{'extra_MiB':>11}")
    rows = {}
    for v in VARIANTS:
        rate = flops / times[v] / 1e9
        rows[v] = dict(time_s=times[v], gflops=rate, vs_mm=rate / rate_mm, vs_empirical=times[v] / times["empirical"], extra_mib=mem[v][0])
        lines.append(f"{v:<24}{times[v]:>10.4f}{rate:>10.1f}{rate / rate_mm:>8.2f}{times[v] / times['empirical']:>14.2f}{mem[v][0]:>11.1f}")
    lines.append(f"# Empirical / matmul rate: {rows['empirical']['vs_mm']:.3f} (target >= 0.9); "
          f"NoiseAgnostic({args.levels} levels) / Empirical time: {rows['noise_agnostic_levels']['vs_empirical']:.2f} (target <= 2)")
    publish("Analytical scores", "```\n" + "\n".join(lines) + "\n```", __file__, args.write)
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(machine=machine(), args=vars(args) | {"json": str(args.json)}, rows=rows), indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
