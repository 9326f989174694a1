"""Section 7 (optional): dynamics at the smallest noise level. Fixed points ``D(x, sigma_min) = x`` of the
denoiser map, started from the model's samples (``scoredyn.dynamics.fixed_points``), their stability
and their distance to the training points (Kim 2026, Thm 4.4: at minimal loss the stable equilibria lie
within a few sigma_min of training points)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from .. import dynamics, metrics
from ..studies.report import Section, Table
from .context import Analysis


def compute(a: Analysis, model: dict[str, Any]) -> dict[str, Any]:
    """Newton solves from the first ``n_fixed_points`` samples (a cached stage)."""
    s_min = a.model.sigma_min
    n = min(a.cfg.n_fixed_points, model["x"].shape[0])

    def work() -> dict[str, Any]:
        den = a.model.denoiser

        def field(x: torch.Tensor) -> torch.Tensor:
            return den(x, s_min) - x

        start = model["x"][:n].float()
        # find the points first (a start may run off to infinity when the field has no zero near it), then
        # classify the converged ones from where they are (Newton stops at once there)
        found = dynamics.fixed_points(field, start, tol=1e-5, max_iter=50, eigs="none")
        conv = found.converged & torch.isfinite(found.points.flatten(1)).all(1)
        kind = ["unconverged"] * n
        if bool(conv.any()):
            idx = conv.nonzero().flatten()
            fp = dynamics.fixed_points(field, found.points[idx], tol=1e-5, max_iter=5)
            for j, i in enumerate(idx.tolist()):
                kind[i] = fp.kind[j]
        points = torch.where(conv.reshape(-1, *[1] * (start.dim() - 1)), found.points, start)
        mem = metrics.memorization(points, a.train, sigma_min=s_min, k=3.0)
        return {"points": points, "converged": conv, "kind": kind, "method": found.method,
                "nn_distance": mem.nn_distance.float(), "copy": mem.is_copy,
                "start_moved": (points - start).flatten(1).norm(dim=1).float()}

    return a.stage("fixed_points", {**a.sampling(), "n": n, "sigma": s_min}, work)


def section(a: Analysis, fp: dict[str, Any]) -> tuple[Section, dict[str, Any]]:
    """The fixed-point table and headline numbers."""
    conv = fp["converged"].bool()
    kinds = Counter(fp["kind"])
    d = fp["nn_distance"][conv].double()
    within = float((d <= 3 * a.model.sigma_min).double().mean()) if d.numel() else float("nan")
    copies = float(fp["copy"][conv].double().mean()) if d.numel() else float("nan")
    rows = [["start points", int(conv.numel())], ["converged to a finite point", int(conv.sum())],
            *[[f"kind: {k}", v] for k, v in sorted(kinds.items())]]
    if d.numel():  # distances only for the points that were found
        rows += [["median distance to the nearest training point", float(d.median())],
                 ["fraction within 3 sigma_min of a training point", within],
                 ["fraction that are copies (d(NN1)/d(NN2) < 1/3)", copies],
                 ["median distance moved from the start sample", float(fp["start_moved"][conv].median())]]
    t = Table("fixed_points", f"Fixed points of x -> D(x, sigma_min = {a.model.sigma_min:g}) started from samples",
              ["quantity", "value"], rows, f"Newton solves ({fp['method']}), tolerance 1e-5 rms.")
    head = {"fixed_points_converged": int(conv.sum()), "fixed_points_stable": kinds.get("stable", 0),
            "fixed_points_within_3_sigma_min": within}
    text = ("" if d.numel() else "No Newton solve converged from these starts (the denoiser map has no equilibrium "
            "near the samples, or Newton left its basin): no distances to report. ")
    text += ("Where does the sampler's last step lead? Points with D(x, sigma_min) = x are equilibria of the "
            "denoiser map; stable ones sitting on training points mean the model's small-noise dynamics end in "
            "copies (Kim 2026, Thm 4.4), while equilibria away from the training set mean it generalizes.")
    return Section("7. Dynamics at the smallest sigma", text, tables=[t]), head
