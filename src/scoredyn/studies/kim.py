"""Study ``kim``: Kim (2026), "Deterministic Dynamics of Sampling Processes in Score-Based Diffusion
Models with Multiplicative Noise Conditioning" (arXiv:2601.12965).

1. Reductions (§4.1): the probability-flow ODE and noise-free annealed Langevin of a multiplicative
   model ``D = x + sigma f(x)`` are the autonomous ODE ``dx/dtau = f(x)`` (``tau = sigma_max - sigma``)
   and its forward-Euler discretisation.
2. The exact optimum ``f* = grad L / M`` (eq. 2.9, ``scoredyn.analytic.NoiseAgnostic``): log L never
   decreases along trajectories (Thm 4.3), endpoints are critical points, every training point is a
   stable equilibrium with Jacobian eigenvalues ``~ -(d/(d+1))/sigma_min`` (Thm 4.4). Extensions and
   Kim's open questions on the same optimum: samples within the sampler's own span, annealed
   Langevin *with* its noise, and weightings ``lambda = sigma^m`` other than ``g^2`` (§2.2 restricts to
   ``lambda = g^2``; the optimum is then ``grad N_m / M_m``).
3. Trained multiplicative networks (Thm 4.4 and §4.2), each checked by the quality gate: along
   training and as the training set shrinks, stable equilibria approach training points and
   memorization rises; the open question of an early-stopping point.
4. Annealed Langevin vs probability-flow ODE vs the autonomous ODE of the same network (an extension).

Every claim is declared once below (``REGISTRY``); docs/studies.md's table is generated from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from matplotlib.ticker import NullFormatter
from torch import Tensor

from .. import data as sd_data
from .. import dynamics, plot, sample
from ..analytic import Gaussian, NoiseAgnostic
from ..plot import figure
from . import thresholds as T
from .claims import load_registry
from .common import (
    GateNumbers, Trained, corr_cell, dsm_loss, gate_numbers, load_checkpoint, loss_draws, memorization, nearest, net_spec,
    network_gate, quality, seeds, spearman, start_noise, train_checkpoints,
)
from .config import KimConfig
from .gate import GateResult
from .report import Claim, Figure, Section, StudyReport, Table, figure_png, sig
from .stages import Context

TITLE = "Kim (2026): multiplicative noise conditioning as an autonomous dynamical system"
PAPERS = ("D. Kim, Deterministic Dynamics of Sampling Processes in Score-Based Diffusion Models with "
          "Multiplicative Noise Conditioning, arXiv:2601.12965 (2026)")
LOSS_DRAWS = 1024  # (x0, sigma, z) draws at which networks and the optimum are scored (common random numbers)
F64 = torch.float64
VERSION = 2  # bump when a stage's output changes in a way its configuration does not show
K_SIGMA = T.K_SIGMA

# ------------------------------------------------------------------------------ the claims (kim.claims.toml)

REGISTRY = load_registry("kim")


# ------------------------------------------------------------------------------------------ data


class _Toy:
    """The 2-D training draw (nested subsets are its prefixes), held-out draw and noise range."""

    def __init__(self, cfg: KimConfig, ctx: Context) -> None:
        n_max = max((*cfg.train_sizes, cfg.exact_n))
        self.train = sd_data.load(cfg.toy, split="train", n=n_max, seed=ctx.seed).to(ctx.device)
        self.heldout = sd_data.load(cfg.toy, split="test", n=cfg.n_heldout, seed=ctx.seed).to(ctx.device)
        # an independent draw from the data distribution: the sliced-Wasserstein noise floor
        self.fresh = sd_data.load(cfg.toy, split="train", n=cfg.n_net_samples, seed=ctx.seed + 7919).to(ctx.device)
        self.exact = self.train[: cfg.exact_n].to(F64)
        # NCSNv2 Technique 1: sigma_max = the largest pairwise distance of the training set
        self.sigma_max = float(sample.max_pairwise_distance(self.train))
        self.lim = _limits(self.heldout)


def _limits(pts: Tensor, pad: float = 0.35) -> tuple[tuple[float, float], tuple[float, float]]:
    lo, hi = pts.amin(0).tolist(), pts.amax(0).tolist()
    w = [hi[i] - lo[i] for i in range(2)]
    return (lo[0] - pad * w[0], hi[0] + pad * w[0]), (lo[1] - pad * w[1], hi[1] + pad * w[1])


def _geometric(sigma_max: float, sigma_min: float, n_levels: int, n_steps_each: int) -> tuple[list[float], float]:
    """NCSNv2's geometric grid and its Technique-4 step size ``eps`` for this grid's ratio."""
    sig_list = [float(s) for s in sample.sigmas_geometric(n_levels, sigma_min=sigma_min, sigma_max=sigma_max)]
    ratio = (sigma_max / sigma_min) ** (1.0 / (n_levels - 1))
    return sig_list, float(sample.ncsn_step_lr(n_steps_each, ratio, sigma_min=sigma_min))


def _base(cfg: KimConfig, ctx: Context) -> dict[str, Any]:
    return {"toy": cfg.toy, "seed": ctx.seed, "device": ctx.device.type, "sigma_min": cfg.sigma_min}


# ------------------------------------------------------------------------------ 1. reductions


@dataclass
class Reductions:
    scale: float
    sigma_max: float
    eps: float
    tau_ald: float
    nfe_pf: int
    dev_euler: float
    dev_adaptive: float
    dev_ald: float
    n_steps_ald: int


def _reductions(cfg: KimConfig, ctx: Context, toy: _Toy) -> Reductions:
    conf = {**_base(cfg, ctx), "exact_n": cfg.exact_n, "n": cfg.n_reduction, "rtol": cfg.reduction_rtol,
            "T": cfg.ald_steps_each, "L": cfg.n_levels, "n_euler": 400, "stream": cfg.streams.reduction_starts}

    def work() -> Reductions:
        smax, smin = toy.sigma_max, cfg.sigma_min
        model = NoiseAgnostic(toy.exact, sigma_min=smin, sigma_max=smax, conditioning="multiplicative")
        x0 = start_noise(ctx, cfg.streams.reduction_starts, cfg.n_reduction, (2,), smax, F64)
        scale = float(toy.exact.std())
        # (a) fixed steps: Euler on the PF-ODE in sigma vs Euler on dx/dtau = f with tau = sigma_max - sigma
        grid = torch.linspace(smax, smin, conf["n_euler"] + 1, dtype=F64)
        x_pf_euler = sample.euler(model, x0, grid)
        x_au_euler = sample.autonomous(model, x0, (smax - grid).to(ctx.device), method="euler").x
        # (b) adaptive: Dormand-Prince on both forms
        tol = cfg.reduction_rtol
        pf = sample.ode_adaptive(model, x0, sigma_min=smin, sigma_max=smax, rtol=tol, atol=tol)
        x_pf, nfe_pf = pf.x, pf.nfe
        x_au = sample.autonomous(model, x0, smax - smin, rtol=tol, atol=tol, method="dopri5").x
        # (c) noise-free annealed Langevin vs forward Euler with h_i = eps sigma_i / sigma_L^2, final h = sigma_L
        levels, eps = _geometric(smax, smin, cfg.n_levels, cfg.ald_steps_each)
        x_ald = sample.annealed_langevin(model, x0, levels, n_steps_each=cfg.ald_steps_each, step_lr=eps,
                                         denoise=True, noise=False)
        s_last = levels[-1]
        h = [eps * s / s_last**2 for s in levels for _ in range(cfg.ald_steps_each)] + [s_last]
        times = torch.cumsum(torch.tensor([0.0] + h, dtype=F64), 0).to(ctx.device)
        x_ald_euler = sample.autonomous(model, x0, times, method="euler").x
        dev = lambda a, b: float((a - b).norm(dim=1).max())  # noqa: E731
        return Reductions(scale, smax, eps, float(times[-1]), int(nfe_pf), dev(x_pf_euler, x_au_euler), dev(x_pf, x_au),
                          dev(x_ald, x_ald_euler), len(h))

    return ctx.stages.run("kim.reductions", conf, work, version=VERSION, result_type=Reductions)


def _reduction_section(cfg: KimConfig, r: Reductions) -> Section:
    tol_adapt = T.ADAPTIVE_FACTOR * cfg.reduction_rtol * max(1.0, r.scale)
    c1 = REGISTRY["kim.1a"].judge({"max_dev_euler": r.dev_euler, "max_dev_dopri5": r.dev_adaptive,
                                   "dopri5_tolerance": tol_adapt})
    c2 = REGISTRY["kim.1b"].judge({"max_dev": r.dev_ald, "euler_steps": r.n_steps_ald})
    text = (f"{cfg.n_reduction} starting points x ~ N(0, sigma_max^2 I) on the exact optimum f* of {cfg.exact_n} "
            f"{cfg.toy} points, float64, sigma in [{cfg.sigma_min}, {sig(r.sigma_max)}] "
            f"(sigma_max = largest pairwise distance, NCSNv2 Technique 1). Deviations are max over samples of |x_a - x_b|; "
            f"the data scale (std) is {sig(r.scale)}; Dormand-Prince rtol = atol = {cfg.reduction_rtol:g}.")
    return Section("1. Sampling reduces to the autonomous ODE", text, [c1, c2])


# ---------------------------------------------------------------------------- 2. exact optimum


@dataclass
class Mem:
    """Memorization numbers of one set of samples (``scoredyn.metrics.memorization``)."""

    copy_fraction: float
    within_k_sigma: float
    nn_median: float


def _mem(x: Tensor, train_set: Tensor, sigma_min: Optional[float]) -> Mem:
    return Mem(**memorization(x, train_set, sigma_min, K_SIGMA))


@dataclass
class Exact:
    min_inc: float
    monotone_fraction: float
    n_traj: int
    t_long: float
    n_steps: int
    end_rel_max: float
    end_critical_fraction: float
    train_stable: float
    train_dist_max: float
    eig_ratio_min: float
    eig_ratio_max: float
    eig_pred: float
    n_stable: int
    n_stable_near: int
    n_points: int
    kinds: dict[str, int]
    nfe_sample: int
    mem: Mem
    limit: Mem
    langevin_noise: Mem
    langevin_no_noise: Mem
    traj: Tensor
    log_l: Tensor
    fp_points: Tensor
    fp_kinds: list[str]
    labels: Tensor
    attractors: Tensor
    samples: Tensor


def _exact(cfg: KimConfig, ctx: Context, toy: _Toy) -> Exact:
    conf = {**_base(cfg, ctx), "exact_n": cfg.exact_n, "n": cfg.n_exact_samples, "traj_steps": cfg.traj_steps,
            "grid": cfg.fp_grid, "basin_grid": cfg.basin_grid, "L": cfg.n_levels,
            "streams": [cfg.streams.exact_starts, cfg.streams.exact_langevin_noise]}

    def work() -> Exact:
        smax, smin = toy.sigma_max, cfg.sigma_min
        X = toy.exact
        model = NoiseAgnostic(X, sigma_min=smin, sigma_max=smax, conditioning="multiplicative")
        x0 = start_noise(ctx, cfg.streams.exact_starts, cfg.n_exact_samples, (2,), smax, F64)
        # trajectories well past tau = sigma_max (the flow converges as tau -> infinity, Thm 4.3). Near a training
        # point the rate is (d/(d+1))/sigma_min = (2/3)/sigma_min; h = 1.5 sigma_min gives h * rate = 1, where RK4's
        # amplification 1 - 1 + 1/2 - 1/6 + 1/24 = 0.375 is positive: stable and monotone.
        t_long = 2.0 * smax
        n_steps = max(cfg.traj_steps, math.ceil(t_long / (1.5 * smin)))
        traj = dynamics.trajectories(model.field, x0, t_long, n_steps=n_steps, record=1)
        log_l = dynamics.lyapunov_trace(model, traj)
        inc = (log_l[1:] - log_l[:-1]) / (1.0 + log_l[:-1].abs())
        f_start = model.field(x0).norm(dim=1)
        f_end = model.field(traj[-1]).norm(dim=1)
        rel_end = f_end / f_start.median()
        fp = dynamics.fixed_points(model.field, X.clone(), tol=1e-12, max_iter=200)
        ev = fp.eigenvalues
        pred = -(2.0 / 3.0) / smin  # -(d/(d+1))/sigma_min with d = 2
        ratio = ev.real / pred
        (xl, yl) = toy.lim
        g = plot.grid_2d(xl, yl, conf["grid"], device=ctx.device, dtype=F64)
        fpg = dynamics.fixed_points(model.field, torch.cat([g, X]), tol=1e-10, max_iter=300).unique(1e-4)
        st = fpg.select(fpg.stable)
        near = nearest(st.points, X).to(F64) / smin if len(st) else torch.zeros(0, dtype=F64)
        counted = sample.CountNFE(model)
        xs = sample.autonomous(counted, x0, smax - smin, rtol=1e-6, atol=1e-6, method="dopri5").x
        # Kim's open question 1: the sampler's noise. Annealed Langevin on the optimum, with and without noise.
        levels, eps = _geometric(smax, smin, cfg.n_levels, 5)
        x_noise = sample.annealed_langevin(model, x0, levels, n_steps_each=5, step_lr=eps,
                                           seeds=seeds(ctx.seed, cfg.streams.exact_langevin_noise, x0.shape[0]))
        x_clean = sample.annealed_langevin(model, x0, levels, n_steps_each=5, step_lr=eps, noise=False)
        gb = plot.grid_2d(xl, yl, conf["basin_grid"], device=ctx.device, dtype=F64)
        labels, _ = dynamics.basins(model.field, gb, tau=smax, n_steps=math.ceil(smax / (1.5 * smin)), attractors=st.points,
                                    tol=K_SIGMA * smin)
        pick = torch.arange(min(24, x0.shape[0]))
        stride = max(1, n_steps // 150)
        return Exact(
            min_inc=float(inc.min()), monotone_fraction=float((inc >= -T.LYAPUNOV_SLACK).all(0).float().mean()),
            n_traj=int(x0.shape[0]), t_long=t_long, n_steps=n_steps, end_rel_max=float(rel_end.max()),
            end_critical_fraction=float((rel_end <= T.CRITICAL_FIELD).float().mean()),
            train_stable=float(fp.stable.float().mean()), train_dist_max=float(((fp.points - X).norm(dim=1) / smin).max()),
            eig_ratio_min=float(ratio.min()), eig_ratio_max=float(ratio.max()), eig_pred=pred, n_stable=int(len(st)),
            n_stable_near=int((near <= K_SIGMA).sum()), n_points=int(X.shape[0]), kinds=dict(fpg.count()),
            nfe_sample=counted.nfe, mem=_mem(xs, X, smin), limit=_mem(traj[-1], X, smin),
            langevin_noise=_mem(x_noise, X, smin), langevin_no_noise=_mem(x_clean, X, smin),
            traj=traj[::stride, pick].contiguous(), log_l=log_l[::stride, pick].contiguous(), fp_points=fpg.points,
            fp_kinds=list(fpg.kind), labels=labels, attractors=st.points, samples=xs,
        )

    return ctx.stages.run("kim.exact", conf, work, version=VERSION, result_type=Exact)


@dataclass
class Weighting:
    """The optimum f*_m = grad N_m / M_m of weighting lambda = sigma^m, per m tested (Kim's open question)."""

    weightings: list[float]
    min_inc: list[float]
    stable_fraction: list[float]
    eig_ratio_min: list[float]
    eig_ratio_max: list[float]


_WEIGHT_EXPONENT = {"sigma": 1.0, "sigma2": 2.0, "sigma3": 3.0, "one": 0.0}


class _WeightedOptimum:
    """``f*_m(x) = sum_k w_k s_k^(m-1) grad p_k / sum_k w_k s_k^(m-2) p_k`` for multiplicative conditioning
    (score ``f/sigma``) trained with ``lambda = sigma^m`` and log-uniform sigma, by brute-force quadrature
    in log sigma (float64; 2-D only). ``N_m = sum_k w_k s_k^(m-1) p_k`` is its potential: ``f* = grad N_m / M_m``."""

    def __init__(self, X: Tensor, sigma_min: float, sigma_max: float, m: float, nodes: int = 400) -> None:
        t = torch.linspace(math.log(sigma_min), math.log(sigma_max), nodes, dtype=F64, device=X.device)
        w = torch.full_like(t, (t[-1] - t[0]).item() / (nodes - 1))
        w[0] = w[-1] = w[0] / 2  # trapezoid in log sigma (log-uniform pi)
        self.X, self.s, self.w, self.m, self.d = X, t.exp(), w, float(m), X.shape[1]

    def _terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r2 = (x[:, None, :] - self.X[None]).square().sum(-1)  # (B, N); no cdist, so forward-mode AD works
        s = self.s[:, None, None]
        # log of p_k(x | x_i) (2 pi)^(d/2): -d log s - r^2 / (2 s^2); shifted per query for stability
        logp = -self.d * s.log() - r2[None] / (2 * s**2)  # (K, B, N)
        shift = logp.amax(dim=(0, 2), keepdim=True)
        p = (logp - shift).exp() * self.w[:, None, None]
        return p, s

    def field(self, x: Tensor) -> Tensor:
        p, s = self._terms(x)
        num_w = (p * s ** (self.m - 3)).sum(0)  # grad p_k = p_k (x_i - x) / s^2
        den = (p * s ** (self.m - 2)).sum(dim=(0, 2))
        return (num_w @ self.X - num_w.sum(1, keepdim=True) * x) / den[:, None]

    def log_potential(self, x: Tensor) -> Tensor:
        s = self.s[:, None, None]
        r2 = (x[:, None, :] - self.X[None]).square().sum(-1)
        logp = -self.d * s.log() - r2[None] / (2 * s**2)
        return torch.logsumexp(logp + (self.m - 1) * s.log() + self.w.log()[:, None, None], dim=(0, 2))


def _weighting(cfg: KimConfig, ctx: Context, toy: _Toy) -> Weighting:
    conf = {**_base(cfg, ctx), "exact_n": cfg.exact_n, "weightings": list(cfg.weightings),
            "stream": cfg.streams.weighting_starts, "n": 32, "nodes": 400}

    def work() -> Weighting:
        smax, smin, X = toy.sigma_max, cfg.sigma_min, toy.exact
        out = Weighting([], [], [], [], [])
        x0 = start_noise(ctx, cfg.streams.weighting_starts, 32, (2,), smax, F64)
        d = X.shape[1]
        for name in cfg.weightings:
            m = _WEIGHT_EXPONENT[name]
            opt = _WeightedOptimum(X, smin, smax, m, nodes=conf["nodes"])
            n_steps = math.ceil(2 * smax / (1.5 * smin))
            traj = dynamics.trajectories(opt.field, x0, 2 * smax, n_steps=n_steps, record=1)
            ln = torch.stack([opt.log_potential(z) for z in traj])
            inc = (ln[1:] - ln[:-1]) / (1.0 + ln[:-1].abs())
            fp = dynamics.fixed_points(opt.field, X.clone(), tol=1e-12, max_iter=200)
            pred = -((d + 2 - m) / (d + 3 - m)) / smin
            ratio = fp.eigenvalues.real / pred
            out.weightings.append(m)
            out.min_inc.append(float(inc.min()))
            out.stable_fraction.append(float(fp.stable.float().mean()))
            out.eig_ratio_min.append(float(ratio.min()))
            out.eig_ratio_max.append(float(ratio.max()))
        return out

    return ctx.stages.run("kim.weighting", conf, work, version=VERSION, result_type=Weighting)


def _exact_section(cfg: KimConfig, e: Exact, w: Weighting, figs: list[Figure]) -> Section:
    R = REGISTRY
    claims = [
        R["kim.2a"].judge({"min_relative_increment": e.min_inc, "trajectories": e.n_traj}),
        R["kim.2b"].judge({"critical_fraction": e.end_critical_fraction, "tau": e.t_long}),
        R["kim.2c"].judge({"stable_fraction": e.train_stable, "max_dist_over_sigma_min": e.train_dist_max,
                           "eig_ratio_min": e.eig_ratio_min, "eig_ratio_max": e.eig_ratio_max}),
        R["kim.2d"].judge({"stable_found": e.n_stable,
                           "stable_near_fraction": e.n_stable_near / e.n_stable if e.n_stable else float("nan")}),
        R["kim.2e"].judge({"copy_fraction": e.mem.copy_fraction, "within_3_sigma_min": e.mem.within_k_sigma,
                           "nfe": e.nfe_sample}),
        R["kim.2f"].judge({"copy_fraction": e.limit.copy_fraction, "within_3_sigma_min": e.limit.within_k_sigma,
                           "tau": e.t_long}),
        R["kim.2g"].judge({"copy_with_noise": e.langevin_noise.copy_fraction,
                           "copy_without_noise": e.langevin_no_noise.copy_fraction,
                           "nn_median_with_noise": e.langevin_noise.nn_median,
                           "nn_median_without_noise": e.langevin_no_noise.nn_median}),
        R["kim.2h"].judge({"weightings": ", ".join(f"m={m:g}" for m in w.weightings),
                           "min_relative_increment": min(w.min_inc), "stable_fraction": min(w.stable_fraction)}),
        R["kim.2i"].judge({"weightings": ", ".join(f"m={m:g}" for m in w.weightings),
                           "eig_ratio_min": min(w.eig_ratio_min), "eig_ratio_max": max(w.eig_ratio_max)},
                          note="the prediction assumes training points isolated at the scales that dominate the "
                               "integrals; larger m weights larger sigma, where neighbours overlap"),
    ]
    kinds = ", ".join(f"{k}: {v}" for k, v in e.kinds.items())
    wt = Table("kim_weighting", "Weightings lambda = sigma^m (Kim's open question): the optimum grad N_m / M_m",
               ["m", "min Delta log N_m / (1 + |log N_m|)", "stable fraction of training points",
                "eigenvalue / prediction (min)", "eigenvalue / prediction (max)"],
               [[m, a, b, c, dd] for m, a, b, c, dd in zip(w.weightings, w.min_inc, w.stable_fraction, w.eig_ratio_min,
                                                           w.eig_ratio_max)],
               "f*_m by trapezoidal quadrature over 400 log-spaced sigmas (float64), 32 RK4 trajectories to "
               "tau = 2 sigma_max; prediction -((d+2-m)/(d+3-m))/sigma_min (m = 2: Kim's -(d/(d+1))/sigma_min).")
    text = (f"f* of {e.n_points} {cfg.toy} points (float64). {e.n_traj} trajectories integrated by RK4 "
            f"to tau = {sig(e.t_long)} in {e.n_steps} steps; equilibria from Newton's method "
            f"(scoredyn.dynamics.fixed_points) from a {cfg.fp_grid}x{cfg.fp_grid} grid and the training points. "
            f"Distinct equilibria found: {kinds}. Annealed Langevin (kim.2g): NCSNv2 Algorithm 1, "
            f"{cfg.n_levels} geometric levels, 5 steps each, Technique-4 step size, final denoise.")
    return Section("2. The exact optimum f* (zero training loss)", text, claims, [wt], figs)


def _exact_figures(cfg: KimConfig, toy: _Toy, e: Exact) -> list[Figure]:
    model = NoiseAgnostic(toy.exact.cpu(), sigma_min=cfg.sigma_min, sigma_max=toy.sigma_max, conditioning="multiplicative")
    fig, axes = figure(1, 2, (6.0, 5.2))
    (xl, yl) = toy.lim
    plot.basins_2d(e.labels, xl, yl, n=int(math.isqrt(e.labels.numel())), ax=axes[0])
    plot.field_2d(model.field, xl, yl, n=40, ax=axes[0], like=toy.exact.cpu())
    plot.trajectories_2d(e.traj.to(F64), ax=axes[0], alpha=0.5, linewidth=0.7)
    plot.fixed_points_2d(_kinds_only(e.fp_points, e.fp_kinds), ax=axes[0])
    axes[0].scatter(*toy.exact.cpu().T, s=12, color="#2ca02c", zorder=6, label="training points")
    axes[0].set_title(f"f* on {cfg.exact_n} points: basins, streamlines, trajectories, equilibria", fontsize=9)
    ll = (e.log_l - e.log_l[:1]).numpy()
    t = np.linspace(0, e.t_long, ll.shape[0])
    axes[1].plot(t, ll, lw=0.8)
    axes[1].set_xscale("symlog", linthresh=0.1)
    axes[1].set_xlabel("tau")
    axes[1].set_ylabel("log L(x(tau)) - log L(x(0))")
    axes[1].set_title("log L along 24 trajectories (never decreases, Thm 4.3)", fontsize=9)
    axes[1].grid(alpha=0.3)
    return [Figure("kim_exact_optimum", "Kim: the exact optimum f* on a small 2-D training set — basins of the "
                   "stable equilibria (colours), the field (streamlines, colour = log10|f*|), trajectories, and the "
                   "Lyapunov function log L along them.", figure_png(fig))]


def _kinds_only(points: Tensor, kinds: list[str]) -> dynamics.FixedPoints:
    """A FixedPoints holding only points and kinds (what the plot needs) from cached arrays."""
    b = points.shape[0]
    z = torch.zeros(b)
    return dynamics.FixedPoints(points=points, converged=torch.ones(b, dtype=torch.bool), residual=z,
                                eigenvalues=torch.zeros(b, 0, dtype=torch.complex64),
                                stable=torch.tensor([k == "stable" for k in kinds], dtype=torch.bool), kind=list(kinds),
                                method="cached", n_iter=z.long(), n_flow=z.long())


# ---------------------------------------------------------------------- 3. trained networks


@dataclass
class Analysis:
    """One trained network at one checkpoint: samples, memorization, quality, equilibria, loss, gate numbers."""

    nfe: int
    copy_fraction: float
    within_k_sigma: float
    nn_median: float
    sw: float
    fid: Optional[float]
    kid: Optional[float]
    n_stable: int
    eq_dist_median: float
    eq_near_fraction: float
    loss: float
    gate: GateNumbers
    samples: Tensor


@dataclass
class OptimumLoss:
    """The training objective of the exact optimum f* and of the Gaussian denoiser at the networks' draws."""

    loss: float
    loss_gaussian: float


def _analyse(ctx: Context, net: Any, train_set: Tensor, heldout: Tensor, *, sigma_min: float, sigma_max: float,
             n_samples: int, n_starts: int, stream: int, fid_net: Optional[str], merge_tol: float, loss: float,
             opt: OptimumLoss, rtol: float) -> Analysis:
    """Samples (PF-ODE = autonomous ODE), memorization, quality, the stable equilibria of ``net.field``, gate numbers."""
    shape = tuple(train_set.shape[1:])
    x0 = start_noise(ctx, stream, n_samples, shape, sigma_max)
    counted = sample.CountNFE(net)
    xs = sample.autonomous(counted, x0, sigma_max - sigma_min, rtol=rtol, atol=rtol, method="dopri5").x
    mem = memorization(xs, train_set, sigma_min, K_SIGMA)
    q = quality(xs, heldout, seed=ctx.seed, fid_net=fid_net)
    starts = torch.cat([xs[:n_starts], train_set[:n_starts]])
    fp = dynamics.fixed_points(net.field, starts, tol=1e-6, max_iter=40).unique(merge_tol)
    st = fp.select(fp.stable)
    if len(st):
        dist = nearest(st.points, train_set).double() / sigma_min
        eq_med, eq_near = float(dist.median()), float((dist <= K_SIGMA).double().mean())
    else:
        eq_med, eq_near = float("nan"), float("nan")
    g = gate_numbers(xs, train_set, heldout, seed=ctx.seed, fid_net=fid_net, loss=loss, loss_optimum=opt.loss,
                     loss_gaussian=opt.loss_gaussian)
    return Analysis(counted.nfe, mem["copy_fraction"], mem["within_k_sigma"], mem["nn_median"], q["sw"], q.get("fid"),
                    q.get("kid"), int(len(st)), eq_med, eq_near, loss, g, xs)


def _optimum_loss(ctx: Context, name: str, conf: dict[str, Any], X: Tensor, smin: float, smax: float,
                  stream: int) -> OptimumLoss:
    """The training objective of the exact optimum f* of ``X`` (and of the Gaussian fitted to ``X``) at the draws
    the networks are evaluated on."""

    def work() -> OptimumLoss:
        x0, s, z = loss_draws(ctx, X, LOSS_DRAWS, smin, smax, stream=stream)
        opt = NoiseAgnostic(X, sigma_min=smin, sigma_max=smax, conditioning="multiplicative")
        return OptimumLoss(dsm_loss(opt, x0, s, z, "sigma2"), dsm_loss(Gaussian.fit(X), x0, s, z, "sigma2"))

    return ctx.stages.run(name, {**conf, "draws": LOSS_DRAWS, "stream": stream}, work, version=VERSION,
                          result_type=OptimumLoss)


@dataclass
class Run:
    """A trained network's analysis at one checkpoint, with its training result, optimum loss and gate."""

    analysis: Analysis
    trained: Trained
    opt: OptimumLoss
    gate: GateResult

    @property
    def excess(self) -> float:
        return self.analysis.loss - self.opt.loss


def _train_and_analyse(ctx: Context, tag: str, X: Tensor, heldout: Tensor, net_cfg: Any, spec: dict[str, Any],
                       steps: tuple[int, ...], conf: dict[str, Any], *, smin: float, smax: float, n_samples: int,
                       n_starts: int, sample_stream: int, loss_stream: int, fid_net: Optional[str], merge_tol: float,
                       shape: tuple[int, ...], net_name: str, rtol: float = 1e-4) -> dict[int, Run]:
    n = X.shape[0]
    res = train_checkpoints(ctx, f"kim.{tag}train_n{n}", conf, spec, X, net_cfg, steps, sigma_dist="loguniform",
                            sigma_min=smin, sigma_max=smax)
    opt = _optimum_loss(ctx, f"kim.{tag}optimum_loss_n{n}", {k: v for k, v in conf.items() if k != "net"}, X, smin,
                        smax, stream=loss_stream)
    out: dict[int, Run] = {}
    for step in res.steps:
        aconf = {**conf, "checkpoints": list(steps), "step": step, "samples": n_samples, "starts": n_starts,
                 "streams": [sample_stream, loss_stream], "fid_net": fid_net, "rtol": rtol}

        def work(step: int = step) -> Analysis:
            net = load_checkpoint(res, step, ctx.device, shape)
            x0, s, z = loss_draws(ctx, X, LOSS_DRAWS, smin, smax, stream=loss_stream)
            return _analyse(ctx, net, X, heldout, sigma_min=smin, sigma_max=smax, n_samples=n_samples, n_starts=n_starts,
                            stream=sample_stream, fid_net=fid_net, merge_tol=merge_tol,
                            loss=dsm_loss(net, x0, s, z, "sigma2"), opt=opt, rtol=rtol)

        a = ctx.stages.run(f"kim.{tag}analyse_n{n}_s{step}", aconf, work, version=VERSION, result_type=Analysis)
        gate = network_gate(ctx, f"kim.{net_name}_n{n}@{step}", a.gate, fid_net)
        out[step] = Run(a, res, opt, gate)
    return out


def _trained(cfg: KimConfig, ctx: Context, toy: _Toy) -> dict[tuple[int, int], Run]:
    smin, smax = cfg.net_sigma_min, toy.sigma_max
    out: dict[tuple[int, int], Run] = {}
    for n in cfg.train_sizes:
        spec = net_spec(cfg.net, (2,), "multiplicative", sigma_data=1.0)
        conf = {**_base(cfg, ctx), "n": n, "net": cfg.net, "sigma_max": smax, "net_sigma_min": smin,
                "heldout": cfg.n_heldout}
        runs = _train_and_analyse(ctx, "", toy.train[:n], toy.heldout, cfg.net, spec, cfg.checkpoints, conf, smin=smin,
                                  smax=smax, n_samples=cfg.n_net_samples, n_starts=cfg.n_fixed_point_starts,
                                  sample_stream=cfg.streams.net_samples, loss_stream=cfg.streams.loss_draws,
                                  fid_net=None, merge_tol=1e-3, shape=(2,), net_name=f"mlp_{cfg.toy}")
        out.update({(n, s): r for s, r in runs.items()})
    return out


def _trained_images(cfg: KimConfig, ctx: Context) -> dict[tuple[int, int], Run]:
    n_max = max(cfg.image_sizes)
    train_all = sd_data.load(cfg.image_data, split="train", n=n_max, seed=ctx.seed).to(ctx.device)
    heldout = sd_data.load(cfg.image_data, split="test", seed=ctx.seed).to(ctx.device)
    shape = tuple(train_all.shape[1:])
    smin = cfg.image_sigma_min
    smax = float(sample.max_pairwise_distance(train_all))
    fid_net = cfg.image_data if cfg.image_data in ("digits", "mnist") else None
    out: dict[tuple[int, int], Run] = {}
    for n in cfg.image_sizes:
        spec = net_spec(cfg.image_net, shape, "multiplicative")
        conf = {"data": cfg.image_data, "seed": ctx.seed, "device": ctx.device.type, "n": n, "net": cfg.image_net,
                "sigma_min": smin, "sigma_max": smax}
        runs = _train_and_analyse(ctx, "img_", train_all[:n], heldout, cfg.image_net, spec, cfg.image_checkpoints, conf,
                                  smin=smin, smax=smax, n_samples=cfg.n_image_samples,
                                  n_starts=min(cfg.n_image_fixed_point_starts, cfg.n_image_samples),
                                  sample_stream=cfg.streams.image_samples,
                                  loss_stream=cfg.streams.image_loss_draws, fid_net=fid_net, merge_tol=1e-2, shape=shape,
                                  net_name=f"{cfg.image_net.arch}_{cfg.image_data}", rtol=cfg.image_rtol)
        out.update({(n, s): r for s, r in runs.items()})
    return out


def _eq_cell(v: Any) -> Any:
    """An equilibrium distance for a claims table, or a note when no stable equilibrium was found."""
    return "no stable equilibrium found" if v is None or not math.isfinite(float(v)) else float(v)


def _overfit_claims(prefix: str, runs: dict[tuple[int, int], Run], sizes: tuple[int, ...],
                    steps: tuple[int, ...]) -> list[Claim]:
    n_min, n_max = min(sizes), max(sizes)
    s_first, s_last = min(steps), max(steps)
    a, b = runs[(n_min, s_first)], runs[(n_min, s_last)]
    rho = spearman([runs[(n_min, s)].excess for s in steps], [runs[(n_min, s)].analysis.copy_fraction for s in steps])
    c1 = REGISTRY[f"{prefix}a"].judge(
        {"excess_loss_first": a.excess, "excess_loss_last": b.excess, "copy_first": a.analysis.copy_fraction,
         "copy_last": b.analysis.copy_fraction, "eq_dist_first": _eq_cell(a.analysis.eq_dist_median),
         "eq_dist_last": _eq_cell(b.analysis.eq_dist_median), "spearman_loss_copy": corr_cell(rho)},
        networks=[a.gate, b.gate], note=f"N = {n_min}, checkpoints {s_first} and {s_last}")
    fa, fb = runs[(n_min, s_last)], runs[(n_max, s_last)]
    c2 = REGISTRY[f"{prefix}b"].judge(
        {"n_small": n_min, "n_large": n_max, "copy_small": fa.analysis.copy_fraction,
         "copy_large": fb.analysis.copy_fraction, "eq_dist_small": _eq_cell(fa.analysis.eq_dist_median),
         "eq_dist_large": _eq_cell(fb.analysis.eq_dist_median)},
        networks=[fa.gate, fb.gate], note=f"step {s_last}")
    return [c1, c2]


def _early_stop_claim(cfg: KimConfig, runs: dict[tuple[int, int], Run], nn_heldout: float,
                      copy_heldout: float, sw_floor: float) -> tuple[Claim, int]:
    n_max = max(cfg.train_sizes)
    best = min(cfg.checkpoints, key=lambda s: runs[(n_max, s)].analysis.sw)
    r = runs[(n_max, best)]
    return REGISTRY["kim.3c"].judge(
        {"step": best, "copy_fraction": r.analysis.copy_fraction, "copy_fraction_heldout": copy_heldout,
         "nn_median": r.analysis.nn_median, "nn_median_heldout": nn_heldout, "sw": r.analysis.sw, "sw_data_floor": sw_floor},
        networks=[r.gate], note=f"N = {n_max}"), best


@dataclass
class FieldFigure:
    labels: list[Tensor]
    points: list[Tensor]
    kinds: list[list[str]]


def _field_figure(cfg: KimConfig, ctx: Context, toy: _Toy, runs: dict[tuple[int, int], Run], early: int) -> Figure:
    n_min, n_max = min(cfg.train_sizes), max(cfg.train_sizes)
    s_last = max(cfg.checkpoints)
    panel_list = [(n_min, s_last, "overfit"), (n_max, early, "early-stopped")]
    conf = {**_base(cfg, ctx), "panels": [list(p[:2]) for p in panel_list], "net": cfg.net,
            "steps": list(cfg.checkpoints), "grid": cfg.basin_grid}
    (xl, yl) = toy.lim
    smax = toy.sigma_max

    def work() -> FieldFigure:
        out = FieldFigure([], [], [])
        for n, step, _ in panel_list:
            net = load_checkpoint(runs[(n, step)].trained, step, ctx.device, (2,))
            g = plot.grid_2d(xl, yl, conf["grid"], device=ctx.device)
            X = toy.train[:n]
            fp = dynamics.fixed_points(net.field, torch.cat([g, X[:128]]), tol=1e-6, max_iter=40).unique(1e-3)
            st = fp.select(fp.stable)
            labels, _ = dynamics.basins(net.field, g, tau=2 * smax, n_steps=120, attractors=st.points,
                                        tol=max(0.05, K_SIGMA * cfg.net_sigma_min))
            out.labels.append(labels)
            out.points.append(fp.points)
            out.kinds.append(list(fp.kind))
        return out

    f = ctx.stages.run("kim.field_figure", conf, work, version=VERSION, result_type=FieldFigure)
    fig, axes = figure(1, len(panel_list), (6.0, 5.4))
    for i, (n, step, label) in enumerate(panel_list):
        ax = axes[i]
        net = load_checkpoint(runs[(n, step)].trained, step, torch.device("cpu"), (2,))
        plot.basins_2d(f.labels[i], xl, yl, n=conf["grid"], ax=ax)
        plot.field_2d(net.field, xl, yl, n=40, ax=ax)
        X = toy.train[:n].cpu()
        ax.scatter(X[:, 0], X[:, 1], s=10 if n > 100 else 25, color="#2ca02c", zorder=6, label="training points")
        plot.fixed_points_2d(_kinds_only(f.points[i], f.kinds[i]), ax=ax)
        r = runs[(n, step)]
        ax.set_title(f"{label}: multiplicative MLP, N = {n}, step {step}\ncopy fraction {r.analysis.copy_fraction:.2f}, "
                     f"excess loss {r.excess:.3g}", fontsize=9)
    return Figure("kim_trained_fields", f"Kim: fields f(x) of trained multiplicative networks on {cfg.toy} — basins of "
                  "their stable equilibria (colours), streamlines, equilibria by kind, training points (green).",
                  figure_png(fig))


def _overfit_figure(cfg: KimConfig, runs: dict, img: Optional[dict]) -> Figure:
    fig, axes = figure(1, 3, (5.3, 4.6))
    series = [(cfg.toy, runs, cfg.train_sizes, cfg.checkpoints, "-")]
    if img:
        series.append((cfg.image_data, img, cfg.image_sizes, cfg.image_checkpoints, "--"))
    for name, rr, sizes, steps, ls in series:
        for n in sizes:
            ex = [max(rr[(n, s)].excess, 1e-6) for s in steps]
            axes[0].plot(ex, [rr[(n, s)].analysis.copy_fraction for s in steps], ls, marker="o", label=f"{name} N={n}")
            axes[1].plot(ex, [rr[(n, s)].analysis.eq_dist_median for s in steps], ls, marker="o", label=f"{name} N={n}")
            axes[2].plot(ex, [rr[(n, s)].analysis.sw for s in steps], ls, marker="o", label=f"{name} N={n}")
    for ax, yl in zip(axes, ("copy fraction of samples", "median distance of stable eq. to nearest\n"
                                                          "training point / sigma_min", "sliced W2 to held-out")):
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("excess training loss (network - optimum f*)")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.invert_xaxis()
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[0].set_title("training proceeds to the right (loss falls)", fontsize=9)
    return Figure("kim_overfitting", "Kim Thm 4.4: memorization, equilibrium distance and quality against the excess "
                  "training loss, along training (points on a line) and across training-set sizes (lines).",
                  figure_png(fig))


def _trained_section(cfg: KimConfig, toy: _Toy, runs: dict, img: Optional[dict], figs: list[Figure],
                     early_claim: Claim) -> Section:
    claims = _overfit_claims("kim.3", runs, cfg.train_sizes, cfg.checkpoints) + [early_claim]
    if img:
        claims += _overfit_claims("kim.3d.", img, cfg.image_sizes, cfg.image_checkpoints)
    rows = []
    for name, rr, sizes, steps in [(cfg.toy, runs, cfg.train_sizes, cfg.checkpoints)] + (
            [(cfg.image_data, img, cfg.image_sizes, cfg.image_checkpoints)] if img else []):
        for n in sizes:
            for s in steps:
                r: Run = rr[(n, s)]
                a = r.analysis
                rows.append([name, n, s, a.loss, r.excess, a.copy_fraction, a.within_k_sigma, a.nn_median, a.n_stable,
                             a.eq_dist_median, a.eq_near_fraction, a.sw, a.fid, r.gate.passes])
    table = Table("kim_trained", "Trained multiplicative networks at each checkpoint",
                  ["data", "N", "step", "loss", "excess loss", "copy frac.", "within 3 sigma_min", "NN median",
                   "stable eq.", "eq. dist / sigma_min", "eq. within 3 sigma_min", "SW", "FID", "passes gate"], rows,
                  "loss: the training objective E|f(x0 + sigma z) + z|^2 / d at fixed draws; excess: minus the same "
                  "for the exact optimum f* of that training set. Samples: probability-flow ODE (= autonomous ODE, "
                  "Dormand-Prince, rtol 1e-4 on 2-D points, image_rtol on images). Stable equilibria: Newton from sample endpoints and training points.")
    img_note = (f" The same on {cfg.image_data} images ({cfg.image_net.arch.upper()}, subsets of "
                f"{', '.join(map(str, cfg.image_sizes))} images, checkpoints {', '.join(map(str, cfg.image_checkpoints))})."
                if img else "")
    text = (f"MLPs ({cfg.net.hidden} wide, {cfg.net.depth} deep) with multiplicative conditioning trained by "
            f"denoising score matching (lambda = sigma^2, sigma log-uniform on [{cfg.net_sigma_min}, "
            f"{sig(toy.sigma_max)}]) on nested subsets of {cfg.toy}.{img_note} Every network at every checkpoint is "
            "checked by the quality gate (see the networks table); a claim resting on one that fails is inconclusive.")
    return Section("3. Trained multiplicative networks: overfitting and early stopping", text, claims, [table], figs)


# ------------------------------------------------------------------------------ 4. samplers


@dataclass
class SamplerRun:
    name: str
    nfe: int
    sw: float
    copy_fraction: float
    nn_median: float
    samples: Tensor


@dataclass
class Samplers:
    runs: list[SamplerRun]
    dev_auto_pf: float


def _samplers(cfg: KimConfig, ctx: Context, toy: _Toy, runs: dict[tuple[int, int], Run]) -> Samplers:
    n, step = max(cfg.train_sizes), max(cfg.checkpoints)
    res = runs[(n, step)].trained
    smin, smax = cfg.net_sigma_min, toy.sigma_max
    conf = {**_base(cfg, ctx), "n": n, "step": step, "net": cfg.net, "checkpoints": list(cfg.checkpoints),
            "samples": cfg.n_net_samples, "heun": cfg.heun_steps, "rtol": cfg.sampler_rtol, "T": 5, "L": cfg.n_levels,
            "heldout": cfg.n_heldout, "streams": [cfg.streams.sampler_starts, cfg.streams.langevin_noise]}

    def work() -> Samplers:
        net = load_checkpoint(res, step, ctx.device, (2,))
        X = toy.train[:n]
        x0 = start_noise(ctx, cfg.streams.sampler_starts, cfg.n_net_samples, (2,), smax)
        levels, eps = _geometric(smax, smin, cfg.n_levels, conf["T"])
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=smin, sigma_max=smax)
        out: list[SamplerRun] = []
        xs: dict[str, Tensor] = {}
        for name in ("annealed Langevin", "annealed Langevin (no noise)", "PF-ODE Heun", "PF-ODE adaptive",
                     "autonomous ODE"):
            c = sample.CountNFE(net)
            if name == "annealed Langevin":
                x = sample.annealed_langevin(c, x0, levels, n_steps_each=conf["T"], step_lr=eps,
                                             seeds=seeds(ctx.seed, cfg.streams.langevin_noise, cfg.n_net_samples),
                                             progress=ctx.progress)
            elif name == "annealed Langevin (no noise)":
                x = sample.annealed_langevin(c, x0, levels, n_steps_each=conf["T"], step_lr=eps, noise=False)
            elif name == "PF-ODE Heun":
                x = sample.heun(c, x0, karras, progress=ctx.progress)
            elif name == "PF-ODE adaptive":
                x = sample.ode_adaptive(c, x0, sigma_min=smin, sigma_max=smax, rtol=cfg.sampler_rtol, atol=cfg.sampler_rtol).x
            else:
                x = sample.autonomous(c, x0, smax - smin, rtol=cfg.sampler_rtol, atol=cfg.sampler_rtol, method="dopri5").x
            m = memorization(x, X, smin, K_SIGMA)
            xs[name] = x
            out.append(SamplerRun(name, c.nfe, quality(x, toy.heldout, seed=ctx.seed, fid_net=None)["sw"],
                                  m["copy_fraction"], m["nn_median"], x))
        dev = float((xs["PF-ODE adaptive"] - xs["autonomous ODE"]).norm(dim=1).max())
        return Samplers(out, dev)

    return ctx.stages.run("kim.samplers", conf, work, version=VERSION, result_type=Samplers)


