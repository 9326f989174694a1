"""Log-likelihood of data under a denoiser's probability-flow ODE (Song et al. 2021, §4.3 and App. D.2).

The probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (DESIGN.md §2) transports
``p_sigma_min`` to ``p_sigma_max``; by the instantaneous change of variables (Chen et al. 2018, Thm 1)

    ``log p_sigma_min(x) = log p_sigma_max(x(sigma_max)) + int_{sigma_min}^{sigma_max} div_x f(x(sigma), sigma) dsigma``.

In ``t = log sigma`` the field is ``dx/dt = x - D(x, e^t)`` and its divergence ``d - tr(dD/dx)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._checks import Denoiser, check_count, check_positive, check_range, check_state
from .._integrate import odeint_dopri5, tolerances
from .._result import Result
from ..sample.common import Seeds, check_seeds
from ..sample.noise import noise

TRACES = ("exact", "hutchinson")


@dataclass(frozen=True)
class LogLikelihood(Result):
    """Per-sample log-likelihood ``nats`` ``(B,)`` (float64, higher is likelier), ``bits_per_dim`` ``(B,)``
    (the negative log-likelihood in bits per dimension) and the denoiser evaluations ``nfe`` of the solve."""

    nats: Tensor
    bits_per_dim: Tensor
    nfe: int


def _probes(x: Tensor, n_probes: int, seeds: Optional[tuple[int, ...]]) -> Tensor:
    """Rademacher probes ``(n_probes, B, *shape)``, per-sample seeded when ``seeds`` is given."""
    shape = (n_probes, *x.shape[1:])
    z = torch.randn(x.shape[0], *shape, device=x.device, dtype=x.dtype) if seeds is None else noise(seeds, shape, x.device, x.dtype)
    return torch.where(z >= 0, 1.0, -1.0).to(x.dtype).transpose(0, 1)


def _jacobian_trace(out: Tensor, y: Tensor, probes: Optional[Tensor]) -> Tensor:
    """``tr(d out / d y)`` per sample: exactly (one backward pass per dimension) or by Hutchinson's estimator
    ``mean_k v_k^T J v_k`` over the Rademacher ``probes`` (Hutchinson 1989)."""
    flat_out, b = out.reshape(out.shape[0], -1), out.shape[0]
    if probes is None:
        tr = y.new_zeros(b)
        d = flat_out.shape[1]
        for i in range(d):
            (g,) = torch.autograd.grad(flat_out[:, i].sum(), y, retain_graph=i < d - 1, allow_unused=True)
            if g is not None:  # None: the output does not depend on y
                tr = tr + g.reshape(b, -1)[:, i]
        return tr
    tr = y.new_zeros(b)
    for k, v in enumerate(probes):
        (g,) = torch.autograd.grad((out * v).sum(), y, retain_graph=k < len(probes) - 1, allow_unused=True)
        if g is not None:
            tr = tr + (g * v).reshape(b, -1).sum(1)
    return tr / len(probes)


def log_likelihood(
    denoiser: Denoiser, x: Tensor, *, sigma_min: float, sigma_max: float, trace: str = "exact", n_probes: int = 1,
    rtol: float = 1e-5, atol: float = 1e-5, seeds: Seeds = None, bin_width: Optional[float] = None,
) -> LogLikelihood:
    """``log p_sigma_min(x)`` per sample: the probability-flow ODE integrated from ``sigma_min`` to ``sigma_max``
    (Dormand-Prince, torchdiffeq ``dopri5``, in ``log sigma``) plus the log density of the prior
    ``N(0, sigma_max^2 I)`` at the end point (Song et al. 2021, App. D.2). The prior ignores the data's
    mean ``mu``; the end point's distance from ``mu`` grows like ``sigma_max``, so this costs about
    ``mu . (x(sigma_max) - mu) / sigma_max^2 = O(|mu| sqrt(d) / sigma_max)`` nats: take ``sigma_max``
    well above the data scale (the solve is in ``log sigma``, so a large ``sigma_max`` is cheap).

    ``trace="exact"`` takes ``tr(dD/dx)`` with one backward pass per dimension (small data);
    ``"hutchinson"`` uses ``n_probes`` Rademacher probes held fixed over the solve (FFJORD, Grathwohl
    et al. 2019), per-sample seeded by ``seeds`` (an unbiased estimate of the exact ODE's result).
    ``bits_per_dim = -nats / (d log 2)``. For 8-bit images pass ``x`` with uniform dequantization noise
    added and ``bin_width`` (``2/255`` for data in [-1, 1], ``1/256`` for [0, 1]):
    ``bits_per_dim = -(nats + d log(bin_width)) / (d log 2)``, the usual upper bound on the discrete
    model's bits per dimension. ``nats`` is unchanged. The adaptive solver's error norm spans the batch.
    """
    x = check_state("x", x)
    lo, hi = check_range(sigma_min, sigma_max)
    if trace not in TRACES:
        raise ValueError(f"trace must be one of {TRACES}, got {trace!r}")
    n_probes = check_count("n_probes", n_probes)
    rtol, atol = tolerances(rtol, atol)
    if bin_width is not None:
        bin_width = check_positive("bin_width", bin_width)
    seed_tuple = check_seeds(seeds, x.shape[0])
    b, d = x.shape[0], x[0].numel()
    probes = _probes(x, int(n_probes), seed_tuple) if trace == "hutchinson" else None
    nfe = 0

    t_lo, t_hi = math.log(lo), math.log(hi)

    def field(t: Tensor, state: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        # dopri5's initial-step probe (Hairer, Norsett & Wanner I, §II.4) evaluates the field at t0 + h0 with
        # h0 ~ 0.01 |state| / |field|, which ignores the interval's end: where the field is small at sigma_min
        # (a Gaussian's x - D(x) and d - tr(dD/dx) are O(sigma^2)) the probe lands far past log sigma_max and
        # sigma overflows to inf. The steps themselves stay inside the interval, so clamping changes only the
        # probe (it then sees the field at sigma_max and picks a step that fits).
        sigma = t.clamp(t_lo, t_hi).exp().to(x.dtype).expand(b)
        with torch.enable_grad():
            y = state[:, :d].reshape(x.shape).detach().requires_grad_(True)
            den = denoiser(y, sigma)
            tr = _jacobian_trace(den, y, probes) if den.requires_grad else y.new_zeros(b)
        v = (y - den).detach().reshape(b, d)
        return torch.cat([v, (d - tr.detach())[:, None].to(v.dtype)], dim=1)

    state = torch.cat([x.reshape(b, d), x.new_zeros(b, 1)], dim=1)
    t = torch.tensor([t_lo, t_hi], dtype=torch.float64, device=x.device)
    end = odeint_dopri5(field, state, t, rtol, atol)[-1].to(torch.float64)
    if not bool(torch.isfinite(end).all()):
        raise ValueError(f"log_likelihood: non-finite values integrating from sigma {lo:.6g} to {hi:.6g}; the denoiser returned NaN/Inf")
    latent, delta = end[:, :d], end[:, d]
    prior = -0.5 * (latent**2).sum(1) / hi**2 - d * (math.log(hi) + 0.5 * math.log(2 * math.pi))
    nats = prior + delta
    offset = 0.0 if bin_width is None else d * math.log(bin_width)
    return LogLikelihood(nats=nats, bits_per_dim=-(nats + offset) / (d * math.log(2.0)), nfe=nfe)
