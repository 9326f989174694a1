"""Training throughput of scoredyn.train.fit: steps/s and samples/s of the MNIST-size UNet.

Runs the real training loop (``fit`` with random 28x28 data in [-1, 1]; data, sigma and noise
draws, bf16 autocast on CUDA, AdamW, gradient clipping, EMA) and reads the loop's own timing from
``metrics.jsonl``: one window per ``--window`` steps, the first window (warm-up) dropped, median
of the rest. CPU (``--threads``) and, when available, CUDA (optionally ``--compile``).

    python bench/train.py                      # quick: CPU, 3 timed windows of 4 steps
    python bench/train.py --windows 5 --window 10 --cuda-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from _common import machine, publish
from scoredyn.nets import MLP, UNet, precondition
from scoredyn.train import TrainConfig, fit


def measure(make, data: torch.Tensor, batch: int, device: str, windows: int, window: int, compile: bool) -> float:
    """Median steps/s over ``windows`` timed windows of ``window`` steps (after one warm-up window)."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = TrainConfig(steps=(windows + 1) * window, batch_size=batch, lr=2e-4, sigma_dist="lognormal", sigma_min=0.002,
                             sigma_max=80.0, warmup=10, compile=compile, ckpt_every=10**9, log_every=window)
        fit(make(), data, config, device=device, out=tmp, progress=False)
        rates = [json.loads(s)["it_s"] for s in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--cuda-only", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on CUDA")
    ap.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md (## Training)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    imgs = torch.rand(1024, 1, 28, 28) * 2 - 1
    points = torch.randn(4096, 2)
    nets = {
        "UNet mult.": (lambda: precondition(UNet(1), "multiplicative"), imgs, args.batch),
        "UNet edm": (lambda: precondition(UNet(1, cond=True), "edm"), imgs, args.batch),
        "MLP 2-D edm": (lambda: precondition(MLP(2, cond=True), "edm"), points, 256),
    }
    devices = [] if args.cuda_only else ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    lines = [f"# {machine()}"]
    lines.append("| model | params | device | batch | steps/s | samples/s |")
    lines.append("|---|---|---|---|---|---|")
    for name, (make, data, batch) in nets.items():
        n_params = sum(p.numel() for p in make().parameters())
        for dev in devices:
            modes = [False, True] if (dev == "cuda" and args.compile) else [False]
            for comp in modes:
                windows = args.windows if dev == "cpu" else max(args.windows, 5)
                window = args.window if dev == "cpu" else max(args.window, 20)
                rate = measure(make, data, batch, dev, windows, window, comp)
                label = dev + (" +compile" if comp else "") + (" bf16" if dev == "cuda" else "")
                lines.append(f"| {name} | {n_params / 1e6:.2f}M | {label} | {batch} | {rate:.2f} | {rate * batch:.0f} |")

    publish("Training", "\n".join(lines), __file__, args.write)

if __name__ == "__main__":
    main()