def _sampler_section(cfg: KimConfig, toy: _Toy, s: Samplers, gate: GateResult) -> Section:
    by = {r.name: r for r in s.runs}
    best_other = min(by["annealed Langevin"].sw, by["PF-ODE Heun"].sw, by["PF-ODE adaptive"].sw)
    claim = REGISTRY["kim.4"].judge(
        {"sw_autonomous": by["autonomous ODE"].sw, "sw_langevin": by["annealed Langevin"].sw,
         "sw_pf_heun": by["PF-ODE Heun"].sw, "ratio_to_best": by["autonomous ODE"].sw / best_other,
         "nfe_autonomous": by["autonomous ODE"].nfe, "nfe_langevin": by["annealed Langevin"].nfe},
        networks=[gate], note=f"max |autonomous - PF-ODE adaptive| = {s.dev_auto_pf:.3g}")
    table = Table("kim_samplers", "Samplers on the same trained network (largest N, last checkpoint)",
                  ["sampler", "NFE", "SW to held-out", "copy frac.", "NN median"],
                  [[r.name, r.nfe, r.sw, r.copy_fraction, r.nn_median] for r in s.runs],
                  "Annealed Langevin: NCSNv2 Algorithm 1, geometric grid, 5 steps per level, Technique-4 step size. "
                  "PF-ODE Heun: Karras grid. Adaptive solvers: Dormand-Prince.")
    fig, axes = figure(1, len(s.runs), (3.8, 2.6))
    hx = toy.heldout.cpu()
    for ax, r in zip(axes, s.runs):
        ax.scatter(hx[:, 0], hx[:, 1], s=2, color="0.75", label="held-out")
        x = r.samples.cpu()
        ax.scatter(x[:, 0], x[:, 1], s=3, color="#1f77b4", label="samples")
        ax.set_title(f"{r.name}\nNFE {r.nfe}, SW {r.sw:.3f}", fontsize=9)
        ax.set_xlim(*toy.lim[0])
        ax.set_ylim(*toy.lim[1])
        ax.set_aspect("equal")
    fig_ = Figure("kim_samplers", "Kim: samples of one trained multiplicative network from five samplers "
                  "(held-out data in grey).", figure_png(fig))
    return Section("4. Annealed Langevin vs probability-flow ODE vs autonomous ODE", "", [claim], [table], [fig_])


