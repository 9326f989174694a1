"""Benchmark: exact chunked memorization statistics vs a naive ``torch.cdist`` + ``topk``.

Samples: MNIST test images plus noisy copies of training images (so copies exist); training set:
MNIST train (d = 784), both from ../shared/data when present, else uniform random data of the same
shape. Each method runs in a fresh subprocess, so its peak memory (CPU: peak RSS above the RSS
after loading the data; CUDA: ``torch.cuda.max_memory_allocated``) is its own. The subprocesses of
the two methods alternate over ``--rounds`` rounds (so a change of the machine's load hits both);
a time is the median over rounds of each subprocess's median of ``--repeats`` calls. The accuracy columns compare each method's nearest-neighbour ratio with float64 distances
from direct differences on a subset of queries.

    OMP_NUM_THREADS=1 python bench/metrics.py --quick          # small, for development
    OMP_NUM_THREADS=1 python bench/metrics.py --write          # 10,000 x 60,000; writes bench/RESULTS.md
    OMP_NUM_THREADS=1 python bench/metrics.py --rounds 5 --repeats 1   # the same, five alternating rounds
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from _common import PeakMemory, machine, publish, run_child, shared_data, timed
from scoredyn._checks import check_data
from scoredyn.metrics import memorization

SECTION = "Metrics"
N_CHECK = 200  # queries checked against the float64 oracle
COPY_FRACTION = 0.1  # share of samples that are noisy copies of training points
COPY_NOISE = 1e-3  # per-pixel std of the noise added to the copies ([-1, 1] pixel scale)


def make_data(n_samples: int, n_train: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(samples (B, 784), train (N, 784), description)``, identical in every worker."""
    g = torch.Generator().manual_seed(seed)
    root = shared_data()
    n_copies = int(COPY_FRACTION * n_samples)
    if root is not None:
        from scoredyn.data import load

        train = load("mnist", root, "train", None if n_train == 60_000 else n_train, seed).reshape(n_train, -1)
        fresh = load("mnist", root, "test", n_samples - n_copies, seed).reshape(n_samples - n_copies, -1)
        source = "MNIST (../shared/data)"
    else:
        train = torch.rand(n_train, 784, generator=g) * 2 - 1
        fresh = torch.rand(n_samples - n_copies, 784, generator=g) * 2 - 1
        source = "uniform random (MNIST not found)"
    idx = torch.randperm(n_train, generator=g)[:n_copies]
    copies = train[idx] + COPY_NOISE * torch.randn(n_copies, 784, generator=g)
    return torch.cat([fresh, copies]), train, source


