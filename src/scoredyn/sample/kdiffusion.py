"""k-diffusion's samplers (Crowson, github.com/crowsonkb/k-diffusion, ``sampling.py``) and DDIM, in
sigma-space on a denoiser ``D(x, sigma)`` with scoredyn's signature
``fn(denoiser, x, sigmas, *, seeds=None, callback=None, progress=False, **options)``.

Stochastic samplers take ``eta`` (0: deterministic, 1: ancestral), ``s_noise`` (noise scale) and a
``noise_sampler(sigma, sigma_next) -> Tensor`` override (k-diffusion's convention: standard normal
draws like ``x`` for the step ``sigma -> sigma_next``). By default the draws are per-sample seeded
(the k-th draw of a run is ``noise(seeds, ..., step=k + 1)``) when ``seeds`` is given, else the
global RNG. Grids are descending and may end in 0 (the last step then returns the denoised value).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .._checks import Denoiser, check_positive
from .common import Callback, GridLike, Run, Seeds
from .solvers import Churn

NoiseSampler = Callable[[float, float], Tensor]


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of an ancestral step ``sigma -> sigma_next`` (k-diffusion's
    ``get_ancestral_step``; DDIM's ``sigma_t`` of Song et al. 2021a, Eq. 16, in sigma-space): deterministic
    down to ``sigma_down``, then fresh noise of std ``sigma_up``, with ``sigma_down^2 + sigma_up^2 = sigma_next^2``."""
    if not eta:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(max(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
    return math.sqrt(max(sigma_next**2 - up**2, 0.0)), up


def _noise_sampler(run: Run, x: Tensor, override: Optional[NoiseSampler]) -> NoiseSampler:
    """``override``, or per-run draws: the k-th call gives :meth:`Run.noise` of step ``k``."""
    if override is not None:
        if not callable(override):
            raise ValueError(f"noise_sampler must be callable as noise_sampler(sigma, sigma_next), got {type(override).__name__}")
        return override
    count = 0

    def draw(sigma: float, sigma_next: float) -> Tensor:
        nonlocal count
        count += 1
        return run.noise(x, count - 1)

    return draw


def _eta(eta: float, s_noise: float) -> tuple[float, float]:
    return check_positive("eta", eta, allow_zero=True), check_positive("s_noise", s_noise, allow_zero=True)


AncestralStep = Callable[[Run, Tensor, Tensor, float, float], Tensor]


def _ancestral(run: Run, x: Tensor, eta: float, s_noise: float, noise_sampler: Optional[NoiseSampler], step: AncestralStep) -> Tensor:
    """The ancestral loop (k-diffusion's ``*_ancestral``): ``step(run, x, D, sigma, sigma_down)`` deterministically
    down to ``sigma_down``, then noise of std ``sigma_up`` (:func:`ancestral_step`) unless ``sigma_next`` is 0."""
    draw = _noise_sampler(run, x, noise_sampler)

    def ancestral(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        down, up = ancestral_step(s, s_next, eta)
        x = step(run, x, d, s, down)
        return torch.add(x, draw(s, s_next), alpha=s_noise * up) if s_next > 0 and up > 0 else x

    return run.loop(x, ancestral)


def _euler_step(clip: Optional[float]) -> AncestralStep:
    """DDIM's deterministic part ``x0 + sigma_down eps`` with ``eps = (x - D) / sigma`` and ``x0 = D``,
    clipped to ``[-clip, clip]`` when ``clip`` is set (the raw noise estimate is kept)."""

    def step(run: Run, x: Tensor, d: Tensor, s: float, down: float) -> Tensor:
        x0 = d if clip is None else d.clamp(-clip, clip)
        return x0 if down == 0 else torch.add(x0, x - d, alpha=down / s)

    return step


def ddim(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 0.0, clip: Optional[float] = None, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """DDIM, Song et al. 2021a (arXiv:2010.02502) Eq. 12, in sigma-space (eta = 0 is :func:`euler`; with
    eta = 0 it also runs up an ascending grid, DDIM inversion, §4.3).

    ``clip`` clamps the predicted ``x0`` to ``[-clip, clip]`` and keeps the raw noise estimate, as
    diffusers' ``DDIMScheduler(clip_sample=True)`` does; with the same noise the two agree step for step.
    """
    eta, s_noise = _eta(eta, s_noise)
    if clip is not None:
        clip = check_positive("clip", clip)
    run = Run("ddim", denoiser, x, sigmas, seeds, callback, progress, invertible=eta == 0)
    return _ancestral(run, x, eta, s_noise, noise_sampler, _euler_step(clip))


def euler_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """Ancestral sampling with Euler steps (k-diffusion ``sample_euler_ancestral``; DDIM with eta = 1)."""
    eta, s_noise = _eta(eta, s_noise)
    run = Run("euler_ancestral", denoiser, x, sigmas, seeds, callback, progress)
    return _ancestral(run, x, eta, s_noise, noise_sampler, _euler_step(None))


def _dpm2_step(run: Run, x: Tensor, d: Tensor, s: float, s_to: float) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1) as k-diffusion writes it: an Euler half step to the geometric
    midpoint, then the full step ``s -> s_to`` with the midpoint's slope."""
    s_mid = math.exp(0.5 * (math.log(s) + math.log(s_to)))
    x_2 = torch.add(x, x - d, alpha=(s_mid - s) / s)
    d_2 = run.denoise(x_2, s_mid)
    return torch.add(x, x_2 - d_2, alpha=(s_to - s) / s_mid)


def dpm_2(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 steps with Karras et al. 2022 Algorithm 2's churn (k-diffusion ``sample_dpm_2``)."""
    run = Run("dpm_2", denoiser, x, sigmas, seeds, callback, progress)
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise)
    return run.loop(x, lambda i, x, d, s_hat, s_next: d if s_next == 0 else _dpm2_step(run, x, d, s_hat, s_next), churn)


def dpm_2_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """Ancestral sampling with DPM-Solver-2 steps (k-diffusion ``sample_dpm_2_ancestral``)."""
    eta, s_noise = _eta(eta, s_noise)
    run = Run("dpm_2_ancestral", denoiser, x, sigmas, seeds, callback, progress)
    return _ancestral(run, x, eta, s_noise, noise_sampler, lambda run, x, d, s, down: d if down == 0 else _dpm2_step(run, x, d, s, down))


def lms_coefficients(sigmas: list[float], i: int, order: int) -> list[float]:
    """``int_{sigma_i}^{sigma_{i+1}} l_j(tau) dtau`` for the Lagrange basis ``l_j`` on ``sigma_i, ..., sigma_{i-order+1}``
    (``j = 0`` is the newest point), by ``order``-point Gauss-Legendre quadrature (exact for these polynomials)."""
    nodes = [sigmas[i - k] for k in range(order)]
    a, b = sigmas[i], sigmas[i + 1]
    half, mid = 0.5 * (b - a), 0.5 * (b + a)
    taus = [(mid + half * u, half * w) for u, w in _gauss_legendre(order)]
    out = []
    for j in range(order):
        total = 0.0
        for tau, w in taus:
            prod = w
            for k, t in enumerate(nodes):
                if k != j:
                    prod *= (tau - t) / (nodes[j] - t)
            total += prod
        out.append(total)
    return out


@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int) -> tuple[tuple[float, float], ...]:
    u, w = np.polynomial.legendre.leggauss(n)
    return tuple(zip(u.tolist(), w.tolist()))


def lms(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False, order: int = 4,
) -> Tensor:
    """Linear multistep (Adams-Bashforth on the non-uniform sigma grid) on the probability-flow ODE
    (k-diffusion ``sample_lms``; Karras et al. 2022, Eq. 1)."""
    if isinstance(order, bool) or int(order) != order or not 1 <= int(order) <= 8:
        raise ValueError(f"order must be an integer in [1, 8], got {order!r}")
    run = Run("lms", denoiser, x, sigmas, seeds, callback, progress)
    slopes: list[Tensor] = []  # newest last

    def step(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        slopes[:] = (slopes + [(x - d) / s])[-int(order):]
        for c, slope in zip(lms_coefficients(run.sigmas, i, len(slopes)), reversed(slopes)):
            x = torch.add(x, slope, alpha=c)
        return x

    return run.loop(x, step)


def dpmpp_2s_ancestral(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """Ancestral sampling with DPM-Solver++(2S) steps, Lu et al. 2022 (arXiv:2211.01095) Alg. 1 (k-diffusion ``sample_dpmpp_2s_ancestral``)."""
    eta, s_noise = _eta(eta, s_noise)
    run = Run("dpmpp_2s_ancestral", denoiser, x, sigmas, seeds, callback, progress)
    return _ancestral(run, x, eta, s_noise, noise_sampler, _dpmpp_2s_step)


def _dpmpp_2s_step(run: Run, x: Tensor, d: Tensor, s: float, down: float) -> Tensor:
    """DPM-Solver++(2S) from ``s`` to ``down`` (``t = -log sigma``, midpoint ``r = 1/2``); ``D`` when ``down`` is 0."""
    if down == 0:
        return d
    s_mid = math.sqrt(s * down)
    x_2 = torch.add(x * (s_mid / s), d, alpha=-math.expm1(-math.log(s / s_mid)))
    d_2 = run.denoise(x_2, s_mid)
    return torch.add(x * (down / s), d_2, alpha=-math.expm1(-math.log(s / down)))


class _BrownianPair:
    """Per-sample seeded Brownian motion in sigma, sampled at the points ``dpmpp_sde`` queries in one step:
    the increment over the half step ``(s, s_mid)`` and over the whole step ``(s, s_next)``, jointly exact
    (the whole increment is the half one plus an independent remainder), as torchsde's Brownian tree gives them."""

    def __init__(self, base: NoiseSampler) -> None:
        self.base = base
        self._half: Optional[tuple[float, float, Tensor]] = None

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        if self._half is not None and self._half[0] == sigma:
            s, s_mid, z_1 = self._half
            self._half = None
            dt_1, dt_2 = s - s_mid, s_mid - sigma_next
            z_2 = self.base(s_mid, sigma_next)
            return (z_1 * math.sqrt(dt_1) + z_2 * math.sqrt(dt_2)) / math.sqrt(dt_1 + dt_2)
        z_1 = self.base(sigma, sigma_next)
        self._half = (sigma, sigma_next, z_1)
        return z_1


def dpmpp_sde(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None, r: float = 0.5,
) -> Tensor:
    """DPM-Solver++ (stochastic, 2 stages), k-diffusion ``sample_dpmpp_sde`` (Lu et al. 2022; Karras et al. 2022).

    k-diffusion draws its noise from a torchsde Brownian tree; by default this draws the same
    Brownian increments exactly, per-sample seeded, without torchsde: the half-step increment
    ``(sigma, sigma_mid)`` and the whole-step increment ``(sigma, sigma_next)`` that contains it
    (:class:`_BrownianPair`; the numbers differ from torchsde's, the joint law is the same).
    """
    eta, s_noise = _eta(eta, s_noise)
    r = check_positive("r", r)
    run = Run("dpmpp_sde", denoiser, x, sigmas, seeds, callback, progress)
    draw = _noise_sampler(run, x, noise_sampler) if noise_sampler is not None else _BrownianPair(_noise_sampler(run, x, None))
    fac = 1.0 / (2.0 * r)

    def step(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        if s_next == 0:
            return d
        # t = -log sigma; stage 1 to s_mid = sigma at t + r h, stage 2 to s_next
        s_mid = s * (s_next / s) ** r
        down, up = ancestral_step(s, s_mid, eta)
        x_2 = torch.add(x * (down / s), d, alpha=-math.expm1(math.log(down / s)))
        if up > 0:
            x_2 = torch.add(x_2, draw(s, s_mid), alpha=s_noise * up)
        d_2 = run.denoise(x_2, s_mid)
        down, up = ancestral_step(s, s_next, eta)
        x = torch.add(x * (down / s), torch.lerp(d, d_2, fac), alpha=-math.expm1(math.log(down / s)))
        return torch.add(x, draw(s, s_next), alpha=s_noise * up) if up > 0 else x

    return run.loop(x, step)


def dpmpp_2m_sde(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None, solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE, Lu et al. 2022 (arXiv:2211.01095) §4 (k-diffusion ``sample_dpmpp_2m_sde``)."""
    eta, s_noise = _eta(eta, s_noise)
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    run = Run("dpmpp_2m_sde", denoiser, x, sigmas, seeds, callback, progress)
    draw = _noise_sampler(run, x, noise_sampler)
    hist: list[tuple[Tensor, float]] = []  # (D, h) of the previous step

    def step(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        if s_next == 0:
            return d
        h = math.log(s / s_next)
        eta_h = eta * h
        phi = -math.expm1(-h - eta_h)
        x = torch.add(x * (s_next / s * math.exp(-eta_h)), d, alpha=phi)
        if hist:
            c = (phi / (-h - eta_h) + 1.0) if solver_type == "heun" else 0.5 * phi
            x = torch.add(x, d - hist[0][0], alpha=c * h / hist[0][1])
        hist[:] = [(d, h)]
        return _sde_noise(x, draw, s, s_next, eta * h, s_noise)

    return run.loop(x, step)


def dpmpp_3m_sde(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    eta: float = 1.0, s_noise: float = 1.0, noise_sampler: Optional[NoiseSampler] = None,
) -> Tensor:
    """DPM-Solver++(3M) SDE, Lu et al. 2022 (arXiv:2211.01095) §4 (k-diffusion ``sample_dpmpp_3m_sde``)."""
    eta, s_noise = _eta(eta, s_noise)
    run = Run("dpmpp_3m_sde", denoiser, x, sigmas, seeds, callback, progress)
    draw = _noise_sampler(run, x, noise_sampler)
    hist: list[tuple[Tensor, float]] = []  # (D, h) of the previous steps, newest first

    def step(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        if s_next == 0:
            return d
        h = math.log(s / s_next)
        h_eta = h * (eta + 1.0)
        x = torch.add(x * math.exp(-h_eta), d, alpha=-math.expm1(-h_eta))
        phi_2 = math.expm1(-h_eta) / h_eta + 1.0
        if len(hist) >= 2:
            (d_1, h_1), (d_2, h_2) = hist[0], hist[1]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (d - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = torch.add(d1_0, d1_0 - d1_1, alpha=r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = torch.add(torch.add(x, d1, alpha=phi_2), d2, alpha=-(phi_2 / h_eta - 0.5))
        elif hist:
            x = torch.add(x, d - hist[0][0], alpha=phi_2 * h / hist[0][1])
        hist[:] = [(d, h)] + hist[:1]
        return _sde_noise(x, draw, s, s_next, h * eta, s_noise)

    return run.loop(x, step)


def _sde_noise(x: Tensor, draw: NoiseSampler, s: float, s_next: float, eta_h: float, s_noise: float) -> Tensor:
    """The noise of a DPM-Solver++ SDE step: std ``sigma_next sqrt(1 - e^{-2 eta h})`` (none when ``eta h`` is 0)."""
    return torch.add(x, draw(s, s_next), alpha=s_next * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise) if eta_h else x
