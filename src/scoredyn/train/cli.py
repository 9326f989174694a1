"""``scoredyn train`` and ``scoredyn sample``: train a score network and draw samples from a run.

    scoredyn train --data moons --conditioning multiplicative --steps 2000 --out runs/moons
    torchrun --nproc-per-node 2 -m scoredyn.cli train ...          # the same, data parallel (gloo/nccl)
    scoredyn sample runs/moons --sampler heun --steps 18 --n 64 --out samples.png --seed 0

``sample`` writes a picture (an image grid for image data, a scatter plot otherwise) and, next to
it, ``<name>.npz`` with the samples and their seeds; ``--out`` ending in ``/`` (or naming an existing
folder) is a folder that receives ``samples.png`` and ``samples.npz``. Sample ``i`` uses seed ``seed + i``, so a
sample does not depend on ``--n`` or ``--batch-size``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .._checks import is_int, is_number
from .._io import atomic_write

from ..nets.precondition import CONDITIONINGS
from .loss import WEIGHTINGS
from .sigma_dist import SIGMA_DISTS

_AUTO = "auto"
_DEFAULT_SAMPLER = {"multiplicative": "annealed_langevin", "unconditional": "unconditional_ode", "edm": "heun"}
_DEFAULT_GRID = {"annealed_langevin": "geometric"}  # NCSN's levels for NCSN's sampler; Karras' grid otherwise


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(value.lower(), value)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show ``(default: ...)`` except where the default is None (the help text then says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action) or ""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``sample`` sub-commands."""
    fmt = _Help
    p = subparsers.add_parser("train", help="train a score network (DSM; any conditioning)", formatter_class=fmt,
                              description="Train a denoiser by denoising score matching; resumes from --out.")
    p.add_argument("--data", default="moons", help="data set name (scoredyn.data.load)")
    p.add_argument("--data-root", default=None, help="folder or file the data set is read from")
    p.add_argument("--n", "--num-points", dest="n", type=int, default=None,
                   help="number of training points (default: all / the set's default); under torchrun use "
                        "--num-points (torchrun takes --n for its own options)")
    p.add_argument("--conditioning", default="multiplicative", choices=CONDITIONINGS,
                   help="how the network sees sigma (DESIGN.md §2)")
    p.add_argument("--net", default=_AUTO, choices=[_AUTO, "mlp", "unet"], help="auto: mlp for points, unet for images")
    p.add_argument("--hidden", type=int, default=256, help="MLP width")
    p.add_argument("--depth", type=int, default=4, help="MLP hidden layers")
    p.add_argument("--base", type=int, default=32, help="UNet base channels")
    p.add_argument("--channel-mult", type=_int_list, default=[1, 2, 2], help="UNet channel multipliers per level")
    p.add_argument("--num-blocks", type=int, default=2, help="UNet residual blocks per level")
    p.add_argument("--dropout", type=float, default=0.0, help="UNet dropout")
    p.add_argument("--sigma-data", type=float, default=0.5, help="EDM sigma_data")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps in total (a resumed run continues)")
    p.add_argument("--batch-size", type=int, default=256, help="global batch (split over processes)")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    p.add_argument("--warmup", type=int, default=100, help="linear learning-rate warm-up steps")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--sigma-dist", default=_AUTO, choices=[_AUTO, *SIGMA_DISTS],
                   help="auto: lognormal for edm, loguniform otherwise")
    p.add_argument("--sigma-min", type=float, default=None, help="default: 0.002 for edm, 0.01 otherwise")
    p.add_argument("--sigma-max", type=float, default=None,
                   help="default: 80 for edm, the largest pairwise data distance otherwise (NCSNv2)")
    p.add_argument("--levels", type=int, default=10, help="number of geometric levels (sigma-dist geometric)")
    p.add_argument("--weighting", default=_AUTO, choices=[_AUTO, *WEIGHTINGS], help="auto: edm for edm, sigma2 otherwise")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay")
    p.add_argument("--no-ema-warmup", action="store_true", help="use the EMA decay from the first step")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, batches and noise")
    p.add_argument("--device", default=_AUTO, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=100, help="steps between metrics lines")
    p.add_argument("--keep", type=int, default=2, help="checkpoints kept")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 on CUDA too (default: bf16 autocast on CUDA)")
    p.add_argument("--no-resume", action="store_true",
                   help="start over instead of resuming; refused on a non-empty --out unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="with --no-resume: move the run already in --out aside (to --out/previous-<k>) and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="run directory (default: runs/<data>-<conditioning>)")
    p.set_defaults(func=train_main)

    s = subparsers.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt,
                              description="Sample a trained run (its EMA weights) with a scoredyn.sample sampler.")
    s.add_argument("run", nargs="?", default=None, help="run directory or checkpoint directory (or use --model)")
    s.add_argument("--model", default=None, help="instead of RUN: diffusers:PATH (a local diffusers folder) or a run directory")
    s.add_argument("--sampler", default=_AUTO,
                   help="a name in scoredyn.sample.SAMPLERS; auto: annealed_langevin (multiplicative), "
                        "unconditional_ode (unconditional), heun (edm)")
    s.add_argument("--steps", type=int, default=18, help="noise levels in the grid")
    s.add_argument("--grid", default=_AUTO, choices=[_AUTO, "karras", "geometric"],
                   help="auto: geometric for annealed_langevin, karras otherwise")
    s.add_argument("--sigma-min", type=float, default=None, help="default: the run's training sigma_min")
    s.add_argument("--sigma-max", type=float, default=None, help="default: the run's training sigma_max")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    s.add_argument("--batch-size", type=int, default=256, help="samples per sampler call")
    s.add_argument("--device", default=_AUTO, help="auto, cpu, cuda, ...")
    s.add_argument("--weights", default="ema", choices=["ema", "model"], help="EMA or raw training weights")
    s.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE",
                   help="extra sampler option, e.g. n_steps_each=5 or s_churn=40 (repeatable)")
    s.add_argument("--out", default="samples.png",
                   help="picture (.png, .pdf, .svg, .jpg); the samples go to the same name with .npz; "
                        "a folder (trailing /) gets samples.png and samples.npz")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=sample_main)


