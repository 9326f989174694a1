"""``scoredyn invert`` and ``scoredyn likelihood`` for a scoredyn run or a diffusers folder
(``diffusers:PATH``), and the model loader that ``scoredyn sample --model`` uses.

    scoredyn invert diffusers:path/to/ddpm --input samples.npz --sampler dpmpp_2m --steps 32 --out latents.npz
    scoredyn likelihood diffusers:path/to/ddpm --input images.npz --trace hutchinson --out ll.json
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .._io import atomic_write, atomic_write_text

DIFFUSERS_PREFIX = "diffusers:"


@dataclass(frozen=True)
class LoadedModel:
    """A denoiser with what the command line needs to sample it: the data shape, its noise range and
    the sampler it is sampled with by default."""

    denoiser: Any
    data_shape: tuple[int, ...]
    sigma_min: float
    sigma_max: float
    default_sampler: str
    source: str


def load_model(spec: str, device: Optional[torch.device] = None) -> LoadedModel:
    """``diffusers:PATH`` (a local diffusers folder, :func:`~scoredyn.external.load_diffusers`) or a scoredyn
    run / checkpoint directory (its EMA weights)."""
    if spec.startswith(DIFFUSERS_PREFIX):
        from .hub import load_diffusers

        den = load_diffusers(spec[len(DIFFUSERS_PREFIX):], device=device)
        cfg = den.model.config
        size = cfg.sample_size
        hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        return LoadedModel(den, (int(cfg.in_channels), *hw), den.sigma_min, den.sigma_max, "dpmpp_2m", spec)
    from ..train.checkpoint import load

    model = load(spec, device=device or "cpu")
    cfg = model.checkpoint_config  # type: ignore[attr-defined]
    sd = cfg["train"]["sigma_dist"]
    default = {"multiplicative": "annealed_langevin", "unconditional": "unconditional_ode", "edm": "heun"}[model.conditioning]
    return LoadedModel(model, tuple(int(s) for s in cfg["data_shape"]), float(sd["sigma_min"]), float(sd["sigma_max"]), default, spec)


def load_points(path: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Points ``(N, *shape)`` from a ``.npy`` file or a ``.npz`` file (key ``samples``, ``x`` or its only array)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--input {p} does not exist")
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {p} as .npy/.npz: {e}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = [k for k in ("samples", "x") if k in data.files] or (data.files if len(data.files) == 1 else [])
        if not keys:
            raise ValueError(f"{p} holds arrays {data.files}; expected one named 'samples' or 'x', or a single array")
        data = data[keys[0]]
    arr = np.asarray(data)
    if arr.dtype.kind != "f" or tuple(arr.shape[1:]) != tuple(shape) or arr.shape[0] < 1:
        raise ValueError(f"{p} holds {arr.dtype} of shape {arr.shape}; expected floats of shape (N, {', '.join(map(str, shape))}) for this model")
    if not np.isfinite(arr).all():
        raise ValueError(f"{p} contains NaN/Inf")
    return torch.from_numpy(arr.astype(np.float32))


def _check_out(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")


def _model_args(p: argparse.ArgumentParser, batch: int, out: str, what: str) -> None:
    """The arguments ``invert`` and ``likelihood`` share."""
    p.add_argument("model", help="a scoredyn run directory or diffusers:PATH (a local diffusers folder)")
    p.add_argument("--input", required=True, help=".npy or .npz with points (N, *data_shape) (key 'samples' or 'x')")
    p.add_argument("--sigma-min", type=float, default=None, help="default: the model's sigma_min")
    p.add_argument("--sigma-max", type=float, default=None, help="default: the model's sigma_max")
    p.add_argument("--batch-size", type=int, default=batch, help=f"points per {what}")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--out", default=out, help="where the result goes")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``invert`` and ``likelihood`` sub-commands."""
    from ..train.cli import _Help, _option

    p = subparsers.add_parser("invert", help="map data to noise with a deterministic sampler (inversion)", formatter_class=_Help,
                              description="Integrate the probability-flow ODE from sigma_min up to sigma_max (scoredyn.sample.invert); "
                                          "writes the latents (key 'latents') and the grid.")
    _model_args(p, 256, "latents.npz", "sampler call")
    p.add_argument("--sampler", default="euler", help="euler, heun, dpmpp_2m, unipc, ddim or ode_adaptive")
    p.add_argument("--steps", type=int, default=32, help="noise levels in the ascending grid")
    p.add_argument("--grid", default="karras", choices=["karras", "geometric"], help="grid spacing (reversed)")
    p.add_argument("--opt", type=_option, action="append", default=[], metavar="KEY=VALUE", help="extra sampler option (repeatable)")
    p.set_defaults(func=invert_main)

    q = subparsers.add_parser("likelihood", help="log-likelihood of data under a model's probability-flow ODE", formatter_class=_Help,
                              description="Per-sample log-likelihood and bits/dim (scoredyn.metrics.log_likelihood), written as JSON.")
    _model_args(q, 64, "likelihood.json", "ODE solve")
    q.add_argument("--trace", default="hutchinson", choices=["exact", "hutchinson"], help="divergence estimator")
    q.add_argument("--n-probes", type=int, default=1, help="Hutchinson probes per point")
    q.add_argument("--seed", type=int, default=0, help="point i's probes use seed + i")
    q.add_argument("--rtol", type=float, default=1e-5, help="ODE relative tolerance")
    q.add_argument("--atol", type=float, default=1e-5, help="ODE absolute tolerance")
    q.add_argument("--bin-width", type=float, default=None, help="dequantization bin width for bits/dim (2/255 for 8-bit data in [-1, 1])")
    q.set_defaults(func=likelihood_main)


