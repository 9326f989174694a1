"""Section 6: how likely are training and held-out data under the model? Bits per dimension of
``p_sigma_min`` from the probability-flow ODE (Song et al. 2021, §4.3, App. D.2;
``scoredyn.metrics.log_likelihood``), with the exact divergence for small data and Hutchinson's
estimator above ``cfg.exact_trace_max_dim`` dimensions. A model that memorizes puts far more mass on its
training points than on fresh ones: the train-vs-held-out gap in bits/dim is a generalization gap."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..plot import figure
from ..studies.common import seeds
from ..studies.report import Figure, Section, Table, figure_png
from .context import STREAM_LIKELIHOOD, STREAM_SUBSET, Analysis

#: Points per ODE solve: the adaptive solver's error norm spans a batch, so the chunking is fixed (not
#: ``cfg.batch_size``) to make a point's value depend on the configuration alone.
CHUNK = 32


def available() -> bool:
    """Whether this build has ``scoredyn.metrics.log_likelihood``."""
    try:
        from ..metrics import log_likelihood  # noqa: F401
    except ImportError:
        return False
    return True


def trace_kind(a: Analysis) -> str:
    """``exact`` up to ``cfg.exact_trace_max_dim`` dimensions, ``hutchinson`` above."""
    return "exact" if a.dim <= a.cfg.exact_trace_max_dim else "hutchinson"


def compute(a: Analysis) -> dict[str, Any]:
    """Bits/dim of a seeded subset of training and held-out points (a cached stage)."""
    from ..metrics import log_likelihood

    trace = trace_kind(a)
    sets = {"train": a.subset(a.train, a.cfg.likelihood_n, STREAM_SUBSET + 400)}
    if a.heldout is not None:
        sets["held-out"] = a.subset(a.heldout, a.cfg.likelihood_n, STREAM_SUBSET + 500)
    conf = {"n": a.cfg.likelihood_n, "trace": trace, "probes": a.cfg.hutchinson_probes, "rtol": a.cfg.likelihood_rtol,
            "sigma_min": a.model.sigma_min, "sigma_max": a.model.sigma_max, "chunk": CHUNK}

    def work() -> dict[str, Any]:
        from tqdm.auto import tqdm

        out: dict[str, Any] = {"sets": list(sets), "trace": trace}
        for name, x in sets.items():
            sd = seeds(a.ctx.seed, STREAM_LIKELIHOOD + (0 if name == "train" else 1), x.shape[0])
            bpd, nfe = [], 0
            for s in tqdm(range(0, x.shape[0], CHUNK), desc=f"likelihood ({name}, {trace} trace)",
                          disable=not a.ctx.progress):
                r = log_likelihood(a.model.denoiser, x[s : s + CHUNK], sigma_min=a.model.sigma_min,
                                   sigma_max=a.model.sigma_max, trace=trace, n_probes=a.cfg.hutchinson_probes,
                                   rtol=a.cfg.likelihood_rtol, atol=a.cfg.likelihood_rtol,
                                   seeds=sd[s : s + CHUNK] if trace == "hutchinson" else None)
                bpd.append(r.bits_per_dim.double().cpu())
                nfe = max(nfe, r.nfe)
            out[f"{name}.bpd"] = torch.cat(bpd)
            out[f"{name}.nfe"] = nfe
        return out

    return a.stage("likelihood", conf, work)


def section(a: Analysis, lk: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The bits/dim table and histogram; headline numbers (the train-vs-held-out gap)."""
    rows, stats = [], {}
    for name in lk["sets"]:
        b = lk[f"{name}.bpd"].double()
        se = float(b.std() / math.sqrt(b.numel())) if b.numel() > 1 else float("nan")
        stats[name] = (float(b.mean()), se)
        rows.append([name, int(b.numel()), float(b.mean()), se, float(b.median()), lk[f"{name}.nfe"]])
    head: dict[str, Any] = {"bpd_train": stats["train"][0]}
    if "held-out" in stats:
        gap = stats["held-out"][0] - stats["train"][0]
        gap_se = math.hypot(stats["held-out"][1], stats["train"][1])
        rows.append(["gap: held-out - train", "", gap, gap_se, "", ""])
        head.update(bpd_heldout=stats["held-out"][0], likelihood_gap_bpd=gap, likelihood_gap_se=gap_se)
    how = ("exact divergence (one backward pass per dimension)" if lk["trace"] == "exact" else
           f"Hutchinson's trace estimator ({a.cfg.hutchinson_probes} Rademacher probe(s), seeded per point)")
    t = Table("likelihood", "Negative log-likelihood of p_sigma_min in bits per dimension (lower: likelier)",
              ["points", "n", "mean bits/dim", "std. error", "median", "max NFE per solve"], rows,
              f"Probability-flow ODE from sigma_min = {a.model.sigma_min:g} to sigma_max = {a.model.sigma_max:g} "
              f"(Dormand-Prince, rtol = atol = {a.cfg.likelihood_rtol:g}, {CHUNK} points per solve), {how}, prior "
              "N(0, sigma_max^2 I). A continuous density at sigma_min, without dequantization: compare the two rows, "
              "not the values with published bits/dim.")
    fig, ax = figure(1, 1, (6.0, 3.8))
    allb = torch.cat([lk[f"{n}.bpd"].double() for n in lk["sets"]]).numpy()
    bins = np.linspace(float(allb.min()), float(allb.max()) + 1e-9, 30)
    for name, color in zip(lk["sets"], ("C0", "0.4")):
        ax.hist(lk[f"{name}.bpd"].double().numpy(), bins=bins, alpha=0.55, color=color, label=f"{name} points",
                density=True)
    ax.set_xlabel("bits per dimension (lower: likelier)")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    f = Figure("analyse_likelihood", "Bits per dimension of training and held-out points under the model.",
               figure_png(fig))
    if "held-out" in stats:
        text = (f"Held-out points cost {head['likelihood_gap_bpd']:.3g} ± {head['likelihood_gap_se']:.2g} bits/dim more "
                "than training points: near 0 for a model that generalizes, large and positive for one that puts "
                "its mass on its training points.")
    else:
        text = "No held-out data was given, so the generalization gap in likelihood cannot be measured."
    return Section("6. Likelihood", text, tables=[t], figures=[f]), head