def _device(name: str) -> Optional[str]:
    return None if name == _AUTO else name


_PICTURES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
_NOT_OPTIONS = ("seeds", "callback", "progress")  # set by the command itself


def picture_path(out: str) -> Path:
    """The picture ``--out`` names: ``DIR/`` or an existing folder gives ``DIR/samples.png``."""
    path = Path(out)
    if out.endswith(("/", os.sep)) or path.is_dir():
        return path / "samples.png"
    if path.suffix.lower() not in _PICTURES:
        raise ValueError(f"--out {out} has no picture extension; expected one of {', '.join(_PICTURES)} "
                         f"(e.g. {path.with_suffix('.png')}), or {out}/ for a folder")
    return path


def check_options(sampler: str, fn: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``--opt`` values checked against the sampler's keyword options (name, then type of the default)."""
    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if p.kind == p.KEYWORD_ONLY and k not in _NOT_OPTIONS}
    if any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()):
        return options  # a wrapper that passes options on: the wrapped sampler checks them
    valid = ", ".join(f"{k} (default {p.default!r})" for k, p in params.items()) or "none"
    out = {}
    for key, value in options.items():
        if key not in params:
            raise ValueError(f"--opt {key}: {sampler} has no option {key!r}; its options: {valid}")
        default = params[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = is_int(value)
        elif isinstance(default, float):
            ok = is_number(value)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True  # None defaults: the sampler validates
        if not ok:
            raise ValueError(f"--opt {key}={value!r}: {sampler}'s {key} expects a {type(default).__name__} "
                             f"(default {default!r})")
        out[key] = value
    return out


def train_main(args: argparse.Namespace) -> int:
    """``scoredyn train``."""
    from ..data import NAMES as DATASETS
    from ..data import load as load_data
    from ..sample import max_pairwise_distance
    from .config import TrainConfig
    from .fit import fit

    edm = args.conditioning == "edm"
    if Path(args.data).exists() and args.data not in DATASETS:
        kind = "folder" if Path(args.data).is_dir() else "npz"
        raise ValueError(f"--data {args.data} is a path; --data takes a data set name ({', '.join(DATASETS)}) and "
                         f"--data-root the path, e.g. --data {kind} --data-root {args.data}")
    data = load_data(args.data, root=args.data_root, split="train", n=args.n, seed=args.seed)
    shape = tuple(data.shape[1:])
    kind = args.net if args.net != _AUTO else ("unet" if len(shape) == 3 else "mlp")
    if kind == "unet":
        if len(shape) != 3:
            raise ValueError(f"--net unet needs images (N, C, H, W); {args.data} has points of shape {shape}")
        net = {"net": "UNet", "net_kwargs": dict(channels=shape[0], base=args.base, channel_mult=args.channel_mult,
                                                 num_blocks=args.num_blocks, dropout=args.dropout)}
    else:
        net = {"net": "MLP", "net_kwargs": dict(dim=int(np.prod(shape)), hidden=args.hidden, depth=args.depth)}
    spec = {**net, "conditioning": args.conditioning, "sigma_data": args.sigma_data}
    sigma_dist = args.sigma_dist if args.sigma_dist != _AUTO else ("lognormal" if edm else "loguniform")
    sigma_min = args.sigma_min if args.sigma_min is not None else (0.002 if edm else 0.01)
    sigma_max = args.sigma_max if args.sigma_max is not None else (80.0 if edm else max_pairwise_distance(data))
    out = Path(args.out) if args.out else Path("runs") / f"{args.data}-{args.conditioning}"
    if args.overwrite and not args.no_resume:
        raise ValueError("--overwrite only applies with --no-resume (a resumed run keeps its folder)")
    if args.steps < 1 or args.keep < 1:
        raise ValueError(f"--steps and --keep must be >= 1 (a run keeps at least its final checkpoint), "
                         f"got {args.steps} and {args.keep}")
    config = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, sigma_dist=sigma_dist, sigma_min=sigma_min,
        sigma_max=sigma_max, levels=args.levels if sigma_dist == "geometric" else None,
        weighting=None if args.weighting == _AUTO else args.weighting, warmup=args.warmup, grad_clip=args.grad_clip,
        weight_decay=args.weight_decay, ema_decay=args.ema, ema_warmup=not args.no_ema_warmup, seed=args.seed,
        ckpt_every=args.ckpt_every, keep=args.keep, log_every=args.log_every, compile=args.compile, bf16=not args.no_bf16)
    fit(spec, args.data, config, out=out, resume=not args.no_resume, overwrite=args.overwrite, device=_device(args.device),
        progress=not args.no_progress, data_root=args.data_root, data_n=args.n)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {args.steps} steps; checkpoint in {out} (sample with: scoredyn sample {out})")
    return 0


