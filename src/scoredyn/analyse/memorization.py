"""Section 2: is the model memorizing? Copy fraction (Gu et al. 2023) and nearest-neighbour distances to
the training set of the model's samples, of the exact empirical denoiser's samples (pure memorization)
and of held-out data (what a fresh point looks like)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import metrics
from ..plot import figure
from ..studies.report import Figure, Section, Table, figure_png
from .context import STREAM_SUBSET, Analysis
from .samples import picture

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def compute(a: Analysis, model: dict[str, Any], emp: dict[str, Any]) -> dict[str, Any]:
    """Nearest-neighbour statistics of each set against the training set (a cached stage)."""
    held = None if a.heldout is None else a.subset(a.heldout, a.cfg.n_reference, STREAM_SUBSET)

    def stats(x: torch.Tensor) -> dict[str, Any]:
        m = metrics.memorization(x.float(), a.train, quantiles=QUANTILES)
        return {"copy_fraction": m.copy_fraction, "nn_distance": m.nn_distance.float(), "nn_index": m.nn_index,
                "ratio": m.ratio.float()}

    def work() -> dict[str, Any]:
        out: dict[str, Any] = {}
        sets = {"model": model["x"], "empirical": emp["x"]}
        if held is not None:
            sets["heldout"] = held
        for name, x in sets.items():
            for k, v in stats(x).items():
                out[f"{name}.{k}"] = v
        out["sets"] = list(sets)
        return out

    return a.stage("memorization", {"samples": a.cfg.n_samples, "n_ref": a.cfg.n_reference, **a.sampling()}, work)


def section(a: Analysis, model: dict[str, Any], emp: dict[str, Any], m: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The memorization section and its headline numbers."""
    labels = {"model": "model samples", "empirical": "empirical-denoiser samples (pure memorization)",
              "heldout": "held-out data"}
    rows = []
    med: dict[str, float] = {}
    for name in m["sets"]:
        d = m[f"{name}.nn_distance"].double()
        q = torch.quantile(d, torch.tensor(QUANTILES, dtype=d.dtype, device=d.device)).tolist()
        med[name] = float(d.median())
        rows.append([labels[name], int(d.numel()), m[f"{name}.copy_fraction"], *q])
    t = Table("memorization", "Copies and nearest-neighbour distances to the training set",
              ["set", "points", "copy fraction", *[f"NN dist q{int(100 * q)}" for q in QUANTILES]], rows,
              "A point is a copy when d(NN1)/d(NN2) < 1/3 (Gu et al. 2023, after Yoon et al. 2023); distances are "
              "Euclidean in data space to the nearest of the " f"{a.train.shape[0]} training points.")
    head = {"copy_fraction": m["model.copy_fraction"], "copy_fraction_empirical": m["empirical.copy_fraction"],
            "nn_median": med["model"], "nn_median_empirical": med["empirical"]}
    if "heldout" in med:
        head["nn_median_heldout"] = med["heldout"]
        head["copy_fraction_heldout"] = m["heldout.copy_fraction"]
        head["nn_ratio_to_heldout"] = med["model"] / med["heldout"] if med["heldout"] > 0 else float("nan")
    figs = [_histogram(a, m, labels), _pairs(a, model, emp, m)]
    text = ("The model's samples are compared with two references: the exact empirical denoiser (the optimum of "
            "the training loss, which reproduces training points: pure memorization) run with the same sampler "
            "from the same seeds, and held-out data (a fresh draw from the distribution). A generalizing model's "
            "samples sit about as far from the training set as held-out data; a memorizing one's sit on it.")
    if emp["sampler"] != a.sampler:
        text += f" The empirical denoiser is sampled with {emp['sampler']} ({a.sampler} needs a score field)."
    return Section("2. Memorization", text, tables=[t], figures=figs), head


def _histogram(a: Analysis, m: dict[str, Any], labels: dict[str, str]) -> Figure:
    fig, ax = figure(1, 1, (6.5, 4.0))
    all_d = torch.cat([m[f"{n}.nn_distance"].float().cpu() for n in m["sets"]])
    hi = float(all_d.max()) if all_d.numel() else 1.0
    bins = np.linspace(0.0, max(hi, 1e-6) * 1.02, 40)
    for name, color in zip(m["sets"], ("C0", "C3", "0.4")):
        ax.hist(m[f"{name}.nn_distance"].float().cpu().numpy(), bins=bins, alpha=0.5, color=color,
                label=labels[name], density=True)
    ax.set_xlabel("distance to the nearest training point")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return Figure("analyse_nn_distances", "Nearest-neighbour distances to the training set.", figure_png(fig))


def _pairs(a: Analysis, model: dict[str, Any], emp: dict[str, Any], m: dict[str, Any]) -> Figure:
    k = min(a.cfg.n_pairs, model["x"].shape[0])
    if a.is_image:
        order = torch.argsort(m["model.nn_distance"])[:k]
        nn = a.train[m["model.nn_index"][order]]
        eorder = torch.argsort(m["empirical.nn_distance"])[:k]
        enn = a.train[m["empirical.nn_index"][eorder]]
        sets = {"closest model samples": model["x"][order], "their nearest training images": nn,
                "closest empirical samples": emp["x"][eorder], "their nearest training images ": enn}
        fig = picture(a, {t: x for t, x in sets.items()}, nrow=max(1, int(np.ceil(np.sqrt(k)))), size=2.4)
        cap = (f"The {k} model samples closest to the training set beside their nearest training images, and the "
               "same for the empirical denoiser's samples.")
    else:
        fig = picture(a, {"training data": a.train, "model samples": model["x"], "empirical samples": emp["x"]})
        cap = "Training data, the model's samples and the empirical denoiser's samples (first two coordinates)."
    return Figure("analyse_closest_pairs", cap, figure_png(fig))
