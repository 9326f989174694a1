"""Benchmark of the analytical scores (issue 2): Empirical and NoiseAgnostic vs the matmul rate.

B queries against N training points of dimension d (float32): achieved GFLOP/s of ``Empirical``
(counting ``2 B N d`` for the distance product + ``2 B N d`` for the weighted sum), the rate of the
two plain ``torch.mm`` of the same shapes measured in the same run, their ratio, a naive
``cdist -> softmax -> matmul`` implementation, ``NoiseAgnostic`` with a geometric grid of levels
(and the log-uniform quadrature), and the peak extra memory of each call, measured in a fresh
subprocess per variant as the growth of the resident-set high-water mark (``VmHWM`` reset through
``/proc/self/clear_refs``; torch CPU allocations are invisible to tracemalloc) or, on CUDA, with
``torch.cuda.max_memory_allocated``. Times are medians of ``--repeats`` calls after one warm-up.

Second table (issue 16): the kernel's rate against the two ``torch.mm`` over a grid of sigma
(0.002..80) on MNIST in [-1, 1], N(0, I) and uniform [-1, 1] data; queries are held-out points plus
sigma-scaled Gaussian noise (the denoising regime). Kernel, dense kernel and the two products are
timed interleaved, medians of ``--repeats``; "sparse regime" marks sigma <= median nearest-neighbour
distance / sqrt(d), where the sparse path leaves almost every (query, point) pair out of the second product.

    python bench/analytic.py --part variants --n 6000 --repeats 3   # quick
    python bench/analytic.py --part variants --train mnist01 --no-memory --repeats 9   # NoiseAgnostic vs Empirical
    python bench/analytic.py                                         # both tables, N=20000, d=784, B=256
    python bench/analytic.py --part sweep --write                    # rate vs sigma into RESULTS.md
    python bench/analytic.py --part sweep --data gauss --sigmas 0.5,1,2 --repeats 9   # a few cells
    python bench/analytic.py --device cuda --tf32 --accuracy         # on a GPU, TF32 matmuls, error vs float64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from _common import PeakMemory, machine, publish, run_child, shared_data, sync

VARIANTS = ("mm", "empirical", "naive", "noise_agnostic_levels", "noise_agnostic_per_entry", "noise_agnostic_quad")
TRAIN = ("uniform", "mnist", "mnist01", "gauss")
"""Training points of the variants table: uniform [-1, 1], MNIST in [-1, 1] / [0, 1], N(0, I); queries uniform in [-1, 1]."""


def make_data(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    train = "mnist" if args.mnist else args.train
    if train.startswith("mnist"):
        from scoredyn import data as sdata

        data = sdata.load("mnist", root=shared_data(), n=args.n).reshape(args.n, -1)[:, : args.d].contiguous()
        if train == "mnist01":
            data = data.add_(1.0).mul_(0.5)
    elif train == "gauss":
        data = torch.randn(args.n, args.d, generator=g)
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
    if name == "noise_agnostic_per_entry":  # the per-entry level windows (the path for small d / non-geometric levels)
        levels = torch.exp(torch.linspace(math.log(args.sigma_min), math.log(args.sigma_max), args.levels, dtype=torch.float64))
        model = NoiseAgnostic(data, conditioning="multiplicative", levels=levels, chunk_size=args.chunk)
        model.field_terms.plan = lambda qmin, shift: None
        return lambda: model.field(x)
    if name == "noise_agnostic_quad":
        model = NoiseAgnostic(data, sigma_min=args.sigma_min, sigma_max=args.sigma_max, chunk_size=args.chunk)
        return lambda: model.field(x)
    raise ValueError(name)


def time_variants(names: list[str], data: torch.Tensor, x: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    """Medians of ``args.repeats`` calls per variant, interleaved (the order rotates each repeat) after one warm-up each."""
    fns = {n: build(n, data, x, args) for n in names}
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.repeats):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            sync(x.device)
            t0 = time.perf_counter()
            fns[n]()
            sync(x.device)
            times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


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


SIGMAS = (0.002, 0.01, 0.03, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)


def sweep_data(name: str, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Training points ``(N, d)`` and held-out clean queries ``(B, d)`` of one data set (float32, on the device)."""
    g = torch.Generator().manual_seed(0)
    n, b, d = args.n, args.b, args.d
    if name == "mnist":
        from scoredyn import data as sdata

        root = shared_data()
        data = sdata.load("mnist", root=root, n=n).reshape(n, -1).contiguous()
        x0 = sdata.load("mnist", root=root, split="test", n=b).reshape(b, -1).contiguous()
    elif name == "gauss":
        data, x0 = torch.randn(n, d, generator=g), torch.randn(b, d, generator=g)
    else:
        data, x0 = torch.rand(n, d, generator=g) * 2 - 1, torch.rand(b, d, generator=g) * 2 - 1
    return data.to(args.device), x0.to(args.device)