def sample_main(args: argparse.Namespace) -> int:
    """``scoredyn sample``."""
    from ..plot import samples_picture
    from ..sample import FIELD_SAMPLERS, SAMPLERS, noise, sigma_grid
    from .checkpoint import load
    from .distributed import resolve_device

    dev = resolve_device(_device(args.device))
    if (args.run is None) == (args.model is None):
        raise ValueError("give either a run directory or --model diffusers:PATH (exactly one)")
    if args.model is not None:  # an external model (scoredyn.external)
        from ..external.cli import load_model

        ext = load_model(args.model, dev)
        model, args.run, default = ext.denoiser, args.model, ext.default_sampler
        cfg = {"train": {"sigma_dist": {"sigma_min": ext.sigma_min, "sigma_max": ext.sigma_max}}, "data_shape": ext.data_shape}
    else:
        model = load(args.run, device=dev, which=args.weights)
        cfg = model.checkpoint_config  # type: ignore[attr-defined]
        default = _DEFAULT_SAMPLER[model.conditioning]
    sampler = args.sampler if args.sampler != _AUTO else default
    registry = {**SAMPLERS, **FIELD_SAMPLERS}
    if sampler not in registry:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(sorted(registry))}")
    if args.n < 1 or args.batch_size < 1 or args.steps < 1:
        raise ValueError(f"--n, --batch-size and --steps must be >= 1, got {args.n}, {args.batch_size}, {args.steps}")
    sd = cfg["train"]["sigma_dist"]
    sigma_min = args.sigma_min if args.sigma_min is not None else sd["sigma_min"]
    sigma_max = args.sigma_max if args.sigma_max is not None else sd["sigma_max"]
    kind = args.grid if args.grid != _AUTO else _DEFAULT_GRID.get(sampler, "karras")
    sigmas = sigma_grid(kind, args.steps, sigma_min=sigma_min, sigma_max=sigma_max)
    options = dict(args.opt)
    if sampler == "unconditional_ode" and "data" in options:
        raise ValueError("the data option of unconditional_ode cannot be given on the command line")
    fn = registry[sampler]
    options = check_options(sampler, fn, options)
    pic = picture_path(args.out)
    shape = tuple(cfg["data_shape"])
    if len(shape) == 3 and pic.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: image samples are written as a PNG grid; expected a .png name (or a folder/)")
    out: list[torch.Tensor] = []
    for start in range(0, args.n, args.batch_size):
        seeds = list(range(args.seed + start, args.seed + min(args.n, start + args.batch_size)))
        x = float(sigmas[0]) * noise(seeds, shape, dev, torch.float32)
        with torch.no_grad():
            out.append(fn(model, x, sigmas.to(dev), seeds=seeds, progress=not args.no_progress, **options).cpu())
    samples = torch.cat(out).numpy()
    pic.parent.mkdir(parents=True, exist_ok=True)
    samples_picture(torch.from_numpy(samples), pic)
    npz = pic.with_suffix(".npz")
    meta = json.dumps(dict(sampler=sampler, steps=args.steps, sigma_min=sigma_min, sigma_max=sigma_max,
                           options=options, run=str(args.run), weights=args.weights))
    atomic_write(npz, lambda tmp: np.savez(tmp, samples=samples, seeds=np.arange(args.seed, args.seed + args.n),
                                          meta=np.array(meta)))
    print(f"wrote {len(samples)} samples to {pic} and {npz}")
    return 0
