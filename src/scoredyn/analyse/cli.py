"""``scoredyn analyse MODEL --data TRAIN [--heldout HELD] ...``: one report on any model.

    scoredyn analyse runs/digits --out runs/digits-analysis --quick
    scoredyn analyse diffusers:path/to/ddpm --data folder_of_images --heldout other_folder --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from ..train.cli import _Help


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0,255), got {text!r}") from None
    if not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LOW < HIGH, got {text!r}")
    return lo, hi


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the ``analyse`` command."""
    p = subparsers.add_parser(
        "analyse", formatter_class=_Help,
        help="one report on a model: memorization, quality, Gaussian structure, teleportation, dynamics",
        description=(
            "Analyse a trained model: samples, memorization (against the exact empirical denoiser), FID/KID/"
            "precision-recall with the train-vs-held-out floor, how much of its score a Gaussian / Gaussian "
            "mixtures / the training set explain per sigma, the teleportation skip sweep and optionally the fixed "
            "points at the smallest sigma. Writes OUT/report.html, report.md, results.json and figures/; finished "
            "sections are cached under OUT/cache and reused."
        ),
    )
    p.add_argument("model", help="a scoredyn run folder (scoredyn train --out) or diffusers:PATH")
    p.add_argument("--data", default=None,
                   help="training data: a scoredyn.data name, an image folder or a .npz/.npy file (default: the "
                        "data a scoredyn run records it was trained on)")
    p.add_argument("--data-root", default=None, help="folder the named data set is read from (mnist, cifar10)")
    p.add_argument("--n-train", type=int, default=None, help="use a seeded subset of this many training points")
    p.add_argument("--heldout", default="auto",
                   help="held-out data (a name means its test split; a folder or file is read whole); 'auto': the "
                        "test split of a named data set; 'none': no held-out data")
    p.add_argument("--n-heldout", type=int, default=None, help="use a seeded subset of this many held-out points")
    p.add_argument("--data-range", type=_range, default=None, metavar="LOW,HIGH",
                   help="the range the data is in, when it differs from the model's (mapped linearly to it)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/analyse-<model name>)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--n", type=int, default=None, help="number of samples (default: 1000; 500 with --quick)")
    p.add_argument("--sampler", default=None, help="a name in scoredyn.sample.SAMPLERS (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="grid levels (default: 18; 40 for annealed_langevin)")
    p.add_argument("--fid-net", default=None,
                   help="digits, mnist, inception:PATH (a TorchScript file you trust) or raw (default: by data shape)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="fewer samples and evaluation points: minutes on a CPU")
    size.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="a smoke test in seconds; the numbers mean little")
    p.set_defaults(mode="default")
    p.add_argument("--fixed-points", action="store_true", help="also find the fixed points at the smallest sigma")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--no-cache", action="store_true", help="recompute every section instead of reusing cached ones")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(func=_main)


def _resolve_device(name: str) -> "torch.device":  # noqa: F821
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for but CUDA is not available here; use --device cpu")
    return dev


def _train_spec(args: argparse.Namespace, model: object) -> tuple[str, Optional[str], Optional[int], int]:
    """(name or path, root, n, seed) of the training data: --data, else what the run recorded."""
    if args.data is not None:
        return args.data, args.data_root, args.n_train, args.seed
    cfg = getattr(model, "checkpoint_config", None) or {}
    rec = (cfg.get("train") or {}).get("data") or {}
    if not rec.get("name"):
        raise ValueError(f"--data is needed: {args.model} does not record a named training data set; pass the data "
                         "the model was trained on (a data set name, an image folder or a .npz/.npy file)")
    seed = int((cfg.get("train") or {}).get("seed", 0))
    n = args.n_train if args.n_train is not None else rec.get("n")
    return rec["name"], args.data_root or rec.get("root"), n, seed


def _main(args: argparse.Namespace) -> int:
    from .. import data
    from . import preset, run, with_overrides
    from .inputs import load_data, load_model

    dev = _resolve_device(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    model = load_model(args.model, dev)
    name, root, n, seed = _train_spec(args, model)
    train = load_data(name, root=root, split="train", n=n, seed=seed)
    held_spec = args.heldout
    if held_spec == "auto":
        held_spec = name if name in data.NAMES else "none"
    heldout = None
    if held_spec != "none":
        heldout = load_data(held_spec, root=args.data_root if held_spec == name else None,
                            split="test", n=args.n_heldout, seed=args.seed)
    cfg = with_overrides(preset(args.mode), seed=args.seed, n_samples=args.n, sampler=args.sampler, steps=args.steps,
                         fid_net=args.fid_net, fixed_points=args.fixed_points or None)
    out = args.out or Path("runs") / f"analyse-{Path(args.model.split(':', 1)[-1]).name or 'model'}"
    res = run(model, train, heldout, out, cfg, data_range=args.data_range, device=dev,
              name=_model_name(args.model, model), progress=not args.no_progress, reuse=not args.no_cache)
    rows = res["studies"]["analyse"]["sections"][0]["tables"]["findings"]["rows"]
    print()
    for q, what, value in rows:
        print(f"{q:<26s} {what}: {value}")
    print(f"wall {time.perf_counter() - t0:.1f} s, CPU {time.process_time() - c0:.1f} s; report: {out / 'report.html'}")
    return 0


def _model_name(spec: str, model: object) -> str:
    if spec.startswith("diffusers:"):
        inner = getattr(model, "model", None)
        return f"diffusers model {spec.split(':', 1)[1]} ({type(inner).__name__ if inner is not None else 'network'})"
    cond = getattr(model, "conditioning", "")
    return f"scoredyn run {spec} ({cond} conditioning)" if cond else f"scoredyn run {spec}"
