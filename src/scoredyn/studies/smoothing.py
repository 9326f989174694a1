"""Study ``smoothing``: Zhou, Zhang & Wright (2026), "Smoothing the Score Function for Generalization
in Diffusion Models: An Optimization-based Explanation Framework" (arXiv:2601.19285).

1. The empirical score is a sum of Gaussian scores weighted by a sharp softmax: any sampler driven
   by it reproduces training data.
2. Temperature smoothing (dividing the softmax logits by T, constant or ``max(sigma_c/sigma, 1)``,
   optionally over the top-K neighbours) lowers memorization; quality against held-out data is
   reported alongside (the trade-off curve).
3. Noise unconditioning: the optimum of a network that cannot see sigma (``NoiseAgnostic``,
   unconditional) and a trained unconditional network memorize less than noise-conditional ones;
   plain ODE sampling of an unconditional model goes wrong, and steps sized by an estimate of each
   state's noise level (``scoredyn.sample.unconditional_ode``) fix it.

Claims are declared once (``REGISTRY``); trained networks pass the quality gate or the claims
resting on them are inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import Tensor

from .. import data as sd_data
from .. import sample
from ..analytic import Empirical, NoiseAgnostic
from ..plot import figure
from . import thresholds as T
from .claims import ClaimSpec, Criterion, Registry, Source, above, all_of, at_least, at_most, below, ref
from .common import (
    GateNumbers, Trained, corr_cell, gate_numbers, image_grid, load_checkpoint, memorization, nearest, net_spec, network_gate,
    quality, seeds, spearman, start_noise, train_checkpoints,
)
from .config import SmoothingConfig
from .report import Figure, Section, StudyReport, Table, figure_png, sig
from .stages import Context

TITLE = "Zhou et al. (2026): smoothing the score for generalization"
PAPERS = ("X. Zhou, Y. Zhang, J. Wright, Smoothing the Score Function for Generalization in Diffusion Models: "
          "An Optimization-based Explanation Framework, arXiv:2601.19285 (2026)")
K_SIGMA = T.K_SIGMA
VERSION = 2  # bump when a stage's output changes in a way its configuration does not show
ZHOU = "Zhou et al. 2026"
FAMILIES = ("constant T", "T=max(sigma_c/sigma,1)", "constant T, top-K", "T=max(sigma_c/sigma,1), top-K")

# ------------------------------------------------------------------------------ the claims, declared once

REGISTRY = Registry("smoothing")
_c = REGISTRY.add
_c(ClaimSpec(
    "smoothing.1", "The empirical score reproduces training data: samples are copies whatever the sampler",
    Source(ZHOU, "§3 (sampling collapse)"), "paper", ("copy_heun", "copy_dpmpp_2m", "copy_sde", "copy_langevin", "copy_min"),
    Criterion(at_least("copy_min", T.COPY), definitions="copy_min = the smallest copy fraction over the four samplers")))
for _i, _fam in enumerate(FAMILIES):
    _c(ClaimSpec(
        f"smoothing.2{'abcd'[_i]}", f"Memorization falls as the temperature rises ({_fam})",
        Source(ZHOU, "§4 (temperature smoothing)"), "paper", ("copy_T1", "copy_at_max", "spearman", "max_value"),
        Criterion(all_of(at_most("spearman", T.SPEARMAN_TREND), at_most("copy_at_max", ref("copy_T1", offset=-T.COPY_DROP))),
                  not_supported=at_least("copy_at_max", ref("copy_T1")),
                  definitions="spearman = Spearman(setting, copy fraction) over the family's settings")))
_c(ClaimSpec(
    "smoothing.2q", "Smoothing keeps generation quality while it reduces memorization", Source(ZHOU, "abstract"),
    "paper", ("settings_halving_copies", "copy_fraction", "quality", "quality_T1", "ratio"),
    Criterion(at_most("ratio", T.QUALITY_KEEP), not_supported=above("ratio", T.QUALITY_LOST),
              inconclusive_if=below("settings_halving_copies", 1), why="no setting halves the copy fraction",
              definitions="among settings that at least halve the copy fraction, the best quality (FID on the feature "
                          "net, else sliced W2); ratio = quality / quality_T1")))
_c(ClaimSpec(
    "smoothing.3a", "Noise unconditioning mitigates sampling collapse: the optimum of a sigma-blind network "
    "(NoiseAgnostic, unconditional) gives fewer copies than the empirical score, with samples still on the data",
    Source(ZHOU, "§5 (noise unconditioning)"), "paper",
    ("copy_unconditional_optimum", "copy_empirical", "nn_median_unconditional_optimum", "nn_median_heldout",
     "quality_unconditional_optimum", "quality_empirical"),
    Criterion(all_of(at_most("copy_unconditional_optimum", ref("copy_empirical", offset=-T.FEWER_COPIES)),
                     at_most("nn_median_unconditional_optimum", ref("nn_median_heldout", scale=T.ON_DATA_NN))),
              not_supported=above("copy_unconditional_optimum", ref("copy_empirical", offset=-T.FEWER_COPIES)))))
_c(ClaimSpec(
    "smoothing.3b", "A trained unconditional network memorizes no more than a trained noise-conditional (EDM) one, at "
    "comparable quality", Source(ZHOU, "§5 (experiments)"), "paper",
    ("copy_unconditional", "copy_conditional", "quality_unconditional", "quality_conditional", "quality_ratio"),
    Criterion(all_of(at_most("copy_unconditional", ref("copy_conditional", offset=T.COPY_NONE)),
                     at_most("quality_ratio", T.QUALITY_KEEP)),
              not_supported=above("copy_unconditional", ref("copy_conditional", offset=T.COPY_NONE))),
    on_networks=True))
_c(ClaimSpec(
    "smoothing.3c", "Plain probability-flow ODE sampling of an unconditional model goes wrong; steps sized by an "
    "estimate of each state's own noise level (here its nearest training point) fix it",
    Source(ZHOU, "§5 (sampling)", "DESIGN §8"), "paper",
    ("quality_optimum_plain", "quality_optimum_fixed", "quality_net_plain", "quality_net_fixed"),
    Criterion(all_of(below("quality_optimum_fixed", ref("quality_optimum_plain")),
                     below("quality_net_fixed", ref("quality_net_plain"))),
              not_supported=all_of(at_least("quality_optimum_fixed", ref("quality_optimum_plain")),
                                   at_least("quality_net_fixed", ref("quality_net_plain")))),
    on_networks=True))


class _Images:
    def __init__(self, cfg: SmoothingConfig, ctx: Context) -> None:
        self.train = sd_data.load(cfg.data, split="train", n=cfg.n_train, seed=ctx.seed).to(ctx.device)
        test = sd_data.load(cfg.data, split="test", seed=ctx.seed)
        self.heldout = test[: cfg.n_heldout].to(ctx.device)
        self.shape = tuple(self.train.shape[1:])
        self.sigma_max = float(sample.max_pairwise_distance(self.train))  # NCSNv2 Technique 1
        self.fid_net: Optional[str] = cfg.data if (cfg.fid and cfg.data in ("digits", "mnist")) else None


def _base(cfg: SmoothingConfig, ctx: Context) -> dict[str, Any]:
    return {"data": cfg.data, "n_train": cfg.n_train, "n_heldout": cfg.n_heldout, "seed": ctx.seed,
            "device": ctx.device.type, "samples": cfg.n_samples, "sigma_min": cfg.sigma_min, "fid": cfg.fid,
            "streams": cfg.streams}


@dataclass
class Measure:
    """Memorization and quality of one set of samples."""

    copy_fraction: float
    within_k_sigma: float
    nn_median: float
    sw: float
    fid: Optional[float] = None
    kid: Optional[float] = None

    def q(self) -> float:
        """The quality number the claims use: FID when measured, else sliced W2."""
        return self.fid if self.fid is not None else self.sw


def _measure(ctx: Context, x: Tensor, im: _Images, sigma_min: float) -> Measure:
    return Measure(**memorization(x, im.train, sigma_min, K_SIGMA), **quality(x, im.heldout, seed=ctx.seed, fid_net=im.fid_net))


# ------------------------------------------------------------------------- 1. empirical score


@dataclass
class EmpiricalRuns:
    names: list[str]
    measures: list[Measure]
    samples: list[Tensor]
    train_quality: dict[str, float]
    heldout_nn_median: float


def _empirical(cfg: SmoothingConfig, ctx: Context, im: _Images) -> EmpiricalRuns:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps}

    def work() -> EmpiricalRuns:
        model = Empirical(im.train)
        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        sd = seeds(ctx.seed, cfg.streams.sde_noise, cfg.n_samples)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        karras2 = sample.sigmas_karras(2 * cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        _, n_levels, eps = sample.ncsn_schedule(im.train, 3, sigma_min=cfg.sigma_min)
        levels = sample.sigmas_geometric(n_levels, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        runs: dict[str, Callable[[], Tensor]] = {
            "PF-ODE Heun": lambda: sample.heun(model, x0, karras, progress=ctx.progress),
            "DPM-Solver++(2M)": lambda: sample.dpmpp_2m(model, x0, karras, progress=ctx.progress),
            "reverse SDE (Euler-Maruyama)": lambda: sample.euler_maruyama(model, x0, karras2, seeds=sd,
                                                                          progress=ctx.progress),
            "annealed Langevin": lambda: sample.annealed_langevin(model, x0, levels, n_steps_each=3, step_lr=eps,
                                                                  seeds=sd, progress=ctx.progress),
        }
        xs = [fn() for fn in runs.values()]
        return EmpiricalRuns(
            list(runs), [_measure(ctx, x, im, cfg.sigma_min) for x in xs], xs,
            quality(im.train[: cfg.n_samples], im.heldout, seed=ctx.seed, fid_net=im.fid_net),
            float(nearest(im.heldout, im.train).median()))

    return ctx.stages.run("smoothing.empirical", conf, work, version=VERSION, result_type=EmpiricalRuns)


# --------------------------------------------------------------------- 2. temperature sweep


def _settings(cfg: SmoothingConfig) -> list[tuple[str, str, float, Optional[int]]]:
    """(family, label, value, top_k): constant T and the max(sigma_c/sigma, 1) schedule, without/with top-K."""
    out: list[tuple[str, str, float, Optional[int]]] = []
    for k in (None, cfg.top_k):
        suffix = "" if k is None else ", top-K"
        lab = "" if k is None else f", top-{k}"
        out += [(f"constant T{suffix}", f"T={t:g}{lab}", float(t), k) for t in cfg.temperatures]
        out += [(f"T=max(sigma_c/sigma,1){suffix}", f"sigma_c={c:g}{lab}", float(c), k) for c in cfg.sigma_cs]
    return out


@dataclass
class Sweep:
    rows: list[Measure]
    samples: list[Tensor]


def _temperature(cfg: SmoothingConfig, ctx: Context, im: _Images) -> Sweep:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps, "T": list(cfg.temperatures), "sigma_c": list(cfg.sigma_cs),
            "top_k": cfg.top_k}
    settings = _settings(cfg)

    def work() -> Sweep:
        from tqdm.auto import tqdm

        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        out = Sweep([], [])
        for family, label, v, k in tqdm(settings, desc="temperature sweep", disable=not ctx.progress):
            temp: Any = v if family.startswith("constant") else (lambda s, c=v: (c / s).clamp(min=1.0))
            x = sample.heun(Empirical(im.train, temperature=temp, top_k=k), x0, karras)
            out.rows.append(_measure(ctx, x, im, cfg.sigma_min))
            out.samples.append(x)
        return out

    return ctx.stages.run("smoothing.temperature", conf, work, version=VERSION, result_type=Sweep)


def _shown(settings: list[tuple[str, str, float, Optional[int]]], rows: list[Measure]) -> list[int]:
    """Settings whose samples the figure shows: per family, the mildest setting that at least halves the copy
    fraction (else the strongest)."""
    picks = []
    for fam in dict.fromkeys(s[0] for s in settings):
        idx = [i for i, s in enumerate(settings) if s[0] == fam]
        low = [i for i in idx if rows[i].copy_fraction <= 0.5 * rows[idx[0]].copy_fraction]
        picks.append(min(low, key=lambda i: settings[i][2]) if low else max(idx, key=lambda i: settings[i][2]))
    return picks


# ------------------------------------------------------------------ 3. noise unconditioning


@dataclass
class PlainFixed:
    """An unconditional model sampled by the plain PF-ODE and by ``unconditional_ode`` (the fix)."""

    plain: Measure
    fixed: Measure
    s_plain: Tensor
    s_fixed: Tensor
    gate: Optional[GateNumbers] = None


@dataclass
class Conditional:
    heun: Measure
    s_heun: Tensor
    gate: GateNumbers


def _unconditional(cfg: SmoothingConfig, ctx: Context, im: _Images) -> PlainFixed:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps, "levels": cfg.n_levels_unconditional, "fix": "nn-estimate"}

    def work() -> PlainFixed:
        levels = sample.sigmas_geometric(cfg.n_levels_unconditional, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        model = NoiseAgnostic(im.train, conditioning="unconditional", levels=levels)
        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        x_plain = sample.euler(model, x0, karras, progress=ctx.progress)
        x_fix = sample.unconditional_ode(model, x0, karras, data=im.train, progress=ctx.progress)
        return PlainFixed(_measure(ctx, x_plain, im, cfg.sigma_min), _measure(ctx, x_fix, im, cfg.sigma_min), x_plain, x_fix)

    return ctx.stages.run("smoothing.unconditional_optimum", conf, work, version=VERSION, result_type=PlainFixed)


def _trained(cfg: SmoothingConfig, ctx: Context, im: _Images) -> tuple[PlainFixed, Conditional]:
    levels = [float(s) for s in sample.sigmas_geometric(cfg.n_levels_unconditional, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)]
    res: dict[str, Trained] = {}
    for cond, dist in (("unconditional", "geometric"), ("edm", "lognormal")):
        spec = net_spec(cfg.net, im.shape, cond)
        res[cond] = train_checkpoints(ctx, f"smoothing.train_{cond}", {**_base(cfg, ctx), "levels": levels}, spec,
                                      im.train, cfg.net, [cfg.net.steps], sigma_dist=dist, sigma_min=cfg.sigma_min,
                                      sigma_max=im.sigma_max, levels=len(levels) if dist == "geometric" else None)
    aconf = {**_base(cfg, ctx), "net": cfg.net, "levels": levels, "heun": cfg.heun_steps, "fix": "nn-estimate"}

    def work_u() -> PlainFixed:
        net = load_checkpoint(res["unconditional"], cfg.net.steps, ctx.device, im.shape)
        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        xp = sample.euler(net, x0, karras, progress=ctx.progress)
        xf = sample.unconditional_ode(net, x0, karras, data=im.train, progress=ctx.progress)
        return PlainFixed(_measure(ctx, xp, im, cfg.sigma_min), _measure(ctx, xf, im, cfg.sigma_min), xp, xf,
                          gate_numbers(xf, im.train, im.heldout, seed=ctx.seed, fid_net=im.fid_net))

    def work_c() -> Conditional:
        net = load_checkpoint(res["edm"], cfg.net.steps, ctx.device, im.shape)
        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        x = sample.heun(net, x0, karras, progress=ctx.progress)
        return Conditional(_measure(ctx, x, im, cfg.sigma_min), x,
                           gate_numbers(x, im.train, im.heldout, seed=ctx.seed, fid_net=im.fid_net))

    u = ctx.stages.run("smoothing.sample_unconditional", aconf, work_u, version=VERSION, result_type=PlainFixed)
    c = ctx.stages.run("smoothing.sample_edm", aconf, work_c, version=VERSION, result_type=Conditional)
    return u, c


# --------------------------------------------------------------------------------- report


def run(cfg: SmoothingConfig, ctx: Context) -> StudyReport:
    """Run the smoothing study and return its report."""
    im = _Images(cfg, ctx)
    emp = _empirical(cfg, ctx, im)
    tmp = _temperature(cfg, ctx, im)
    unc = _unconditional(cfg, ctx, im)
    u, ec = _trained(cfg, ctx, im)
    assert u.gate is not None
    arch = cfg.net.arch
    gate_u = network_gate(ctx, f"smoothing.{arch}_unconditional_{cfg.data}@{cfg.net.steps}", u.gate, im.fid_net)
    gate_c = network_gate(ctx, f"smoothing.{arch}_edm_{cfg.data}@{cfg.net.steps}", ec.gate, im.fid_net)
    qname = "FID (digits feature net)" if emp.measures[0].fid is not None else "sliced W2"
    R = REGISTRY

    # 1 ----------------------------------------------------------------------------------------
    copies = [m.copy_fraction for m in emp.measures]
    c1 = R["smoothing.1"].judge({"copy_heun": copies[0], "copy_dpmpp_2m": copies[1], "copy_sde": copies[2],
                                 "copy_langevin": copies[3], "copy_min": min(copies)})
    t1 = Table("smoothing_empirical", "Samplers driven by the exact empirical score",
               ["sampler", "copy frac.", f"within {K_SIGMA:g} sigma_min", "NN median", "SW", "FID", "KID"],
               [[n, m.copy_fraction, m.within_k_sigma, m.nn_median, m.sw, m.fid, m.kid]
                for n, m in zip(emp.names, emp.measures)])
    sec1 = Section("1. The empirical score memorizes",
                   f"{cfg.n_train} {cfg.data} training images, {cfg.n_samples} samples per sampler from the same seeds, "
                   f"sigma in [{cfg.sigma_min}, {sig(im.sigma_max)}].", [c1], [t1])

    # 2 ----------------------------------------------------------------------------------------
    settings = _settings(cfg)
    rows = tmp.rows
    base = emp.measures[0]
    fams: dict[str, list[int]] = {}
    for i, (fam, _, _, _) in enumerate(settings):
        fams.setdefault(fam, []).append(i)
    claims2 = []
    for j, (fam, idx) in enumerate(fams.items()):
        xs = [settings[i][2] for i in idx]
        cps = [rows[i].copy_fraction for i in idx]
        claims2.append(R[f"smoothing.2{'abcd'[j]}"].judge(
            {"copy_T1": base.copy_fraction, "copy_at_max": cps[-1], "spearman": corr_cell(spearman(xs, cps)),
             "max_value": xs[-1]}, note=f"settings {', '.join(settings[i][1] for i in idx)}"))
    halved = [i for i in range(len(settings)) if rows[i].copy_fraction <= 0.5 * base.copy_fraction]
    if halved:
        best = min(halved, key=lambda i: rows[i].q())
        m2 = {"settings_halving_copies": len(halved), "copy_fraction": rows[best].copy_fraction,
              "quality": rows[best].q(), "quality_T1": base.q(), "ratio": rows[best].q() / base.q()}
        note = f"best halving setting: {settings[best][1]}; quality: {qname}"
    else:
        m2 = {"settings_halving_copies": 0, "copy_fraction": "none", "quality": "none", "quality_T1": base.q(),
              "ratio": "none"}
        note = f"quality: {qname}"
    claims2.append(R["smoothing.2q"].judge(m2, note=note))
    t2 = Table("smoothing_temperature", "Temperature sweep (PF-ODE Heun on the smoothed empirical score)",
               ["family", "setting", "copy frac.", "NN median", "SW", "FID", "KID"],
               [[s[0], s[1], r.copy_fraction, r.nn_median, r.sw, r.fid, r.kid] for s, r in zip(settings, rows)])
    fig, axes = figure(1, 3, (5.0, 4.3))
    for fam, idx in fams.items():
        xs = [settings[i][2] for i in idx]
        axes[0].plot(xs, [rows[i].copy_fraction for i in idx], marker="o", label=fam)
        axes[1].plot(xs, [rows[i].q() for i in idx], marker="o", label=fam)
        axes[2].plot([rows[i].copy_fraction for i in idx], [rows[i].q() for i in idx], marker="o", label=fam)
    tq = emp.train_quality.get("fid", emp.train_quality["sw"])
    for ax in axes[1:]:
        ax.axhline(tq, color="k", ls="--", lw=0.8, label="training set vs held-out")
        ax.set_yscale("log")
        ax.set_ylabel(f"{qname} to held-out (lower is better)")
    for ax in axes[:2]:
        ax.set_xscale("log")
        ax.set_xlabel("T (constant) or sigma_c (schedule)")
    axes[0].set_ylabel("copy fraction of samples")
    axes[2].set_xlabel("copy fraction of samples (memorization)")
    axes[0].set_title("memorization vs temperature", fontsize=9)
    axes[1].set_title("quality vs temperature", fontsize=9)
    axes[2].set_title("the trade-off", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    f2 = Figure("smoothing_tradeoff", "Zhou et al.: each point is one temperature setting of the smoothed empirical "
                "score; moving left = less memorization, down = better quality.", figure_png(fig))
    sec2 = Section("2. Temperature smoothing", "", claims2, [t2], [f2])

    # 3 ----------------------------------------------------------------------------------------
    c3a = R["smoothing.3a"].judge(
        {"copy_unconditional_optimum": unc.fixed.copy_fraction, "copy_empirical": base.copy_fraction,
         "nn_median_unconditional_optimum": unc.fixed.nn_median, "nn_median_heldout": emp.heldout_nn_median,
         "quality_unconditional_optimum": unc.fixed.q(), "quality_empirical": base.q()}, note=f"quality: {qname}")
    c3b = R["smoothing.3b"].judge(
        {"copy_unconditional": u.fixed.copy_fraction, "copy_conditional": ec.heun.copy_fraction,
         "quality_unconditional": u.fixed.q(), "quality_conditional": ec.heun.q(),
         "quality_ratio": u.fixed.q() / ec.heun.q()}, networks=[gate_u, gate_c], note=f"quality: {qname}")
    c3c = R["smoothing.3c"].judge(
        {"quality_optimum_plain": unc.plain.q(), "quality_optimum_fixed": unc.fixed.q(),
         "quality_net_plain": u.plain.q(), "quality_net_fixed": u.fixed.q()}, networks=[gate_u],
        note=f"quality: {qname}")
    t3 = Table("smoothing_unconditioning", "Noise unconditioning vs noise conditioning",
               ["model", "sampler", "copy frac.", "NN median", "SW", "FID", "KID"],
               [["empirical score (conditional optimum)", "PF-ODE Heun", *_cols(base)],
                ["NoiseAgnostic unconditional optimum", "plain PF-ODE Euler", *_cols(unc.plain)],
                ["NoiseAgnostic unconditional optimum", "unconditional_ode (fix, nearest-neighbour noise estimate)",
                 *_cols(unc.fixed)],
                [f"trained unconditional {arch.upper()}", "plain PF-ODE Euler", *_cols(u.plain)],
                [f"trained unconditional {arch.upper()}", "unconditional_ode (fix, nearest-neighbour noise estimate)",
                 *_cols(u.fixed)],
                [f"trained EDM {arch.upper()} (conditional)", "PF-ODE Heun", *_cols(ec.heun)]],
               f"All samplers on the same Karras grid ({cfg.heun_steps} levels, sigma in [{cfg.sigma_min}, "
               f"{sig(im.sigma_max)}]) from the same seeds. The unconditional optimum and network use "
               f"{cfg.n_levels_unconditional} geometric noise levels (uniform over levels, as in the paper); the EDM "
               f"network is trained with EDM's log-normal sigma. Networks: {arch.upper()}, {cfg.net.steps} steps. "
               f"Held-out images lie at a median NN distance of {sig(emp.heldout_nn_median)} from the training set.")
    shown: list[tuple[str, Tensor]] = [("empirical score, T=1", emp.samples[0])]
    for i in _shown(settings, rows):
        shown.append((f"{settings[i][1]} (copies {rows[i].copy_fraction:.2f})", tmp.samples[i]))
    shown += [("unconditional optimum, plain ODE", unc.s_plain), ("unconditional optimum, fixed ODE", unc.s_fixed),
              ("trained unconditional, plain ODE", u.s_plain), ("trained unconditional, fixed ODE", u.s_fixed),
              ("trained EDM (conditional)", ec.s_heun), ("training images", im.train)]
    fig, axes = figure(3, 4, (3.5, 3.8))
    for ax, (title, x) in zip(axes.flat, shown):
        image_grid(ax, x.reshape(x.shape[0], *im.shape), 6, title)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    f3 = Figure("smoothing_samples", "Zhou et al.: samples (same seeds) of the empirical score, its smoothed variants, "
                "the noise-unconditional optimum and trained networks; last panel: training images.", figure_png(fig))
    sec3 = Section("3. Noise unconditioning", "", [c3a, c3b, c3c], [t3], [f3])
    summary = ("Zhou et al. explain memorization by the sharp softmax weights of the empirical score and propose two "
               "remedies: a temperature on those weights and networks that do not see the noise level.")
    notes = [f"Quality measures are against {im.heldout.shape[0]} held-out {cfg.data} images; FID/KID use the "
             "project's digits classifier features and are not comparable with Inception FIDs."]
    return StudyReport("smoothing", TITLE, PAPERS, summary, [sec1, sec2, sec3], notes)


def _cols(m: Measure) -> list[Any]:
    return [m.copy_fraction, m.nn_median, m.sw, m.fid, m.kid]
