"""Zhou et al.'s step rule on the exact noise-unconditional optimum in d = 64: the plain ODE and the
score-norm estimate lag the schedule (r^2 - (d-2) sigma^2 is roughly conserved near a training point),
the nearest-neighbour estimate (data given) lets the state catch up."""

from __future__ import annotations

import math

import torch

from scoredyn.analytic import NoiseAgnostic
from scoredyn.sample import euler, sigmas_geometric, sigmas_karras, unconditional_ode

F64 = torch.float64


def test_nearest_neighbour_estimate_corrects_lag_in_high_dimension() -> None:
    d, smin, smax = 64, 0.01, 9.16
    point = torch.zeros(1, d, dtype=F64)
    model = NoiseAgnostic(point, conditioning="unconditional", levels=sigmas_geometric(20, sigma_min=smin, sigma_max=smax))
    g = torch.Generator().manual_seed(3)
    z = torch.randn(8, d, generator=g, dtype=F64)
    x = 1.3 * smax * math.sqrt(d) * z / z.norm(dim=1, keepdim=True)  # r0^2 > (d - 2) smax^2: the lagging case
    grid = sigmas_karras(30, sigma_min=smin, sigma_max=smax)
    tol = 2 * smin * math.sqrt(d)
    r_plain = float(euler(model, x, grid).norm(dim=1).median())
    r_norm = float(unconditional_ode(model, x, grid).norm(dim=1).median())
    r_data = float(unconditional_ode(model, x, grid, data=point).norm(dim=1).max())
    assert r_plain > 10 * tol and r_norm > 10 * tol, (
        f"expected the lag: median distance to the point {r_plain:.3g} (Euler), {r_norm:.3g} (score-norm rule)")
    assert r_data < tol, f"with data the sampler must reach the point: max distance {r_data:.3g} >= {tol:.3g}"
