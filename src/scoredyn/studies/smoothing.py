"""Study ``smoothing``: Zhou, Zhang & Wright (2026), "Smoothing the Score Function for Generalization in
Diffusion Models" (arXiv:2601.19285, CVPR 2026; code github.com/XinyuZhou2001/smoothing_the_score).

The paper's two *training* methods, as it defines them, at our scale:

1. The empirical score memorizes (its §3: sharp softmax weights, sampling collapse).
2. Noise unconditioning (§4, eq. 9) and temperature smoothing (§4, eq. 10/11: a network trained below
   ``sigma_c`` toward a tempered target over the K nearest training points of the clean point,
   ``T = max(sigma_c / sigma*, 1)``): a conditional (EDM), an unconditional and a tempered unconditional
   network, all sampled with Song et al.'s predictor-corrector sampler (SDE) and its probability-flow
   form (PC-ODE), as in the paper's Table 1; the exact optima of the three objectives
   (``Empirical``, ``NoiseAgnostic``, ``TemperedOptimum``) as zero-loss references.
   The sigma-blind networks output a score ``f(x) / sigma`` by default (``SmoothingConfig.blind``: the
   released code's NCSN++ with ``conditional=False, scale_by_sigma=True``); eq. 9's literal score ``f(x)``
   is kept as an option, and its exact optimum's PC samples (which stay off the data: smoothing.2e,
   :func:`_blind_optima`) are reported beside the released code's.
   Measures: copy fraction (Gu et al.'s 1/3 rule), FID(G, train) / FID(G, test) with equal-size
   references (``metrics.fid_train_test``), and the paper's Table 1 beside ours.
3. The expansion factor ``gamma_ex`` (§3.2, Fig. 4) of the empirical, unconditional and tempered
   scores and of the trained networks.
4. Whether the sigma-domination approximation (eq. 5) matches the unconditional optimum's weights.
5. Extension (not the paper's method): tempering the empirical score's Gaussian logits at sampling time.

Claims are declared once (``REGISTRY``); trained networks pass the quality gate (on their PC (SDE)
samples) or the claims resting on them are inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from .. import data as sd_data
from .. import metrics, sample, train
from ..analytic import Empirical, NoiseAgnostic, TemperedOptimum
from ..plot import figure
from . import thresholds as T
from .claims import load_registry
from .common import (
    WEIGHTING, GateNumbers, Trained, corr_cell, gate_numbers, image_grid, load_checkpoint, memorization, nearest, net_spec,
    network_gate, seeds, spearman, start_noise, train_checkpoints,
)
from .config import SmoothingConfig
from .report import Figure, Section, StudyReport, Table, figure_png, sig
from .stages import Context

TITLE = "Zhou et al. (2026): smoothing the score for generalization"
PAPERS = ("X. Zhou, J. Zhang, S. J. Wright, Smoothing the Score Function for Generalization in Diffusion Models: "
          "An Optimization-based Explanation Framework, arXiv:2601.19285 (2026), CVPR 2026")
VERSION = 5  # bump when a stage's output changes in a way its configuration does not show
MODELS = ("conditional (EDM)", "unconditional", "tempered unconditional")
SAMPLERS = ("PC (SDE)", "PC-ODE")

#: The paper's Table 1 (CIFAR-10 and CelebA-64, Inception FID, pixel-space KNN), FID(G, train) / FID(G, test).
PAPER_TABLE1 = [
    ("CIFAR-10", "SDE (PC)", "conditioning", 6.49, 6.56),
    ("CIFAR-10", "SDE (PC)", "unconditioning", 7.33, 7.34),
    ("CIFAR-10", "SDE (PC)", "T=1/sigma, K=30", 8.32, 8.25),
    ("CIFAR-10", "SDE (PC)", "T=5/sigma, K=30", 8.56, 8.60),
    ("CIFAR-10", "SDE (PC)", "T=5/sigma, K=100", 13.25, 13.41),
    ("CIFAR-10", "SDE (PC)", "T=7/sigma, K=30", 21.28, 21.34),
    ("CIFAR-10", "ODE (PC)", "conditioning", 8.48, 8.50),
    ("CIFAR-10", "ODE (PC)", "unconditioning", 8.84, 8.88),
    ("CIFAR-10", "ODE (PC)", "T=1/sigma, K=30", 8.75, 8.67),
    ("CelebA-64", "SDE (PC)", "conditioning", 7.25, 7.81),
    ("CelebA-64", "SDE (PC)", "unconditioning", 7.07, 7.34),
    ("CelebA-64", "SDE (PC)", "T=5/sigma, K=30", 9.58, 9.32),
    ("CelebA-64", "ODE (PC)", "conditioning", 7.65, 7.87),
    ("CelebA-64", "ODE (PC)", "unconditioning", 7.71, 7.88),
]

# ------------------------------------------------------------------------------ the claims (smoothing.claims.toml)

REGISTRY = load_registry("smoothing")


# ------------------------------------------------------------------------------ data and measures


class _Images:
    def __init__(self, cfg: SmoothingConfig, ctx: Context) -> None:
        x, y = sd_data.load_labeled(cfg.data, split="train", n=cfg.n_train, seed=ctx.seed)
        self.train, self.labels = x.to(ctx.device), y
        test = sd_data.load(cfg.data, split="test", seed=ctx.seed)
        self.heldout = test[: cfg.n_heldout].to(ctx.device)
        self.shape = tuple(self.train.shape[1:])
        self.dim = int(math.prod(self.shape))
        self.sigma_max = float(sample.max_pairwise_distance(self.train))  # NCSNv2 Technique 1
        self.fid_net: Optional[str] = cfg.data if (cfg.fid and cfg.data in ("digits", "mnist")) else None
        self.levels = sample.sigmas_geometric(cfg.n_levels, sigma_max=self.sigma_max, sigma_min=cfg.sigma_min)
        # score_sde's sampling grid: N geometric levels, then 0 (the last predictor step denoises)
        pc = sample.sigmas_geometric(cfg.pc_steps, sigma_max=self.sigma_max, sigma_min=cfg.sigma_min)
        self.pc_grid = torch.cat([pc, pc.new_zeros(1)])


def _base(cfg: SmoothingConfig, ctx: Context) -> dict[str, Any]:
    return {"data": cfg.data, "n_train": cfg.n_train, "n_heldout": cfg.n_heldout, "seed": ctx.seed,
            "device": ctx.device.type, "samples": cfg.n_samples, "sigma_min": cfg.sigma_min, "fid": cfg.fid,
            "levels": cfg.n_levels, "pc_steps": cfg.pc_steps, "snr": cfg.snr, "streams": cfg.streams}


@dataclass
class Measure:
    """Memorization of one set of samples and, with a feature net, Table 1's FID(G, train) / FID(G, test)."""

    copy_fraction: float
    within_k_sigma: float
    nn_median: float
    fid: Optional[metrics.FidTrainTest] = None

    def fid_of(self, which: str) -> Optional[float]:
        """``"fid_train"``, ``"fid_test"`` or ``"ratio"`` of the FID measure (None without a feature net)."""
        return None if self.fid is None else getattr(self.fid, which)

    def cols(self) -> list[Any]:
        return [self.copy_fraction, self.nn_median, *(self.fid_of(k) for k in ("fid_train", "fid_test", "ratio"))]


