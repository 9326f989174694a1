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


def test_adaptive_inversion_never_evaluates_the_model_outside_its_interval():
    # N(0, I) data: v = (x - D(x, s)) / s = s x / (1 + s^2) is ~1e-3 |x| at s = 1e-3, so dopri5's initial-step
    # probe (h0 = 0.01 |x| / |v| ~ 10) would ask for the model at sigma ~ 10, far above sigma_to = 0.5.
    from scoredyn.sample.invert import ode_ascending

    seen: list[float] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(float(sigma.max()))
        s2 = sigma.to(x.dtype).reshape(-1, 1) ** 2
        return x / (1.0 + s2)

    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = ode_ascending(denoiser, x, 1e-3, 0.5, rtol=1e-8, atol=1e-8)
    # the exact flow map of N(0, I): x(s) = x(s0) sqrt(1 + s^2) / sqrt(1 + s0^2)
    want = x * math.sqrt(1 + 0.25) / math.sqrt(1 + 1e-6)
    assert max(seen) <= 0.5, f"the model was evaluated at sigma {max(seen):.3g} > sigma_to = 0.5"
    assert torch.allclose(y, want, rtol=1e-6, atol=0), f"max error {float((y - want).abs().max()):.3g}"
