"""Study ``teleport``: Wang & Vastola, "The Hidden Linear Structure in Score-Based Models and its
Application" (arXiv:2311.10892; TMLR version arXiv:2412.09726).

1. How much of a trained network's score analytical models explain, per noise level (the fraction
   of unexplained variance, ``scoredyn.metrics.unexplained_variance``): the Gaussian, beside two
   baselines (the mean alone, and the mean with an isotropic variance), Gaussian mixtures, the
   empirical (training-set) score, and naive theory's first-order expansion in 1/sigma^2; and
   whether the Gaussian part is learned early, from at least 8 log-spaced checkpoints, by the
   authors' own signature (an early minimum of the Gaussian's unexplained variance, then a rise
   while richer models pull ahead).
2. Analytical teleportation (``scoredyn.sample.with_teleport``) in the paper's regime (data in
   [-1, 1] as EDM's, sigma_max = 80, EDM preconditioning): drop the skipped steps (NFE falls), or keep
   the number of steps fixed on [sigma_min, sigma_skip] (the authors' solver benchmark), with Heun,
   DPM-Solver++(2M) and UniPC.

The network is a conv net (``scoredyn.nets.UNet``) checked by the quality gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from .. import data as sd_data
from .. import metrics, sample
from ..analytic import Empirical, Gaussian, GaussianMixture
from ..plot import figure
from . import thresholds as T
from .claims import load_registry
from .common import (
    GateNumbers, Trained, dsm_loss, gate_numbers, image_grid, load_checkpoint, loss_draws, net_spec, network_gate, quality,
    start_noise, train_checkpoints,
)
from .config import TeleportConfig
from .gate import GateResult
from .report import Figure, Section, StudyReport, Table, figure_png, sig
from .stages import Context

TITLE = "Wang & Vastola: the hidden linear (Gaussian) structure of learned scores, and analytical teleportation"
PAPERS = ("B. Wang, J. J. Vastola, The Hidden Linear Structure in Score-Based Models and its Application, "
          "arXiv:2311.10892; The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion Models "
          "and its Applications, TMLR 2024, arXiv:2412.09726")
VERSION = 2  # bump when a stage's output changes in a way its configuration does not show
LOSS_DRAWS = 1024

# ------------------------------------------------------------------------------ the claims (teleport.claims.toml)

REGISTRY = load_registry("teleport")


# ------------------------------------------------------------------------------------------ data


class _Images:
    def __init__(self, cfg: TeleportConfig, ctx: Context) -> None:
        self.train = sd_data.load(cfg.data, split="train", n=cfg.n_train, seed=ctx.seed).to(ctx.device)
        self.heldout = sd_data.load(cfg.data, split="test", seed=ctx.seed)[: cfg.n_heldout].to(ctx.device)
        self.shape = tuple(self.train.shape[1:])
        self.sigma_data = float(self.train.std())
        self.fid_net: Optional[str] = cfg.data if (cfg.fid and cfg.data in ("digits", "mnist")) else None


def _base(cfg: TeleportConfig, ctx: Context) -> dict[str, Any]:
    return {"data": cfg.data, "n_train": cfg.n_train, "seed": ctx.seed, "device": ctx.device.type}


def _net(cfg: TeleportConfig, ctx: Context, im: _Images) -> Trained:
    spec = net_spec(cfg.net, im.shape, "edm", sigma_data=0.5)
    return train_checkpoints(ctx, "teleport.train_edm", _base(cfg, ctx), spec, im.train, cfg.net, cfg.checkpoints,
                             sigma_dist="lognormal", sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)


# ------------------------------------------------------------------ analytical comparison models


class _MeanOnly:
    """``D(x, sigma) = mu``: the score of the data mean alone, ``(mu - x) / sigma^2`` (a baseline)."""

    def __init__(self, data: Tensor) -> None:
        self.mu = data.mean(0, keepdim=True)

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.mu.expand_as(x)


class _Isotropic:
    """``D = mu + v / (v + sigma^2) (x - mu)``, ``v = tr(Sigma) / d``: mean + isotropic variance (a baseline)."""

    def __init__(self, data: Tensor) -> None:
        self.mu = data.mean(0, keepdim=True)
        self.v = float(data.var(0).mean())

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2
        return self.mu + self.v / (self.v + s2) * (x - self.mu)


class _FirstOrder:
    """Naive theory: the score to first order in 1/sigma^2, ``-(I - Sigma / sigma^2)(x - mu) / sigma^2``, i.e.
    ``D = mu + Sigma (x - mu) / sigma^2`` (Wang & Vastola's ``Gaussian_1stexpens_score``)."""

    def __init__(self, data: Tensor) -> None:
        flat = data.flatten(1).double()
        self.mu = flat.mean(0)
        self.cov = torch.cov(flat.T)
        self.shape = data.shape[1:]

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        y = x.flatten(1).double() - self.mu
        s2 = sigma.double().reshape(-1, 1) ** 2
        return (self.mu + y @ self.cov / s2).to(x.dtype).reshape(x.shape)


class _Memo:
    """A denoiser that remembers its last outputs by input (the network is evaluated once per probe batch and
    sigma however many models it is compared with)."""

    def __init__(self, net: Any) -> None:
        self.net, self.memo = net, {}

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        key = (tuple(x.shape), float(sigma.double().sum()), float(x.double().sum()), float(x.double().square().sum()))
        if key not in self.memo:
            self.memo[key] = self.net(x, sigma)
        return self.memo[key]


# ------------------------------------------------------------------ 1. unexplained variance


@dataclass
class UV:
    """Unexplained variance per model and sigma at the final checkpoint, and the Gaussian's at every checkpoint."""

    sigmas: list[float]
    models: list[str]
    final: dict[str, list[float]]
    steps: list[int]
    gaussian_by_step: list[list[float]]
    data_radius: float


def _uv(cfg: TeleportConfig, ctx: Context, im: _Images, res: Trained) -> UV:
    conf = {**_base(cfg, ctx), "net": cfg.net, "checkpoints": list(cfg.checkpoints), "sigmas": list(cfg.uv_sigmas),
            "n": cfg.uv_n, "K": list(cfg.gmm_components), "stream": cfg.streams.uv_probes}

    def work() -> UV:
        gauss = Gaussian.fit(im.train)
        models: dict[str, Any] = {"Gaussian": gauss, "mean only": _MeanOnly(im.train),
                                  "mean + isotropic variance": _Isotropic(im.train),
                                  "first-order expansion (naive theory)": _FirstOrder(im.train)}
        for k in cfg.gmm_components:
            models[f"GMM K={k}"] = GaussianMixture.fit(im.train, k, seed=ctx.seed)
        models["empirical (training set)"] = Empirical(im.train)
        probe_seed = (ctx.seed << 20) + cfg.streams.uv_probes
        by_step = []
        final: dict[str, list[float]] = {}
        for step in res.steps:
            net = _Memo(load_checkpoint(res, step, ctx.device, im.shape))
            use = models if step == max(res.steps) else {"Gaussian": gauss}
            for name, m in use.items():
                uv = metrics.unexplained_variance(net, m, im.train, list(cfg.uv_sigmas), n=cfg.uv_n, seed=probe_seed)
                if name == "Gaussian":
                    by_step.append([float(v) for v in uv])
                if step == max(res.steps):
                    final[name] = [float(v) for v in uv]
        radius = float(im.train.flatten(1).var(0).sum().sqrt())
        return UV(list(cfg.uv_sigmas), list(models), final, list(res.steps), by_step, radius)

    return ctx.stages.run("teleport.unexplained_variance", conf, work, version=VERSION, result_type=UV)


def _from_sigma(sigmas: list[float], uv: list[float]) -> float:
    """The smallest tested sigma from which on ``uv <= UV_EXPLAINS`` (2 x the largest sigma when none)."""
    above_ = 2 * max(sigmas)
    for s, v in sorted(zip(sigmas, uv), reverse=True):
        if v <= T.UV_EXPLAINS:
            above_ = s
        else:
            break
    return above_


def _uv_section(cfg: TeleportConfig, im: _Images, uv: UV, gate: GateResult) -> Section:
    sig_ = uv.sigmas
    f = uv.final
    gmms = [m for m in uv.models if m.startswith("GMM")]
    rng = {m: _from_sigma(sig_, f[m]) for m in uv.models}
    R = REGISTRY
    c1 = R["teleport.1a"].judge({"gaussian_from_sigma": rng["Gaussian"],
                                 "isotropic_from_sigma": rng["mean + isotropic variance"],
                                 "mean_only_from_sigma": rng["mean only"], "two_sigma_data": 2 * im.sigma_data},
                                networks=[gate])
    lo = [0, 1] if len(sig_) > 2 else [0]
    best = [min(f[m][i] for m in gmms) for i in range(len(sig_))]
    c2 = R["teleport.1b"].judge({"gmm_over_gaussian_max": max(best[i] / f["Gaussian"][i] for i in lo),
                                 "uv_best_gmm_max": max(best[i] for i in lo)}, networks=[gate],
                                note="sigmas " + ", ".join(f"{sig_[i]:g}" for i in lo))
    c3 = R["teleport.1c"].judge({"uv_best_gmm": best[0], "uv_empirical": f["empirical (training set)"][0]},
                                networks=[gate], note=f"sigma = {sig_[0]:g}")
    mid = [i for i, s in enumerate(sig_) if 0.1 <= s <= 2 * im.sigma_data] or list(range(len(sig_)))
    curve = [float(np.mean([row[i] for i in mid])) for row in uv.gaussian_by_step]
    k_min = int(np.argmin(curve))
    richer = [m for m in uv.models if m.startswith("GMM") or m.startswith("empirical")]
    richer_last = float(np.mean([min(f[m][i] for m in richer) for i in mid])) / curve[-1]
    c4 = R["teleport.1d"].judge({"n_checkpoints": len(uv.steps), "uv_first": curve[0], "uv_min": curve[k_min],
                                 "step_of_min": uv.steps[k_min], "uv_last": curve[-1],
                                 "richer_over_gaussian_last": richer_last}, networks=[gate],
                                note="checkpoints " + ", ".join(map(str, uv.steps)))
    c5 = R["teleport.1e"].judge({"gaussian_from_sigma": rng["Gaussian"],
                                 "naive_from_sigma": rng["first-order expansion (naive theory)"],
                                 "data_radius": uv.data_radius}, networks=[gate])
    rows = [[m, rng[m], *f[m]] for m in uv.models]
    t = Table("teleport_uv", f"Fraction of the network's score variance unexplained, per sigma (final step {uv.steps[-1]})",
              ["model", "explains from sigma"] + [f"sigma={s:g}" for s in sig_], rows,
              f"E|s_net - s_model|^2 / E|s_net|^2 at x0 + sigma z over {cfg.uv_n} training images x0 "
              f"(scoredyn.metrics.unexplained_variance); data std sigma_data = {sig(im.sigma_data)}; 'explains from "
              f"sigma': the smallest tested sigma from which on the model leaves <= {T.UV_EXPLAINS:g} unexplained.")
    t2 = Table("teleport_uv_training", "The Gaussian's unexplained variance along training",
               ["step", f"mean over {', '.join(f'{sig_[i]:g}' for i in mid)}"] + [f"sigma={s:g}" for s in sig_],
               [[s, c, *row] for s, c, row in zip(uv.steps, curve, uv.gaussian_by_step)])
    fig, axes = figure(1, 2, (6.5, 4.6))
    ax = axes[0]
    for m in uv.models:
        ax.plot(sig_, f[m], marker="o", label=m, ls="--" if m in ("mean only", "mean + isotropic variance") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise level sigma")
    ax.set_ylabel("unexplained variance of the network's score")
    ax.axhline(T.UV_EXPLAINS, color="k", lw=0.6, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(f"Analytical models vs the trained network ({cfg.data})", fontsize=9)
    ax = axes[1]
    ax.plot(uv.steps, curve, marker="o")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("Gaussian's unexplained variance (mid sigmas)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("learned early? (minimum, then a rise)", fontsize=9)
    fig_ = Figure("teleport_unexplained_variance", "Wang & Vastola: unexplained variance of the trained network's score "
                  "by analytical models per noise level (dashed: baselines), and the Gaussian's along training.",
                  figure_png(fig))
    text = (f"EDM-preconditioned {cfg.net.arch.upper()} trained on {cfg.n_train} {cfg.data} images (pixels in [-1, 1] "
            f"as EDM's, sigma_data = 0.5 preconditioning, log-normal training sigma), checkpoints "
            f"{', '.join(map(str, uv.steps))}; Gaussian and k-means mixtures fitted to the same images.")
    return Section("1. The Gaussian structure of a learned score", text, [c1, c2, c3, c4, c5], [t, t2], [fig_])


# ------------------------------------------------------------------------------- 2. skip sweep


def _grid_size(name: str, nfe: int) -> int:
    """Karras levels giving about ``nfe`` evaluations (Heun: 2n - 1; one-evaluation-per-step solvers: n)."""
    return max(2, (nfe + 1) // 2) if name == "heun" else max(2, nfe)


@dataclass
class SkipRow:
    variant: str  # "drop" (skipped steps are dropped) or "fixed" (same number of steps on [sigma_min, sigma_skip])
    sampler: str
    nfe_target: int
    steps: int
    fraction: float
    steps_skipped: int
    sigma_skip: float
    nfe: int
    dist_to_unskipped: float
    sw: float
    fid: Optional[float]
    kid: Optional[float]


@dataclass
class Skip:
    rows: list[SkipRow]
    gate: GateNumbers
    shown: list[Tensor]
    shown_titles: list[str]


def _skip(cfg: TeleportConfig, ctx: Context, im: _Images, res: Trained) -> Skip:
    final = max(res.steps)
    conf = {**_base(cfg, ctx), "net": cfg.net, "checkpoints": list(cfg.checkpoints), "samplers": list(cfg.samplers),
            "fixed_samplers": list(cfg.fixed_step_samplers), "nfes": list(cfg.nfes), "fractions": list(cfg.skip_fractions),
            "n": cfg.n_samples, "fid": cfg.fid, "heldout": cfg.n_heldout, "sigma_min": cfg.sigma_min,
            "sigma_max": cfg.sigma_max, "stream": cfg.streams.skip_starts}

    def work() -> Skip:
        from tqdm.auto import tqdm

        net = load_checkpoint(res, final, ctx.device, im.shape)
        gauss = Gaussian.fit(im.train)
        x0 = start_noise(ctx, cfg.streams.skip_starts, cfg.n_samples, im.shape, cfg.sigma_max)
        rows: list[SkipRow] = []
        shown: list[Tensor] = []
        titles: list[str] = []
        gate = None
        # every fraction at the largest NFE; the smaller NFEs unskipped only (claim 2c: quality against NFE)
        top, fracs = max(cfg.nfes), tuple(cfg.skip_fractions)
        jobs = [("drop", s, n, fracs if n == top else (0.0,)) for s in cfg.samplers for n in cfg.nfes]
        jobs += [("fixed", s, top, fracs) for s in cfg.fixed_step_samplers]
        for variant, name, nfe, fractions in tqdm(jobs, desc="skip sweep", disable=not ctx.progress):
            fn = sample.SAMPLERS[name]
            n_steps = _grid_size(name, nfe)
            grid = sample.sigmas_karras(n_steps, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)
            ref_x = None
            for frac in fractions:
                j = int(round(frac * n_steps))
                counted = sample.CountNFE(net)
                sigma_skip = float(grid[j])
                if j == 0:
                    x = fn(counted, x0, grid)
                elif variant == "drop":
                    x = sample.with_teleport(fn, gauss, sigma_skip)(counted, x0, grid)
                else:  # the authors' benchmark: the same number of steps, on [sigma_min, sigma_skip]
                    xs = gauss.teleport(x0, cfg.sigma_max, sigma_skip)
                    x = fn(counted, xs, sample.sigmas_karras(n_steps, sigma_min=cfg.sigma_min, sigma_max=sigma_skip))
                q = quality(x, im.heldout, seed=ctx.seed, fid_net=im.fid_net)
                if ref_x is None:
                    ref_x = x
                dist = float((x - ref_x).flatten(1).norm(dim=1).mean() / ref_x.flatten(1).norm(dim=1).mean())
                rows.append(SkipRow(variant, name, nfe, n_steps, frac, j, sigma_skip, counted.nfe, dist, q["sw"],
                                    q.get("fid"), q.get("kid")))
                if variant == "drop" and name == cfg.samplers[0] and nfe == max(cfg.nfes):
                    if frac == 0.0:
                        gate = gate_numbers(x, im.train, im.heldout, seed=ctx.seed, fid_net=im.fid_net)
                    if frac in (0.0, max(cfg.skip_fractions)):
                        shown.append(x)
                        titles.append(f"{name}, NFE target {nfe}, skipped fraction {frac:g}")
        assert gate is not None
        x0l, sl, zl = loss_draws(ctx, im.train, LOSS_DRAWS, cfg.sigma_min, cfg.sigma_max, stream=cfg.streams.gate_starts)
        gate.loss = dsm_loss(net, x0l, sl, zl, "edm")
        gate.loss_optimum = dsm_loss(Empirical(im.train), x0l, sl, zl, "edm")
        gate.loss_gaussian = dsm_loss(gauss, x0l, sl, zl, "edm")
        return Skip(rows, gate, shown, titles)

    return ctx.stages.run("teleport.skip_sweep", conf, work, version=VERSION, result_type=Skip)


def _skip_section(cfg: TeleportConfig, im: _Images, sk: Skip, gate: GateResult) -> Section:
    rows = sk.rows
    qk = "fid" if rows[0].fid is not None else "sw"
    qname = "FID" if qk == "fid" else "sliced W2"
    q = lambda r: getattr(r, qk)  # noqa: E731
    nmax, nmin = max(cfg.nfes), min(cfg.nfes)
    in_band = [f for f in cfg.skip_fractions if T.SKIP_BAND[0] - 1e-9 <= f <= T.SKIP_BAND[1] + 1e-9]

    def pick(variant: str, name: str, nfe: int, frac: float) -> SkipRow:
        return next(r for r in rows if r.variant == variant and r.sampler == name and r.nfe_target == nfe
                    and r.fraction == frac)

    drop = [q(pick("drop", s, nmax, f)) / q(pick("drop", s, nmax, 0.0)) for s in cfg.samplers for f in in_band]
    fixed = [q(pick("fixed", s, nmax, f)) / q(pick("fixed", s, nmax, 0.0)) for s in cfg.fixed_step_samplers for f in in_band]
    nfe_ratio = [q(pick("drop", s, nmax, 0.0)) / q(pick("drop", s, nmin, 0.0)) for s in cfg.samplers]
    R = REGISTRY
    claims = [
        R["teleport.2a"].judge({"worst_ratio": max(drop) if drop else float("nan"), "solvers": ", ".join(cfg.samplers),
                                "nfe_unskipped": ", ".join(str(pick("drop", s, nmax, 0.0).nfe) for s in cfg.samplers)},
                               networks=[gate], note=f"quality: {qname}"),
        R["teleport.2b"].judge({"worst_ratio": max(fixed) if fixed else float("nan"),
                                "best_ratio": min(fixed) if fixed else float("nan"),
                                "steps": _grid_size(cfg.fixed_step_samplers[0], nmax) if fixed else 0},
                               networks=[gate], note=f"quality: {qname}"),
        R["teleport.2c"].judge({"worst_ratio": max(nfe_ratio)}, networks=[gate],
                               note=f"NFE targets {nmin} and {nmax}; quality: {qname}"),
    ]
    t1 = Table("teleport_skip", "Skip sweep: quality against held-out data vs the fraction of steps skipped",
               ["variant", "solver", "NFE target", "steps", "skipped frac.", "steps skipped", "sigma_skip", "NFE", "SW",
                "FID", "KID", "rel. distance to unskipped"],
               [[r.variant, r.sampler, r.nfe_target, r.steps, r.fraction, r.steps_skipped, r.sigma_skip, r.nfe, r.sw,
                 r.fid, r.kid, r.dist_to_unskipped] for r in rows],
               "Karras grid (rho = 7) from sigma_max = 80 to sigma_min. drop: the jump goes to grid point j = round("
               "fraction x steps) and the solver continues on the same grid (NFE falls). fixed: the jump goes to the "
               "same sigma_skip and the solver takes the same number of steps on a Karras grid from sigma_skip to "
               "sigma_min (NFE unchanged). Distance: mean |x_skip - x_0| / mean |x_0| over samples from the same seeds.")
    fig, axes = figure(1, len(cfg.samplers) + 1, (4.2, 3.9))
    for ax, name in zip(axes, cfg.samplers):
        rr = [r for r in rows if r.variant == "drop" and r.sampler == name and r.nfe_target == nmax]
        ax.plot([r.fraction for r in rr], [q(r) for r in rr], marker="o", label=f"drop steps (NFE {rr[0].nfe} unskipped)")
        for nfe in sorted(cfg.nfes)[:-1]:
            r0 = pick("drop", name, nfe, 0.0)
            ax.axhline(q(r0), color="0.5", lw=0.7, ls=":", label=f"unskipped, NFE {r0.nfe}")
        rr = [r for r in rows if r.variant == "fixed" and r.sampler == name]
        if rr:
            ax.plot([r.fraction for r in rr], [q(r) for r in rr], marker="s", ls="--", label=f"fixed steps ({rr[0].steps})")
        ax.axvspan(*T.SKIP_BAND, color="0.9")
        ax.set_xlabel("fraction of steps skipped (teleported)")
        ax.set_ylabel(f"{qname} to held-out")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for name in cfg.samplers:
        rr = [r for r in rows if r.variant == "drop" and r.sampler == name and r.nfe_target == nmax]
        ax.plot([r.fraction for r in rr], [r.dist_to_unskipped for r in rr], marker="o", label=name)
    ax.axvspan(*T.SKIP_BAND, color="0.9")
    ax.set_xlabel("fraction of steps skipped")
    ax.set_ylabel("rel. distance to the unskipped samples")
    ax.set_title(f"same seeds, NFE target {nmax}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figs = [Figure("teleport_skip_sweep", "Wang & Vastola: sample quality against the fraction of steps replaced by the "
                   "closed-form Gaussian jump (grey band: the paper's 15-30%), dropping the steps or keeping their number.",
                   figure_png(fig))]
    if len(sk.shown) == 2 and len(im.shape) == 3:
        fig, axes = figure(1, 2, (4.0, 4.2))
        for ax, x, title in zip(axes, sk.shown, sk.shown_titles):
            image_grid(ax, x, 8, title)
        figs.append(Figure("teleport_samples", "Samples from the same seeds without and with the largest tested skip.",
                           figure_png(fig)))
    return Section("2. Analytical teleportation: skipping the first steps", "", claims, [t1], figs)


def run(cfg: TeleportConfig, ctx: Context) -> StudyReport:
    """Run the teleport study and return its report."""
    im = _Images(cfg, ctx)
    res = _net(cfg, ctx, im)
    sk = _skip(cfg, ctx, im, res)
    g = sk.gate
    gate = network_gate(ctx, f"teleport.{cfg.net.arch}_edm_{cfg.data}@{max(res.steps)}", g, im.fid_net)
    uv = _uv(cfg, ctx, im, res)
    summary = ("Wang & Vastola find that a trained network's score is close to the score of a Gaussian fitted to the "
               "data at moderate to high noise, so the first part of sampling can be replaced by the Gaussian model's "
               "closed-form probability-flow solution.")
    notes = [metrics.FEATURE_NOTE] if im.fid_net else []
    return StudyReport("teleport", TITLE, PAPERS, summary, [_uv_section(cfg, im, uv, gate), _skip_section(cfg, im, sk, gate)],
                       notes)