def _measure(x: Tensor, im: _Images, cfg: SmoothingConfig, ctx: Context) -> Measure:
    m = Measure(**memorization(x, im.train, cfg.sigma_min, T.K_SIGMA))
    if im.fid_net is not None:
        xs = x.float().clamp(-1, 1)
        try:
            m.fid = metrics.fid_train_test(xs, im.train, im.heldout, train_labels=im.labels, net=im.fid_net,
                                           seed=ctx.seed)
        except ValueError:  # a class too small for a balanced subset the size of the test set: a random subset
            m.fid = metrics.fid_train_test(xs, im.train, im.heldout, net=im.fid_net, seed=ctx.seed)
    return m


def _sampler_options(cfg: SmoothingConfig) -> dict[str, dict[str, Any]]:
    """Song et al.'s PC (reverse diffusion + Langevin at ``snr``) and its probability-flow predictor alone."""
    return {"PC (SDE)": {"snr": cfg.snr, "n_corrector": 1}, "PC-ODE": {"probability_flow": True, "n_corrector": 0}}


def _tempering(cfg: SmoothingConfig) -> train.Tempering:
    return train.Tempering(sigma_c=cfg.sigma_c, k=cfg.k, variant=cfg.variant)


# ------------------------------------------------------------------------- 1. empirical score


@dataclass
class EmpiricalRuns:
    heun: Measure
    pc: Measure
    s_heun: Tensor
    s_pc: Tensor
    train_itself: Measure
    heldout_nn_median: float


def _empirical(cfg: SmoothingConfig, ctx: Context, im: _Images) -> EmpiricalRuns:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps}

    def work() -> EmpiricalRuns:
        model = Empirical(im.train)
        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        sd = seeds(ctx.seed, cfg.streams.sde_noise, cfg.n_samples)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        xh = sample.heun(model, x0, karras, progress=ctx.progress)
        xp = sample.pc(model, x0, im.pc_grid, seeds=sd, progress=ctx.progress, **_sampler_options(cfg)["PC (SDE)"])
        return EmpiricalRuns(_measure(xh, im, cfg, ctx), _measure(xp, im, cfg, ctx), xh, xp,
                             _measure(im.train[: cfg.n_samples], im, cfg, ctx),
                             float(nearest(im.heldout, im.train).median()))

    return ctx.stages.run("smoothing.empirical", conf, work, version=VERSION, result_type=EmpiricalRuns)


