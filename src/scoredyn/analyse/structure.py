"""Section 4: the structure of the model's score (Wang & Vastola 2023, arXiv:2311.10892). Per noise level,
the fraction of the model's score variance that analytical scores leave unexplained: mean only (the
score of a point mass at the data mean), the Gaussian fitted to the training data, k-means Gaussian
mixtures with several K and the empirical (training-set) score, at noisy training and held-out points."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from .. import metrics
from ..analytic import Empirical, Gaussian, GaussianMixture
from ..plot import figure
from ..studies.report import Figure, Section, Table, figure_png
from .context import STREAM_SUBSET, STREAM_UV, Analysis
from ..studies.common import seeds

#: Above this dimension the Gaussian mixtures keep the top ``LOW_RANK`` eigenpairs of each covariance.
FULL_COV_MAX_DIM = 1024
LOW_RANK = 64


def sigmas(a: Analysis) -> list[float]:
    """``cfg.uv_sigmas`` noise levels, log-spaced over the model's [sigma_min, sigma_max]."""
    lo, hi, n = math.log(a.model.sigma_min), math.log(a.model.sigma_max), a.cfg.uv_sigmas
    return [float(f"{math.exp(lo + (hi - lo) * i / max(1, n - 1)):.4g}") for i in range(n)]


def components(a: Analysis) -> list[int]:
    """The mixture sizes that fit the training set (K below the number of points)."""
    return [int(k) for k in a.cfg.gmm_components if 1 < k < a.train.shape[0]]


def compute(a: Analysis) -> dict[str, Any]:
    """Unexplained variance per model, evaluation set and sigma (a cached stage)."""
    sig = sigmas(a)
    ks = components(a)

    def work() -> dict[str, Any]:
        rank = None if a.dim <= FULL_COV_MAX_DIM else LOW_RANK
        models: dict[str, Any] = {"mean only": Empirical(a.train.mean(0, keepdim=True)),
                                  "Gaussian": Gaussian.fit(a.train, rank=rank)}
        for k in ks:
            a.ctx.log(f"    fitting a {k}-component Gaussian mixture")
            models[f"GMM K={k}"] = GaussianMixture.fit(a.train, k, seed=a.ctx.seed, rank=rank)
        models["empirical"] = Empirical(a.train)
        points = {"train": a.subset(a.train, a.cfg.uv_n, STREAM_SUBSET + 200)}
        if a.heldout is not None:
            points["held-out"] = a.subset(a.heldout, a.cfg.uv_n, STREAM_SUBSET + 300)
        out: dict[str, Any] = {"models": list(models), "points": list(points), "sigmas": sig}
        seed = seeds(a.ctx.seed, STREAM_UV, 1)[0]
        from tqdm.auto import tqdm

        jobs = [(p, m) for p in points for m in models]
        for p, name in tqdm(jobs, desc="unexplained variance", disable=not a.ctx.progress):
            uv = metrics.unexplained_variance(a.model.denoiser, models[name], points[p], sig, n=a.cfg.uv_n, seed=seed,
                                              batch_size=a.cfg.batch_size)
            out[f"{p}|{name}"] = [float(v) for v in uv]
        return out

    return a.stage("structure", {"sigmas": sig, "K": ks, "uv_n": a.cfg.uv_n}, work)


def gaussian_from(sig: list[float], uv: list[float], threshold: float) -> Optional[float]:
    """The smallest sigma from which on (every larger tested sigma included) the Gaussian leaves at most
    ``threshold`` of the score unexplained; ``None`` when it does not even at the largest sigma."""
    above = None
    for s, u in sorted(zip(sig, uv), reverse=True):
        if u <= threshold:
            above = s
        else:
            break
    return above


def section(a: Analysis, uv: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """Tables and figure of the unexplained variance; headline numbers."""
    sig = uv["sigmas"]
    where = "held-out" if "held-out" in uv["points"] else "train"
    thr = a.cfg.gauss_threshold
    g_from = gaussian_from(sig, uv[f"{where}|Gaussian"], thr)
    rows = []
    for p in uv["points"]:
        for m in uv["models"]:
            rows.append([m, p, *uv[f"{p}|{m}"]])
    t = Table("structure", "Fraction of the model's score variance unexplained by analytical scores, per sigma",
              ["analytical score", "points", *[f"sigma={s:g}" for s in sig]], rows,
              f"E|s_model - s_analytic|^2 / E|s_model|^2 at x0 + sigma z over {a.cfg.uv_n} training and held-out "
              "points x0 (scoredyn.metrics.unexplained_variance; Wang & Vastola 2023). 0: fully explained; 1: no "
              "better than the zero score." + (f" Mixture covariances keep the top {LOW_RANK} eigenpairs (d > "
                                               f"{FULL_COV_MAX_DIM})." if a.dim > FULL_COV_MAX_DIM else ""))
    best = []
    for i, s in enumerate(sig):
        name = min(uv["models"], key=lambda m: uv[f"{where}|{m}"][i])
        best.append([s, name, uv[f"{where}|{name}"][i], uv[f"{where}|Gaussian"][i]])
    t2 = Table("structure_best", f"Which analytical score explains the model best, per sigma ({where} points)",
               ["sigma", "best analytical score", "its unexplained variance", "Gaussian's"], best)
    head: dict[str, Any] = {"gaussian_explains_from_sigma": g_from if g_from is not None else "none",
                            "uv_gaussian_smallest_sigma": uv[f"{where}|Gaussian"][0],
                            "uv_empirical_smallest_sigma_train": uv["train|empirical"][0]}
    if "held-out" in uv["points"]:
        head["uv_empirical_smallest_sigma_heldout"] = uv["held-out|empirical"][0]
    fig, axes = figure(1, len(uv["points"]), (5.5, 4.2))
    axes = [axes] if len(uv["points"]) == 1 else list(axes)
    for ax, p in zip(axes, uv["points"]):
        for m in uv["models"]:
            ax.plot(sig, [max(v, 1e-6) for v in uv[f"{p}|{m}"]], marker="o", ms=3, label=m)
        ax.axhline(thr, color="k", lw=0.6, ls=":")
        if g_from is not None and p == where:
            ax.axvline(g_from, color="C1", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("noise level sigma")
        ax.set_ylabel("unexplained variance of the model's score")
        ax.set_title(f"at noisy {p} points", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    f = Figure("analyse_structure", f"Unexplained variance of the model's score per sigma (dotted: {thr:g}; dashed: "
               "the sigma from which on the Gaussian explains the score).", figure_png(fig))
    if g_from is None:
        verdict = f"The Gaussian leaves more than {thr:.0%} of the score unexplained even at the largest sigma tested."
    else:
        verdict = (f"The Gaussian explains at least {1 - thr:.0%} of the model's score for sigma >= {g_from:.4g}; "
                   "below that the model's score is non-linear (a mixture or the training set explains it better).")
    text = verdict + (" At small sigma, an unexplained variance of the empirical score near 0 at training points "
                      "but not at held-out points is the signature of memorization.")
    return Section("4. Structure of the score (Wang & Vastola)", text, tables=[t, t2], figures=[f]), head