def _prepare(args: argparse.Namespace) -> tuple[Path, torch.device, LoadedModel, torch.Tensor, float, float]:
    """The output path (refused if it exists without --overwrite), device, model, input points and noise range."""
    out = Path(args.out)
    _check_out(out, args.overwrite)
    dev = _device(args.device)
    m = load_model(args.model, dev)
    x = load_points(args.input, m.data_shape)
    lo = args.sigma_min if args.sigma_min is not None else m.sigma_min
    hi = args.sigma_max if args.sigma_max is not None else m.sigma_max
    return out, dev, m, x, lo, hi


def _device(name: str) -> torch.device:
    from ..train.distributed import resolve_device

    return resolve_device(None if name == "auto" else name)


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def invert_main(args: argparse.Namespace) -> int:
    """``scoredyn invert``."""
    from ..sample import invert, sigmas_geometric, sigmas_karras

    out, dev, m, x, lo, hi = _prepare(args)
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    grid = (sigmas_karras(args.steps, sigma_min=lo, sigma_max=hi)[:-1] if args.grid == "karras" else sigmas_geometric(max(args.steps, 2), sigma_min=lo, sigma_max=hi)).flip(0)
    options = dict(args.opt)
    latents = []
    for s, e in _batches(x.shape[0], args.batch_size):
        with torch.no_grad():
            latents.append(invert(m.denoiser, x[s:e].to(dev), grid.to(dev), sampler=args.sampler, **options).cpu())
    lat = torch.cat(latents).numpy()
    meta = json.dumps(dict(model=m.source, sampler=args.sampler, steps=args.steps, sigma_min=lo, sigma_max=hi, options=options))
    atomic_write(out, lambda tmp: np.savez(tmp, latents=lat, sigmas=grid.numpy(), meta=np.array(meta)))
    print(f"inverted {lat.shape[0]} points from sigma {lo:.4g} to {hi:.4g} with {args.sampler}; latents in {out}")
    return 0


def likelihood_main(args: argparse.Namespace) -> int:
    """``scoredyn likelihood``."""
    from ..metrics import log_likelihood

    out, dev, m, x, lo, hi = _prepare(args)
    nats, bpd, nfe = [], [], []
    for s, e in _batches(x.shape[0], args.batch_size):
        r = log_likelihood(m.denoiser, x[s:e].to(dev), sigma_min=lo, sigma_max=hi, trace=args.trace, n_probes=args.n_probes,
                           rtol=args.rtol, atol=args.atol, seeds=list(range(args.seed + s, args.seed + e)), bin_width=args.bin_width)
        nats += r.nats.cpu().tolist()
        bpd += r.bits_per_dim.cpu().tolist()
        nfe.append(r.nfe)
    mean_bpd = sum(bpd) / len(bpd)
    report = dict(model=m.source, input=str(args.input), sigma_min=lo, sigma_max=hi, trace=args.trace, n_probes=args.n_probes,
                  bin_width=args.bin_width, mean_bits_per_dim=mean_bpd, nats=nats, bits_per_dim=bpd, nfe_per_batch=nfe)
    if not all(math.isfinite(v) for v in nats):
        raise ValueError("the log-likelihood is not finite; the model returned NaN/Inf")
    atomic_write_text(out, json.dumps(report, indent=1) + "\n")
    print(f"{len(nats)} points: mean {mean_bpd:.4f} bits/dim ({sum(nats) / len(nats):.4f} nats); per-sample values in {out}")
    return 0