# --------------------------------------------------- 2. the paper's methods: networks and optima


def _train_all(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Trained]:
    """The three networks (cached training stages): EDM on log-normal sigma, unconditional and tempered
    unconditional (sigma-blind, ``cfg.blind``) on the discrete geometric levels with lambda = sigma^2 (the
    paper's setting)."""
    out = {}
    for name, cond, temp in (("edm", "edm", None), ("unconditional", cfg.blind, None),
                             ("tempered", cfg.blind, _tempering(cfg))):
        dist = "lognormal" if cond == "edm" else "geometric"
        out[name] = train_checkpoints(
            ctx, f"smoothing.train_{name}", _base(cfg, ctx), net_spec(cfg.net, im.shape, cond), im.train, cfg.net,
            _checkpoints(cfg), sigma_dist=dist, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max,
            levels=cfg.n_levels if dist == "geometric" else None, tempering=temp)
    return out


def _checkpoints(cfg: SmoothingConfig) -> list[int]:
    """The training steps at which each network's objective is measured (the loss curve); the last is the network."""
    return sorted({s for s in cfg.loss_checkpoints if s < cfg.net.steps} | {cfg.net.steps})


def _optimum(cfg: SmoothingConfig, im: _Images, i: int) -> Any:
    if i == 0:
        return Empirical(im.train)
    if i == 1:
        return NoiseAgnostic(im.train, conditioning=cfg.blind, levels=im.levels)
    return TemperedOptimum(im.train, levels=im.levels, sigma_c=cfg.sigma_c, k=cfg.k, variant=cfg.variant,
                           conditioning=cfg.blind)


@dataclass
class NetRuns:
    """One network: both PC samplers, its exact optimum with PC (SDE), the gate (on its PC (SDE) samples) and
    the objective's values."""

    sde: Measure
    ode: Measure
    optimum: Measure
    s_sde: Tensor
    s_ode: Tensor
    s_optimum: Tensor
    gate: GateNumbers
    loss_net: float
    loss_optimum: float
    loss_curve: list[float]  # the objective at _checkpoints(cfg), the last = loss_net


def _objective(cfg: SmoothingConfig, ctx: Context, im: _Images, models: list[Any], i: int) -> list[float]:
    """Network ``i``'s training objective (tempered for the tempered one) for each of ``models`` at
    ``cfg.n_loss_draws`` fixed draws of its training law (``scoredyn.train.loss`` in denoiser form)."""
    n = cfg.n_loss_draws
    g = torch.Generator().manual_seed(ctx.seed + 1000 + i)
    idx = torch.randint(im.train.shape[0], (n,), generator=g)
    if i == 0:
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(n, generator=g, dtype=torch.float64))
    else:
        sigma = im.levels[torch.randint(len(im.levels), (n,), generator=g)]
    z = torch.randn((n, *im.shape), generator=g)
    x0, sigma, z = im.train[idx.to(ctx.device)], sigma.to(ctx.device, torch.float32), z.to(ctx.device)
    x = x0 + sigma.reshape(-1, *[1] * len(im.shape)) * z
    target = x0
    if i == 2:
        temp = _tempering(cfg)
        target = temp.denoiser_target(x, sigma, x0, im.train[temp.neighbours(im.train)[idx.to(ctx.device)]])
    w = train.loss_weight(WEIGHTING["edm" if i == 0 else cfg.blind], sigma, 0.5)
    out = []
    for model in models:
        with torch.no_grad():
            parts = [(w[s : s + 512] * (model(x[s : s + 512], sigma[s : s + 512]).float() - target[s : s + 512])
                      .square().flatten(1).mean(1)) for s in range(0, n, 512)]
        out.append(float(torch.cat(parts).mean()))
    return out


