"""``scoredyn study {kim, smoothing, teleport, all} [--quick | --full] ...``: the paper studies."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .config import IMAGES, TOYS


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``study`` command."""
    p = subparsers.add_parser(
        "study",
        help="reproduce a paper's claims and write a report (report.md, report.html, results.json)",
        description=(
            "Reproduce the claims of Kim (2026), Zhou et al. (2026) and Wang & Vastola as tables of "
            "measured values with verdicts. Finished stages are cached under OUT/cache and reused."
        ),
    )
    p.add_argument("study", choices=("kim", "smoothing", "teleport", "all"), help="which study to run")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="minutes on a CPU: 2-D toys and scikit-learn digits (default)")
    size.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="GPU-sized: MNIST, longer training, more samples (needs the MNIST files)")
    size.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="a smoke test in seconds; the numbers mean nothing")
    p.set_defaults(mode="quick")
    p.add_argument("--data", default=None, choices=TOYS + IMAGES,
                   help="a 2-D toy for Kim's 2-D part, or an image set for the image parts (default: moons, digits)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="output folder (default runs/study)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute every stage instead of reusing cached ones")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from . import STUDIES, preset, run_studies, with_overrides

    cfg = with_overrides(preset(args.mode), data=args.data, device=args.device, seed=args.seed)
    names = list(STUDIES) if args.study == "all" else [args.study]
    t0, c0 = time.perf_counter(), time.process_time()
    res = run_studies(names, cfg, args.out, progress=not args.no_progress, reuse=not args.no_cache)
    print(f"\n{'study':<10s} {'claims':>6s} {'supported':>10s} {'not supp.':>10s} {'inconcl.':>9s}")
    for name, st in res["studies"].items():
        verdicts = [c["verdict"] for s in st["sections"] for c in s["claims"]]
        print(f"{name:<10s} {len(verdicts):6d} {verdicts.count('supported'):10d} "
              f"{verdicts.count('not supported'):10d} {verdicts.count('inconclusive'):9d}")
    failing = [g["name"] for g in res["networks"] if not g["passes"]]
    print(f"networks: {len(res['networks'])}, failing the quality gate: {failing or 'none'}")
    print(f"total {time.perf_counter() - t0:.1f} s wall, {time.process_time() - c0:.1f} s CPU (this process); "
          f"report: {args.out / 'report.md'}")
    return 0