def naive(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The usual one-liner: the full (B, N) distance matrix, then top-2."""
    d, i = torch.topk(torch.cdist(samples, train), 2, dim=1, largest=False)
    return d[:, 0] / d[:, 1], i[:, 0]


def exact(samples: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = memorization(samples, train)
    return out.ratio, out.nn_index


def validation(samples: torch.Tensor, train: torch.Tensor) -> None:
    """The input check alone (``scoredyn._checks.check_data`` of the training set), part of ``exact``."""
    check_data("train", train)


def worker(method: str, n_samples: int, n_train: int, repeats: int, device: str) -> dict:
    samples, train, source = make_data(n_samples, n_train)
    samples, train = samples.to(device), train.to(device)
    fn = {"naive": naive, "exact": exact, "validation": validation}[method]
    fn(samples[:8], train[:64])  # warm-up: lazy initialisation and code pages are not the method's memory
    with PeakMemory(device) as mem:
        median_s, times, result = timed(lambda: fn(samples, train), repeats, device, warmup=False)
    if method == "validation":
        return {"method": method, "median_s": median_s, "peak_extra_mib": mem.extra_mib}
    ratio, index = result
    # accuracy on a subset: float64 distances from direct differences
    q = samples[:: max(1, n_samples // N_CHECK)][:N_CHECK].double()
    sel = torch.arange(0, n_samples, max(1, n_samples // N_CHECK))[:N_CHECK]
    d = torch.cdist(q, train.double(), compute_mode="donot_use_mm_for_euclid_dist")
    od, oi = torch.topk(d, 2, dim=1, largest=False)
    oracle = (od[:, 0] / od[:, 1]).cpu()
    r = ratio[sel.to(ratio.device)].double().cpu()
    copies = ratio < 1 / 3
    return {
        "method": method,
        "source": source,
        "times": times,
        "median_s": median_s,
        "peak_extra_mib": mem.extra_mib,
        "copy_fraction": float(copies.double().mean()),
        "max_ratio_err": float((r - oracle).abs().max()),
        "max_ratio_rel_err_copies": float(((r - oracle).abs() / oracle.clamp_min(1e-300))[oracle < 1 / 3].max())
        if bool((oracle < 1 / 3).any()) else float("nan"),
        "index_agree": float((index[sel.to(index.device)].cpu() == oi[:, 0].cpu()).double().mean()),
    }


def run_worker(method: str, args: argparse.Namespace) -> dict:
    return run_child([__file__, "--worker", method, "--n-samples", str(args.n_samples),
                      "--n-train", str(args.n_train), "--repeats", str(args.repeats), "--device", args.device])


def table(results: list[dict], args: argparse.Namespace) -> str:
    ex = next(r for r in results if r["method"] == "exact")
    lines = [
        f"memorization: {args.n_samples:,} samples ({COPY_FRACTION:.0%} noisy copies, noise std {COPY_NOISE:g}) "
        f"vs {args.n_train:,} training points, d = 784, data: {ex['source']}; device {args.device}; "
        f"median of {args.rounds} alternating round(s) of {args.repeats} repeat(s); {machine()}.",
        "",
        "| method | median time (s) | peak extra memory (MiB) | copy fraction | max abs ratio error | "
        "max rel ratio error on copies | NN index agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"exact": "scoredyn `memorization` (chunked, float64 re-rank)", "naive": "naive `torch.cdist` + `topk` (float32)"}
    for r in results[:2]:
        lines.append(
            f"| {names[r['method']]} | {r['median_s']:.2f} | {r['peak_extra_mib']:.0f} | {r['copy_fraction']:.4f} | "
            f"{r['max_ratio_err']:.2e} | {r['max_ratio_rel_err_copies']:.2e} | {r['index_agree']:.4f} |"
        )
    nv = next(r for r in results if r["method"] == "naive")
    va = next(r for r in results if r["method"] == "validation")
    lines += [
        "",
        f"Of the exact method's peak, {va['peak_extra_mib']:.0f} MiB ({va['median_s']:.2f} s) is the shared input check "
        f"`scoredyn._checks.check_data` of the training set (`torch.isfinite` materialises temporaries the size "
        f"of the input); the k-NN itself works in blocks of (samples x chunk).",
        f"Ratios (naive / exact): time {nv['median_s'] / ex['median_s']:.2f}x, "
        f"peak memory {nv['peak_extra_mib'] / max(ex['peak_extra_mib'], 1e-9):.1f}x. Errors are against float64 "
        f"distances from direct differences on {N_CHECK} evenly spaced queries (copies among them).",
        f"Per round (s): exact {', '.join(f'{t:.2f}' for t in ex['rounds_s'])}; "
        f"naive {', '.join(f'{t:.2f}' for t in nv['rounds_s'])}.",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--n-train", type=int, default=60_000)
    p.add_argument("--repeats", type=int, default=1, help="timed calls per subprocess")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of one subprocess per method")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="1,000 x 6,000, for development")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md (## Metrics)")
    p.add_argument("--worker", choices=["naive", "exact", "validation"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.n_samples, args.n_train = 1_000, 6_000
    if args.worker:
        print(json.dumps(worker(args.worker, args.n_samples, args.n_train, args.repeats, args.device)))
        return
    rounds = [[run_worker(m, args) for m in ("exact", "naive")] for _ in range(args.rounds)]
    results = [dict(rounds[0][i], median_s=statistics.median(r[i]["median_s"] for r in rounds),
                    rounds_s=[r[i]["median_s"] for r in rounds]) for i in range(2)]
    results.append(run_worker("validation", args))
    text = table(results, args)
    publish(SECTION, text, __file__, args.write)


if __name__ == "__main__":
    main()
