"""Fixed-grid samplers in sigma-space on a denoiser ``D(x, sigma)`` (VE, DESIGN.md §2 and §4).

Shared signature ``fn(denoiser, x, sigmas, *, seeds=None, callback=None, progress=False, **options)``:
``x`` is the state at ``sigmas[0]``; ``sigmas`` is strictly descending and may end in 0, in which
case the last step returns the denoised value (the Euler step to 0, as k-diffusion and EDM do).
The probability-flow ODE is ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022, Eq. 1 with
sigma(t) = t and the score (D - x)/sigma^2 of Eq. 3).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._checks import Denoiser, check_count, check_positive
from .common import Callback, GridLike, Run, Seeds
from .grids import grid_ratio, ncsn_step_lr


def euler(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
) -> Tensor:
    """Euler's method on the probability-flow ODE (Song et al. 2021; Karras et al. 2022, Eq. 1)."""
    run = Run("euler", denoiser, x, sigmas, seeds, callback, progress, invertible=True)
    return run.loop(x, lambda i, x, d, s, s_next: d if s_next == 0 else x + (x - d) * ((s_next - s) / s))


class Churn:
    """Karras et al. 2022 Algorithm 2, lines 4-6: before step ``i`` raise the noise level to
    ``s_hat = s (1 + gamma)``, ``gamma = min(s_churn / N, sqrt 2 - 1)`` inside ``[s_tmin, s_tmax]``, by adding
    noise of std ``s_noise sqrt(s_hat^2 - s^2)`` (drawn as the run's step-``i`` noise)."""

    def __init__(self, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> None:
        self.s_churn = check_positive("s_churn", s_churn, allow_zero=True)
        self.s_noise = check_positive("s_noise", s_noise, allow_zero=True)
        self.s_tmin = check_positive("s_tmin", s_tmin, allow_zero=True)
        if math.isnan(float(s_tmax)) or float(s_tmax) < self.s_tmin:
            raise ValueError(f"s_tmax must be >= s_tmin = {self.s_tmin} (inf allowed), got {s_tmax}")
        self.s_tmax = float(s_tmax)

    def __call__(self, run: Run, x: Tensor, i: int) -> tuple[Tensor, float]:
        """``(x_hat, s_hat)`` for step ``i`` of ``run``."""
        s = run.sigmas[i]
        gamma = min(self.s_churn / run.n_steps, math.sqrt(2.0) - 1.0) if self.s_tmin <= s <= self.s_tmax else 0.0
        s_hat = s * (1.0 + gamma)
        if gamma > 0:
            x = x + run.noise(x, i) * (self.s_noise * math.sqrt(s_hat**2 - s**2))
        return x, s_hat


def heun(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order sampler with optional churn, Karras et al. 2022 (EDM) Algorithm 2."""
    run = Run("heun", denoiser, x, sigmas, seeds, callback, progress, invertible=True)
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise)
    if run.ascending and churn.s_churn > 0:
        raise ValueError("heun inverts (an ascending grid) only without churn; got s_churn > 0")

    def step(i: int, x: Tensor, d_hat: Tensor, s_hat: float, s_next: float) -> Tensor:
        if s_next == 0:
            return d_hat
        slope = (x - d_hat) / s_hat
        x_euler = x + slope * (s_next - s_hat)
        slope_next = (x_euler - run.denoise(x_euler, s_next)) / s_next
        return x + (slope + slope_next) * (0.5 * (s_next - s_hat))

    return run.loop(x, step, churn)


def dpmpp_2m(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095) Alg. 2, in sigma-space as in k-diffusion."""
    run = Run("dpmpp_2m", denoiser, x, sigmas, seeds, callback, progress, invertible=True)
    old: Optional[Tensor] = None  # D of the previous step

    def step(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        nonlocal old
        d_prev, old = old, d
        if s_next == 0:
            return d
        h = math.log(s / s_next)  # t = -log sigma; h = t_next - t
        d_2 = d
        if d_prev is not None:
            r = math.log(run.sigmas[i - 1] / s) / h  # h_last / h
            d_2 = d * (1.0 + 0.5 / r) - d_prev * (0.5 / r)
        return x * (s_next / s) - d_2 * math.expm1(-h)

    return run.loop(x, step)


def euler_maruyama(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
) -> Tensor:
    """Euler-Maruyama on the reverse VE SDE in variance time ``t = sigma^2``: ``dx = -s dt + dW_t`` (Song et al. 2021, Eq. 6).

    A step from ``sigma`` to ``sigma'`` adds ``(sigma^2 - sigma'^2) s(x, sigma)`` and noise of that variance;
    this coincides with Song et al.'s reverse-diffusion predictor for VE models.
    """
    run = Run("euler_maruyama", denoiser, x, sigmas, seeds, callback, progress)

    def step(i: int, x: Tensor, d: Tensor, s: float, s_next: float) -> Tensor:
        if s_next == 0:
            return d
        var = s * s - s_next * s_next
        return x + (d - x) * (var / (s * s)) + run.noise(x, i) * math.sqrt(var)

    return run.loop(x, step)


def annealed_langevin(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    n_steps_each: int = 5, step_lr: Optional[float] = None, denoise: bool = True, noise: bool = True,
) -> Tensor:
    """Annealed Langevin dynamics, Song & Ermon 2020 (NCSNv2) Algorithm 1, with its final denoising step.

    The Langevin levels are the grid's positive values; a trailing 0 asks for the final denoising step
    (as on every other sampler's grid), which ``denoise`` (default on) also adds to a grid without one."""
    run = Run("annealed_langevin", denoiser, x, sigmas, seeds, callback, progress)
    if run.sigmas[-1] == 0:
        if not denoise:
            raise ValueError("annealed_langevin: the grid ends in 0 (denoise fully) but denoise=False; drop the 0 or the option")
    sig = [s for s in run.sigmas if s > 0]
    if step_lr is None and len(sig) < 2:
        raise ValueError("annealed_langevin chooses step_lr from the ratio of its levels (NCSNv2 Technique 4): "
                         "give at least two positive levels, or step_lr")
    t = check_count("n_steps_each", n_steps_each)
    eps = ncsn_step_lr(t, grid_ratio(sig), sigma_min=sig[-1]) if step_lr is None else check_positive("step_lr", step_lr)
    s_last = sig[-1]
    steps = run.steps(len(sig) * t)
    for k in steps:
        level = k // t
        s = sig[level]
        alpha = eps * (s / s_last) ** 2
        d = run.denoise(x, s)
        run.emit(k, x, d, sigma=s, sigma_next=s, level=level, step_size=alpha)
        x = x + (d - x) * (alpha / (s * s))
        if noise:
            x = x + run.noise(x, k) * math.sqrt(2.0 * alpha)
        run.guard(k, x, s, s)
    if denoise:
        d = run.denoise(x, s_last)  # x + sigma_L^2 s(x, sigma_L)
        run.emit(len(sig) * t, x, d, sigma=s_last, sigma_next=0.0, level=len(sig) - 1, step_size=s_last**2)
        x = d
        run.guard(len(sig) * t, x, s_last, 0.0)
    return run.finish(x)


# --------------------------------------------------------------------------- UniPC


def _unipc_coefficients(rks: list[float], hh: float, variant: str) -> tuple[float, list[list[float]], list[float]]:
    """``B(h)``, ``R`` (``R[k][j] = r_j^k``) and ``b`` (``b_k = hh phi_{k+2}(hh) (k+1)! / B(h)``) of UniPC
    (Zhao et al. 2023, §3, as in the authors' implementation; data prediction, so ``hh = -h``), for the
    ratios ``rks`` (last is 1). ``bh1``: ``B(h) = hh``; ``bh2``: ``B(h) = e^hh - 1``."""
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi = math.expm1(hh) / hh - 1.0  # hh * phi_2(hh)
    fact = 1.0
    rows, b = [], []
    for k in range(1, len(rks) + 1):
        rows.append([r ** (k - 1) for r in rks])
        b.append(h_phi * fact / b_h)
        fact *= k + 1
        h_phi = h_phi / hh - 1.0 / fact
    return b_h, rows, b


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting for the tiny (n <= 3) UniPC systems, in float64."""
    n = len(b)
    m = [list(row[:n]) + [b[i]] for i, row in enumerate(a[:n])]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            m[r] = [u - f * v for u, v in zip(m[r], m[c])]
    out = [0.0] * n
    for r in range(n - 1, -1, -1):
        out[r] = (m[r][n] - sum(m[r][k] * out[k] for k in range(r + 1, n))) / m[r][r]
    return out


def unipc(
    denoiser: Denoiser, x: Tensor, sigmas: GridLike, *, seeds: Seeds = None,
    callback: Optional[Callback] = None, progress: bool = False,
    order: int = 2, variant: str = "bh2", lower_order_final: bool = True,
) -> Tensor:
    """UniPC (UniP-p predictor + UniC corrector), Zhao et al. 2023 (arXiv:2302.04867), data prediction."""
    run = Run("unipc", denoiser, x, sigmas, seeds, callback, progress, invertible=True)
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    sig, n = run.sigmas, run.n_steps
    # VE: alpha = 1, lambda = -log sigma; history of (lambda, D) at past grid points, newest last.
    hist: list[tuple[float, Tensor]] = [(-math.log(sig[0]), run.denoise(x, sig[0]))]
    for i in run.steps():
        s, s_next = sig[i], sig[i + 1]
        lam0, m0 = hist[-1]
        run.emit(i, x, m0)
        if s_next == 0:
            x = m0
            run.guard(i, x, s, s_next)
            break
        # warm-up from the history; lower_order_final (as the authors' code) lowers the last steps,
        # the very last to first order without corrector, which caps the global order at 2
        p = min(order, len(hist), n - i if lower_order_final else order)
        lam_next = -math.log(s_next)
        h = lam_next - lam0
        rks = [(hist[-(k + 1)][0] - lam0) / h for k in range(1, p)] + [1.0]
        diffs = [hist[-(k + 1)][1] - m0 for k in range(1, p)]  # D1_k = diffs[k-1] / rks[k-1]
        b_h, r_mat, b = _unipc_coefficients(rks, -h, variant)
        x_lin = torch.add(x * (s_next / s), m0, alpha=-math.expm1(-h))
        if p == 1:
            x_pred = x_lin
        else:
            rhos_p = [0.5] if p == 2 else _solve(r_mat, b[:-1])
            x_pred = _combine(x_lin, [-b_h * r / rk for r, rk in zip(rhos_p, rks)], diffs)
        if i == n - 1:  # no corrector after the last step
            x = x_pred
        else:
            m_next = run.denoise(x_pred, s_next)
            rhos_c = [0.5] if p == 1 else _solve(r_mat, b)
            x = _combine(x_lin, [-b_h * r / rk for r, rk in zip(rhos_c, rks)], diffs + [m_next - m0])
            hist = (hist + [(lam_next, m_next)])[-order:]
        run.guard(i, x, s, s_next)
    return run.finish(x)


def _combine(base: Tensor, coefs: list[float], terms: list[Tensor]) -> Tensor:
    """``base + sum_k coefs[k] * terms[k]`` with fused multiply-adds."""
    for c, t in zip(coefs, terms):
        base = torch.add(base, t, alpha=c)
    return base
