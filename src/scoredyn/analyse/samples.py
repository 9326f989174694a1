"""Section 1: samples of the model from seeded noise, and of the exact empirical denoiser (the
"pure memorization" reference the memorization section compares with)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import sample
from ..analytic import Empirical
from ..plot import figure
from ..studies.common import image_grid
from ..studies.report import Figure, Section, Table, figure_png
from .context import Analysis


def model_samples(a: Analysis) -> dict[str, Any]:
    """``{"x": (n, *shape), "nfe": int}``: the model's samples (a cached stage)."""
    def work() -> dict[str, Any]:
        x, nfe = a.draw(a.model.denoiser, a.cfg.n_samples, desc="model samples")
        return {"x": x, "nfe": nfe}

    return a.stage("samples", {**a.sampling(), "n": a.cfg.n_samples}, work)


def empirical_sampler(a: Analysis) -> tuple[str, Tensor]:
    """The sampler and grid for the empirical denoiser: the model's, except that the noise-unconditional
    ODE needs a score field (the empirical denoiser has none), so Heun on the Karras grid replaces it."""
    if a.sampler == "unconditional_ode":
        return "heun", sample.sigmas_karras(len(a.grid) // 2 + 1, sigma_min=a.model.sigma_min,
                                            sigma_max=a.model.sigma_max)
    return a.sampler, a.grid


def empirical_samples(a: Analysis) -> dict[str, Any]:
    """``{"x", "nfe", "sampler"}``: samples of the exact training-set denoiser from the same seeds (a cached stage)."""
    name, grid = empirical_sampler(a)

    def work() -> dict[str, Any]:
        emp = Empirical(a.train)
        x, nfe = a.draw(emp, a.cfg.n_samples, grid=grid, sampler=sample.SAMPLERS[name], desc="empirical samples")
        return {"x": x, "nfe": nfe, "sampler": name}

    return a.stage("empirical_samples", {"sampler": name, "grid": [float(s) for s in grid], "n": a.cfg.n_samples},
                   work)


def picture(a: Analysis, sets: dict[str, Tensor], nrow: int = 8, size: float = 3.6) -> Any:
    """Image grids side by side (images) or a scatter of the first two coordinates (points)."""
    if a.is_image:
        fig, axes = figure(1, len(sets), (size, size + 0.3))
        axes = [axes] if len(sets) == 1 else list(axes)
        for ax, (title, x) in zip(axes, sets.items()):
            if x.shape[1] == 1:
                image_grid(ax, x, nrow, title)
            else:
                from ..plot import image_grid as tile

                canvas = tile(x[: nrow * nrow].float().cpu().clamp(-1, 1), nrow=nrow, padding=1, pad_value=0.3)
                ax.imshow(canvas.numpy(), interpolation="nearest")
                ax.set_title(title, fontsize=9)
                ax.axis("off")
        return fig
    fig, ax = figure(1, 1, (5.5, 5.0))
    for (title, x), style in zip(sets.items(), [dict(c="0.6", s=4), dict(c="C0", s=5), dict(c="C3", s=5, marker="x")]):
        p = x.reshape(x.shape[0], -1)[:, :2].float().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], label=title, alpha=0.6, linewidths=0.6, **style)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title("first two coordinates" if a.dim > 2 else "samples", fontsize=9)
    return fig


def section(a: Analysis, s: dict[str, Any]) -> Section:
    """The samples section: a grid of seeded samples with the sampler and NFE."""
    g = [float(v) for v in a.grid]
    t = Table("samples", "Sampler", ["sampler", "grid levels", "sigma_max", "sigma_min (last > 0)", "NFE per sample",
                                     "samples"],
              [[a.sampler, len(g), g[0], min(v for v in g if v > 0), s["nfe"], a.cfg.n_samples]])
    nrow = 8 if a.is_image else 0
    sets = {"model samples": s["x"]} if a.is_image else {"training data": a.train, "model samples": s["x"]}
    fig = picture(a, sets, nrow=max(nrow, int(math.sqrt(min(64, s["x"].shape[0])))))
    f = Figure("analyse_samples", f"Samples from seeded noise ({a.sampler}, {s['nfe']} evaluations per sample).",
               figure_png(fig))
    text = (f"{a.cfg.n_samples} samples; sample i starts from the noise of its own seed (scoredyn.sample.noise), "
            "so it does not depend on the batch size or the device.")
    return Section("1. Samples", text, tables=[t], figures=[f])
