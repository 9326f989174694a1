"""Helpers shared by the three studies: seeds, cached network training at checkpoints, the
denoising loss, sample quality, the quality gate's measurements, and a few figure primitives."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import metrics, nets, train
from ..sample.noise import noise
from .config import NetConfig
from .gate import GateResult, judge_network
from .stages import Context

#: Version of the training stage's output (bump when training changes in a way its config does not show).
TRAIN_VERSION = 2

#: The loss a network is trained with and evaluated on; sigma2 is lambda(sigma) = sigma^2 (NCSN, Kim, Zhou).
WEIGHTING = {"multiplicative": "sigma2", "unconditional": "sigma2", "edm": "edm"}


def seeds(seed: int, stream: int, n: int) -> list[int]:
    """``n`` per-sample seeds of random stream ``stream``: distinct across streams and study seeds."""
    base = (int(seed) << 40) + (int(stream) << 24)
    return [base + i for i in range(int(n))]


def start_noise(ctx: Context, stream: int, n: int, shape: Sequence[int], sigma: float,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``sigma * z`` with ``z`` drawn per sample from its own seed (independent of batch size and device)."""
    return sigma * noise(seeds(ctx.seed, stream, n), tuple(shape), ctx.device, dtype)


def net_spec(cfg: NetConfig, data_shape: Sequence[int], conditioning: str, sigma_data: float = 0.5) -> dict[str, Any]:
    """The ``scoredyn.nets.build`` spec of a study network."""
    cond = conditioning == "edm"
    if cfg.arch == "mlp":
        kw = {"dim": int(math.prod(data_shape)), "hidden": cfg.hidden, "depth": cfg.depth, "cond": cond}
        return {"net": "MLP", "net_kwargs": kw, "conditioning": conditioning, "sigma_data": sigma_data}
    if cfg.arch == "unet":
        kw = {"channels": int(data_shape[0]), "base": cfg.base, "channel_mult": list(cfg.channel_mult),
              "num_blocks": cfg.num_blocks, "attn_levels": [], "cond": cond}
        return {"net": "UNet", "net_kwargs": kw, "conditioning": conditioning, "sigma_data": sigma_data}
    raise ValueError(f"unknown network architecture {cfg.arch!r}; expected 'mlp' or 'unet'")


@dataclass
class Trained:
    """A trained network: its spec, the checkpoint steps and the EMA weights at each (on the CPU)."""

    spec: dict[str, Any]
    steps: list[int]
    weights: dict[str, dict[str, Tensor]]  # str(step) -> state_dict


