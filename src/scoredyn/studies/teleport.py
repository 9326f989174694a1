"""Study ``teleport``: Wang & Vastola, "The Hidden Linear Structure in Score-Based Models and its
Application" (arXiv:2311.10892).

1. How much of a trained network's score the Gaussian, Gaussian-mixture (several K) and empirical
   scores explain, per noise level (the fraction of unexplained variance,
   ``scoredyn.metrics.unexplained_variance``): the Gaussian dominates at moderate to high noise, a
   coarse mixture beats both the Gaussian and the training-set score at low noise, and the
   Gaussian part is learned early in training.
2. Analytical teleportation (``scoredyn.sample.with_teleport``): jump in closed form through the
   first part of sampling; with Heun, DPM-Solver++(2M) and UniPC at several NFE, the claim is
   that 15-30% of the steps can be skipped at no loss of quality.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

import numpy as np

from .. import data as sd_data
from .. import metrics, sample
from ..analytic import Empirical, Gaussian, GaussianMixture
from ..plot import figure
from .common import image_grid, load_checkpoint, net_spec, quality, start_noise, train_checkpoints
from .config import TeleportConfig
from .report import Claim, Figure, Section, StudyReport, Table, figure_png, sig
from .stages import Context

TITLE = "Wang & Vastola: the hidden linear (Gaussian) structure of learned scores, and analytical teleportation"
PAPERS = ("B. Wang, J. J. Vastola, The Hidden Linear Structure in Score-Based Models and its Application, "
          "arXiv:2311.10892")
SKIP_BAND = (0.15, 0.30)  # the paper's "first 15-30% of steps"
NO_LOSS = 1.05  # "no loss": quality within 5% of the unskipped run (same seeds)
VERSION = 1  # bump when a stage's output changes in a way its configuration does not show


class _Images:
    def __init__(self, cfg: TeleportConfig, ctx: Context) -> None:
        self.train = sd_data.load(cfg.data, split="train", n=cfg.n_train, seed=ctx.seed).to(ctx.device)
        self.heldout = sd_data.load(cfg.data, split="test", seed=ctx.seed)[: cfg.n_heldout].to(ctx.device)
        self.shape = tuple(self.train.shape[1:])
        self.sigma_data = float(self.train.std())
        self.fid_net: Optional[str] = cfg.data if (cfg.fid and cfg.data in ("digits", "mnist")) else None


def _base(cfg: TeleportConfig, ctx: Context) -> dict[str, Any]:
    return {"v": VERSION, "data": cfg.data, "n_train": cfg.n_train, "seed": ctx.seed, "device": ctx.device.type}


def _net(cfg: TeleportConfig, ctx: Context, im: _Images) -> tuple[dict[str, Any], list[int]]:
    steps = sorted({max(1, cfg.net.steps // 8), cfg.net.steps})
    spec = net_spec(cfg.net, im.shape, "edm", sigma_data=0.5)
    conf = {**_base(cfg, ctx), "net": asdict(cfg.net), "steps": steps, "sigma_min": cfg.sigma_min,
            "sigma_max": cfg.sigma_max}
    res = train_checkpoints(ctx, "teleport.train_edm", conf, spec, im.train, cfg.net, steps, sigma_dist="lognormal",
                            sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)
    return res, steps


# ------------------------------------------------------------------ 1. unexplained variance


def _uv(cfg: TeleportConfig, ctx: Context, im: _Images, res: dict[str, Any], steps: list[int]) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "net": asdict(cfg.net), "steps": steps, "sigmas": list(cfg.uv_sigmas), "n": cfg.uv_n,
            "K": list(cfg.gmm_components)}

    def work() -> dict[str, Any]:
        models: dict[str, Any] = {"Gaussian": Gaussian.fit(im.train)}
        for k in cfg.gmm_components:
            models[f"GMM K={k}"] = GaussianMixture.fit(im.train, k, seed=ctx.seed)
        models["empirical (training set)"] = Empirical(im.train)
        out: dict[str, Any] = {"models": list(models), "steps": steps}
        for step in steps:
            net = load_checkpoint(res, step, ctx.device, im.shape)
            for name, m in models.items():
                uv = metrics.unexplained_variance(net, m, im.train, list(cfg.uv_sigmas), n=cfg.uv_n, seed=ctx.seed)
                out[f"{step}|{name}"] = [float(v) for v in uv]
        return out

    return ctx.stages.run("teleport.unexplained_variance", conf, work)


def _uv_section(cfg: TeleportConfig, im: _Images, uv: dict[str, Any]) -> Section:
    sig_ = list(cfg.uv_sigmas)
    final, early = max(uv["steps"]), min(uv["steps"])
    g = uv[f"{final}|Gaussian"]
    gmms = [m for m in uv["models"] if m.startswith("GMM")]
    emp = uv[f"{final}|empirical (training set)"]
    hi = [i for i, s in enumerate(sig_) if s >= 2 * im.sigma_data]
    worst_hi = max(g[i] for i in hi) if hi else float("nan")
    # the smallest sigma from which on the Gaussian explains >= 90% of the network's score
    above = None
    for i in range(len(sig_) - 1, -1, -1):
        if g[i] <= 0.1:
            above = sig_[i]
        else:
            break
    c1 = Claim("teleport.1a", "The Gaussian (linear) score explains the trained network's score at moderate to high "
               "noise", "Wang & Vastola, abstract and §4",
               {"max_uv_gaussian_high_noise": worst_hi, "high_noise_from_sigma": 2 * im.sigma_data,
                "gaussian_ok_from_sigma": above if above is not None else "none"},
               "unexplained variance of the Gaussian <= 0.1 at every sigma >= 2 sigma_data: supported; > 0.3 at any "
               "of them: not supported; else inconclusive",
               "inconclusive" if not hi else "supported" if worst_hi <= 0.1 else
               "not supported" if worst_hi > 0.3 else "inconclusive")
    lo = [0, 1] if len(sig_) > 2 else [0]
    best_gmm = [min(uv[f"{final}|{m}"][i] for m in gmms) for i in lo] if gmms else []
    c2 = Claim("teleport.1b", "At low noise a Gaussian mixture explains the network better than the single Gaussian",
               "Wang & Vastola, abstract",
               {**{f"uv_gaussian_sigma{sig_[i]:g}": g[i] for i in lo},
                **{f"uv_best_gmm_sigma{sig_[i]:g}": b for i, b in zip(lo, best_gmm)}},
               f"best mixture's unexplained variance below the Gaussian's at the {len(lo)} smallest sigmas",
               "supported" if best_gmm and all(b < g[i] for i, b in zip(lo, best_gmm)) else "not supported")
    i0 = 0
    b0 = min(uv[f"{final}|{m}"][i0] for m in gmms) if gmms else float("nan")
    c3 = Claim("teleport.1c", "At low noise the network is closer to a coarse-grained (mixture) score than to the "
               "training set's own (empirical) score, consistent with generalization", "Wang & Vastola, abstract",
               {f"uv_best_gmm_sigma{sig_[i0]:g}": b0, f"uv_empirical_sigma{sig_[i0]:g}": emp[i0]},
               "best mixture's unexplained variance below the empirical score's at the smallest sigma",
               "supported" if b0 < emp[i0] else "not supported")
    mid = [i for i, s in enumerate(sig_) if 0.1 <= s <= 2 * im.sigma_data] or list(range(len(sig_)))
    others = [m for m in uv["models"] if m != "Gaussian"]

    def gauss_ratio(step: int) -> float:
        """Mean over intermediate sigmas of UV(Gaussian) / UV(best richer model): 1 = the Gaussian is as good."""
        return float(np.mean([uv[f"{step}|Gaussian"][i] / min(uv[f"{step}|{m}"][i] for m in others) for i in mid]))

    re_, rf = gauss_ratio(early), gauss_ratio(final)
    c4 = Claim("teleport.1d", "The Gaussian structure is learned first: early in training the network is explained "
               "by the Gaussian about as well as by richer models (mixtures, empirical score); the advantage of the "
               "richer models appears later", "Wang & Vastola, abstract",
               {"early_step": early, "final_step": final, "gauss_over_best_early": re_, "gauss_over_best_final": rf},
               "mean over 0.1 <= sigma <= 2 sigma_data of UV(Gaussian) / UV(best richer model) lower at the early "
               "checkpoint than at the end",
               "supported" if early < final and re_ < rf else "inconclusive" if early == final else "not supported")
    ge, gf = float(np.mean([uv[f"{early}|Gaussian"][i] for i in mid])), float(np.mean([g[i] for i in mid]))
    c5 = Claim("teleport.1e", "In absolute terms, an early checkpoint is closer to the Gaussian score than the final "
               "network at intermediate noise", "Wang & Vastola, abstract (a stricter reading of 1d)",
               {"early_step": early, "final_step": final, "mean_uv_gaussian_early": ge, "mean_uv_gaussian_final": gf},
               "mean Gaussian unexplained variance over 0.1 <= sigma <= 2 sigma_data lower at the early checkpoint",
               "supported" if early < final and ge < gf else "inconclusive" if early == final else "not supported")
    rows = [[m, *[uv[f"{final}|{m}"][i] for i in range(len(sig_))]] for m in uv["models"]]
    if early != final:
        rows.append([f"Gaussian (early, step {early})", *uv[f"{early}|Gaussian"]])
    t = Table("teleport_uv", f"Fraction of the network's score variance unexplained, per sigma (final step {final})",
              ["model"] + [f"sigma={s:g}" for s in sig_], rows,
              f"E|s_net - s_model|^2 / E|s_net|^2 at x0 + sigma z over {cfg.uv_n} training images x0 "
              f"(scoredyn.metrics.unexplained_variance); data std sigma_data = {sig(im.sigma_data)}.")
    fig, ax = figure(1, 1, (7.5, 5.0))
    for m in uv["models"]:
        ax.plot(sig_, uv[f"{final}|{m}"], marker="o", label=m)
    if early != final:
        ax.plot(sig_, uv[f"{early}|Gaussian"], ls="--", color="C0", label=f"Gaussian vs early net (step {early})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise level sigma")
    ax.set_ylabel("unexplained variance of the network's score")
    ax.axvline(2 * im.sigma_data, color="k", lw=0.6, ls=":")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(f"How much of an EDM network's score analytical models explain ({cfg.data})", fontsize=9)
    f = Figure("teleport_unexplained_variance", "Wang & Vastola: unexplained variance of the trained network's score "
               "by the Gaussian, Gaussian mixtures and the empirical score, per noise level (dotted: 2 sigma_data).",
               figure_png(fig))
    text = (f"EDM-preconditioned MLP ({cfg.net.hidden}x{cfg.net.depth}, {cfg.net.steps} steps) trained on "
            f"{cfg.n_train} {cfg.data} images; Gaussian and k-means mixtures fitted to the same images.")
    return Section("1. The Gaussian structure of a learned score", text, [c1, c2, c3, c4, c5], [t], [f])


# ------------------------------------------------------------------------------- 2. skip sweep


def _grid_size(name: str, nfe: int) -> int:
    """Karras levels giving about ``nfe`` evaluations (Heun: 2n - 1; one-evaluation-per-step solvers: n)."""
    return max(2, (nfe + 1) // 2) if name == "heun" else max(2, nfe)


def _skip(cfg: TeleportConfig, ctx: Context, im: _Images, res: dict[str, Any]) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "net": asdict(cfg.net), "samplers": list(cfg.samplers), "nfes": list(cfg.nfes),
            "fractions": list(cfg.skip_fractions), "n": cfg.n_samples, "fid": cfg.fid, "heldout": cfg.n_heldout,
            "sigma_min": cfg.sigma_min, "sigma_max": cfg.sigma_max}

    def work() -> dict[str, Any]:
        from tqdm.auto import tqdm

        net = load_checkpoint(res, cfg.net.steps, ctx.device, im.shape)
        gauss = Gaussian.fit(im.train)
        x0 = start_noise(ctx, 30, cfg.n_samples, im.shape, cfg.sigma_max)
        rows = []
        keep: dict[str, Any] = {}
        jobs = [(s, n) for s in cfg.samplers for n in cfg.nfes]
        for name, nfe in tqdm(jobs, desc="skip sweep", disable=not ctx.progress):
            fn = sample.SAMPLERS[name]
            n_steps = _grid_size(name, nfe)
            grid = sample.sigmas_karras(n_steps, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max)
            ref = None
            for frac in cfg.skip_fractions:
                j = int(round(frac * n_steps))
                counted = sample.CountNFE(net)
                if j == 0:
                    x = fn(counted, x0, grid)
                    sigma_skip = float(grid[0])
                else:
                    sigma_skip = float(grid[j])
                    x = sample.with_teleport(fn, gauss, sigma_skip)(counted, x0, grid)
                q = quality(x, im.heldout, seed=ctx.seed, fid_net=im.fid_net)
                if ref is None:
                    ref = x
                dist = float((x - ref).flatten(1).norm(dim=1).mean() / (ref.flatten(1).norm(dim=1).mean()))
                rows.append({"sampler": name, "nfe_target": nfe, "steps": n_steps, "fraction": frac,
                             "steps_skipped": j, "sigma_skip": sigma_skip, "nfe": counted.nfe, "dist_to_unskipped": dist,
                             **q})
                if name == cfg.samplers[0] and nfe == max(cfg.nfes) and frac in (0.0, max(cfg.skip_fractions)):
                    keep[f"s_{frac:g}"] = x
        return {"rows": rows, **keep}

    return ctx.stages.run("teleport.skip_sweep", conf, work)


def _skip_section(cfg: TeleportConfig, im: _Images, sk: dict[str, Any]) -> Section:
    rows = sk["rows"]
    qk = "fid" if "fid" in rows[0] else "sw"
    qname = "FID" if qk == "fid" else "sliced W2"
    nmax = max(cfg.nfes)
    in_band = [f for f in cfg.skip_fractions if SKIP_BAND[0] - 1e-9 <= f <= SKIP_BAND[1] + 1e-9]
    ratios: dict[str, float] = {}
    for name in cfg.samplers:
        base = next(r for r in rows if r["sampler"] == name and r["nfe_target"] == nmax and r["fraction"] == 0.0)
        for f in in_band:
            r = next(r for r in rows if r["sampler"] == name and r["nfe_target"] == nmax and r["fraction"] == f)
            ratios[f"{qk}_ratio[{name},{f:g}]"] = r[qk] / base[qk]
    worst = max(ratios.values()) if ratios else float("nan")
    verdict = ("inconclusive" if not ratios else "supported" if worst <= NO_LOSS else
               "not supported" if worst > 1.2 else "inconclusive")
    claim = Claim("teleport.2", "Analytical teleportation skips the first 15-30% of sampling steps at no loss of "
                  "quality, with any solver", "Wang & Vastola, abstract and §5 (FID 1.93 with 15-30% skipped)",
                  {**ratios, "worst_ratio": worst} if ratios else {"fractions_in_band": 0},
                  f"at the largest NFE ({nmax}), {qname}(skipped) / {qname}(unskipped, same seeds) <= {NO_LOSS} for every "
                  f"solver and every tested fraction in [{SKIP_BAND[0]}, {SKIP_BAND[1]}]: supported; any > 1.2: not "
                  "supported; else inconclusive", verdict)
    # the largest skip fraction with no loss, per solver and NFE
    best_rows = []
    for name in cfg.samplers:
        for nfe in cfg.nfes:
            rr = [r for r in rows if r["sampler"] == name and r["nfe_target"] == nfe]
            base = rr[0][qk]
            ok = [r["fraction"] for r in rr if r[qk] <= NO_LOSS * base]
            best_rows.append([name, nfe, rr[0]["nfe"], max(ok), base])
    t1 = Table("teleport_skip", "Skip sweep: quality against held-out data vs the fraction of steps skipped",
               ["solver", "NFE target", "skipped frac.", "steps skipped", "sigma_skip", "NFE", "SW", "FID", "KID",
                "rel. distance to unskipped"],
               [[r["sampler"], r["nfe_target"], r["fraction"], r["steps_skipped"], r["sigma_skip"], r["nfe"], r["sw"],
                 r.get("fid"), r.get("kid"), r["dist_to_unskipped"]] for r in rows],
               "Karras grid (rho = 7) from sigma_max to sigma_min; the jump goes to grid point j = round(fraction x "
               "steps) and the solver continues on the same grid. Distance: mean |x_skip - x_0| / mean |x_0| over "
               "samples from the same seeds.")
    t2 = Table("teleport_skip_best", f"Largest tested fraction skipped with {qname} within {NO_LOSS}x of the unskipped run",
               ["solver", "NFE target", "NFE unskipped", "largest no-loss fraction", f"{qname} unskipped"], best_rows)
    fig, axes = figure(1, len(cfg.samplers) + 1, (4.2, 3.9))
    for ax, name in zip(axes, cfg.samplers):
        for nfe in cfg.nfes:
            rr = [r for r in rows if r["sampler"] == name and r["nfe_target"] == nfe]
            ax.plot([r["fraction"] for r in rr], [r[qk] for r in rr], marker="o", label=f"NFE {rr[0]['nfe']}")
        ax.axvspan(*SKIP_BAND, color="0.9")
        ax.set_xlabel("fraction of steps skipped (teleported)")
        ax.set_ylabel(f"{qname} to held-out")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for name in cfg.samplers:
        rr = [r for r in rows if r["sampler"] == name and r["nfe_target"] == nmax]
        ax.plot([r["fraction"] for r in rr], [r["dist_to_unskipped"] for r in rr], marker="o", label=name)
    ax.axvspan(*SKIP_BAND, color="0.9")
    ax.set_xlabel("fraction of steps skipped")
    ax.set_ylabel("rel. distance to the unskipped samples")
    ax.set_title(f"same seeds, NFE target {nmax}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    f1 = Figure("teleport_skip_sweep", "Wang & Vastola: sample quality against the fraction of steps replaced by the "
                "closed-form Gaussian jump (grey band: the paper's 15-30%).", figure_png(fig))
    figs = [f1]
    kept = sorted(k for k in sk if k.startswith("s_"))
    if len(kept) == 2 and len(im.shape) == 3:
        fig, axes = figure(1, 2, (4.0, 4.2))
        for ax, k in zip(axes, kept):
            image_grid(ax, sk[k], 8, f"{cfg.samplers[0]}, NFE target {nmax}, skipped fraction {k[2:]}")
        figs.append(Figure("teleport_samples", "Samples from the same seeds without and with the largest tested skip.",
                           figure_png(fig)))
    return Section("2. Analytical teleportation: skipping the first steps", "", [claim], [t1, t2], figs)


def run(cfg: TeleportConfig, ctx: Context) -> StudyReport:
    """Run the teleport study and return its report."""
    im = _Images(cfg, ctx)
    res, steps = _net(cfg, ctx, im)
    uv = _uv(cfg, ctx, im, res, steps)
    sk = _skip(cfg, ctx, im, res)
    summary = ("Wang & Vastola find that a trained network's score is close to the score of a Gaussian fitted to the "
               "data at moderate to high noise, so the first part of sampling can be replaced by the Gaussian model's "
               "closed-form probability-flow solution.")
    notes = []
    if im.fid_net:
        notes.append(metrics.FEATURE_NOTE)
    return StudyReport("teleport", TITLE, PAPERS, summary, [_uv_section(cfg, im, uv), _skip_section(cfg, im, sk)], notes)
