"""Study ``kim``: Kim (2026), "Deterministic Dynamics of Sampling Processes in Score-Based Diffusion
Models with Multiplicative Noise Conditioning" (arXiv:2601.12965).

1. Reductions (§4.1): the probability-flow ODE and noise-free annealed Langevin of a multiplicative
   model ``D = x + sigma f(x)`` are the autonomous ODE ``dx/dtau = f(x)`` (``tau = sigma_max - sigma``)
   and its forward-Euler discretisation.
2. The exact optimum ``f* = grad L / M`` (eq. 2.9, ``scoredyn.analytic.NoiseAgnostic``): log L never
   decreases along trajectories (Thm 4.3), endpoints are critical points, every training point is a
   stable equilibrium with Jacobian eigenvalues ``~ -(d/(d+1))/sigma_min`` (Thm 4.4), and samples
   collapse onto training points.
3. Trained multiplicative networks (Thm 4.4 and §4.2): along training and as the training set
   shrinks, stable equilibria approach training points and memorization rises; early-stopped
   samples are new yet good.
4. Annealed Langevin vs probability-flow ODE vs the autonomous ODE of the same network.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
import torch
from matplotlib.ticker import NullFormatter
from torch import Tensor

from .. import data as sd_data
from .. import dynamics, metrics, plot, sample
from ..analytic import NoiseAgnostic
from ..plot import figure
from .common import (
    corr_cell, dsm_loss, load_checkpoint, loss_draws, memorization, net_spec, quality, seeds, spearman, start_noise,
    train_checkpoints,
)
from .config import KimConfig
from .report import Claim, Figure, Section, StudyReport, Table, figure_png, judge, sig
from .stages import Context

TITLE = "Kim (2026): multiplicative noise conditioning as an autonomous dynamical system"
PAPERS = ("D. Kim, Deterministic Dynamics of Sampling Processes in Score-Based Diffusion Models with "
          "Multiplicative Noise Conditioning, arXiv:2601.12965 (2026)")
K_SIGMA = 3.0  # Theorem 4.4's neighbourhoods: |x - x_i| < k sigma_min, reported with k = 3
LOSS_DRAWS = 1024  # (x0, sigma, z) draws at which networks and the optimum are scored (common random numbers)
F64 = torch.float64
VERSION = 1  # bump when a stage's output changes in a way its configuration does not show


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
    return {"v": VERSION, "toy": cfg.toy, "seed": ctx.seed, "device": ctx.device.type, "sigma_min": cfg.sigma_min}


# ------------------------------------------------------------------------------ 1. reductions


def _reductions(cfg: KimConfig, ctx: Context, toy: _Toy) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "exact_n": cfg.exact_n, "n": cfg.n_reduction, "rtol": cfg.reduction_rtol,
            "T": cfg.ald_steps_each, "L": cfg.n_levels, "n_euler": 400}

    def work() -> dict[str, Any]:
        smax, smin = toy.sigma_max, cfg.sigma_min
        model = NoiseAgnostic(toy.exact, sigma_min=smin, sigma_max=smax, conditioning="multiplicative")
        x0 = start_noise(ctx, 1, cfg.n_reduction, (2,), smax, F64)
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
        return {
            "scale": scale, "sigma_max": smax, "eps": eps, "tau_ald": float(times[-1]), "nfe_pf": int(nfe_pf),
            "dev_euler": dev(x_pf_euler, x_au_euler), "dev_adaptive": dev(x_pf, x_au),
            "dev_ald": dev(x_ald, x_ald_euler), "n_steps_ald": len(h),
        }

    return ctx.stages.run("kim.reductions", conf, work)


def _reduction_section(cfg: KimConfig, r: dict[str, Any]) -> Section:
    tol_adapt = 1e3 * cfg.reduction_rtol * max(1.0, r["scale"])
    c1 = Claim(
        "kim.1a", "The probability-flow ODE of a multiplicative model is the autonomous ODE dx/dtau = f(x), "
        "tau = sigma_max - sigma", "Kim 2026 §4.1.2",
        {"max_dev_euler": r["dev_euler"], "max_dev_dopri5": r["dev_adaptive"], "rtol": cfg.reduction_rtol},
        f"Euler-vs-Euler deviation <= 1e-9 (float64 rounding) and Dormand-Prince deviation <= 1e3 x rtol x data "
        f"scale = {sig(tol_adapt)}",
        judge(r["dev_euler"] <= 1e-9 and r["dev_adaptive"] <= tol_adapt),
    )
    c2 = Claim(
        "kim.1b", "Annealed Langevin without its noise is forward Euler on dx/dtau = f(x) with steps "
        "h_i = eps sigma_i / sigma_L^2 (and the final denoise a step h = sigma_L)", "Kim 2026 §4.1.1; DESIGN §4",
        {"max_dev": r["dev_ald"], "euler_steps": r["n_steps_ald"], "tau_total": r["tau_ald"]},
        "max_dev <= 1e-9 (float64 rounding)",
        judge(r["dev_ald"] <= 1e-9),
    )
    text = (f"{cfg.n_reduction} starting points x ~ N(0, sigma_max^2 I) on the exact optimum f* of {cfg.exact_n} "
            f"{cfg.toy} points, float64, sigma in [{cfg.sigma_min}, {sig(r['sigma_max'])}] "
            f"(sigma_max = largest pairwise distance, NCSNv2 Technique 1). Deviations are max over samples of |x_a - x_b|; "
            f"the data scale (std) is {sig(r['scale'])}.")
    return Section("1. Sampling reduces to the autonomous ODE", text, [c1, c2])


# ---------------------------------------------------------------------------- 2. exact optimum


def _exact(cfg: KimConfig, ctx: Context, toy: _Toy) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "exact_n": cfg.exact_n, "n": cfg.n_exact_samples, "traj_steps": cfg.traj_steps,
            "grid": cfg.fp_grid, "basin_grid": cfg.basin_grid}

    def work() -> dict[str, Any]:
        smax, smin = toy.sigma_max, cfg.sigma_min
        X = toy.exact
        model = NoiseAgnostic(X, sigma_min=smin, sigma_max=smax, conditioning="multiplicative")
        x0 = start_noise(ctx, 2, cfg.n_exact_samples, (2,), smax, F64)
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
        # the training points as equilibria (Thm 4.4)
        fp = dynamics.fixed_points(model.field, X.clone(), tol=1e-12, max_iter=200)
        ev = fp.eigenvalues
        pred = -(2.0 / 3.0) / smin  # -(d/(d+1))/sigma_min with d = 2
        ratio = (ev.real / pred)
        # every equilibrium reachable from a grid of starts
        (xl, yl) = toy.lim
        g = plot.grid_2d(xl, yl, conf["grid"], device=ctx.device, dtype=F64)
        fpg = dynamics.fixed_points(model.field, torch.cat([g, X]), tol=1e-10, max_iter=300).unique(1e-4)
        st = fpg.select(fpg.stable)
        near = metrics.knn(st.points, X.to(st.points.device))[0][:, 0].to(st.points.dtype) / smin if len(st) else torch.zeros(0, dtype=F64)
        kinds = fpg.count()
        # samples: the probability-flow ODE = the autonomous ODE over tau = sigma_max - sigma_min
        counted = sample.CountNFE(model)
        xs = sample.autonomous(counted, x0, smax - smin, rtol=1e-6, atol=1e-6, method="dopri5").x
        mem = memorization(xs, X, smin, K_SIGMA)
        mem_limit = memorization(traj[-1], X, smin, K_SIGMA)
        # basins on a grid for the figure
        gb = plot.grid_2d(xl, yl, conf["basin_grid"], device=ctx.device, dtype=F64)
        labels, _ = dynamics.basins(model.field, gb, tau=smax, n_steps=math.ceil(smax / (1.5 * smin)), attractors=st.points,
                                    tol=K_SIGMA * smin)
        pick = torch.arange(min(24, x0.shape[0]))
        stride = max(1, n_steps // 150)
        return {
            "min_inc": float(inc.min()), "monotone_fraction": float((inc >= -1e-10).all(0).float().mean()),
            "n_traj": int(x0.shape[0]), "t_long": t_long, "n_steps": n_steps,
            "end_rel_max": float(rel_end.max()), "end_critical_fraction": float((rel_end <= 1e-6).float().mean()),
            "train_converged": float(fp.converged.float().mean()), "train_stable": float(fp.stable.float().mean()),
            "train_dist_max": float(((fp.points - X).norm(dim=1) / smin).max()),
            "eig_ratio_min": float(ratio.min()), "eig_ratio_max": float(ratio.max()), "eig_pred": pred,
            "eig_mean": float(ev.real.mean()),
            "n_stable": int(len(st)), "n_stable_near": int((near <= K_SIGMA).sum()), "n_points": int(X.shape[0]),
            "kinds": kinds, "nfe_sample": counted.nfe, **{f"mem_{k}": v for k, v in mem.items()},
            **{f"limit_{k}": v for k, v in mem_limit.items()},
            "traj": traj[::stride, pick].contiguous(), "log_l": log_l[::stride, pick].contiguous(),
            "fp_points": fpg.points, "fp_kinds": list(fpg.kind), "labels": labels, "attractors": st.points,
            "samples": xs,
        }

    return ctx.stages.run("kim.exact", conf, work)


def _exact_section(cfg: KimConfig, e: dict[str, Any], figs: list[Figure]) -> Section:
    claims = [
        Claim("kim.2a", "log L never decreases along trajectories of dx/dtau = f*(x) (L is a Lyapunov function)",
              "Kim 2026 Thm 4.3; DESIGN §3",
              {"min_relative_increment": e["min_inc"], "monotone_fraction": e["monotone_fraction"],
               "trajectories": e["n_traj"]},
              "every RK4 step (h <= 1.5 sigma_min) has Delta log L / (1 + |log L|) >= -1e-10",
              judge(e["min_inc"] >= -1e-10)),
        Claim("kim.2b", "Trajectories end at critical points of L (f* = grad L / M = 0)", "Kim 2026 Thm 4.3",
              {"max_endpoint_rel_field": e["end_rel_max"], "critical_fraction": e["end_critical_fraction"],
               "tau": e["t_long"]},
              "fraction of endpoints with |f*(x_end)| <= 1e-6 median |f*(x_0)|: >= 0.95 supported, "
              ">= 0.8 inconclusive, else not supported",
              "supported" if e["end_critical_fraction"] >= 0.95 else
              "inconclusive" if e["end_critical_fraction"] >= 0.8 else "not supported"),
        Claim("kim.2c", "Every training point is a stable equilibrium, with Jacobian eigenvalues near "
              "-(d/(d+1))/sigma_min", "Kim 2026 Thm 4.4; DESIGN §3",
              {"stable_fraction": e["train_stable"], "max_dist_over_sigma_min": e["train_dist_max"],
               "eig_predicted": e["eig_pred"], "eig_ratio_min": e["eig_ratio_min"], "eig_ratio_max": e["eig_ratio_max"]},
              "all training points converge to stable equilibria within 3 sigma_min and every eigenvalue / predicted "
              "in [0.9, 1.1]",
              judge(e["train_stable"] == 1.0 and e["train_dist_max"] <= K_SIGMA
                    and 0.9 <= e["eig_ratio_min"] and e["eig_ratio_max"] <= 1.1)),
        Claim("kim.2d", "The only stable equilibria are at the training points (no new attractors)", "Kim 2026 Thm 4.4",
              {"stable_found": e["n_stable"], "stable_near_training": e["n_stable_near"],
               "training_points": e["n_points"]},
              f"Newton from a {cfg.fp_grid}x{cfg.fp_grid} grid plus the training points: every stable equilibrium found is within "
              "3 sigma_min of a training point",
              judge(e["n_stable"] > 0 and e["n_stable_near"] == e["n_stable"])),
        Claim("kim.2e", "Samples of the optimum collapse onto training points (memorization): probability-flow ODE "
              "samples, i.e. the flow run for tau = sigma_max - sigma_min", "Kim 2026 §4.2",
              {"copy_fraction": e["mem_copy_fraction"], "within_3_sigma_min": e["mem_within_k_sigma"],
               "nfe": e["nfe_sample"]},
              "copy fraction (d_NN1/d_NN2 < 1/3) >= 0.9", judge(e["mem_copy_fraction"] >= 0.9)),
        Claim("kim.2f", "The flow's limit points (tau = 2 sigma_max) are training points", "Kim 2026 Thm 4.3, 4.4",
              {"copy_fraction": e["limit_copy_fraction"], "within_3_sigma_min": e["limit_within_k_sigma"],
               "tau": e["t_long"]},
              "copy fraction >= 0.9", judge(e["limit_copy_fraction"] >= 0.9)),
    ]
    kinds = ", ".join(f"{k}: {v}" for k, v in e["kinds"].items())
    text = (f"f* of {e['n_points']} {cfg.toy} points (float64). {e['n_traj']} trajectories integrated by RK4 "
            f"to tau = {sig(e['t_long'])} in {e['n_steps']} steps; equilibria from Newton's method "
            f"(scoredyn.dynamics.fixed_points). Distinct equilibria found from the grid: {kinds}.")
    return Section("2. The exact optimum f* (zero training loss)", text, claims, figures=figs)


def _exact_figures(cfg: KimConfig, toy: _Toy, e: dict[str, Any]) -> list[Figure]:
    model = NoiseAgnostic(toy.exact.cpu(), sigma_min=cfg.sigma_min, sigma_max=toy.sigma_max, conditioning="multiplicative")
    fig, axes = figure(1, 2, (6.0, 5.2))
    (xl, yl) = toy.lim
    plot.basins_2d(e["labels"], xl, yl, n=int(math.isqrt(e["labels"].numel())), ax=axes[0])
    plot.field_2d(model.field, xl, yl, n=40, ax=axes[0], like=toy.exact.cpu())
    plot.trajectories_2d(e["traj"].to(F64), ax=axes[0], alpha=0.5, linewidth=0.7)
    fp = _kinds_only(e["fp_points"], e["fp_kinds"])
    plot.fixed_points_2d(fp, ax=axes[0])
    axes[0].scatter(*toy.exact.cpu().T, s=12, color="#2ca02c", zorder=6, label="training points")
    axes[0].set_title(f"f* on {cfg.exact_n} points: basins, streamlines, trajectories, equilibria", fontsize=9)
    ll = (e["log_l"] - e["log_l"][:1]).numpy()
    t = np.linspace(0, e["t_long"], ll.shape[0])
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


def _analyse(ctx: Context, net: Any, train_set: Tensor, heldout: Tensor, *, sigma_min: float, sigma_max: float,
             n_samples: int, n_starts: int, stream: int, fid_net: Optional[str], merge_tol: float) -> dict[str, Any]:
    """Samples (PF-ODE = autonomous ODE), memorization, quality and the stable equilibria of ``net.field``."""
    shape = tuple(train_set.shape[1:])
    x0 = start_noise(ctx, stream, n_samples, shape, sigma_max)
    counted = sample.CountNFE(net)
    xs = sample.autonomous(counted, x0, sigma_max - sigma_min, rtol=1e-4, atol=1e-4, method="dopri5").x
    mem = memorization(xs, train_set, sigma_min, K_SIGMA)
    q = quality(xs, heldout, seed=ctx.seed, fid_net=fid_net)
    starts = torch.cat([xs[:n_starts], train_set[:n_starts]])
    fp = dynamics.fixed_points(net.field, starts, tol=1e-6, max_iter=40).unique(merge_tol)
    st = fp.select(fp.stable)
    if len(st):
        dist = metrics.knn(st.points, train_set.to(st.points.device))[0][:, 0] / sigma_min
        eq_med, eq_near = float(dist.median()), float((dist <= K_SIGMA).double().mean())
    else:
        eq_med, eq_near = float("nan"), float("nan")
    return {"nfe": counted.nfe, **mem, **q, "n_stable": int(len(st)), "eq_dist_median": eq_med,
            "eq_near_fraction": eq_near, "samples": xs}


def _optimum_loss(ctx: Context, name: str, conf: dict[str, Any], X: Tensor, smin: float, smax: float,
                  stream: int) -> dict[str, Any]:
    """The training objective of the exact optimum f* of ``X`` at the draws the networks are evaluated on."""

    def work() -> dict[str, Any]:
        x0, s, z = loss_draws(ctx, X, LOSS_DRAWS, smin, smax, stream=stream)
        opt = NoiseAgnostic(X, sigma_min=smin, sigma_max=smax, conditioning="multiplicative")
        return {"loss": dsm_loss(opt, x0, s, z, "sigma2")}

    return ctx.stages.run(name, {**conf, "draws": LOSS_DRAWS}, work)


def _trained(cfg: KimConfig, ctx: Context, toy: _Toy) -> dict[tuple[int, int], dict[str, Any]]:
    smin, smax = cfg.net_sigma_min, toy.sigma_max
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for n in cfg.train_sizes:
        X = toy.train[:n]
        spec = net_spec(cfg.net, (2,), "multiplicative", sigma_data=1.0)
        conf = {**_base(cfg, ctx), "n": n, "net": asdict(cfg.net), "steps": list(cfg.checkpoints), "sigma_max": smax,
                "net_sigma_min": smin}
        res = train_checkpoints(ctx, f"kim.train_n{n}", conf, spec, X, cfg.net, cfg.checkpoints,
                                sigma_dist="loguniform", sigma_min=smin, sigma_max=smax)
        opt = _optimum_loss(ctx, f"kim.optimum_loss_n{n}", {**_base(cfg, ctx), "n": n, "sigma_max": smax,
                                                              "net_sigma_min": smin}, X, smin, smax, stream=10)
        for step in res["steps"]:
            aconf = {**conf, "step": step, "samples": cfg.n_net_samples, "starts": cfg.n_fixed_point_starts,
                     "heldout": cfg.n_heldout}

            def work(step: int = step, X: Tensor = X) -> dict[str, Any]:
                net = load_checkpoint(res, step, ctx.device, (2,))
                a = _analyse(ctx, net, X, toy.heldout, sigma_min=smin, sigma_max=smax, n_samples=cfg.n_net_samples,
                             n_starts=cfg.n_fixed_point_starts, stream=3, fid_net=None, merge_tol=1e-3)
                x0, s, z = loss_draws(ctx, X, LOSS_DRAWS, smin, smax, stream=10)
                a["loss"] = dsm_loss(net, x0, s, z, "sigma2")
                return a

            out[(n, step)] = ctx.stages.run(f"kim.analyse_n{n}_s{step}", aconf, work)
            out[(n, step)]["net_result"] = res
            out[(n, step)]["loss_opt"] = opt["loss"]
    return out


def _trained_images(cfg: KimConfig, ctx: Context) -> Optional[dict[tuple[int, int], dict[str, Any]]]:
    if not cfg.image_sizes:
        return None
    n_max = max(cfg.image_sizes)
    train_all = sd_data.load(cfg.image_data, split="train", n=n_max, seed=ctx.seed).to(ctx.device)
    heldout = sd_data.load(cfg.image_data, split="test", seed=ctx.seed).to(ctx.device)
    shape = tuple(train_all.shape[1:])
    smin = cfg.image_sigma_min
    smax = float(sample.max_pairwise_distance(train_all))
    fid_net = cfg.image_data if cfg.image_data in ("digits", "mnist") else None
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for n in cfg.image_sizes:
        X = train_all[:n]
        spec = net_spec(cfg.image_net, shape, "multiplicative")
        conf = {"data": cfg.image_data, "seed": ctx.seed, "device": ctx.device.type, "n": n,
                "net": asdict(cfg.image_net), "steps": list(cfg.image_checkpoints), "sigma_min": smin, "sigma_max": smax}
        res = train_checkpoints(ctx, f"kim.img_train_n{n}", conf, spec, X, cfg.image_net, cfg.image_checkpoints,
                                sigma_dist="loguniform", sigma_min=smin, sigma_max=smax)
        opt = _optimum_loss(ctx, f"kim.img_optimum_loss_n{n}", {k: v for k, v in conf.items() if k not in ("net", "steps")},
                            X, smin, smax, stream=12)
        for step in res["steps"]:
            aconf = {**conf, "step": step, "samples": cfg.n_image_samples}

            def work(step: int = step, X: Tensor = X) -> dict[str, Any]:
                net = load_checkpoint(res, step, ctx.device, shape)
                a = _analyse(ctx, net, X, heldout, sigma_min=smin, sigma_max=smax, n_samples=cfg.n_image_samples,
                             n_starts=min(32, cfg.n_image_samples), stream=4, fid_net=fid_net, merge_tol=1e-2)
                x0, s, z = loss_draws(ctx, X, LOSS_DRAWS, smin, smax, stream=12)
                a["loss"] = dsm_loss(net, x0, s, z, "sigma2")
                return a

            out[(n, step)] = ctx.stages.run(f"kim.img_analyse_n{n}_s{step}", aconf, work)
            out[(n, step)]["loss_opt"] = opt["loss"]
    return out


def _num(v: Any) -> float:
    """A cached number; ``None`` (how results.json stores a missing value) becomes NaN."""
    return float("nan") if v is None else float(v)


def _eq_cell(v: Any) -> Any:
    """An equilibrium distance for a claims table, or a note when no stable equilibrium was found."""
    return "no stable equilibrium found" if v is None or not math.isfinite(float(v)) else float(v)


def _overfit_claims(prefix: str, what: str, runs: dict[tuple[int, int], dict[str, Any]], sizes: tuple[int, ...],
                    steps: tuple[int, ...]) -> list[Claim]:
    n_min, n_max = min(sizes), max(sizes)
    s_first, s_last = min(steps), max(steps)
    a, b = runs[(n_min, s_first)], runs[(n_min, s_last)]
    excess = lambda r: r["loss"] - r["loss_opt"]  # noqa: E731
    loss_fell = excess(b) < excess(a)
    d_copy = b["copy_fraction"] - a["copy_fraction"]
    eq_a, eq_b = _num(a["eq_dist_median"]), _num(b["eq_dist_median"])
    eq_ok = math.isfinite(eq_a) and math.isfinite(eq_b)
    rho = spearman([excess(runs[(n_min, s)]) for s in steps], [runs[(n_min, s)]["copy_fraction"] for s in steps])
    if not loss_fell or not eq_ok:
        v1 = "inconclusive"
    elif d_copy > 0.05 and eq_b < eq_a:
        v1 = "supported"
    elif d_copy < -0.05 or eq_b > 1.5 * eq_a:
        v1 = "not supported"
    else:
        v1 = "inconclusive"
    c1 = Claim(
        f"{prefix}a", f"{what}: as the training loss falls (checkpoints along training, N = {n_min}), stable "
        "equilibria move toward training points and memorization rises",
        "Kim 2026 Thm 4.4, §4.2",
        {"excess_loss_first": excess(a), "excess_loss_last": excess(b), "copy_first": a["copy_fraction"],
         "copy_last": b["copy_fraction"], "eq_dist_first": _eq_cell(eq_a), "eq_dist_last": _eq_cell(eq_b), "spearman_loss_copy": corr_cell(rho)},
        "excess loss (network - optimum, same draws) falls from the first to the last checkpoint; supported if the "
        "copy fraction rises by > 0.05 and the median distance of stable equilibria to the nearest training point "
        "(in sigma_min) falls; not supported if the copy fraction falls by > 0.05 or that distance grows by > 50%",
        v1 if (eq_ok or v1 == "inconclusive") else "inconclusive",
    )
    fa, fb = runs[(n_min, s_last)], runs[(n_max, s_last)]
    rho_n = spearman(list(sizes), [runs[(n, s_last)]["copy_fraction"] for n in sizes])
    if fa["copy_fraction"] >= fb["copy_fraction"] + 0.2:
        v2 = "supported"
    elif max(fa["copy_fraction"], fb["copy_fraction"]) < 0.05:
        v2 = "inconclusive"  # neither network copies yet: the measurement cannot tell the sizes apart
    elif fa["copy_fraction"] <= fb["copy_fraction"]:
        v2 = "not supported"
    else:
        v2 = "inconclusive"
    c2 = Claim(
        f"{prefix}b", f"{what}: the smaller the training set, the more the trained network memorizes "
        f"(final checkpoint, step {s_last})", "Kim 2026 Thm 4.4, §4.2",
        {f"copy_N{n_min}": fa["copy_fraction"], f"copy_N{n_max}": fb["copy_fraction"],
         f"eq_dist_N{n_min}": _eq_cell(fa["eq_dist_median"]), f"eq_dist_N{n_max}": _eq_cell(fb["eq_dist_median"]),
         "spearman_N_copy": corr_cell(rho_n)},
        f"copy fraction at N = {n_min} exceeds that at N = {n_max} by >= 0.2: supported; both below 0.05: "
        f"inconclusive (neither memorizes yet); otherwise not larger: not supported",
        v2 if all(math.isfinite(float(v)) for v in (fa["copy_fraction"], fb["copy_fraction"])) else "inconclusive",
    )
    return [c1, c2]


def _early_stop_claim(cfg: KimConfig, runs: dict[tuple[int, int], dict[str, Any]], nn_heldout: float,
                      copy_heldout: float, sw_floor: float) -> tuple[Claim, int]:
    n_max = max(cfg.train_sizes)
    best = min(cfg.checkpoints, key=lambda s: runs[(n_max, s)]["sw"])
    r = runs[(n_max, best)]
    new = r["copy_fraction"] <= copy_heldout + 0.05 and r["nn_median"] >= 0.5 * nn_heldout
    good = r["sw"] <= 2.0 * sw_floor
    return Claim(
        "kim.3c", f"With early stopping (N = {n_max}, checkpoint with the lowest sliced Wasserstein to held-out "
        f"data: step {best}) samples are new yet good", "Kim 2026 §4.2",
        {"copy_fraction": r["copy_fraction"], "copy_fraction_heldout": copy_heldout, "nn_median": r["nn_median"],
         "nn_median_heldout": nn_heldout, "sw": r["sw"], "sw_data_floor": sw_floor},
        "new: copy fraction <= that of held-out data + 0.05 and median NN distance to the training set >= 0.5 x that "
        "of held-out data; "
        "good: SW to held-out <= 2 x SW of an independent data draw of the same size",
        judge(new and good),
    ), best


def _field_figure(cfg: KimConfig, ctx: Context, toy: _Toy, runs: dict[tuple[int, int], dict[str, Any]],
                  early: int) -> Figure:
    n_min, n_max = min(cfg.train_sizes), max(cfg.train_sizes)
    s_last = max(cfg.checkpoints)
    panel_list = [(n_min, s_last, "overfit"), (n_max, early, "early-stopped")]
    conf = {**_base(cfg, ctx), "panels": [list(p[:2]) for p in panel_list], "net": asdict(cfg.net),
            "steps": list(cfg.checkpoints), "grid": cfg.basin_grid}
    (xl, yl) = toy.lim
    smax = toy.sigma_max

    def work() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, (n, step, _) in enumerate(panel_list):
            net = load_checkpoint(runs[(n, step)]["net_result"], step, ctx.device, (2,))
            g = plot.grid_2d(xl, yl, conf["grid"], device=ctx.device)
            X = toy.train[:n]
            fp = dynamics.fixed_points(net.field, torch.cat([g, X[:128]]), tol=1e-6, max_iter=40).unique(1e-3)
            st = fp.select(fp.stable)
            labels, _ = dynamics.basins(net.field, g, tau=2 * smax, n_steps=120, attractors=st.points,
                                        tol=max(0.05, K_SIGMA * cfg.net_sigma_min))
            out[f"p{i}_labels"], out[f"p{i}_points"], out[f"p{i}_kinds"] = labels, fp.points, list(fp.kind)
        return out

    f = ctx.stages.run("kim.field_figure", conf, work)
    fig, axes = figure(1, len(panel_list), (6.0, 5.4))
    for i, (n, step, label) in enumerate(panel_list):
        ax = axes[i]
        net = load_checkpoint(runs[(n, step)]["net_result"], step, torch.device("cpu"), (2,))
        plot.basins_2d(f[f"p{i}_labels"], xl, yl, n=conf["grid"], ax=ax)
        plot.field_2d(net.field, xl, yl, n=40, ax=ax)
        X = toy.train[:n].cpu()
        ax.scatter(X[:, 0], X[:, 1], s=10 if n > 100 else 25, color="#2ca02c", zorder=6, label="training points")
        plot.fixed_points_2d(_kinds_only(f[f"p{i}_points"], f[f"p{i}_kinds"]), ax=ax)
        r = runs[(n, step)]
        ax.set_title(f"{label}: multiplicative MLP, N = {n}, step {step}\ncopy fraction {r['copy_fraction']:.2f}, "
                     f"excess loss {r['loss'] - r['loss_opt']:.3g}", fontsize=9)
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
            ex = [max(rr[(n, s)]["loss"] - rr[(n, s)]["loss_opt"], 1e-6) for s in steps]
            axes[0].plot(ex, [rr[(n, s)]["copy_fraction"] for s in steps], ls, marker="o", label=f"{name} N={n}")
            axes[1].plot(ex, [_num(rr[(n, s)]["eq_dist_median"]) for s in steps], ls, marker="o", label=f"{name} N={n}")
            axes[2].plot(ex, [rr[(n, s)]["sw"] for s in steps], ls, marker="o", label=f"{name} N={n}")
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


def _trained_section(cfg: KimConfig, toy: _Toy, runs: dict, img: Optional[dict], img_note: str,
                     figs: list[Figure], early_claim: Claim) -> Section:
    claims = _overfit_claims("kim.3", f"2-D {cfg.toy}", runs, cfg.train_sizes, cfg.checkpoints) + [early_claim]
    if img:
        claims += _overfit_claims("kim.3d.", f"{cfg.image_data} images", img, cfg.image_sizes, cfg.image_checkpoints)
    rows = []
    for name, rr, sizes, steps in [(cfg.toy, runs, cfg.train_sizes, cfg.checkpoints)] + (
            [(cfg.image_data, img, cfg.image_sizes, cfg.image_checkpoints)] if img else []):
        for n in sizes:
            for s in steps:
                r = rr[(n, s)]
                rows.append([name, n, s, r["loss"], r["loss"] - r["loss_opt"], r["copy_fraction"],
                             r["within_k_sigma"], r["nn_median"], r["n_stable"], r["eq_dist_median"],
                             r["eq_near_fraction"], r["sw"], r.get("fid")])
    table = Table("kim_trained", "Trained multiplicative networks at each checkpoint",
                  ["data", "N", "step", "loss", "excess loss", "copy frac.", "within 3 sigma_min", "NN median",
                   "stable eq.", "eq. dist / sigma_min", "eq. within 3 sigma_min", "SW", "FID"], rows,
                  "loss: the training objective E|f(x0 + sigma z) + z|^2 / d at fixed draws; excess: minus the same "
                  "for the exact optimum f* of that training set. Samples: probability-flow ODE (= autonomous ODE, "
                  "Dormand-Prince, rtol 1e-4). Stable equilibria: Newton from sample endpoints and training points.")
    text = (f"MLPs ({cfg.net.hidden} wide, {cfg.net.depth} deep) with multiplicative conditioning trained by "
            f"denoising score matching (lambda = sigma^2, sigma log-uniform on [{cfg.net_sigma_min}, "
            f"{sig(toy.sigma_max)}]) on nested subsets of {cfg.toy}. " + img_note)
    return Section("3. Trained multiplicative networks: overfitting and early stopping", text, claims, [table], figs)


# ------------------------------------------------------------------------------ 4. samplers


def _samplers(cfg: KimConfig, ctx: Context, toy: _Toy, runs: dict) -> dict[str, Any]:
    n, step = max(cfg.train_sizes), max(cfg.checkpoints)
    res = runs[(n, step)]["net_result"]
    smin, smax = cfg.net_sigma_min, toy.sigma_max
    conf = {**_base(cfg, ctx), "n": n, "step": step, "net": asdict(cfg.net), "samples": cfg.n_net_samples,
            "heun": cfg.heun_steps, "rtol": cfg.sampler_rtol, "T": 5, "L": cfg.n_levels, "heldout": cfg.n_heldout}

    def work() -> dict[str, Any]:
        net = load_checkpoint(res, step, ctx.device, (2,))
        X = toy.train[:n]
        x0 = start_noise(ctx, 5, cfg.n_net_samples, (2,), smax)
        levels, eps = _geometric(smax, smin, cfg.n_levels, conf["T"])
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=smin, sigma_max=smax)
        runs_: dict[str, tuple[Tensor, int]] = {}
        for name in ("annealed Langevin", "annealed Langevin (no noise)", "PF-ODE Heun", "PF-ODE adaptive",
                     "autonomous ODE"):
            c = sample.CountNFE(net)
            if name == "annealed Langevin":
                x = sample.annealed_langevin(c, x0, levels, n_steps_each=conf["T"], step_lr=eps,
                                             seeds=seeds(ctx.seed, 6, cfg.n_net_samples), progress=ctx.progress)
            elif name == "annealed Langevin (no noise)":
                x = sample.annealed_langevin(c, x0, levels, n_steps_each=conf["T"], step_lr=eps, noise=False)
            elif name == "PF-ODE Heun":
                x = sample.heun(c, x0, karras, progress=ctx.progress)
            elif name == "PF-ODE adaptive":
                x = sample.ode_adaptive(c, x0, sigma_min=smin, sigma_max=smax, rtol=cfg.sampler_rtol, atol=cfg.sampler_rtol).x
            else:
                x = sample.autonomous(c, x0, smax - smin, rtol=cfg.sampler_rtol, atol=cfg.sampler_rtol, method="dopri5").x
            runs_[name] = (x, c.nfe)
        out: dict[str, Any] = {"names": list(runs_)}
        for i, (name, (x, nfe)) in enumerate(runs_.items()):
            m = memorization(x, X, smin, K_SIGMA)
            out[f"s{i}"] = x
            out[f"m{i}"] = {"nfe": nfe, "sw": quality(x, toy.heldout, seed=ctx.seed, fid_net=None)["sw"], **m}
        out["dev_auto_pf"] = float((runs_["PF-ODE adaptive"][0] - runs_["autonomous ODE"][0]).norm(dim=1).max())
        return out

    return ctx.stages.run("kim.samplers", conf, work)


def _sampler_section(cfg: KimConfig, toy: _Toy, s: dict[str, Any], sw_floor: float) -> Section:
    names = s["names"]
    rows = [[nm, s[f"m{i}"]["nfe"], s[f"m{i}"]["sw"], s[f"m{i}"]["copy_fraction"], s[f"m{i}"]["nn_median"]]
            for i, nm in enumerate(names)]
    sw = {nm: s[f"m{i}"]["sw"] for i, nm in enumerate(names)}
    nfe = {nm: s[f"m{i}"]["nfe"] for i, nm in enumerate(names)}
    best_other = min(sw["annealed Langevin"], sw["PF-ODE Heun"], sw["PF-ODE adaptive"])
    ratio = sw["autonomous ODE"] / best_other
    claim = Claim(
        "kim.4", "Sampling with the autonomous ODE dx/dtau = f(x) gives samples as good as annealed Langevin "
        "and the probability-flow ODE of the same multiplicative network", "Kim 2026 §4.1, §5",
        {"sw_autonomous": sw["autonomous ODE"], "sw_langevin": sw["annealed Langevin"], "sw_pf_heun": sw["PF-ODE Heun"],
         "ratio_to_best": ratio, "nfe_autonomous": nfe["autonomous ODE"], "nfe_langevin": nfe["annealed Langevin"],
         "max_dev_autonomous_vs_pf_adaptive": s["dev_auto_pf"]},
        f"SW(autonomous) / min SW(other samplers) <= 1.25: supported; > 2: not supported; else inconclusive "
        f"(data-vs-data SW floor {sig(sw_floor)})",
        "supported" if ratio <= 1.25 else "not supported" if ratio > 2 else "inconclusive",
    )
    table = Table("kim_samplers", "Samplers on the same trained network (largest N, last checkpoint)",
                  ["sampler", "NFE", "SW to held-out", "copy frac.", "NN median"], rows,
                  "Annealed Langevin: NCSNv2 Algorithm 1, geometric grid, 5 steps per level, Technique-4 step size. "
                  "PF-ODE Heun: Karras grid. Adaptive solvers: Dormand-Prince.")
    fig, axes = figure(1, len(names), (3.8, 2.6))
    hx = toy.heldout.cpu()
    for i, nm in enumerate(names):
        ax = axes[i]
        ax.scatter(hx[:, 0], hx[:, 1], s=2, color="0.75", label="held-out")
        x = s[f"s{i}"].cpu()
        ax.scatter(x[:, 0], x[:, 1], s=3, color="#1f77b4", label="samples")
        ax.set_title(f"{nm}\nNFE {s[f'm{i}']['nfe']}, SW {s[f'm{i}']['sw']:.3f}", fontsize=9)
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
    runs = _trained(cfg, ctx, toy)
    notes: list[str] = []
    img = None
    img_note = ""
    if cfg.image_sizes:
        if ctx.time_left() > 0.25 * ctx.budget_s:
            img = _trained_images(cfg, ctx)
            img_note = (f"The same on {cfg.image_data} images ({cfg.image_net.arch.upper()}, subsets of "
                        f"{', '.join(map(str, cfg.image_sizes))} images).")
        else:
            img_note = f"The {cfg.image_data} part was skipped: the study's time budget was spent."
            notes.append(img_note)
    big = toy.train[: max(cfg.train_sizes)]
    held = memorization(toy.heldout[: cfg.n_net_samples], big, cfg.net_sigma_min, K_SIGMA)
    sw_floor = quality(toy.fresh, toy.heldout, seed=ctx.seed, fid_net=None)["sw"]
    early_claim, early = _early_stop_claim(cfg, runs, held["nn_median"], held["copy_fraction"], sw_floor)
    figs = [_field_figure(cfg, ctx, toy, runs, early), _overfit_figure(cfg, runs, img)]
    smp = _samplers(cfg, ctx, toy, runs)
    sections = [
        _reduction_section(cfg, red),
        _exact_section(cfg, ex, _exact_figures(cfg, toy, ex)),
        _trained_section(cfg, toy, runs, img, img_note, figs, early_claim),
        _sampler_section(cfg, toy, smp, sw_floor),
    ]
    summary = ("Kim shows that a network whose output is f(x)/sigma samples by following the autonomous flow "
               "dx/dtau = f(x), that the optimum of its training loss is a gradient-like flow of a smoothed density "
               "L whose stable equilibria sit at the training points, and hence that driving the training loss to "
               "its minimum makes the sampler memorize.")
    return StudyReport("kim", TITLE, PAPERS, summary, sections, notes)