def train_checkpoints(
    ctx: Context,
    name: str,
    config: Mapping[str, Any],
    spec: dict[str, Any],
    data: Tensor,
    cfg: NetConfig,
    checkpoints: Sequence[int],
    *,
    sigma_dist: str,
    sigma_min: float,
    sigma_max: float,
    levels: Optional[int] = None,
    weighting: Optional[str] = None,
    tempering: Optional[train.Tempering] = None,
) -> Trained:
    """Train ``spec`` on ``data`` and keep the EMA weights at each of ``checkpoints`` (a cached stage).

    Training resumes between checkpoints (``scoredyn.train.fit`` with ``resume=True`` in the
    stage's artifact folder), so checkpoint k continues checkpoint k-1's run exactly. A fixed
    number of steps, never a time budget. ``tempering``: Zhou et al.'s tempered target
    (:class:`scoredyn.train.Tempering`).
    """
    steps = sorted(int(s) for s in checkpoints)
    conf = {**config, "spec": spec, "net": cfg, "checkpoints": steps, "sigma_dist": sigma_dist, "sigma_min": sigma_min,
            "sigma_max": sigma_max, "levels": levels, "weighting": weighting,
            **({} if tempering is None else {"tempering": tempering.as_dict()})}

    def work() -> Trained:
        folder = ctx.stages.artifacts(name, conf, TRAIN_VERSION)
        weights: dict[str, dict[str, Tensor]] = {}
        for step in steps:
            run_config = cfg.train_config(
                steps=step, batch_size=min(cfg.batch_size, data.shape[0]), sigma_dist=sigma_dist,
                sigma_min=sigma_min, sigma_max=sigma_max, levels=levels, seed=ctx.seed, ckpt_every=max(steps) + 1,
                log_every=max(1, step // 10), weighting=weighting or WEIGHTING[spec["conditioning"]],
                ema_decay=cfg.ema_decay,
            )
            ema = train.fit(dict(spec), data, run_config, out=folder, resume=True, device=ctx.device, progress=ctx.progress,
                            tempering=tempering)
            weights[str(step)] = {k: v.detach().to("cpu").clone() for k, v in ema.state_dict().items()}
        return Trained(spec=spec, steps=steps, weights=weights)

    return ctx.stages.run(name, conf, work, version=TRAIN_VERSION, result_type=Trained)


def load_checkpoint(res: Trained, step: int, device: torch.device, data_shape: Sequence[int]) -> Any:
    """The EMA denoiser at ``step`` from :func:`train_checkpoints`' result, in eval mode without grads."""
    model = nets.build(dict(res.spec))
    state = res.weights.get(str(step))
    if state is None:
        raise ValueError(f"no weights for checkpoint step {step}; have steps {res.steps}")
    model.load_state_dict(state)
    model.data_shape = tuple(data_shape)
    return model.to(device).eval().requires_grad_(False)


def dsm_loss(denoiser: Any, x0: Tensor, sigma: Tensor, z: Tensor, weighting: str, sigma_data: float = 0.5) -> float:
    """The training objective (``scoredyn.train.loss``: ``w(sigma) |D(x0 + sigma z) - x0|^2 / d``) at
    fixed draws, averaged; works for networks and analytical denoisers alike."""
    with torch.no_grad():
        s = sigma.reshape(-1, *([1] * (x0.dim() - 1)))
        d = denoiser(x0 + s * z, sigma)
        err = (d - x0).square().flatten(1).mean(1)
        w = train.loss_weight(weighting, sigma, sigma_data)
        return float((w * err).mean())


def loss_draws(ctx: Context, data: Tensor, n: int, sigma_min: float, sigma_max: float, stream: int,
               dist: str = "loguniform") -> tuple[Tensor, Tensor, Tensor]:
    """Fixed ``(x0, sigma, z)`` draws to evaluate a DSM loss: ``n`` points cycling through ``data``,
    sigma log-uniform on [sigma_min, sigma_max] (``dist="loguniform"``) from per-sample seeds."""
    idx = torch.arange(n) % data.shape[0]
    x0 = data[idx.to(data.device)]
    u = noise(seeds(ctx.seed, stream, n), (1,), ctx.device, torch.float64).reshape(n)
    if dist != "loguniform":
        raise ValueError(f"loss_draws supports dist='loguniform', got {dist!r}")
    # a normal draw through its CDF -> uniform in (0, 1) -> log-uniform sigma
    uni = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    sigma = torch.exp(math.log(sigma_min) + uni * (math.log(sigma_max) - math.log(sigma_min))).to(data.dtype)
    z = noise(seeds(ctx.seed, stream + 1, n), tuple(data.shape[1:]), ctx.device, data.dtype)
    return x0, sigma, z


def cycle(x: Tensor, n: int) -> Tensor:
    """``n`` rows of ``x`` taken cyclically (a training set of any size as ``n`` "samples")."""
    idx = torch.arange(int(n), device=x.device) % x.shape[0]
    return x[idx]


@dataclass
class GateNumbers:
    """What the quality gate needs from one network's samples (and, where they exist, its losses)."""

    quality: float
    quality_floor: float
    nn_median: float
    nn_median_heldout: float
    loss: Optional[float] = None
    loss_optimum: Optional[float] = None
    loss_gaussian: Optional[float] = None


def gate_numbers(samples: Tensor, train_set: Tensor, heldout: Tensor, *, seed: int, fid_net: Optional[str],
                 loss: Optional[float] = None, loss_optimum: Optional[float] = None,
                 loss_gaussian: Optional[float] = None) -> GateNumbers:
    """The gate's measurements: quality of ``samples`` against ``heldout`` (FID with ``fid_net``, else
    sliced W2) beside the floor (the training set itself, cycled to as many samples), and the median
    nearest-neighbour distance to the training set beside held-out data's."""
    n = samples.shape[0]
    key = "fid" if fid_net is not None else "sw"
    q = quality(samples, heldout, seed=seed, fid_net=fid_net)[key]
    floor = quality(cycle(train_set, n), heldout, seed=seed, fid_net=fid_net)[key]
    nn = float(nearest(samples.float(), train_set.float()).median())
    nn_h = float(nearest(heldout[:n].float(), train_set.float()).median())
    return GateNumbers(q, floor, nn, nn_h, loss, loss_optimum, loss_gaussian)


def network_gate(ctx: Context, name: str, g: GateNumbers, fid_net: Optional[str]) -> GateResult:
    """Judge a network by the quality gate and register it with the run."""
    return ctx.network(judge_network(
        name, quality_metric="FID" if fid_net is not None else "SW", quality=g.quality, quality_floor=g.quality_floor,
        nn_median=g.nn_median, nn_median_heldout=g.nn_median_heldout, loss=g.loss, loss_optimum=g.loss_optimum,
        loss_gaussian=g.loss_gaussian))


def nearest(x: Tensor, train_set: Tensor) -> Tensor:
    """Each row's distance to its nearest training point (``scoredyn.metrics.knn``)."""
    return metrics.knn(x, train_set.to(x.device))[0][:, 0]


def quality(samples: Tensor, reference: Tensor, *, seed: int, fid_net: Optional[str]) -> dict[str, float]:
    """Sliced Wasserstein (flattened) and, for images with ``fid_net``, FID and KID on that feature net."""
    a = samples.reshape(samples.shape[0], -1).float()
    b = reference.reshape(reference.shape[0], -1).float().to(a.device)
    out = {"sw": float(metrics.sliced_wasserstein(a, b, n_projections=256, seed=seed))}
    if fid_net is not None:
        fa = metrics.features(samples.float().clamp(-1, 1), net=fid_net)
        fb = metrics.features(reference.float().to(samples.device), net=fid_net)
        out["fid"] = float(metrics.fid(fa, fb))
        out["kid"] = metrics.kid(fa, fb).mean
    return out


def memorization(samples: Tensor, train_set: Tensor, sigma_min: Optional[float], k: float = 3.0) -> dict[str, float]:
    """The memorization numbers the studies report (``scoredyn.metrics.memorization``)."""
    m = metrics.memorization(samples.float(), train_set.float().to(samples.device), sigma_min=sigma_min, k=k)
    return {
        "copy_fraction": m.copy_fraction,
        "within_k_sigma": m.within_k_sigma.get(k, float("nan")),
        "nn_median": m.nn_distance_quantiles[0.5],
    }


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(np.asarray(a, float)) == 0 or np.ptp(np.asarray(b, float)) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def corr_cell(rho: float) -> Any:
    """A rank correlation for a claims table: the number, or a note when it is undefined (a constant side)."""
    return rho if rho == rho else "undefined (constant)"


def image_grid(ax: Any, images: Tensor, nrow: int, title: str) -> None:
    """Draw ``images (N, 1, H, W)`` in [-1, 1] (at most ``nrow^2``) as a grid on a matplotlib axis."""
    from ..plot import image_grid as tile

    canvas = tile(images[: nrow * nrow].detach().float().cpu().clamp(-1, 1), nrow=nrow, padding=1, pad_value=0.3)
    ax.imshow(canvas[:, :, 0].numpy(), cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
