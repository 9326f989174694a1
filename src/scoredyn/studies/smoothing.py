"""Study ``smoothing``: Zhou, Zhang & Wright (2026), "Smoothing the Score Function for Generalization in
Diffusion Models" (arXiv:2601.19285, CVPR 2026; code github.com/XinyuZhou2001/smoothing_the_score).

The paper's two *training* methods, as it defines them, at our scale:

1. The empirical score memorizes (its §3: sharp softmax weights, sampling collapse).
2. Noise unconditioning (§4, eq. 9) and temperature smoothing (§4, eq. 10/11: a network trained below
   ``sigma_c`` toward a tempered target over the K nearest training points of the clean point,
   ``T = max(sigma_c / sigma*, 1)``): a conditional (EDM), an unconditional and a tempered unconditional
   network, all sampled with Song et al.'s predictor-corrector sampler (SDE) and its probability-flow
   form (PC-ODE), as in the paper's Table 1; the exact optima of the three objectives
   (``Empirical``, ``NoiseAgnostic(unconditional)``, ``TemperedOptimum``) as zero-loss references.
   Measures: copy fraction (Gu et al.'s 1/3 rule), FID(G, train) / FID(G, test) with equal-size
   references (``metrics.fid_train_test``), and the paper's Table 1 beside ours.
3. The expansion factor ``gamma_ex`` (§3.2, Fig. 4) of the empirical, unconditional and tempered
   scores and of the trained networks.
4. Whether the sigma-domination approximation (eq. 5) matches the unconditional optimum's weights.
5. Extension (not the paper's method): tempering the empirical score's Gaussian logits at sampling time.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any, Optional

import torch
from torch import Tensor

from .. import data as sd_data
from .. import metrics, nets, sample, train
from ..analytic import Empirical, NoiseAgnostic, TemperedOptimum
from ..plot import figure
from .common import WEIGHTING, image_grid, memorization, net_spec, seeds, start_noise
from .config import SmoothingConfig
from .report import Claim, Figure, Section, StudyReport, Table, figure_png, sig
from .stages import Context

TITLE = "Zhou et al. (2026): smoothing the score for generalization"
PAPERS = ("X. Zhou, J. Zhang, S. J. Wright, Smoothing the Score Function for Generalization in Diffusion Models: "
          "An Optimization-based Explanation Framework, arXiv:2601.19285 (2026), CVPR 2026")
VERSION = 2  # bump when a stage's output changes in a way its configuration does not show

#: The paper's Table 1 (CIFAR-10 and CelebA-64, Inception FID, pixel-space KNN), FID(G, train) / FID(G, test).
PAPER_TABLE1 = [
    ("CIFAR-10", "SDE (PC)", "conditioning", 6.49, 6.56),
    ("CIFAR-10", "SDE (PC)", "unconditioning", 7.33, 7.34),
    ("CIFAR-10", "SDE (PC)", "T=1/sigma, K=30", 8.32, 8.25),
    ("CIFAR-10", "SDE (PC)", "T=5/sigma, K=30", 8.56, 8.60),
    ("CIFAR-10", "SDE (PC)", "T=5/sigma, K=100", 13.25, 13.41),
    ("CIFAR-10", "ODE (PC)", "conditioning", 8.48, 8.50),
    ("CIFAR-10", "ODE (PC)", "unconditioning", 8.84, 8.88),
    ("CIFAR-10", "ODE (PC)", "T=1/sigma, K=30", 8.75, 8.67),
    ("CelebA-64", "SDE (PC)", "conditioning", 7.25, 7.81),
    ("CelebA-64", "SDE (PC)", "unconditioning", 7.07, 7.34),
    ("CelebA-64", "SDE (PC)", "T=5/sigma, K=30", 9.58, 9.32),
]
MODELS = ("conditional (EDM)", "unconditional", "tempered unconditional")


class _Images:
    def __init__(self, cfg: SmoothingConfig, ctx: Context) -> None:
        x, y = sd_data.load_labeled(cfg.data, split="train", n=cfg.n_train, seed=ctx.seed)
        self.train, self.labels = x.to(ctx.device), y
        test = sd_data.load(cfg.data, split="test", seed=ctx.seed)
        self.test = test[: cfg.n_heldout].to(ctx.device)
        self.shape = tuple(self.train.shape[1:])
        self.dim = int(math.prod(self.shape))
        self.sigma_max = float(sample.max_pairwise_distance(self.train))  # NCSNv2 Technique 1
        self.fid_net: Optional[str] = cfg.data if cfg.data in ("digits", "mnist") else None
        self.levels = sample.sigmas_geometric(cfg.n_levels, sigma_max=self.sigma_max, sigma_min=cfg.sigma_min)
        # the sampler's grid: score_sde's N geometric levels, then 0 (the last predictor step denoises)
        pc = sample.sigmas_geometric(cfg.pc_steps, sigma_max=self.sigma_max, sigma_min=cfg.sigma_min)
        self.pc_grid = torch.cat([pc, pc.new_zeros(1)])


def _base(cfg: SmoothingConfig, ctx: Context) -> dict[str, Any]:
    return {"v": VERSION, "data": cfg.data, "n_train": cfg.n_train, "n_heldout": cfg.n_heldout, "seed": ctx.seed,
            "device": ctx.device.type, "samples": cfg.n_samples, "sigma_min": cfg.sigma_min, "levels": cfg.n_levels,
            "pc_steps": cfg.pc_steps, "snr": cfg.snr}


def _measure(x: Tensor, im: _Images, cfg: SmoothingConfig, ctx: Context) -> dict[str, float]:
    """Copy fraction and NN distance, and FID(G, train) / FID(G, test) (Zhou et al. Table 1's measure)."""
    out: dict[str, float] = dict(memorization(x, im.train, cfg.sigma_min))
    if im.fid_net is not None:
        xs = x.float().clamp(-1, 1)
        try:
            r = metrics.fid_train_test(xs, im.train, im.test, train_labels=im.labels, net=im.fid_net, seed=ctx.seed)
        except ValueError:  # a class too small for a balanced subset of the test set's size: a random subset
            r = metrics.fid_train_test(xs, im.train, im.test, net=im.fid_net, seed=ctx.seed)
        out.update(fid_train=r.fid_train, fid_test=r.fid_test, fid_ratio=r.ratio)
    return out


def _samplers(cfg: SmoothingConfig) -> dict[str, dict[str, Any]]:
    """Song et al.'s PC (reverse diffusion + Langevin, snr) and its probability-flow predictor without corrector."""
    return {"PC (SDE)": {"snr": cfg.snr, "n_corrector": 1},
            "PC-ODE": {"probability_flow": True, "n_corrector": 0}}


def _tempering(cfg: SmoothingConfig) -> train.Tempering:
    return train.Tempering(sigma_c=cfg.sigma_c, k=cfg.k, variant=cfg.variant)


# ------------------------------------------------------------------------- 1. empirical score


def _empirical(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps}

    def work() -> dict[str, Any]:
        model = Empirical(im.train)
        x0 = start_noise(ctx, 20, cfg.n_samples, im.shape, im.sigma_max)
        sd = seeds(ctx.seed, 21, cfg.n_samples)
        karras = sample.sigmas_karras(cfg.heun_steps, cfg.sigma_min, im.sigma_max)
        out: dict[str, Any] = {}
        x = sample.heun(model, x0, karras, progress=ctx.progress)
        out["m_heun"], out["s_heun"] = _measure(x, im, cfg, ctx), x
        x = sample.pc(model, x0, im.pc_grid, seeds=sd, snr=cfg.snr, progress=ctx.progress)
        out["m_pc"], out["s_pc"] = _measure(x, im, cfg, ctx), x
        # what a perfect memorizer scores: the training set itself
        out["m_train"] = _measure(im.train[: cfg.n_samples], im, cfg, ctx)
        out["heldout_nn_median"] = float(sample.nearest_distance(im.test, im.train).median())
        return out

    return ctx.stages.run("smoothing.empirical", conf, work)


# --------------------------------------------------- 2. the paper's methods: networks and optima


def _train(cfg: SmoothingConfig, ctx: Context, im: _Images, name: str, cond: str,
           tempering: Optional[train.Tempering]) -> dict[str, Any]:
    """Train one network (a cached stage) and keep its EMA weights; ``tempering``: eq. 10/11's target."""
    dist = "lognormal" if cond == "edm" else "geometric"
    spec = net_spec(cfg.net, im.shape, cond)
    conf = {**_base(cfg, ctx), "cond": cond, "dist": dist, "net": asdict(cfg.net), "sigma_max": im.sigma_max,
            "tempering": None if tempering is None else tempering.as_dict()}

    def work() -> dict[str, Any]:
        folder = ctx.stages.artifacts(name, conf)
        ema = train.fit(dict(spec), im.train, steps=cfg.net.steps, batch_size=min(cfg.net.batch_size, im.train.shape[0]),
                        lr=cfg.net.lr, sigma_dist=dist, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max,
                        levels=im.levels if dist == "geometric" else None, seed=ctx.seed, out=folder,
                        ckpt_every=cfg.net.steps + 1, resume=True, device=ctx.device, progress=ctx.progress,
                        log_every=max(1, cfg.net.steps // 10), weighting=WEIGHTING[cond], tempering=tempering)
        return {"spec": spec, **{f"w.{k}": v.detach().cpu().clone() for k, v in ema.state_dict().items()}}

    res = ctx.stages.run(name, conf, work)
    log = ctx.stages.artifacts(name, conf) / "metrics.jsonl"  # the training run's loss log (kept with the stage)
    res["losses"] = [json.loads(line)["loss"] for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    return res


def _load(res: dict[str, Any], ctx: Context, im: _Images) -> Any:
    model = nets.build(dict(res["spec"]))
    model.load_state_dict({k[2:]: v for k, v in res.items() if k.startswith("w.")})
    model.data_shape = im.shape
    return model.to(ctx.device).eval().requires_grad_(False)


def plateau_drop(losses: list[float]) -> float:
    """Relative fall of the logged training loss from the second-to-last to the last fifth of training."""
    k = max(1, len(losses) // 5)
    if len(losses) < 2 * k:
        return float("nan")
    before, last = sum(losses[-2 * k : -k]) / k, sum(losses[-k:]) / k
    return (before - last) / before


def _excess_loss(cfg: SmoothingConfig, ctx: Context, im: _Images, net: Any, optimum: Any,
                 tempering: Optional[train.Tempering], cond: str) -> dict[str, float]:
    """The training objective of ``net`` and of its exact optimum at the same fixed draws (the quality gate)."""
    n = 4096
    g = torch.Generator().manual_seed(ctx.seed + 77)
    idx = torch.randint(im.train.shape[0], (n,), generator=g)
    if cond == "edm":
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(n, generator=g, dtype=torch.float64))
    else:
        sigma = im.levels[torch.randint(len(im.levels), (n,), generator=g)]
    z = torch.randn((n, *im.shape), generator=g)
    x0, sigma, z = im.train[idx.to(ctx.device)], sigma.to(ctx.device, torch.float32), z.to(ctx.device)
    x = x0 + sigma.reshape(-1, *[1] * len(im.shape)) * z
    target = x0
    if tempering is not None:
        table = tempering.neighbours(im.train)
        target = tempering.denoiser_target(x, sigma, x0, im.train[table[idx.to(ctx.device)]])
    weights = train.loss_weight(WEIGHTING[cond], sigma, 0.5)
    vals = {}
    for key, model in (("net", net), ("optimum", optimum)):
        parts = []
        with torch.no_grad():
            for s in range(0, n, 512):
                d = model(x[s : s + 512], sigma[s : s + 512]).float()
                parts.append(weights[s : s + 512] * (d - target[s : s + 512]).square().flatten(1).mean(1))
        vals[key] = float(torch.cat(parts).mean())
    return {"loss_net": vals["net"], "loss_optimum": vals["optimum"],
            "excess": vals["net"] - vals["optimum"], "excess_rel": (vals["net"] - vals["optimum"]) / vals["optimum"]}


def _optimum(cfg: SmoothingConfig, im: _Images, which: str) -> Any:
    if which == "conditional (EDM)":
        return Empirical(im.train)
    if which == "unconditional":
        return NoiseAgnostic(im.train, conditioning="unconditional", levels=im.levels)
    return TemperedOptimum(im.train, levels=im.levels, sigma_c=cfg.sigma_c, k=cfg.k, variant=cfg.variant)


def _methods(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    temp = _tempering(cfg)
    trained = {
        "conditional (EDM)": (_train(cfg, ctx, im, "smoothing.train_edm", "edm", None), "edm", None),
        "unconditional": (_train(cfg, ctx, im, "smoothing.train_unconditional", "unconditional", None),
                          "unconditional", None),
        "tempered unconditional": (_train(cfg, ctx, im, "smoothing.train_tempered", "unconditional", temp),
                                   "unconditional", temp),
    }
    conf = {**_base(cfg, ctx), "net": asdict(cfg.net), "tempering": temp.as_dict(), "n_ref": cfg.n_reference_samples}

    def work() -> dict[str, Any]:
        x0 = start_noise(ctx, 30, cfg.n_samples, im.shape, im.sigma_max)
        sd = seeds(ctx.seed, 31, cfg.n_samples)
        out: dict[str, Any] = {}
        for mi, (name, (res, cond, tp)) in enumerate(trained.items()):
            net = _load(res, ctx, im)
            opt = _optimum(cfg, im, name)
            out[f"gate{mi}"] = _excess_loss(cfg, ctx, im, net, opt, tp, cond)
            for si, (sname, kw) in enumerate(_samplers(cfg).items()):
                x = sample.pc(net, x0, im.pc_grid, seeds=sd, progress=ctx.progress, **kw)
                out[f"net{mi}_{si}"], out[f"s_net{mi}_{si}"] = _measure(x, im, cfg, ctx), x
            # the zero-loss reference with the SDE sampler, on fewer samples (its cost is per training point)
            nr = cfg.n_reference_samples
            x = sample.pc(opt, x0[:nr], im.pc_grid, seeds=sd[:nr], progress=ctx.progress, **_samplers(cfg)["PC (SDE)"])
            out[f"opt{mi}"], out[f"s_opt{mi}"] = _measure(x, im, cfg, ctx), x
        return out

    return {"trained": trained, **ctx.stages.run("smoothing.methods", conf, work)}


# ------------------------------------------------------------------------ 3. gamma_ex (Fig. 4)


def _expansion(cfg: SmoothingConfig, ctx: Context, im: _Images, trained: dict[str, Any]) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "net": asdict(cfg.net), "tempering": _tempering(cfg).as_dict(), "ratio": cfg.gamma_ratio,
            "n_sigma": cfg.gamma_points}

    def work() -> dict[str, Any]:
        i0, i1 = metrics.expansion.closest_pair(im.train)
        delta = float((im.train[i0] - im.train[i1]).norm())
        lo = 1.02 * delta / ((cfg.gamma_ratio + 1) * math.sqrt(im.dim))
        hi = min(1.0, 0.98 * delta / ((cfg.gamma_ratio - 1) * math.sqrt(im.dim)))
        levels = torch.exp(torch.linspace(math.log(lo), math.log(hi), cfg.gamma_points)).tolist()
        models = {"empirical score": Empirical(im.train),
                  "unconditional optimum": _optimum(cfg, im, "unconditional"),
                  "tempered optimum": _optimum(cfg, im, "tempered unconditional")}
        for name, (res, _, _) in trained.items():
            models[f"{name} network"] = _load(res, ctx, im)
        out: dict[str, Any] = {"names": list(models), "sigma_star": levels, "pair": [i0, i1], "delta": delta}
        for i, m in enumerate(models.values()):
            out[f"g{i}"] = list(metrics.expansion_factor(m, im.train, levels, ratio=cfg.gamma_ratio, pair=(i0, i1)).gamma)
        return out

    return ctx.stages.run("smoothing.expansion", conf, work)


# ------------------------------------------------------------------ 4. sigma-domination (eq. 5)


def _domination(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    """Total variation between the unconditional optimum's exact per-point weights (the (level, point)
    softmax of ``sigma_i^2 N(x; mu_j, sigma_i^2)`` summed over levels) and eq. 5's one-level weights
    ``sigma*_j^2 N(x; mu_j, sigma*_j^2)``, ``sigma*_j^2 = r_j^2 / d``, at ``x = mu + sigma z``."""
    conf = {**_base(cfg, ctx), "probe_sigmas": list(cfg.domination_sigmas)}

    def work() -> dict[str, Any]:
        data = im.train.reshape(im.train.shape[0], -1).double()
        d = data.shape[1]
        lv = im.levels.double()
        g = torch.Generator().manual_seed(ctx.seed + 5)
        out: dict[str, Any] = {"sigmas": list(cfg.domination_sigmas), "tv": [], "top1_agree": []}
        for s in cfg.domination_sigmas:
            idx = torch.randint(data.shape[0], (64,), generator=g)
            x = data[idx.to(data.device)] + s * torch.randn(64, d, generator=g, dtype=torch.float64).to(data.device)
            r2 = torch.cdist(x, data).square()
            logits = (2 - d) * lv.log()[:, None, None] - r2[None] / (2 * lv[:, None, None] ** 2)
            exact = torch.softmax(logits.reshape(-1, 64, data.shape[0]).permute(1, 0, 2).reshape(64, -1), 1)
            exact = exact.reshape(64, len(lv), -1).sum(1)
            s2 = r2 / d
            approx = torch.softmax((2 - d) / 2 * s2.log() - r2 / (2 * s2), 1)
            out["tv"].append(float(0.5 * (exact - approx).abs().sum(1).mean()))
            out["top1_agree"].append(float((exact.argmax(1) == approx.argmax(1)).double().mean()))
        return out

    return ctx.stages.run("smoothing.domination", conf, work)


# ----------------------------------------------------- 5. extension: sampling-time tempering


def _sampling_time(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps, "T": list(cfg.temperatures)}

    def work() -> dict[str, Any]:
        x0 = start_noise(ctx, 20, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, cfg.sigma_min, im.sigma_max)
        out: dict[str, Any] = {"rows": []}
        for t in cfg.temperatures:
            x = sample.heun(Empirical(im.train, temperature=float(t)), x0, karras)
            out["rows"].append(_measure(x, im, cfg, ctx))
        return out

    return ctx.stages.run("smoothing.sampling_time", conf, work)


# --------------------------------------------------------------------------------- report


def _cols(m: dict[str, Any]) -> list[Any]:
    return [m["copy_fraction"], m["nn_median"], m.get("fid_train"), m.get("fid_test"), m.get("fid_ratio")]


def _verdict(ok: bool, bad: bool) -> str:
    return "supported" if ok else "not supported" if bad else "inconclusive"


def run(cfg: SmoothingConfig, ctx: Context) -> StudyReport:
    """Run the smoothing study and return its report."""
    im = _Images(cfg, ctx)
    emp = _empirical(cfg, ctx, im)
    met = _methods(cfg, ctx, im)
    gex = _expansion(cfg, ctx, im, met["trained"])
    dom = _domination(cfg, ctx, im)
    ext = _sampling_time(cfg, ctx, im)
    has_fid = "fid_test" in emp["m_pc"]
    sampler_names = list(_samplers(cfg))

    # 1 ----------------------------------------------------------------------------------------
    c1 = Claim("smoothing.1", "The empirical score reproduces training data (sampling collapse): its samples are "
               "copies, with the ODE and with the PC sampler", "Zhou et al. 2026, §3.1",
               {"copy_heun": emp["m_heun"]["copy_fraction"], "copy_pc": emp["m_pc"]["copy_fraction"]},
               "copy fraction (d_NN1/d_NN2 < 1/3) >= 0.9 for both samplers",
               _verdict(min(emp["m_heun"]["copy_fraction"], emp["m_pc"]["copy_fraction"]) >= 0.9, True))
    sec1 = Section("1. The empirical score memorizes",
                   f"{cfg.n_train} {cfg.data} training images; {cfg.n_samples} samples from the same seeds; sigma in "
                   f"[{cfg.sigma_min}, {sig(im.sigma_max)}]. PC: {cfg.pc_steps} geometric levels, snr {cfg.snr}.",
                   [c1])

    # 2 ----------------------------------------------------------------------------------------
    gates = [met[f"gate{i}"] for i in range(3)]
    drops = [plateau_drop(list(res["losses"])) for res, _, _ in met["trained"].values()]
    passed = [dr == dr and dr <= cfg.gate_plateau for dr in drops]
    m = {(mi, si): met[f"net{mi}_{si}"] for mi in range(3) for si in range(2)}
    rows = []
    for mi, name in enumerate(MODELS):
        for si, sname in enumerate(sampler_names):
            rows.append([f"{name} network", sname, *_cols(m[(mi, si)])])
        rows.append([f"{name}: exact optimum (zero loss)", "PC (SDE)", *_cols(met[f"opt{mi}"])])
    rows.append(["training set itself", "-", *_cols(emp["m_train"])])
    t2 = Table("smoothing_methods", "The paper's methods at our scale (Table 1's measures)",
               ["model", "sampler", "copy frac.", "NN median", "FID(G, train)", "FID(G, test)", "FID test/train"], rows,
               f"Networks: MLP {cfg.net.hidden}x{cfg.net.depth}, {cfg.net.steps} steps, batch {cfg.net.batch_size}. "
               f"Unconditional networks use {cfg.n_levels} geometric levels (uniform, sigma^2 weighting, as the paper); "
               f"the tempered network uses T = max(sigma_c / sigma*, 1) with sigma_c = {cfg.sigma_c} and K = {cfg.k} "
               f"pixel-space neighbours (variant '{cfg.variant}'), below sigma_c; the EDM network EDM's log-normal sigma. "
               "FID on the project's digits classifier features against equal-size references (a train subset the size "
               "of the test set); not comparable with Inception FIDs. The exact optima are sampled on "
               f"{cfg.n_reference_samples} samples only.")
    tg = Table("smoothing_gate", "Quality gate (loss plateau) and each network's objective against its exact optimum's",
               ["network", "loss fall over the last fifth", "passes", "loss (net)", "loss (exact optimum)",
                "excess / optimum"],
               [[f"{n} network", dr, p, g["loss_net"], g["loss_optimum"], g["excess_rel"]]
                for n, g, p, dr in zip(MODELS, gates, passed, drops)],
               f"A network is judged only when its logged training loss fell by at most {cfg.gate_plateau:g} (relative) "
               "from the second-to-last to the last fifth of training (a plateau). The losses are the training "
               "objective at 4096 fixed draws of the training law; the exact optimum (Empirical, NoiseAgnostic, "
               "TemperedOptimum) is the zero-loss reference: the excess is how far the network is from it.")
    tp = Table("smoothing_paper_table1", "The paper's Table 1 (Inception FID, pixel-space KNN), for comparison",
               ["data", "sampler", "setting", "FID(G, train)", "FID(G, test)", "test/train"],
               [[a, b, c, tr, te, te / tr] for a, b, c, tr, te in PAPER_TABLE1])
    claims2 = []
    cond_c, unc_c, tmp_c = (m[(i, 0)]["copy_fraction"] for i in range(3))
    key = "fid_test" if has_fid else None
    if key is not None:
        q_unc, q_cond, q_tmp = m[(1, 0)][key], m[(0, 0)][key], m[(2, 0)][key]
        qr_u, qr_t = q_unc / q_cond, q_tmp / q_unc
    else:
        qr_u = qr_t = float("nan")
    gate_u, gate_t = passed[0] and passed[1], passed[1] and passed[2]
    claims2.append(Claim(
        "smoothing.2a", "Noise unconditioning: an unconditional network memorizes no more than a conditional one, "
        "at comparable quality (SDE (PC) sampling)", "Zhou et al. 2026, §4 Noise Unconditioning; Table 1",
        {"copy_conditional": cond_c, "copy_unconditional": unc_c, "fid_test_ratio_uncond_over_cond": qr_u,
         "paper_fid_test_ratio": 7.34 / 6.56, "gate_passed": gate_u},
        "both networks pass the quality gate, copy(unconditional) <= copy(conditional) + 0.05 and FID(test) ratio "
        "<= 1.5: supported; copy more than 0.05 higher or FID(test) ratio > 3: not supported; else (or a gate failed) "
        "inconclusive",
        _verdict(gate_u and unc_c <= cond_c + 0.05 and qr_u <= 1.5, gate_u and (unc_c > cond_c + 0.05 or qr_u > 3))))
    claims2.append(Claim(
        "smoothing.2b", "Temperature smoothing: the tempered network memorizes less than the unconditional one, "
        "while its quality stays close (SDE (PC) sampling)", "Zhou et al. 2026, §4 Temperature Smoothing; Table 1",
        {"copy_unconditional": unc_c, "copy_tempered": tmp_c, "fid_test_ratio_tempered_over_uncond": qr_t,
         "paper_fid_test_ratio_T5_K30": 8.60 / 7.34, "gate_passed": gate_t},
        "both networks pass the gate, copy(tempered) <= copy(unconditional) - 0.05 or both <= 0.05, and FID(test) "
        "ratio <= 1.5: supported; copy(tempered) > copy(unconditional) + 0.05 or ratio > 3: not supported; else "
        "inconclusive",
        _verdict(gate_t and (tmp_c <= unc_c - 0.05 or max(tmp_c, unc_c) <= 0.05) and qr_t <= 1.5,
                 gate_t and (tmp_c > unc_c + 0.05 or qr_t > 3))))
    if has_fid:
        ratios = [m[(i, 0)]["fid_ratio"] for i in range(3)]
        spread = max(ratios) - min(ratios)
        ordered = ratios[2] <= ratios[1] <= ratios[0]
        claims2.append(Claim(
            "smoothing.2c", "FID(G, test) / FID(G, train) falls from conditioning to unconditioning to tempering "
            "(the paper reads a smaller ratio as better generalization)", "Zhou et al. 2026, §5 metrics; Table 1",
            {"ratio_conditional": ratios[0], "ratio_unconditional": ratios[1], "ratio_tempered": ratios[2],
             "paper_ratio_cond": 6.56 / 6.49, "paper_ratio_uncond": 7.34 / 7.33},
            "ordered (tempered <= unconditional <= conditional) with a spread >= 0.05: supported; the reverse order with "
            "a spread >= 0.05: not supported; else inconclusive",
            _verdict(ordered and spread >= 0.05, ratios[2] > ratios[1] > ratios[0] and spread >= 0.05)))
        ode_ratio = m[(1, 1)]["fid_test"] / m[(1, 0)]["fid_test"]
        claims2.append(Claim(
            "smoothing.2d", "SDE (PC) sampling of an unconditional network is stable; its PC-ODE sampling is no better "
            "(the paper: 7.34 SDE vs 8.88 ODE on CIFAR-10)", "Zhou et al. 2026, §A.7.2; Table 1",
            {"fid_test_uncond_sde": m[(1, 0)]["fid_test"], "fid_test_uncond_ode": m[(1, 1)]["fid_test"],
             "fid_test_cond_sde": m[(0, 0)]["fid_test"], "ode_over_sde": ode_ratio, "paper_ode_over_sde": 8.88 / 7.34},
            "unconditional SDE FID(test) <= 1.5 x the conditional network's and ODE/SDE >= 0.9: supported; SDE FID > 3 x "
            "the conditional's: not supported; else inconclusive",
            _verdict(passed[1] and m[(1, 0)]["fid_test"] <= 1.5 * m[(0, 0)]["fid_test"] and ode_ratio >= 0.9,
                     passed[1] and m[(1, 0)]["fid_test"] > 3 * m[(0, 0)]["fid_test"])))
    shown = [("empirical score, PC", emp["s_pc"])]
    for mi, name in enumerate(MODELS):
        shown.append((f"{name} net, PC (SDE)", met[f"s_net{mi}_0"]))
        shown.append((f"{name} net, PC-ODE", met[f"s_net{mi}_1"]))
        shown.append((f"{name} optimum, PC", met[f"s_opt{mi}"]))
    shown.append(("training images", im.train))
    fig, axes = figure(3, 4, (3.3, 3.6))
    for ax, (title, x) in zip(axes.flat, shown):
        image_grid(ax, x.reshape(x.shape[0], *im.shape).float().cpu(), 6, title)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    f2 = Figure("smoothing_samples", "Zhou et al.'s methods: samples (same seeds) of the trained networks with both "
                "PC samplers and of the exact optima of their objectives; last panel: training images.", figure_png(fig))
    sec2 = Section("2. Noise unconditioning and temperature smoothing (trained networks)",
                   "The paper's two training methods and their exact zero-loss optima, sampled with Song et al.'s "
                   "predictor-corrector samplers as in its Table 1.", claims2, [t2, tg, tp], [f2])

    # 3 ----------------------------------------------------------------------------------------
    names = gex["names"]
    curves = {n: gex[f"g{i}"] for i, n in enumerate(names)}
    peak = {n: max(c) for n, c in curves.items()}
    judged = [n for n, p in zip(MODELS, passed) if p]
    nets_peak = max((peak[f"{n} network"] for n in judged), default=float("nan"))
    c3a = Claim("smoothing.3a", "Trained networks have expansion factors orders of magnitude below the empirical "
                "score's (Fig. 4: ~1e3 vs ~1-2)", "Zhou et al. 2026, §3.2, Fig. 4",
                {"peak_empirical": peak["empirical score"], "peak_networks_passing_gate": nets_peak,
                 "networks_passing_gate": len(judged), "ratio": peak["empirical score"] / nets_peak},
                "over the networks that pass the quality gate, peak gamma_ex over the sweep: empirical / largest "
                "network >= 10: supported; < 2: not supported; else (or no network passes) inconclusive",
                _verdict(bool(judged) and peak["empirical score"] >= 10 * nets_peak,
                         bool(judged) and peak["empirical score"] < 2 * nets_peak))
    c3b = Claim("smoothing.3b", "Unconditioning and tempering lower gamma_ex: tempered optimum < unconditional optimum < "
                "empirical score", "Zhou et al. 2026, §3.2 and §4, Fig. 4",
                {"peak_empirical": peak["empirical score"], "peak_unconditional": peak["unconditional optimum"],
                 "peak_tempered": peak["tempered optimum"]},
                "peaks strictly ordered: supported; tempered >= empirical: not supported; else inconclusive",
                _verdict(peak["tempered optimum"] < peak["unconditional optimum"] < peak["empirical score"],
                         peak["tempered optimum"] >= peak["empirical score"]))
    fig, axes = figure(1, 1, (6.0, 4.2))
    ax = axes.flat[0] if hasattr(axes, "flat") else axes
    for n, c in curves.items():
        ax.plot(gex["sigma_star"], c, marker="o", label=n)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sigma*")
    ax.set_ylabel("gamma_ex")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    f3 = Figure("smoothing_gamma_ex", f"Expansion factor (Zhou et al. Fig. 4) for the closest training pair "
                f"({sig(gex['delta'])} apart), distance ratio C = {cfg.gamma_ratio}, one full denoising step.",
                figure_png(fig))
    t3 = Table("smoothing_gamma_ex", "gamma_ex over sigma*", ["model", *[f"s*={sig(s)}" for s in gex["sigma_star"]]],
               [[n, *c] for n, c in curves.items()])
    sec3 = Section("3. The expansion factor gamma_ex", "", [c3a, c3b], [t3], [f3])

    # 4 ----------------------------------------------------------------------------------------
    tv = max(dom["tv"])
    c4 = Claim("smoothing.4", "Sigma-domination (eq. 5): one noise level per training point, sigma*_j = r_j / sqrt(d), "
               "reproduces the unconditional optimum's weights", "Zhou et al. 2026, §3.1 Property 1, eq. 5",
               {"max_mean_tv": tv, "min_top1_agreement": min(dom["top1_agree"])},
               "mean total variation between the exact and the eq. 5 weights <= 0.1 at every probe sigma: supported; "
               "> 0.3 at some sigma: not supported; else inconclusive", _verdict(tv <= 0.1, tv > 0.3))
    t4 = Table("smoothing_domination", "Exact (level-summed) vs eq. 5 weights of the unconditional optimum",
               ["probe sigma", "mean TV", "top-1 agreement"],
               [[s, a, b] for s, a, b in zip(dom["sigmas"], dom["tv"], dom["top1_agree"])],
               f"64 probes x = mu + sigma z per row; {cfg.n_levels} training levels.")
    sec4 = Section("4. Sigma-domination", "", [c4], [t4])

    # 5 ----------------------------------------------------------------------------------------
    t5 = Table("smoothing_sampling_time", "Extension, not the paper's method: the empirical score with its Gaussian "
               "logits divided by T at sampling time (PF-ODE Heun)",
               ["T", "copy frac.", "NN median", "FID(G, train)", "FID(G, test)", "FID test/train"],
               [[t, *_cols(r)] for t, r in zip(cfg.temperatures, ext["rows"])],
               "Tempering the Gaussian logits -r^2/(2 sigma^2 T) of the empirical score equals the empirical score at "
               "noise sigma sqrt(T) in the weights; the paper instead trains toward power-law (eq. 5) logits over the K "
               "nearest neighbours of the clean point (section 2). To sample the paper's smoothed score without "
               "training, use analytic.TemperedOptimum (section 2's 'tempered unconditional: exact optimum' row).")
    sec5 = Section("5. Extension: sampling-time tempering (labelled; not the paper's method)", "", [], [t5])

    summary = ("Zhou et al. explain memorization by the sharp softmax weights of the empirical score and propose two "
               "training methods: networks that do not see the noise level, and a tempered training target over the K "
               "nearest neighbours of each training point below a collapse level sigma_c.")
    notes = [f"FIDs use the project's {cfg.data} classifier features against {im.test.shape[0]} held-out images and an "
             "equal-size training subset; they are not comparable with the paper's Inception FIDs (Table 1 is shown "
             "for its ratios and orderings).",
             f"The paper's sigma_c (1-10 for data in [0, 1], sigma_max = 50 on CIFAR-10) maps to ours by the data range "
             f"(2 for data in [-1, 1]): sigma_c = {cfg.sigma_c} here is the paper's T = {cfg.sigma_c / 2:g}/sigma."]
    return StudyReport("smoothing", TITLE, PAPERS, summary, [sec1, sec2, sec3, sec4, sec5], notes)