def _methods(cfg: SmoothingConfig, ctx: Context, im: _Images, trained: dict[str, Trained]) -> list[NetRuns]:
    conf = {**_base(cfg, ctx), "net": cfg.net, "tempering": _tempering(cfg).as_dict(), "n_ref": cfg.n_reference_samples,
            "n_net": cfg.n_net_samples, "blind": cfg.blind, "n_loss_draws": cfg.n_loss_draws,
            "loss_checkpoints": _checkpoints(cfg)}
    out = []
    for i, key in enumerate(trained):
        def work(i: int = i, key: str = key) -> NetRuns:
            net = load_checkpoint(trained[key], cfg.net.steps, ctx.device, im.shape)
            opt = _optimum(cfg, im, i)
            x0 = start_noise(ctx, cfg.streams.starts, cfg.n_net_samples, im.shape, im.sigma_max)
            sd = seeds(ctx.seed, cfg.streams.sde_noise, cfg.n_net_samples)
            opts = _sampler_options(cfg)
            xs = sample.pc(net, x0, im.pc_grid, seeds=sd, progress=ctx.progress, **opts["PC (SDE)"])
            xo = sample.pc(net, x0, im.pc_grid, seeds=sd, progress=ctx.progress, **opts["PC-ODE"])
            nr = cfg.n_reference_samples  # the optimum's cost grows with the training set: fewer samples
            xr = sample.pc(opt, x0[:nr], im.pc_grid, seeds=sd[:nr], progress=ctx.progress, **opts["PC (SDE)"])
            loss_net, loss_opt = _objective(cfg, ctx, im, [net, opt], i)
            curve = [_objective(cfg, ctx, im, [load_checkpoint(trained[key], s, ctx.device, im.shape)], i)[0]
                     for s in _checkpoints(cfg)[:-1]] + [loss_net]
            # the gate judges every network on the claims' own sampler, PC (SDE) (no loss gap in the gate: a
            # Gaussian baseline of the unconditional objective is not defined; the objective's excess over the
            # exact optimum is reported beside it)
            gate = gate_numbers(xs, im.train, im.heldout, seed=ctx.seed, fid_net=im.fid_net)
            return NetRuns(_measure(xs, im, cfg, ctx), _measure(xo, im, cfg, ctx), _measure(xr, im, cfg, ctx),
                           xs, xo, xr, gate, loss_net, loss_opt, curve)

        out.append(ctx.stages.run(f"smoothing.sample_{key}", conf, work, version=VERSION, result_type=NetRuns))
    return out


@dataclass
class BlindOptima:
    """The exact optima of the two sigma-blind parameterisations (no tempering) under the PC samplers:
    ``rows[p][k]`` for parameterisation ``BLIND[p]`` and sampler ``BLIND_SAMPLERS[k]``; ``own_sigma`` = the
    median distance to the nearest training point / sqrt(d), the state's own noise level at the end."""

    rows: list[list[Measure]]
    own_sigma: list[list[float]]


BLIND = ("unconditional", "multiplicative")
BLIND_NAMES = ("score f(x) (eq. 9)", "score f(x) / sigma (released code: scale_by_sigma)")
BLIND_SAMPLERS = ("PC (SDE)", "predictor only (reverse diffusion)", "PC-ODE")


def _blind_optima(cfg: SmoothingConfig, ctx: Context, im: _Images) -> BlindOptima:
    """Whether PC brings the exact optimum of each sigma-blind objective to the data (the paper's §A.7.2: SDE
    sampling of an unconditional model is stable). Eq. 9's field ``grad log p_MN`` pulls a state toward the
    nearest training point with the strength of the state's *own* noise level ``sigma* = r / sqrt(d)``, not
    the schedule's: a predictor step removes about ``(sigma_i^2 - sigma_{i+1}^2)`` from ``sigma*^2`` whatever
    ``sigma*`` is, so an excess ``sigma*^2 - sigma_i^2`` is never contracted (it is for a conditional score and
    for ``f(x) / sigma``), and the Langevin corrector (step ``~ sigma*^2``) samples p_MN, which grows it."""
    conf = {**_base(cfg, ctx), "n_ref": cfg.n_reference_samples}

    def work() -> BlindOptima:
        nr = cfg.n_reference_samples
        x0 = start_noise(ctx, cfg.streams.starts, nr, im.shape, im.sigma_max)
        sd = seeds(ctx.seed, cfg.streams.sde_noise, nr)
        opts = [{"snr": cfg.snr, "n_corrector": 1}, {"n_corrector": 0}, {"probability_flow": True, "n_corrector": 0}]
        out = BlindOptima([], [])
        for cond in BLIND:
            opt = NoiseAgnostic(im.train, conditioning=cond, levels=im.levels)
            xs = [sample.pc(opt, x0, im.pc_grid, seeds=sd, progress=ctx.progress, **o) for o in opts]
            out.rows.append([_measure(x, im, cfg, ctx) for x in xs])
            out.own_sigma.append([float(nearest(x, im.train).median()) / math.sqrt(im.dim) for x in xs])
        return out

    return ctx.stages.run("smoothing.blind_optima", conf, work, version=VERSION, result_type=BlindOptima)


# ------------------------------------------------------------------------ 3. gamma_ex (Fig. 4)


@dataclass
class Expansion:
    names: list[str]
    sigma_star: list[float]
    gamma: list[list[float]]
    pair: list[int]
    delta: float