# ------------------------------------------------------------------------------------------ run


def run(cfg: KimConfig, ctx: Context) -> StudyReport:
    """Run the Kim study and return its report."""
    toy = _Toy(cfg, ctx)
    red = _reductions(cfg, ctx, toy)
    ex = _exact(cfg, ctx, toy)
    wt = _weighting(cfg, ctx, toy)
    runs = _trained(cfg, ctx, toy)
    img = _trained_images(cfg, ctx) if cfg.image_sizes else None
    big = toy.train[: max(cfg.train_sizes)]
    held = memorization(toy.heldout[: cfg.n_net_samples], big, cfg.net_sigma_min, K_SIGMA)
    sw_floor = quality(toy.fresh, toy.heldout, seed=ctx.seed, fid_net=None)["sw"]
    early_claim, early = _early_stop_claim(cfg, runs, held["nn_median"], held["copy_fraction"], sw_floor)
    figs = [_field_figure(cfg, ctx, toy, runs, early), _overfit_figure(cfg, runs, img)]
    smp = _samplers(cfg, ctx, toy, runs)
    sections = [
        _reduction_section(cfg, red),
        _exact_section(cfg, ex, wt, _exact_figures(cfg, toy, ex)),
        _trained_section(cfg, toy, runs, img, figs, early_claim),
        _sampler_section(cfg, toy, smp, runs[(max(cfg.train_sizes), max(cfg.checkpoints))].gate),
    ]
    summary = ("Kim shows that a network whose output is f(x)/sigma samples by following the autonomous flow "
               "dx/dtau = f(x), that the optimum of its training loss is a gradient-like flow of a smoothed density "
               "L whose stable equilibria sit at the training points, and hence that driving the training loss to "
               "its minimum makes the sampler memorize. Rows marked 'extension' or 'open question' test the "
               "project's extrapolations and the questions Kim leaves open, not the paper's claims.")
    return StudyReport("kim", TITLE, PAPERS, summary, sections, [])
