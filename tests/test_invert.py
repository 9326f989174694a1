"""Inversion (data -> noise) with the deterministic samplers on an ascending grid, against the
Gaussian's closed-form probability-flow map (Gaussian.teleport upwards)."""

from __future__ import annotations

import math

import pytest
import torch

from scoredyn.analytic import Gaussian
from scoredyn.sample import INVERTIBLE, SAMPLERS, invert, sigmas_geometric

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
F64 = torch.float64
LO, HI = 0.05, 20.0


def problem(device):
    g = torch.Generator().manual_seed(6)
    a = torch.randn(3, 3, generator=g, dtype=F64)
    model = Gaussian(torch.randn(3, generator=g, dtype=F64), a @ a.T + 0.01 * torch.eye(3, dtype=F64))
    x = model.sample(5, sigma=LO, generator=g)  # data seen at sigma_min
    return model.to(device), x.to(device)


def up(n, device):
    return sigmas_geometric(n + 1, sigma_min=LO, sigma_max=HI).flip(0).to(device)


LEAST_ORDER = {"euler": 0.9, "ddim": 0.9, "heun": 1.9, "dpmpp_2m": 1.8, "unipc": 1.8}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(LEAST_ORDER))
def test_fixed_grid_inversion_converges_to_the_flow_map(device, name):
    model, x = problem(device)
    exact = model.teleport(x, LO, HI)
    errs = [float((invert(model, x, up(n, device), sampler=name) - exact).norm() / exact.norm()) for n in (16, 32, 64)]
    orders = [math.log2(errs[k] / errs[k + 1]) for k in range(2)]
    assert min(orders) > LEAST_ORDER[name], f"{name} inversion: rel errors {errs}, observed orders {orders}"
    assert errs[-1] < 0.05, f"{name} inversion with 64 steps: rel error {errs[-1]:.2e}"


@pytest.mark.parametrize("device", DEVICES)
def test_adaptive_inversion_and_round_trip(device):
    model, x = problem(device)
    exact = model.teleport(x, LO, HI)
    lat = invert(model, x, torch.tensor([LO, HI], dtype=F64), sampler="ode_adaptive", rtol=1e-8, atol=1e-8)
    err = float((lat - exact).norm() / exact.norm())
    assert err < 1e-6, f"ode_adaptive inversion vs Gaussian.teleport: rel error {err:.2e}"
    back = SAMPLERS["ode_adaptive"](model, lat, torch.tensor([HI, LO], dtype=F64), rtol=1e-8, atol=1e-8)
    err = float((back - x).norm() / x.norm())
    assert err < 1e-6, f"invert then sample back: rel error {err:.2e}"
    lat = invert(model, x, up(64, device), sampler="dpmpp_2m")
    back = SAMPLERS["dpmpp_2m"](model, lat, up(64, device).flip(0))
    err = float((back - x).norm() / x.norm())
    assert err < 1e-3, f"dpmpp_2m round trip with 64 steps each way: rel error {err:.2e}"


def test_inversion_refuses_what_cannot_invert():
    model, x = problem("cpu")
    grid = up(8, "cpu")
    assert set(INVERTIBLE) == {"euler", "heun", "dpmpp_2m", "unipc", "ddim", "ode_adaptive"}
    with pytest.raises(ValueError, match="cannot invert"):
        invert(model, x, grid, sampler="euler_ancestral")
    with pytest.raises(ValueError, match="ascending"):
        invert(model, x, grid.flip(0))
    with pytest.raises(ValueError, match="above 0"):
        invert(model, x, torch.cat([torch.zeros(1, dtype=F64), grid]))
    with pytest.raises(ValueError, match="churn"):
        invert(model, x, grid, sampler="heun", s_churn=5.0)
    with pytest.raises(ValueError, match="strictly descending"):
        invert(model, x, grid, sampler="ddim", eta=0.5)
    with pytest.raises(ValueError, match="strictly descending"):
        SAMPLERS["dpmpp_2m_sde"](model, x, grid)