def _expansion(cfg: SmoothingConfig, ctx: Context, im: _Images, trained: dict[str, Trained]) -> Expansion:
    conf = {**_base(cfg, ctx), "net": cfg.net, "tempering": _tempering(cfg).as_dict(), "blind": cfg.blind,
            "ratio": cfg.gamma_ratio,
            "n_sigma": cfg.gamma_points}

    def work() -> Expansion:
        i0, i1 = metrics.expansion.closest_pair(im.train)
        delta = float((im.train[i0] - im.train[i1]).norm())
        # the sweep spans the sigma* at which the point x exists (module docstring of metrics.expansion)
        lo = 1.02 * delta / ((cfg.gamma_ratio + 1) * math.sqrt(im.dim))
        hi = min(1.0, 0.98 * delta / ((cfg.gamma_ratio - 1) * math.sqrt(im.dim)))
        levels = torch.exp(torch.linspace(math.log(lo), math.log(hi), cfg.gamma_points)).tolist()
        models = {"empirical score": Empirical(im.train), "unconditional optimum": _optimum(cfg, im, 1),
                  "tempered optimum": _optimum(cfg, im, 2)}
        for (key, res), name in zip(trained.items(), MODELS):
            models[f"{name} network"] = load_checkpoint(res, cfg.net.steps, ctx.device, im.shape)
        gam = [list(metrics.expansion_factor(m, im.train, levels, ratio=cfg.gamma_ratio, pair=(i0, i1)).gamma)
               for m in models.values()]
        return Expansion(list(models), levels, gam, [i0, i1], delta)

    return ctx.stages.run("smoothing.expansion", conf, work, version=VERSION, result_type=Expansion)


# ------------------------------------------------------------------ 4. sigma-domination (eq. 5)


@dataclass
class Domination:
    sigmas: list[float]
    tv: list[float]
    top1_agree: list[float]


def _domination(cfg: SmoothingConfig, ctx: Context, im: _Images) -> Domination:
    """Total variation between the unconditional optimum's exact per-point weights (the (level, point) softmax
    of ``sigma_i^2 N(x; mu_j, sigma_i^2)`` summed over levels) and eq. 5's one-level weights
    ``sigma*_j^2 N(x; mu_j, sigma*_j^2)``, ``sigma*_j^2 = r_j^2 / d``, at ``x = mu + sigma z`` (float64)."""
    conf = {**_base(cfg, ctx), "probe_sigmas": list(cfg.domination_sigmas)}

    def work() -> Domination:
        data = im.train.reshape(im.train.shape[0], -1).double()
        n, d = data.shape
        lv = im.levels.double().to(data.device)
        g = torch.Generator().manual_seed(ctx.seed + 5)
        out = Domination(list(cfg.domination_sigmas), [], [])
        for s in cfg.domination_sigmas:
            idx = torch.randint(n, (64,), generator=g)
            x = data[idx.to(data.device)] + s * torch.randn(64, d, generator=g, dtype=torch.float64).to(data.device)
            r2 = torch.cdist(x, data).square()
            logits = (2 - d) * lv.log()[:, None, None] - r2[None] / (2 * lv[:, None, None] ** 2)  # (L, 64, n)
            exact = torch.softmax(logits.permute(1, 0, 2).reshape(64, -1), 1).reshape(64, len(lv), n).sum(1)
            s2 = r2 / d
            approx = torch.softmax((2 - d) / 2 * s2.log() - r2 / (2 * s2), 1)
            out.tv.append(float(0.5 * (exact - approx).abs().sum(1).mean()))
            out.top1_agree.append(float((exact.argmax(1) == approx.argmax(1)).double().mean()))
        return out

    return ctx.stages.run("smoothing.domination", conf, work, version=VERSION, result_type=Domination)


# ----------------------------------------------------- 5. extension: sampling-time tempering


@dataclass
class SamplingTime:
    rows: list[Measure]


