"""``scoredyn analytic-sample``: sample from an analytical score, on one process or under ``torchrun``.

    scoredyn analytic-sample --data train.npy --model empirical --temperature 2 \\
        --sampler heun --steps 18 --n 1000 --out runs/analytic
    torchrun --nproc-per-node 2 -m scoredyn.cli analytic-sample --data train.npy ...   # sharded

Under ``torchrun`` every rank memory-maps the same ``.npy`` file, keeps its contiguous shard of rows
and streams it chunk by chunk; the models reduce their per-query partial sums with one all-reduce
(DESIGN.md §7), so the samples equal the single-process ones. Rank 0 writes ``samples.npz``,
``samples.png`` and ``config.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .._io import atomic_write

MODELS = ("empirical", "noise-agnostic", "gaussian", "gmm")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``analytic-sample`` sub-command."""
    p = subparsers.add_parser(
        "analytic-sample",
        help="sample from an analytical score (empirical, noise-agnostic, Gaussian, mixture); torchrun-ready",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", required=True, help="a .npy/.npz file (memory-mapped) or a data set name of scoredyn.data")
    p.add_argument("--data-root", default=None, help="folder the named data set is read from")
    p.add_argument("--num-points", type=int, default=None, help="use this many training points (default: all)")
    p.add_argument("--model", default="empirical", choices=MODELS, help="which analytical denoiser")
    p.add_argument("--temperature", type=float, default=1.0, help="empirical: softmax temperature T >= 1 (Zhou et al.)")
    p.add_argument("--sigma-c", type=float, default=None,
                   help="empirical: use the schedule T(sigma) = max(sigma_c / sigma, 1) instead of a constant T")
    p.add_argument("--top-k", type=int, default=None, help="empirical: restrict the mixture to the k nearest points")
    p.add_argument("--conditioning", default="multiplicative", choices=("multiplicative", "unconditional"),
                   help="noise-agnostic: which optimum")
    p.add_argument("--levels", type=int, default=None,
                   help="noise-agnostic: this many geometric training levels (default: log-uniform sigma)")
    p.add_argument("--components", type=int, default=10, help="gmm: number of components (k-means fit)")
    p.add_argument("--rank", type=int, default=None, help="gaussian/gmm: keep this many covariance eigenpairs")
    p.add_argument("--sampler", default="heun", help="a name of scoredyn.sample.SAMPLERS")
    p.add_argument("--steps", type=int, default=18, help="grid points (Karras grid; geometric for annealed_langevin)")
    p.add_argument("--sigma-min", type=float, default=0.002, help="smallest noise level of the grid")
    p.add_argument("--sigma-max", type=float, default=80.0, help="largest noise level of the grid")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=64,
                   help="number of samples (spell it --num-samples under torchrun, which claims --n)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (results do not depend on it)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--chunk-size", type=int, default=None, help="training points per streamed chunk")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default="runs/analytic", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=analytic_sample_main)


def _training_set(args: argparse.Namespace, rank: int, world: int) -> tuple[Any, int]:
    """This rank's contiguous shard (a memmap slice for files, a tensor slice for named sets) and N."""
    path = Path(args.data)
    if path.suffix in (".npy", ".npz") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"--data {path} does not exist; expected a .npy/.npz file or a data set name")
        if path.suffix == ".npy":
            full: Any = np.load(path, mmap_mode="r")
            if full.dtype != np.float32 and full.dtype != np.float64:
                raise ValueError(f"{path} holds {full.dtype}; expected float32 or float64 training points")
        else:
            from ..data import load

            full = load("npz", root=str(path))
    else:
        from ..data import load

        full = load(args.data, root=args.data_root)
    if args.num_points is not None:
        if not 1 <= args.num_points <= full.shape[0]:
            raise ValueError(f"--num-points must be in [1, {full.shape[0]}], got {args.num_points}")
        full = full[: args.num_points]
    n = int(full.shape[0])
    if n < world:
        raise ValueError(f"{n} training points cannot be sharded over {world} processes")
    lo, hi = rank * n // world, (rank + 1) * n // world
    return full[lo:hi], n


