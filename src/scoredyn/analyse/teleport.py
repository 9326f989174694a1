"""Section 5: analytical teleportation (Wang & Vastola 2023, §5). The first part of the model's sampler
is replaced by the closed-form probability-flow solution of the Gaussian fitted to the training data
(``scoredyn.sample.with_teleport``); for each fraction of skipped steps, the FID against the reference
data and the distance to the unskipped samples from the same seeds. The recommended ``sigma_skip`` is
the largest skip whose FID stays within ``cfg.skip_tolerance`` of the unskipped run's."""

from __future__ import annotations

from typing import Any

from .. import sample
from ..analytic import Gaussian
from ..plot import figure
from ..studies.report import Figure, Section, Table, figure_png
from .context import STREAM_SUBSET, Analysis, sampler_fn
from .quality import featurize
from .structure import FULL_COV_MAX_DIM, LOW_RANK

from .. import metrics

STOCHASTIC = ("euler_maruyama", "annealed_langevin")


def compute(a: Analysis, unskipped: dict[str, Any]) -> dict[str, Any]:
    """The skip sweep (a cached stage); the fraction-0 row reuses the model's samples."""
    n_steps = len(a.grid) - 1 if float(a.grid[-1]) == 0.0 else len(a.grid)
    fracs = sorted(set(float(f) for f in a.cfg.skip_fractions))

    def work() -> dict[str, Any]:
        gauss = Gaussian.fit(a.train, rank=None if a.dim <= FULL_COV_MAX_DIM else LOW_RANK)
        m = min(a.cfg.n_samples, a.reference.shape[0])
        f_ref = featurize(a, a.subset(a.reference, m, STREAM_SUBSET))
        ref = unskipped["x"]
        rows = []
        for frac in fracs:
            j = int(round(frac * n_steps))
            if j == 0:
                x, nfe, s_skip = ref, unskipped["nfe"], float(a.grid[0])
            else:
                s_skip = float(a.grid[j])
                x, nfe = a.draw(a.model.denoiser, a.cfg.n_samples,
                                sampler=sample.with_teleport(sampler_fn(a.sampler), gauss, s_skip),
                                desc=f"skip {j}/{n_steps} steps (sigma_skip {s_skip:.4g})")
            dist = float((x - ref).flatten(1).norm(dim=1).mean() / ref.flatten(1).norm(dim=1).mean())
            rows.append({"fraction": frac, "steps_skipped": j, "sigma_skip": s_skip, "nfe": nfe,
                         "fid": metrics.fid(featurize(a, x[:m]), f_ref), "dist_to_unskipped": dist})
        return {"rows": rows, "n_steps": n_steps, "m": m}

    return a.stage("teleport", {**a.sampling(), "n": a.cfg.n_samples, "fractions": fracs,
                                "net": a.cfg.fid_net}, work)


def section(a: Analysis, sk: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The skip-sweep table and figure and the recommended sigma_skip."""
    rows = sk["rows"]
    base = rows[0]["fid"]
    ok = [r for r in rows if r["fid"] <= a.cfg.skip_tolerance * base]
    rec = max(ok, key=lambda r: r["fraction"])
    t = Table("teleport", f"Skip sweep ({a.sampler}, {sk['n_steps']} steps): FID to {a.reference_name} data against "
              "the fraction of steps replaced by the Gaussian jump",
              ["fraction skipped", "steps skipped", "sigma_skip", "NFE", "FID", "FID / unskipped",
               "rel. distance to unskipped"],
              [[r["fraction"], r["steps_skipped"], r["sigma_skip"], r["nfe"], r["fid"],
                r["fid"] / base if base > 0 else float("nan"), r["dist_to_unskipped"]] for r in rows],
              f"{sk['m']} samples per row from the same seeds; distance: mean |x_skip - x| / mean |x| over samples.")
    fig, (ax1, ax2) = figure(1, 2, (4.6, 3.6))
    fr = [r["fraction"] for r in rows]
    ax1.plot(fr, [r["fid"] for r in rows], marker="o")
    ax1.axhline(a.cfg.skip_tolerance * base, color="k", lw=0.6, ls=":")
    ax1.axvline(rec["fraction"], color="C1", lw=0.8, ls="--")
    ax1.set_xlabel("fraction of steps skipped")
    ax1.set_ylabel(f"FID to {a.reference_name} data")
    ax1.grid(alpha=0.3)
    ax2.plot(fr, [r["dist_to_unskipped"] for r in rows], marker="o", color="C2")
    ax2.set_xlabel("fraction of steps skipped")
    ax2.set_ylabel("rel. distance to the unskipped samples")
    ax2.grid(alpha=0.3)
    f = Figure("analyse_teleport", f"Skip sweep (dotted: {a.cfg.skip_tolerance:g} x the unskipped FID; dashed: the "
               "recommended skip).", figure_png(fig))
    text = (f"Recommended: skip {rec['steps_skipped']} of {sk['n_steps']} steps, i.e. teleport to sigma_skip = "
            f"{rec['sigma_skip']:.4g} (the largest tested skip with FID within {a.cfg.skip_tolerance:g} x the unskipped "
            f"run's), saving {rows[0]['nfe'] - rec['nfe']} of {rows[0]['nfe']} evaluations per sample. Use it with "
            f"scoredyn.sample.with_teleport(sampler, Gaussian.fit(train), sigma_skip={rec['sigma_skip']:.4g}).")
    if a.sampler in STOCHASTIC:
        text += (f" {a.sampler} is stochastic: after a jump its noise draws restart, so the distance to the unskipped "
                 "samples includes a different noise realisation.")
    head = {"recommended_sigma_skip": rec["sigma_skip"], "recommended_fraction": rec["fraction"],
            "nfe_saved": rows[0]["nfe"] - rec["nfe"]}
    return Section("5. Teleportation (Wang & Vastola)", text, tables=[t], figures=[f]), head