def _sampling_time(cfg: SmoothingConfig, ctx: Context, im: _Images) -> SamplingTime:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps, "T": list(cfg.temperatures)}

    def work() -> SamplingTime:
        x0 = start_noise(ctx, cfg.streams.starts, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        return SamplingTime([_measure(sample.heun(Empirical(im.train, temperature=float(t)), x0, karras), im, cfg, ctx)
                             for t in cfg.temperatures])

    return ctx.stages.run("smoothing.sampling_time", conf, work, version=VERSION, result_type=SamplingTime)


# --------------------------------------------------------------------------------- report


def _ratio(a: Optional[float], b: Optional[float]) -> Any:
    return a / b if a is not None and b is not None and b > 0 else "not measured (no feature net)"


def run(cfg: SmoothingConfig, ctx: Context) -> StudyReport:
    """Run the smoothing study and return its report."""
    im = _Images(cfg, ctx)
    emp = _empirical(cfg, ctx, im)
    trained = _train_all(cfg, ctx, im)
    runs = _methods(cfg, ctx, im, trained)
    blind = _blind_optima(cfg, ctx, im)
    gex = _expansion(cfg, ctx, im, trained)
    dom = _domination(cfg, ctx, im)
    ext = _sampling_time(cfg, ctx, im)
    arch = cfg.net.arch
    gates = [network_gate(ctx, f"smoothing.{arch}_{key}_{cfg.data}@{cfg.net.steps}", r.gate, im.fid_net)
             for key, r in zip(trained, runs)]
    R = REGISTRY

    # 1 ----------------------------------------------------------------------------------------
    c1 = R["smoothing.1"].judge({"copy_heun": emp.heun.copy_fraction, "copy_pc": emp.pc.copy_fraction,
                                 "copy_min": min(emp.heun.copy_fraction, emp.pc.copy_fraction)})
    t1 = Table("smoothing_empirical", "The exact empirical score",
               ["sampler", "copy frac.", "NN median", "FID(G, train)", "FID(G, test)", "FID test/train"],
               [["PF-ODE Heun", *emp.heun.cols()], ["PC (SDE)", *emp.pc.cols()],
                ["(the training set itself)", *emp.train_itself.cols()]])
    sec1 = Section("1. The empirical score memorizes",
                   f"{cfg.n_train} {cfg.data} training images; {cfg.n_samples} samples from the same seeds; sigma in "
                   f"[{cfg.sigma_min}, {sig(im.sigma_max)}]; PC: {cfg.pc_steps} geometric levels then 0, snr {cfg.snr}, "
                   "one corrector step (score_sde's VE setting).", [c1], [t1])

    # 2 ----------------------------------------------------------------------------------------
    cond, unc, tmp = runs
    c2a = R["smoothing.2a"].judge(
        {"copy_conditional": cond.sde.copy_fraction, "copy_unconditional": unc.sde.copy_fraction,
         "quality_ratio": _ratio(unc.sde.fid_of("fid_test"), cond.sde.fid_of("fid_test")),
         "paper_quality_ratio": 7.34 / 6.56},
        networks=gates[:2])
    c2b = R["smoothing.2b"].judge(
        {"copy_unconditional": unc.sde.copy_fraction, "copy_tempered": tmp.sde.copy_fraction,
         "copy_max": max(unc.sde.copy_fraction, tmp.sde.copy_fraction),
         "quality_ratio": _ratio(tmp.sde.fid_of("fid_test"), unc.sde.fid_of("fid_test")),
         "paper_quality_ratio": 8.60 / 7.34},
        networks=gates[1:])
    ratios = [r.sde.fid_of("ratio") for r in runs]
    spread = max(ratios) - min(ratios) if None not in ratios else "not measured (no feature net)"
    c2c = R["smoothing.2c"].judge(
        {"ratio_conditional": ratios[0] if ratios[0] is not None else "not measured",
         "ratio_unconditional": ratios[1] if ratios[1] is not None else "not measured",
         "ratio_tempered": ratios[2] if ratios[2] is not None else "not measured", "spread": spread},
        networks=gates, note="the paper's Table 1 ratios (CIFAR-10, SDE): 1.011 (conditioning), 1.001 "
                             "(unconditioning), 1.005 (T=5/sigma, K=30)")
    c2d = R["smoothing.2d"].judge(
        {"quality_sde_over_conditional": _ratio(unc.sde.fid_of("fid_test"), cond.sde.fid_of("fid_test")),
         "quality_ode_over_sde": _ratio(unc.ode.fid_of("fid_test"), unc.sde.fid_of("fid_test"))}, networks=gates[:2],
        note="the paper (CIFAR-10): 7.34 / 6.56 = 1.12 and 8.88 / 7.34 = 1.21")
    pc_sde = BLIND_SAMPLERS.index("PC (SDE)")
    c2e = R["smoothing.2e"].judge(
        {"nn_eq9": blind.rows[BLIND.index("unconditional")][pc_sde].nn_median,
         "nn_scale_by_sigma": blind.rows[BLIND.index("multiplicative")][pc_sde].nn_median,
         "nn_heldout": emp.heldout_nn_median},
        note=f"own noise level |x - nearest| / sqrt(d) at the end: "
             f"{sig(blind.own_sigma[BLIND.index('unconditional')][pc_sde])} (eq. 9) vs sigma_min = {cfg.sigma_min}; "
             "table 'The exact optima of the two sigma-blind objectives'")
    rows = []
    for name, r in zip(MODELS, runs):
        rows += [[f"{name} network", "PC (SDE)", *r.sde.cols()], [f"{name} network", "PC-ODE", *r.ode.cols()]]
        rows.append([f"{name}: exact optimum (zero loss)", "PC (SDE)", *r.optimum.cols()])
    rows.append(["training set itself", "-", *emp.train_itself.cols()])
    t2 = Table("smoothing_methods", "The paper's methods at our scale (Table 1's measures)",
               ["model", "sampler", "copy frac.", "NN median", "FID(G, train)", "FID(G, test)", "FID test/train"], rows,
               f"Networks: {arch.upper()} ({cfg.net.steps} steps, batch {cfg.net.batch_size}; {cfg.n_net_samples} "
               f"samples each, the first of the same seeds). The unconditional "
               f"networks never see sigma (output parameterisation '{cfg.blind}'"
               f"{': score f(x) / sigma, as the released code' if cfg.blind == 'multiplicative' else ': score f(x), eq. 9'}"
               f") and train on {cfg.n_levels} geometric levels (uniform, lambda = sigma^2, as the paper); the "
               f"tempered one toward eq. 10's target below sigma_c = {cfg.sigma_c} with K = {cfg.k} pixel-space "
               f"neighbours (variant '{cfg.variant}'); the EDM one on EDM's log-normal sigma. FID on the project's "
               f"{cfg.data} classifier features against equal-size references (a class-balanced train subset the size "
               f"of the held-out set); not comparable with Inception FIDs. The exact optima: {cfg.n_reference_samples} "
               "samples.")
    tl = Table("smoothing_objective", "Each network's training objective against its exact optimum's (the zero-loss "
               "reference) and the quality gate",
               ["network", "loss (network)", "loss (exact optimum)", "excess / optimum", "gate (PC (SDE) samples)"],
               [[f"{n} network", r.loss_net, r.loss_optimum, (r.loss_net - r.loss_optimum) / r.loss_optimum,
                 g.reason] for n, r, g in zip(MODELS, runs, gates)],
               f"{cfg.n_loss_draws} fixed draws of each network's training law; the optima are Empirical (EDM), "
               f"NoiseAgnostic({cfg.blind}) and TemperedOptimum(conditioning={cfg.blind!r}) on the same levels. "
               "Every network is gated on its PC (SDE) samples, the claims' sampler.")
    steps = _checkpoints(cfg)
    tc = Table("smoothing_loss_curve", "Each network's training objective on the same fixed draws at its checkpoints "
               "(is it at a plateau?)",
               ["network", *[f"step {s}" for s in steps], "last doubling: relative change"],
               [[f"{n} network", *r.loss_curve,
                 (r.loss_curve[-1] - r.loss_curve[-2]) / r.loss_curve[-2] if len(steps) > 1 and
                 steps[-2] * 2 == steps[-1] else "n/a"] for n, r in zip(MODELS, runs)],
               "EMA weights; the objective of the table above; a plateau shows as a last-doubling change near 0.")
    tb = Table("smoothing_blind_optima", "The exact optima of the two sigma-blind objectives (no tempering) under the "
               "PC samplers: does SDE sampling of an unconditional model reach the data (the paper's §A.7.2)?",
               ["network output", "sampler", "own sigma at the end", "copy frac.", "NN median", "FID(G, train)",
                "FID(G, test)", "FID test/train"],
               [[BLIND_NAMES[p], BLIND_SAMPLERS[k], blind.own_sigma[p][k], *blind.rows[p][k].cols()]
                for p in range(len(BLIND)) for k in range(len(BLIND_SAMPLERS))],
               f"NoiseAgnostic on the {cfg.n_levels} training levels, {cfg.n_reference_samples} samples from the same "
               f"seeds, the grid of section 1 ({cfg.pc_steps} levels then 0). Own sigma = median distance to the "
               f"nearest training point / sqrt(d) after the last step (held-out images: "
               f"{sig(emp.heldout_nn_median / math.sqrt(im.dim))}). Eq. 9's field pulls with the strength of the "
               "state's own noise level, not the schedule's, so an excess of the first over the second is never "
               "contracted and the samples stay off the data; dividing the output by sigma (the released code's "
               f"network) restores the contraction. The networks of this section use '{cfg.blind}'.")
    tp = Table("smoothing_paper_table1", "The paper's Table 1 (Inception FID, pixel-space KNN), for comparison",
               ["data", "sampler", "setting", "FID(G, train)", "FID(G, test)", "test/train"],
               [[a, b, c, tr, te, te / tr] for a, b, c, tr, te in PAPER_TABLE1])
    shown = [("empirical score, PC", emp.s_pc)]
    for name, r in zip(MODELS, runs):
        shown += [(f"{name} net, PC (SDE)", r.s_sde), (f"{name} net, PC-ODE", r.s_ode),
                  (f"{name} optimum, PC", r.s_optimum)]
    shown.append(("training images", im.train))
    fig, axes = figure(3, 4, (3.3, 3.6))
    for ax, (title, x) in zip(axes.flat, shown):
        image_grid(ax, x.reshape(x.shape[0], *im.shape).float().cpu(), 6, title)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    f2 = Figure("smoothing_samples", "Zhou et al.'s methods: samples (same seeds) of the trained networks with both "
                "PC samplers and of the exact optima of their objectives; last panel: training images.", figure_png(fig))
    sec2 = Section("2. Noise unconditioning and temperature smoothing (trained networks)",
                   "The paper's two training methods and the exact zero-loss optima of their objectives, sampled with "
                   "Song et al.'s predictor-corrector samplers as in its Table 1.", [c2a, c2b, c2c, c2d, c2e], [t2, tl, tc, tb, tp],
                   [f2])

    # 3 ----------------------------------------------------------------------------------------
    curves = dict(zip(gex.names, gex.gamma))
    peak = {n: max(c) for n, c in curves.items()}
    nets_peak = max(peak[f"{n} network"] for n in MODELS)
    c3a = R["smoothing.3a"].judge({"peak_empirical": peak["empirical score"], "peak_networks": nets_peak,
                                   "ratio": peak["empirical score"] / nets_peak}, networks=gates)
    c3b = R["smoothing.3b"].judge({"peak_empirical": peak["empirical score"],
                                   "peak_unconditional": peak["unconditional optimum"],
                                   "peak_tempered": peak["tempered optimum"]})
    fig, axes = figure(1, 1, (6.0, 4.2))
    ax = axes.flat[0] if hasattr(axes, "flat") else axes
    for n, c in curves.items():
        ax.plot(gex.sigma_star, c, marker="o", label=n)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma*")
    ax.set_ylabel("gamma_ex")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    f3 = Figure("smoothing_gamma_ex", f"Expansion factor (Zhou et al. Fig. 4) at the closest training pair "
                f"({sig(gex.delta)} apart), distance ratio C = {cfg.gamma_ratio}, one full denoising step "
                "x' = D(x, sigma*).", figure_png(fig))
    t3 = Table("smoothing_gamma_ex", "gamma_ex over sigma*", ["model", *[f"s*={sig(s)}" for s in gex.sigma_star]],
               [[n, *c] for n, c in curves.items()])
    sec3 = Section("3. The expansion factor gamma_ex", "", [c3a, c3b], [t3], [f3])

    # 4 ----------------------------------------------------------------------------------------
    c4 = R["smoothing.4"].judge({"max_mean_tv": max(dom.tv), "min_top1_agreement": min(dom.top1_agree)})
    t4 = Table("smoothing_domination", "Exact (level-summed) vs eq. 5 weights of the unconditional optimum",
               ["probe sigma", "mean TV", "top-1 agreement"],
               [[s, a, b] for s, a, b in zip(dom.sigmas, dom.tv, dom.top1_agree)],
               f"64 probes x = mu + sigma z per row; {cfg.n_levels} training levels; float64.")
    sec4 = Section("4. Sigma-domination", "", [c4], [t4])

    # 5 ----------------------------------------------------------------------------------------
    cps = [r.copy_fraction for r in ext.rows]
    c5 = R["smoothing.5"].judge({"copy_T1": cps[0], "copy_at_max": cps[-1],
                                 "spearman": corr_cell(spearman(list(cfg.temperatures), cps)),
                                 "max_value": cfg.temperatures[-1]})
    t5 = Table("smoothing_sampling_time", "Extension, not the paper's method: the empirical score with its Gaussian "
               "logits divided by T at sampling time (PF-ODE Heun)",
               ["T", "copy frac.", "NN median", "FID(G, train)", "FID(G, test)", "FID test/train"],
               [[t, *r.cols()] for t, r in zip(cfg.temperatures, ext.rows)],
               "Tempering the Gaussian logits -r^2/(2 sigma^2 T) equals the empirical score at noise sigma sqrt(T) in "
               "the weights; the paper instead trains toward power-law (eq. 5) logits over the K nearest neighbours of "
               "the clean point (section 2). To sample the paper's smoothed score without training use "
               "analytic.TemperedOptimum (section 2's 'tempered unconditional: exact optimum' row).")
    sec5 = Section("5. Extension: sampling-time tempering (not the paper's method)", "", [c5], [t5])

    summary = ("Zhou et al. explain memorization by the sharp softmax weights of the empirical score and propose two "
               "training methods: networks that do not see the noise level, and a tempered training target over the K "
               "nearest neighbours of each training point below a collapse level sigma_c.")
    notes = [f"FIDs use the project's {cfg.data} classifier features against {im.heldout.shape[0]} held-out images and "
             "an equal-size training subset; they are not comparable with the paper's Inception FIDs (Table 1 is "
             "shown for its ratios and orderings).",
             f"The paper's sigma_c (1-10 for data in [0, 1]) maps to ours by the data range (2 for data in [-1, 1]): "
             f"sigma_c = {cfg.sigma_c} here is the paper's T = {cfg.sigma_c / 2:g}/sigma."]
    return StudyReport("smoothing", TITLE, PAPERS, summary, [sec1, sec2, sec3, sec4, sec5], notes)