def sweep_one(data: torch.Tensor, x: torch.Tensor, sigma: float, repeats: int, accuracy: bool) -> dict:
    """Interleaved medians (the order rotates each repeat): the two products, the dense kernel and ``Empirical`` at one sigma."""
    from scoredyn.analytic import Empirical
    from scoredyn.analytic._stream import augment, chunks, skip_report, stream_logits
    from scoredyn.analytic.empirical import auto_chunk

    model = Empirical(data)
    table, chunk = augment(data), auto_chunk(data.shape[0])
    scale = torch.full((x.shape[0],), 1.0 / sigma**2, dtype=x.dtype, device=x.device)
    w = torch.rand(x.shape[0], data.shape[0], device=x.device)

    def mm() -> None:
        torch.mm(x, data.T)
        torch.mm(w, data)

    fns = {"mm": mm, "dense": lambda: stream_logits(x, scale, chunks(table, chunk), sparse=False), "empirical": lambda: model(x, sigma)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    names = list(fns)
    for i in range(repeats):
        for k in names[i % 3 :] + names[: i % 3]:  # rotated: no variant always runs right after another
            fn = fns[k]
            sync(x.device)
            t0 = time.perf_counter()
            fn()
            sync(x.device)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = dict(mm_s=med["mm"], dense_rate=med["mm"] / med["dense"], rate=med["mm"] / med["empirical"],
               skipped=math.nan, dense_chunks=math.nan, err=math.nan)
    if x.device.type == "cpu":
        with skip_report() as rep:
            model(x, sigma)
        row["skipped"] = rep.skipped / max(rep.pairs, 1)
        row["dense_chunks"] = rep.dense / math.ceil(data.shape[0] / chunk)
    if accuracy:  # relative error of the float32 model on this device (TF32 or not) against float64
        ref = Empirical(data.double())(x.double(), sigma)
        out = model(x, sigma).double()
        row["err"] = float(((out - ref).norm(dim=1) / ref.norm(dim=1)).max())
    return row


def sweep(args: argparse.Namespace) -> str:
    """The rate-vs-sigma table per data set (issue 16 goals 1 and 2), as text."""
    names = [s.strip() for s in args.datasets.split(",")]
    start = time.perf_counter()
    cells: list[tuple[str, float, float]] = []  # (regime, Empirical rate, dense rate)
    lines = [f"# machine: {machine()}; device {args.device}" + (", TF32 matmuls" if args.tf32 else "")]
    lines.append(f"# B={args.b} N={args.n} d={args.d} float32; queries: held-out points + sigma N(0, I); medians of "
                 f"{args.repeats} interleaved repeats; rate = (two torch.mm time) / (kernel time)")
    lines.append("# dense = the kernel without skipping; Empirical = the default (sparse on CPU); skipped = fraction of "
                 "(query, point) pairs left out of the second product; dense_ch = fraction of chunks multiplied densely")
    lines.append("# sparse regime: sigma <= median nearest-neighbour distance of the queries / sqrt(d); "
                 "targets: rate >= 0.9 everywhere, >= 1.5 in the sparse regime")
    head = f"{'data':<8}{'sigma':>8}{'regime':>8}{'mm_ms':>9}{'dense':>7}{'Empirical':>10}{'skipped':>9}{'dense_ch':>9}"
    lines.append(head + (f"{'err_vs_f64':>12}" if args.accuracy else ""))
    for name in names:
        if name == "mnist" and shared_data() is None:
            lines.append("# mnist: the shared data folder (../shared/data/mnist) is absent; skipped")
            continue
        data, x0 = sweep_data(name, args)
        nn = float(torch.cdist(x0, data).amin(1).median()) / math.sqrt(data.shape[1])
        lines.append(f"# {name}: median NN distance / sqrt(d) = {nn:.3g}")
        g = torch.Generator().manual_seed(1)
        for sigma in args.sigmas:
            x = x0 + sigma * torch.randn(x0.shape, generator=g).to(x0.device)
            r = sweep_one(data, x, sigma, args.repeats, args.accuracy)
            regime = "sparse" if sigma <= nn else "dense"
            line = (f"{name:<8}{sigma:>8g}{regime:>8}{r['mm_s'] * 1e3:>9.1f}{r['dense_rate']:>7.2f}{r['rate']:>10.2f}"
                    f"{r['skipped']:>9.3f}{r['dense_chunks']:>9.2f}")
            lines.append(line + (f"{r['err']:>12.2e}" if args.accuracy else ""))
            print(lines[-1], file=sys.stderr, flush=True)
            cells.append((regime, r["rate"], r["dense_rate"]))
    if cells:
        sparse = [c[1] for c in cells if c[0] == "sparse"]
        lines.append(f"# lowest rate: Empirical {min(c[1] for c in cells):.2f}, dense kernel {min(c[2] for c in cells):.2f} "
                     f"(target >= 0.9); Empirical in the sparse regime {min(sparse, default=math.nan):.2f} (target >= 1.5)")
    lines.append(f"# sweep wall time {time.perf_counter() - start:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--d", type=int, default=784)
    p.add_argument("--b", type=int, default=256)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk", type=int, default=None, help="chunk size (default: automatic)")
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--sigma-min", type=float, default=0.01)
    p.add_argument("--sigma-max", type=float, default=50.0)
    p.add_argument("--levels", type=int, default=64)
    p.add_argument("--mnist", action="store_true", help="use MNIST training images in [-1, 1] (needs the data folder); = --train mnist")
    p.add_argument("--train", choices=TRAIN, default="uniform", help="training points of the variants table (queries: uniform [-1, 1])")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    p.add_argument("--no-quad", action="store_true", help="leave out the log-uniform quadrature variant (17x slower)")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md (## Analytical scores)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--part", choices=("all", "sweep", "variants"), default="all", help="which table(s)")
    p.add_argument("--sigmas", type=lambda s: [float(v) for v in s.split(",")], default=list(SIGMAS), help="comma-separated sigma grid of the sweep")
    p.add_argument("--datasets", "--data", default="mnist,gauss,uniform", help="sweep data sets (mnist: [-1, 1]; gauss: N(0, I); uniform: [-1, 1])")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDA)")
    p.add_argument("--accuracy", action="store_true", help="sweep: also the relative error against a float64 model")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    if args.child:
        memory_child(args.child, args)
        return
    if args.part in ("all", "sweep"):
        title = "Analytical kernel rate vs sigma" + (f" ({args.device}{', TF32' if args.tf32 else ''})" if args.device != "cpu" or args.tf32 else "")
        publish(title, "```\n" + sweep(args) + "\n```", __file__, args.write)
    if args.part == "sweep":
        return
    data, x = make_data(args)
    flops = 4.0 * args.b * args.n * args.d
    variants = [v for v in VARIANTS if v != "noise_agnostic_quad" or not args.no_quad]
    quick = [v for v in variants if v != "noise_agnostic_quad"]  # interleaved; the 17x slower quadrature alone
    times = time_variants(quick, data, x, args) | (time_variants(["noise_agnostic_quad"], data, x, args) if not args.no_quad else {})
    mem = {v: (math.nan, "skipped") if args.no_memory else memory(v, args) for v in variants}
    rate_mm = flops / times["mm"] / 1e9
    lines = []
    lines.append(f"# machine: {machine()}; device {args.device}")
    train = "mnist" if args.mnist else args.train
    lines.append(f"# training points: {train}; queries uniform in [-1, 1]")
    lines.append(f"# B={args.b} N={args.n} d={args.d} float32, sigma={args.sigma}, median of {args.repeats} interleaved; "
          f"NoiseAgnostic: {args.levels} geometric levels / log-uniform quadrature on [{args.sigma_min}, {args.sigma_max}]")
    lines.append(f"# memory: peak extra per call via {mem['empirical'][1]}, fresh subprocess per variant")
    lines.append(f"{'variant':<24}{'time_s':>10}{'GFLOP/s':>10}{'vs_mm':>8}{'vs_empirical':>14}{'extra_MiB':>11}")
    rows = {}
    for v in variants:
        rate = flops / times[v] / 1e9
        rows[v] = dict(time_s=times[v], gflops=rate, vs_mm=rate / rate_mm, vs_empirical=times[v] / times["empirical"], extra_mib=mem[v][0])
        lines.append(f"{v:<24}{times[v]:>10.4f}{rate:>10.1f}{rate / rate_mm:>8.2f}{times[v] / times['empirical']:>14.2f}{mem[v][0]:>11.1f}")
    lines.append(f"# Empirical / matmul rate: {rows['empirical']['vs_mm']:.3f} (target >= 0.9); "
          f"NoiseAgnostic({args.levels} levels) / Empirical time: {rows['noise_agnostic_levels']['vs_empirical']:.2f} (target <= 1.5)")
    publish("Analytical scores", "```\n" + "\n".join(lines) + "\n```", __file__, args.write)
    if args.json:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(machine=machine(), args=vars(args) | {"json": str(args.json)}, rows=rows), indent=1))
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
