"""Study ``smoothing``: Zhou, Zhang & Wright (2026), "Smoothing the Score Function for Generalization
in Diffusion Models: An Optimization-based Explanation Framework" (arXiv:2601.19285).

1. The empirical score is a sum of Gaussian scores weighted by a sharp softmax: any sampler driven
   by it reproduces training data.
2. Temperature smoothing (dividing the softmax logits by T, constant or ``max(sigma_c/sigma, 1)``,
   optionally over the top-K neighbours) lowers memorization; quality against held-out data is
   reported alongside (the trade-off curve).
3. Noise unconditioning: the optimum of a network that cannot see sigma (``NoiseAgnostic``,
   unconditional) and a trained unconditional network memorize less than noise-conditional ones;
   plain ODE sampling of an unconditional model overshoots, and steps sized by the model's own
   noise estimate (``scoredyn.sample.unconditional_ode``) fix it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Optional

from torch import Tensor

from .. import data as sd_data
from .. import metrics, sample
from ..analytic import Empirical, NoiseAgnostic
from ..plot import figure
from .common import corr_cell, image_grid, load_checkpoint, memorization, net_spec, quality, seeds, spearman, start_noise, train_checkpoints
from .config import SmoothingConfig
from .report import Claim, Figure, Section, StudyReport, Table, figure_png, judge, sig
from .stages import Context

TITLE = "Zhou et al. (2026): smoothing the score for generalization"
PAPERS = ("X. Zhou, Y. Zhang, J. Wright, Smoothing the Score Function for Generalization in Diffusion Models: "
          "An Optimization-based Explanation Framework, arXiv:2601.19285 (2026)")
K_SIGMA = 3.0
VERSION = 1  # bump when a stage's output changes in a way its configuration does not show


class _Images:
    def __init__(self, cfg: SmoothingConfig, ctx: Context) -> None:
        self.train = sd_data.load(cfg.data, split="train", n=cfg.n_train, seed=ctx.seed).to(ctx.device)
        test = sd_data.load(cfg.data, split="test", seed=ctx.seed)
        self.heldout = test[: cfg.n_heldout].to(ctx.device)
        self.shape = tuple(self.train.shape[1:])
        self.sigma_max = float(sample.max_pairwise_distance(self.train))  # NCSNv2 Technique 1
        self.fid_net: Optional[str] = cfg.data if (cfg.fid and cfg.data in ("digits", "mnist")) else None


def _base(cfg: SmoothingConfig, ctx: Context) -> dict[str, Any]:
    return {"v": VERSION, "data": cfg.data, "n_train": cfg.n_train, "n_heldout": cfg.n_heldout, "seed": ctx.seed,
            "device": ctx.device.type, "samples": cfg.n_samples, "sigma_min": cfg.sigma_min, "fid": cfg.fid}


def _measure(ctx: Context, x: Tensor, im: _Images, sigma_min: float) -> dict[str, float]:
    return {**memorization(x, im.train, sigma_min, K_SIGMA), **quality(x, im.heldout, seed=ctx.seed, fid_net=im.fid_net)}


# ------------------------------------------------------------------------- 1. empirical score


def _empirical(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps}

    def work() -> dict[str, Any]:
        model = Empirical(im.train)
        x0 = start_noise(ctx, 20, cfg.n_samples, im.shape, im.sigma_max)
        sd = seeds(ctx.seed, 21, cfg.n_samples)
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
        out: dict[str, Any] = {"names": list(runs)}
        for i, (name, fn) in enumerate(runs.items()):
            x = fn()
            out[f"m{i}"] = _measure(ctx, x, im, cfg.sigma_min)
            out[f"s{i}"] = x
        # the quality of the training set itself (what a perfect memorizer scores) and of fresh held-out-like data
        out["train_quality"] = quality(im.train[: cfg.n_samples], im.heldout, seed=ctx.seed, fid_net=im.fid_net)
        out["heldout_nn_median"] = float(metrics.knn(im.heldout, im.train.to(im.heldout.device))[0][:, 0].median())
        return out

    return ctx.stages.run("smoothing.empirical", conf, work)


# --------------------------------------------------------------------- 2. temperature sweep


def _settings(cfg: SmoothingConfig) -> list[tuple[str, str, float, Optional[int]]]:
    """(family, label, value, top_k): constant T and the max(sigma_c/sigma, 1) schedule, without/with top-K."""
    out: list[tuple[str, str, float, Optional[int]]] = []
    for k in (None, cfg.top_k):
        suffix = "" if k is None else f", top-{k}"
        out += [(f"constant T{suffix}", f"T={t:g}{suffix}", float(t), k) for t in cfg.temperatures]
        out += [(f"T=max(sigma_c/sigma,1){suffix}", f"sigma_c={c:g}{suffix}", float(c), k) for c in cfg.sigma_cs]
    return out


def _temperature(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps, "T": list(cfg.temperatures), "sigma_c": list(cfg.sigma_cs),
            "top_k": cfg.top_k}
    settings = _settings(cfg)

    def work() -> dict[str, Any]:
        x0 = start_noise(ctx, 20, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        out: dict[str, Any] = {"settings": [list(s) for s in settings], "rows": []}
        from tqdm.auto import tqdm

        for i, (family, label, v, k) in enumerate(tqdm(settings, desc="temperature sweep", disable=not ctx.progress)):
            temp: Any = v if family.startswith("constant") else (lambda s, c=v: (c / s).clamp(min=1.0))
            model = Empirical(im.train, temperature=temp, top_k=k)
            x = sample.heun(model, x0, karras)
            out["rows"].append(_measure(ctx, x, im, cfg.sigma_min))
            out[f"s{i}"] = x
        return out

    return ctx.stages.run("smoothing.temperature", conf, work)


def _shown(settings: list[tuple[str, str, float, Optional[int]]], rows: list[dict[str, Any]]) -> list[int]:
    """Settings whose samples the figure shows: per family without top-K and with it, the mildest setting that
    at least halves the copy fraction (else the strongest)."""
    picks = []
    for fam in dict.fromkeys(s[0] for s in settings):
        idx = [i for i, s in enumerate(settings) if s[0] == fam]
        low = [i for i in idx if rows[i]["copy_fraction"] <= 0.5 * rows[idx[0]]["copy_fraction"]]
        picks.append(min(low, key=lambda i: settings[i][2]) if low else max(idx, key=lambda i: settings[i][2]))
    return picks


def _trend_claim(cid: str, what: str, xs: list[float], copies: list[float], base_copy: float) -> Claim:
    rho = spearman(xs, copies)
    drop = base_copy - copies[-1]
    if rho == rho and rho <= -0.8 and drop >= 0.3:
        v = "supported"
    elif copies[-1] >= base_copy:
        v = "not supported"
    else:
        v = "inconclusive"
    return Claim(
        cid, f"Memorization falls as the temperature rises ({what})", "Zhou et al. 2026, Temperature Smoothing",
        {"copy_T1": base_copy, "copy_at_max": copies[-1], "spearman": corr_cell(rho),
         "max_value": xs[-1]},
        "Spearman(temperature, copy fraction) <= -0.8 and the copy fraction at the largest setting at least 0.3 below "
        "T = 1: supported; no lower than at T = 1: not supported; else inconclusive",
        v,
    )


# ------------------------------------------------------------------ 3. noise unconditioning


def _unconditional(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    conf = {**_base(cfg, ctx), "heun": cfg.heun_steps, "levels": cfg.n_levels_unconditional, "fix": "nn-estimate"}

    def work() -> dict[str, Any]:
        levels = sample.sigmas_geometric(cfg.n_levels_unconditional, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        model = NoiseAgnostic(im.train, conditioning="unconditional", levels=levels)
        x0 = start_noise(ctx, 20, cfg.n_samples, im.shape, im.sigma_max)
        karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
        out: dict[str, Any] = {}
        x_plain = sample.euler(model, x0, karras, progress=ctx.progress)
        x_fix = sample.unconditional_ode(model, x0, karras, data=im.train, progress=ctx.progress)
        out["plain"], out["fixed"] = _measure(ctx, x_plain, im, cfg.sigma_min), _measure(ctx, x_fix, im, cfg.sigma_min)
        out["s_plain"], out["s_fixed"] = x_plain, x_fix
        return out

    return ctx.stages.run("smoothing.unconditional_optimum", conf, work)


def _trained(cfg: SmoothingConfig, ctx: Context, im: _Images) -> dict[str, Any]:
    out: dict[str, Any] = {}
    levels = [float(s) for s in sample.sigmas_geometric(cfg.n_levels_unconditional, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)]
    for cond, dist in (("unconditional", "geometric"), ("edm", "lognormal")):
        spec = net_spec(cfg.net, im.shape, cond)
        conf = {**_base(cfg, ctx), "cond": cond, "dist": dist, "net": asdict(cfg.net), "levels": levels,
                "sigma_max": im.sigma_max}
        res = train_checkpoints(ctx, f"smoothing.train_{cond}", conf, spec, im.train, cfg.net, [cfg.net.steps],
                                sigma_dist=dist, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max,
                                levels=len(levels) if dist == "geometric" else None)
        aconf = {**conf, "heun": cfg.heun_steps, "fix": "nn-estimate"}

        def work(cond: str = cond, res: dict = res) -> dict[str, Any]:
            net = load_checkpoint(res, cfg.net.steps, ctx.device, im.shape)
            x0 = start_noise(ctx, 20, cfg.n_samples, im.shape, im.sigma_max)
            karras = sample.sigmas_karras(cfg.heun_steps, sigma_min=cfg.sigma_min, sigma_max=im.sigma_max)
            r: dict[str, Any] = {}
            if cond == "unconditional":
                xp = sample.euler(net, x0, karras, progress=ctx.progress)
                xf = sample.unconditional_ode(net, x0, karras, data=im.train, progress=ctx.progress)
                r["plain"], r["fixed"] = _measure(ctx, xp, im, cfg.sigma_min), _measure(ctx, xf, im, cfg.sigma_min)
                r["s_plain"], r["s_fixed"] = xp, xf
            else:
                x = sample.heun(net, x0, karras, progress=ctx.progress)
                r["heun"] = _measure(ctx, x, im, cfg.sigma_min)
                r["s_heun"] = x
            return r

        out[cond] = ctx.stages.run(f"smoothing.sample_{cond}", aconf, work)
    return out


# --------------------------------------------------------------------------------- report


def _quality_key(m: dict[str, Any]) -> str:
    return "fid" if "fid" in m else "sw"


def run(cfg: SmoothingConfig, ctx: Context) -> StudyReport:
    """Run the smoothing study and return its report."""
    im = _Images(cfg, ctx)
    emp = _empirical(cfg, ctx, im)
    tmp = _temperature(cfg, ctx, im)
    unc = _unconditional(cfg, ctx, im)
    trn = _trained(cfg, ctx, im)
    qk = _quality_key(emp["m0"])
    qname = "FID (digits feature net)" if qk == "fid" else "sliced W2"

    # 1 ----------------------------------------------------------------------------------------
    names = emp["names"]
    copies = {n: emp[f"m{i}"]["copy_fraction"] for i, n in enumerate(names)}
    c1 = Claim("smoothing.1", "The empirical score reproduces training data: samples are copies whatever the sampler",
               "Zhou et al. 2026, §3 (sampling collapse)",
               {**{f"copy[{n}]": v for n, v in copies.items()}},
               "copy fraction (d_NN1/d_NN2 < 1/3) >= 0.9 for every sampler",
               judge(min(copies.values()) >= 0.9))
    t1 = Table("smoothing_empirical", "Samplers driven by the exact empirical score",
               ["sampler", "copy frac.", f"within {K_SIGMA:g} sigma_min", "NN median", "SW", "FID", "KID"],
               [[n, emp[f"m{i}"]["copy_fraction"], emp[f"m{i}"]["within_k_sigma"], emp[f"m{i}"]["nn_median"],
                 emp[f"m{i}"]["sw"], emp[f"m{i}"].get("fid"), emp[f"m{i}"].get("kid")] for i, n in enumerate(names)])
    sec1 = Section("1. The empirical score memorizes",
                   f"{cfg.n_train} {cfg.data} training images, {cfg.n_samples} samples per sampler from the same seeds, "
                   f"sigma in [{cfg.sigma_min}, {sig(im.sigma_max)}].", [c1], [t1])

    # 2 ----------------------------------------------------------------------------------------
    settings = _settings(cfg)
    rows = tmp["rows"]
    base_copy = copies["PF-ODE Heun"]
    base_q = emp["m0"][qk]
    claims2 = []
    fams = {}
    for i, (fam, label, v, k) in enumerate(settings):
        fams.setdefault(fam, []).append(i)
    for j, (fam, idx) in enumerate(fams.items()):
        xs = [settings[i][2] for i in idx]
        claims2.append(_trend_claim(f"smoothing.2{'abcdefgh'[j]}", fam, xs, [rows[i]["copy_fraction"] for i in idx],
                                    base_copy))
    halved = [i for i in range(len(settings)) if rows[i]["copy_fraction"] <= 0.5 * base_copy]
    if halved:
        best = min(halved, key=lambda i: rows[i][qk])
        ratio = rows[best][qk] / base_q
        v = "supported" if ratio <= 1.5 else "inconclusive" if ratio <= 3 else "not supported"
        measured = {"setting": settings[best][1], "copy_fraction": rows[best]["copy_fraction"], qk: rows[best][qk],
                    f"{qk}_T1": base_q, "ratio": ratio}
    else:
        v, measured = "inconclusive", {"settings_halving_copies": 0, f"{qk}_T1": base_q}
    claims2.append(Claim(
        "smoothing.2q", "Smoothing keeps generation quality while it reduces memorization", "Zhou et al. 2026, abstract",
        measured, f"among settings that at least halve the copy fraction, the best {qname} / that at T = 1 <= 1.5: "
        "supported; <= 3: inconclusive; > 3: not supported (none halves it: inconclusive)", v))
    t2 = Table("smoothing_temperature", "Temperature sweep (PF-ODE Heun on the smoothed empirical score)",
               ["family", "setting", "copy frac.", "NN median", "SW", "FID", "KID"],
               [[s[0], s[1], r["copy_fraction"], r["nn_median"], r["sw"], r.get("fid"), r.get("kid")]
                for s, r in zip(settings, rows)])
    fig, axes = figure(1, 3, (5.0, 4.3))
    for fam, idx in fams.items():
        xs = [settings[i][2] for i in idx]
        axes[0].plot(xs, [rows[i]["copy_fraction"] for i in idx], marker="o", label=fam)
        axes[1].plot(xs, [rows[i][qk] for i in idx], marker="o", label=fam)
        axes[2].plot([rows[i]["copy_fraction"] for i in idx], [rows[i][qk] for i in idx], marker="o", label=fam)
    for ax in axes[1:]:
        ax.axhline(emp["train_quality"][qk], color="k", ls="--", lw=0.8, label="training set vs held-out")
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
    u, ec = trn["unconditional"], trn["edm"]
    nn_ref = emp["heldout_nn_median"]
    cu_opt = unc["fixed"]["copy_fraction"]
    on_data = unc["fixed"]["nn_median"] <= 2 * nn_ref
    c3a_v = ("not supported" if cu_opt > base_copy - 0.1 else "supported" if on_data else "inconclusive")
    c3a = Claim("smoothing.3a", "Noise unconditioning mitigates sampling collapse: the optimum of a sigma-blind network "
                "(NoiseAgnostic, unconditional) gives fewer copies than the empirical score, with samples still on the "
                "data", "Zhou et al. 2026, Noise Unconditioning",
                {"copy_unconditional_optimum": cu_opt, "copy_empirical": base_copy,
                 "nn_median_unconditional_optimum": unc["fixed"]["nn_median"], "nn_median_heldout": nn_ref,
                 f"{qk}_unconditional_optimum": unc["fixed"][qk], f"{qk}_empirical": base_q},
                "copy fraction at least 0.1 lower than the empirical score's and median NN distance <= 2 x held-out "
                "data's: supported; copy fraction not 0.1 lower: not supported; fewer copies only because samples stay "
                "off the data (NN distance > 2 x held-out's): inconclusive", c3a_v)
    cu, cc = u["fixed"]["copy_fraction"], ec["heun"]["copy_fraction"]
    qr = u["fixed"][qk] / ec["heun"][qk]
    c3b = Claim("smoothing.3b", "A trained unconditional network memorizes no more than a trained noise-conditional "
                "(EDM) one, at comparable quality", "Zhou et al. 2026, Noise Unconditioning, experiments",
                {"copy_unconditional": cu, "copy_conditional": cc, f"{qk}_unconditional": u["fixed"][qk],
                 f"{qk}_conditional": ec["heun"][qk], "quality_ratio": qr},
                f"copy(unconditional) <= copy(conditional) + 0.05 and {qname} ratio <= 1.5: supported; copy more than "
                "0.05 higher: not supported; else inconclusive",
                "supported" if cu <= cc + 0.05 and qr <= 1.5 else "not supported" if cu > cc + 0.05 else "inconclusive")
    imp_opt = unc["plain"][qk] - unc["fixed"][qk]
    imp_net = u["plain"][qk] - u["fixed"][qk]
    c3c = Claim("smoothing.3c", "Plain probability-flow ODE sampling of an unconditional model goes wrong; steps sized "
                "by an estimate of each state's own noise level (here its nearest training point) fix it", "Zhou et al. 2026, Noise Unconditioning (sampling); DESIGN §8",
                {f"{qk}_optimum_plain": unc["plain"][qk], f"{qk}_optimum_fixed": unc["fixed"][qk],
                 f"{qk}_net_plain": u["plain"][qk], f"{qk}_net_fixed": u["fixed"][qk]},
                f"the fix lowers {qname} for both the optimum and the trained network: supported; for neither: "
                "not supported; else inconclusive",
                "supported" if imp_opt > 0 and imp_net > 0 else "not supported" if imp_opt <= 0 and imp_net <= 0
                else "inconclusive")
    t3 = Table("smoothing_unconditioning", "Noise unconditioning vs noise conditioning",
               ["model", "sampler", "copy frac.", "NN median", "SW", "FID", "KID"],
               [["empirical score (conditional optimum)", "PF-ODE Heun", *_cols(emp["m0"])],
                ["NoiseAgnostic unconditional optimum", "plain PF-ODE Euler", *_cols(unc["plain"])],
                ["NoiseAgnostic unconditional optimum", "unconditional_ode (fix, nearest-neighbour noise estimate)", *_cols(unc["fixed"])],
                ["trained unconditional MLP", "plain PF-ODE Euler", *_cols(u["plain"])],
                ["trained unconditional MLP", "unconditional_ode (fix, nearest-neighbour noise estimate)", *_cols(u["fixed"])],
                ["trained EDM MLP (conditional)", "PF-ODE Heun", *_cols(ec["heun"])]],
               f"All samplers on the same Karras grid ({cfg.heun_steps} levels, sigma in [{cfg.sigma_min}, "
               f"{sig(im.sigma_max)}]) from the same seeds. The unconditional optimum and network use "
               f"{cfg.n_levels_unconditional} geometric noise levels (uniform over levels, as in the paper); the EDM "
               f"network is trained with EDM's log-normal sigma. Networks: MLP {cfg.net.hidden}x{cfg.net.depth}, "
               f"{cfg.net.steps} steps. For reference, held-out images lie at a median NN distance of "
               f"{sig(emp['heldout_nn_median'])} from the training set.")
    shown = [("empirical score, T=1", emp["s0"])]
    for i in _shown(settings, rows):
        shown.append((f"{settings[i][1]} (copies {rows[i]['copy_fraction']:.2f})", tmp[f"s{i}"]))
    shown += [("unconditional optimum, plain ODE", unc["s_plain"]), ("unconditional optimum, fixed ODE", unc["s_fixed"]),
               ("trained unconditional, plain ODE", u["s_plain"]), ("trained unconditional, fixed ODE", u["s_fixed"]),
               ("trained EDM (conditional)", ec["s_heun"]), ("training images", im.train)]
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


def _cols(m: dict[str, Any]) -> list[Any]:
    return [m["copy_fraction"], m["nn_median"], m["sw"], m.get("fid"), m.get("kid")]