def _temperature(args: argparse.Namespace) -> Any:
    if args.sigma_c is None:
        return args.temperature
    sigma_c = float(args.sigma_c)
    if not sigma_c > 0:
        raise ValueError(f"--sigma-c must be > 0, got {sigma_c}")
    return lambda s: (sigma_c / s).clamp(min=1.0)


def build_model(args: argparse.Namespace, shard: Any, device: torch.device, group: Optional[object]) -> torch.nn.Module:
    """The analytical denoiser named by ``--model`` over this rank's shard."""
    from . import Empirical, Gaussian, GaussianMixture, NoiseAgnostic

    if args.model == "empirical":
        return Empirical(shard, _temperature(args), chunk_size=args.chunk_size, top_k=args.top_k, group=group, device=device)
    if args.model == "noise-agnostic":
        levels = None
        if args.levels is not None:
            from ..sample import sigmas_geometric

            levels = sigmas_geometric(args.levels, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
        return NoiseAgnostic(shard, sigma_min=args.sigma_min, sigma_max=args.sigma_max, conditioning=args.conditioning, levels=levels,
                             chunk_size=args.chunk_size, group=group, device=device)
    if group is not None:
        raise ValueError(f"--model {args.model} is fitted on the whole training set; run it on one process")
    data = torch.as_tensor(np.asarray(shard), device=device)
    if args.model == "gaussian":
        return Gaussian.fit(data, rank=args.rank)
    return GaussianMixture.fit(data, args.components, seed=args.seed, rank=args.rank)


def analytic_sample_main(args: argparse.Namespace) -> int:
    """``scoredyn analytic-sample``."""
    from ..plot import samples_picture
    from ..sample import FIELD_SAMPLERS, SAMPLERS, noise, sigma_grid
    from ..train.distributed import setup, teardown

    registry = {**SAMPLERS, **FIELD_SAMPLERS}
    if args.sampler not in registry:
        raise ValueError(f"unknown sampler {args.sampler!r}; expected one of {', '.join(sorted(registry))}")
    if args.n < 1 or args.batch_size < 1 or args.steps < 2:
        raise ValueError(f"--n and --batch-size must be >= 1 and --steps >= 2, got {args.n}, {args.batch_size}, {args.steps}")
    info = setup(None if args.device == "auto" else args.device)
    try:
        group = torch.distributed.group.WORLD if info.world > 1 else None
        shard, n_points = _training_set(args, info.rank, info.world)
        model = build_model(args, shard, info.device, group)
        dtype = torch.float32 if getattr(shard, "dtype", np.float32) in (np.float32, torch.float32) else torch.float64
        kind = "geometric" if args.sampler == "annealed_langevin" else "karras"  # NCSN's levels for NCSN's sampler
        sigmas = sigma_grid(kind, args.steps, sigma_min=args.sigma_min, sigma_max=args.sigma_max)
        shape = tuple(model.data_shape)
        start = time.perf_counter()
        out = []
        for lo in range(0, args.n, args.batch_size):
            seeds = list(range(args.seed + lo, args.seed + min(args.n, lo + args.batch_size)))
            x = float(sigmas[0]) * noise(seeds, shape, info.device, dtype)
            with torch.no_grad():
                fn = registry[args.sampler]
                out.append(fn(model, x, sigmas.to(info.device), seeds=seeds,
                              progress=info.is_main and not args.no_progress).cpu())
        seconds = time.perf_counter() - start
        if info.is_main:
            samples = torch.cat(out)
            out_dir = Path(args.out)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(out_dir / "samples.npz", lambda tmp: np.savez(
                tmp, samples=samples.numpy(), seeds=np.arange(args.seed, args.seed + args.n)))
            samples_picture(samples, out_dir / "samples.png", title=f"{args.model}, {args.sampler}, {args.steps} steps")
            config = {k: v for k, v in vars(args).items() if k != "func"}
            config.update(world_size=info.world, n_training_points=n_points, seconds=seconds, device=str(info.device))
            atomic_write(out_dir / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
            print(f"wrote {args.n} samples from {args.model} over {n_points} points "
                  f"({info.world} process(es), {seconds:.1f} s) to {out_dir}")
    finally:
        teardown(info)
    return 0
