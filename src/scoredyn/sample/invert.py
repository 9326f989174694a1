"""Inversion: data -> noise along the probability-flow ODE (DDIM inversion, Song et al. 2021a §4.3;
Song et al. 2021b §4.3, the ODE's encoding), with the deterministic samplers on an ascending grid."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._checks import Denoiser
from .common import GridLike, grid_values

INVERTIBLE = ("euler", "heun", "dpmpp_2m", "unipc", "ddim", "ode_adaptive")
"""The samplers that accept a strictly ascending grid (deterministic ones; ``ddim`` with ``eta=0``, ``heun`` without churn)."""


def invert(denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, sampler: str = "euler", **options: Any) -> Tensor:
    """Integrate the probability-flow ODE from ``sigmas[0]`` up to ``sigmas[-1]`` (a strictly ascending grid of
    positive noise levels) with ``sampler`` (one of :data:`INVERTIBLE`); ``x`` is the data at ``sigmas[0]``.

    Returns the latent at ``sigmas[-1]``; sampling it back on the reversed grid recovers ``x`` up to
    the discretisation error of both solves (exact for the closed-form flow map, ``Gaussian.teleport``).
    """
    from . import SAMPLERS

    if sampler not in INVERTIBLE:
        raise ValueError(f"sampler {sampler!r} cannot invert; expected one of {', '.join(INVERTIBLE)}")
    vals = grid_values(sigmas, direction="ascending")
    if vals[0] <= 0:
        raise ValueError(f"an inversion grid must start above 0 (the ODE is singular at sigma = 0), got sigmas[0] = {vals[0]:.6g}")
    return SAMPLERS[sampler](denoiser, x, sigmas, **options)


def ode_ascending(denoiser: Denoiser, x: Tensor, sigma_from: float, sigma_to: float, *, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """The probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigma_from`` up to ``sigma_to``
    by Dormand-Prince (torchdiffeq ``dopri5``, time in float64), ``0 < sigma_from < sigma_to``."""
    import torch

    from .common import SamplerDivergence
    from .._integrate import odeint_dopri5

    batch = x.shape[0]

    def velocity(t: Tensor, y: Tensor) -> Tensor:
        # dopri5's initial step-size probe looks at t0 + 0.01 |y| / |v|, past sigma_to where v is small at
        # sigma_from; the steps themselves stay inside [sigma_from, sigma_to], so the clamp changes only the probe.
        s = t.clamp(sigma_from, sigma_to).to(y.dtype)
        v = (y - denoiser(y, s.expand(batch))) / s
        if not bool(torch.isfinite(v).all()):
            raise SamplerDivergence(f"ode_adaptive: non-finite derivative at sigma {float(t):.6g} (inverting {sigma_from:.6g} -> {sigma_to:.6g})")
        return v

    t = torch.tensor([sigma_from, sigma_to], dtype=torch.float64, device=x.device)
    return odeint_dopri5(velocity, x, t, rtol, atol)[-1]
